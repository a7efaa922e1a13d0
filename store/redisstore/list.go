package redisstore

import (
	"context"
	"slices"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// ListTasks implements store.Store: newest first (task ids sort by creation), the
// page token being the last id of the page. Candidates come from the narrowest
// index — the job's task list, the agent's task list, or the per-shard state or
// all-task indexes merged across shards — and are then read and filtered, so a
// page is exact even when an index entry is a moment stale.
func (s *Store) ListTasks(ctx context.Context, f store.TaskFilter) ([]store.Task, string, error) {
	size := store.PageSize(f.Size)
	var next func(before string, n int) ([]string, error)
	switch {
	case f.JobID != "":
		if !store.ValidID(f.JobID, 'j') {
			return nil, "", nil
		}
		ids, err := s.jobTaskIDs(ctx, f.JobID)
		if err != nil {
			return nil, "", err
		}
		slices.Sort(ids)
		slices.Reverse(ids)
		next = func(before string, n int) ([]string, error) {
			i := 0
			if before != "" {
				for i < len(ids) && ids[i] >= before {
					i++
				}
			}
			return ids[i:min(i+n, len(ids))], nil
		}
	case f.AgentID != "":
		if !store.ValidID(f.AgentID, 'a') {
			return nil, "", nil
		}
		key := s.k.agentTasks(f.AgentID)
		next = func(before string, n int) ([]string, error) {
			return s.lexBefore(ctx, []string{key}, before, n)
		}
	default:
		keys := make([]string, NumShards)
		for sh := range keys {
			if f.State != store.StateUnspecified {
				keys[sh] = s.k.stateIndex(sh, int(f.State))
			} else {
				keys[sh] = s.k.shardTasks(sh)
			}
		}
		next = func(before string, n int) ([]string, error) {
			return s.lexBefore(ctx, keys, before, n)
		}
	}
	before := f.Token
	var out []store.Task
	for {
		want := size + 1 - len(out)
		ids, err := next(before, want)
		if err != nil {
			return nil, "", err
		}
		if len(ids) == 0 {
			return out, "", nil
		}
		tasks, err := s.getTasks(ctx, ids)
		if err != nil {
			return nil, "", err
		}
		for _, t := range tasks {
			if t.ID == "" || (f.AgentID != "" && t.AgentID != f.AgentID) ||
				(f.State != store.StateUnspecified && t.State != f.State) {
				continue
			}
			if len(out) == size {
				return out, out[len(out)-1].ID, nil
			}
			out = append(out, t)
		}
		before = ids[len(ids)-1]
		if len(ids) < want {
			return out, "", nil
		}
	}
}

// jobTaskIDs returns a job's task ids (none if the job is gone), from the job
// cache when it has the job.
func (s *Store) jobTaskIDs(ctx context.Context, jid string) ([]string, error) {
	if e := s.jobs.get(jid); e != nil {
		return slices.Clone(e.job.TaskIDs), nil
	}
	v, err := s.client.Do(ctx, s.client.B().Hget().Key(s.k.job(jid)).Field("tasks").Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return nil, s.wrap(ctx, err)
	}
	return splitIDs(v), nil
}

// lexBefore returns the n greatest members below before (all if before is "")
// across score-0 sorted sets, greatest first.
func (s *Store) lexBefore(ctx context.Context, keys []string, before string, n int) ([]string, error) {
	maxLex := "+"
	if before != "" {
		maxLex = "(" + before
	}
	cmds := make(rueidis.Commands, len(keys))
	for i, k := range keys {
		cmds[i] = s.client.B().Zrange().Key(k).Min(maxLex).Max("-").Bylex().Rev().Limit(0, int64(n)).Build()
	}
	var all []string
	for _, r := range s.client.DoMulti(ctx, cmds...) {
		ids, err := r.AsStrSlice()
		if err != nil {
			return nil, s.wrap(ctx, err)
		}
		all = append(all, ids...)
	}
	slices.Sort(all)
	slices.Reverse(all)
	return all[:min(n, len(all))], nil
}

// getTasks reads task records, pipelined; a missing one comes back with no ID.
func (s *Store) getTasks(ctx context.Context, ids []string) ([]store.Task, error) {
	cmds := make(rueidis.Commands, 0, len(ids))
	for _, id := range ids {
		a, _ := store.AgentOfTask(id)
		cmds = append(cmds, s.client.B().Hgetall().Key(s.k.task(a, id)).Build())
	}
	out := make([]store.Task, len(ids))
	for i, r := range s.client.DoMulti(ctx, cmds...) {
		f, err := r.AsStrMap()
		if err != nil {
			return nil, s.wrap(ctx, err)
		}
		if len(f) > 0 {
			out[i] = decodeTask(ids[i], f)
		}
	}
	return out, nil
}
