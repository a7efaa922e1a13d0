package redisstore

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// Lease implements store.Store: one script, one round trip.
//
// An idle agent's Poll calls Lease once per hold, from deep in the connection's
// goroutine (see server's agentService.Poll), and Redis's call path adds its
// own frames below: the script's keys and arguments (leaseArgs) and the reading
// of its answer (leased) are calls of their own, done before and after, so
// that Lease's frame, which stays on the stack during the round trip, is small
// and that goroutine's stack keeps its 8 KiB. See docs/performance.md, "Idle".
func (s *Store) Lease(ctx context.Context, p store.LeaseParams) (store.LeaseResult, error) {
	if !store.ValidID(p.Cred.AgentID, 'a') {
		return store.LeaseResult{}, store.ErrUnknownAgent()
	}
	keys, args := s.leaseArgs(&p)
	arr, err := s.run(ctx, leaseScript, keys, args)
	if err != nil {
		s.handBack(ctx, p.Cred, err)
		return store.LeaseResult{}, err
	}
	return s.leased(ctx, p.Gen, arr)
}

// leaseArgs returns leaseScript's KEYS and ARGV for p.
//
//go:noinline
func (s *Store) leaseArgs(p *store.LeaseParams) (keys, args []string) {
	id := p.Cred.AgentID
	keys = []string{s.k.agent(id), s.k.queue(id), s.k.running(id), s.k.cancels(id)}
	args = s.shardArgs(s.k.tag(id), s.nowMS(), id, string(p.Cred.SecretHash), strconv.Itoa(max(p.Max, 0)),
		ms(p.Lease), ms(p.Hold), itoa(p.Gen), itoa(s.agentRetentionMS()))
	return keys, args
}

// leased reads leaseScript's answer arr to a Lease of generation gen. An idle
// agent's answer holds no task: the tasks' decoding, whose frames are large,
// is a call of its own (leasedTasks) that such an answer does not make.
//
//go:noinline
func (s *Store) leased(ctx context.Context, gen int64, arr []rueidis.RedisMessage) (store.LeaseResult, error) {
	if msgStr(arr[0]) == "S" {
		return store.LeaseResult{Gen: gen, Superseded: true}, nil
	}
	res := store.LeaseResult{Gen: msgInt(arr[1]), Cancels: refs(arr[2])}
	if len(arr) > 4 {
		tasks, err := s.leasedTasks(ctx, arr[4:])
		if err != nil {
			// The tasks are leased: an answer without them costs their lease.
			return store.LeaseResult{}, err
		}
		res.Tasks = tasks
	}
	if jobs := msgStrs(arr[3]); len(jobs) > 0 {
		// Tasks the script found past their delivery TTL and expired.
		s.advanceAll(ctx, jobs)
	}
	return res, nil
}

// leasedTasks reads the leased tasks of leaseScript's answer (id, fields
// pairs) with their job's content.
//
//go:noinline
func (s *Store) leasedTasks(ctx context.Context, arr []rueidis.RedisMessage) ([]store.Task, error) {
	var tasks []store.Task
	var fs []map[string]string
	for i := 0; i+1 < len(arr); i += 2 {
		f := pairs(arr[i+1])
		tasks = append(tasks, decodeTask(msgStr(arr[i]), f))
		fs = append(fs, f)
	}
	if err := s.fillContent(ctx, tasks, fs); err != nil {
		return nil, err
	}
	return tasks, nil
}

// handBack puts back in their queue the tasks of a Lease that Redis made but
// its replicas did not confirm (Options.WaitReplicas), as ReturnTasks does:
// the Poll answers unavailable, so its agent never gets them. Left leased,
// each would come back only when its lease ran out, as the next attempt, and
// while no replica confirms writes every Poll would lease it again: a few
// polls would end it LOST without it ever reaching its agent. Handed back, the
// attempt does not count. The hand-back is not confirmed either; if the
// master dies before its replicas have it, so much the worse: the task costs
// the lease it would have cost anyway.
func (s *Store) handBack(ctx context.Context, cred store.Cred, err error) {
	var ue *unconfirmedError
	if !errors.As(err, &ue) {
		return
	}
	arr, aerr := ue.reply.ToArray()
	if aerr != nil || len(arr) < 4 || msgStr(arr[0]) != "OK" {
		return
	}
	var leased []store.TaskRef
	for i := 4; i+1 < len(arr); i += 2 {
		t := decodeTask(msgStr(arr[i]), pairs(arr[i+1]))
		leased = append(leased, store.TaskRef{TaskID: t.ID, Attempt: t.Attempt})
	}
	if len(leased) == 0 {
		return
	}
	// The Poll's caller may have gone already; the tasks must go back all the same.
	_, rerr := s.ReturnTasks(context.WithoutCancel(ctx), store.ReturnParams{Cred: cred, Tasks: leased})
	if rerr != nil && !errors.As(rerr, &ue) {
		s.log.Warn("handing back the tasks of an unconfirmed lease failed; they return when their lease runs out",
			"agent", cred.AgentID, "tasks", len(leased), "err", rerr)
		return
	}
	s.log.Debug("handed back the tasks of a lease the replicas did not confirm", "agent", cred.AgentID, "tasks", len(leased))
}

// Heartbeat implements store.Store.
func (s *Store) Heartbeat(ctx context.Context, p store.HeartbeatParams) (store.HeartbeatResult, error) {
	id := p.Cred.AgentID
	if !store.ValidID(id, 'a') {
		return store.HeartbeatResult{}, store.ErrUnknownAgent()
	}
	args := s.shardArgs(s.k.tag(id), s.nowMS(), id, string(p.Cred.SecretHash), ms(p.Lease), flag(p.Draining), flag(p.Stopped))
	for _, r := range p.Running {
		args = append(args, r.TaskID, itoa(r.Attempt))
	}
	arr, err := s.run(ctx, heartbeatScript, []string{s.k.agent(id), s.k.running(id), s.k.cancels(id)}, args)
	if err != nil {
		return store.HeartbeatResult{}, err
	}
	return store.HeartbeatResult{Cancel: refs(arr[1]), Abandon: refs(arr[2])}, nil
}

// ReturnTasks implements store.Store: one script in the agent's shard.
func (s *Store) ReturnTasks(ctx context.Context, p store.ReturnParams) ([]store.TaskRef, error) {
	id := p.Cred.AgentID
	if !store.ValidID(id, 'a') {
		return nil, store.ErrUnknownAgent()
	}
	args := s.shardArgs(s.k.tag(id), s.nowMS(), id, string(p.Cred.SecretHash))
	for _, r := range p.Tasks {
		args = append(args, r.TaskID, itoa(r.Attempt))
	}
	arr, err := s.run(ctx, returnScript, []string{s.k.agent(id), s.k.running(id), s.k.queue(id), s.k.cancels(id)}, args)
	if err != nil {
		return nil, err
	}
	s.advanceAll(ctx, msgStrs(arr[2]))
	return refs(arr[1]), nil
}

// ownTask refuses, before a script in the agent's slot runs, a task id that is
// not one of the agent's own (cred's): an agent id that is not an id is an
// unknown agent; another agent's task lives in another slot, so the credential
// is checked on its own, a bad token staying unauthenticated, and the task is
// then hidden (not_found), as for a task that does not exist.
func (s *Store) ownTask(ctx context.Context, cred store.Cred, taskID string) error {
	if !store.ValidID(cred.AgentID, 'a') {
		return store.ErrUnknownAgent()
	}
	if owner, ok := store.AgentOfTask(taskID); !ok || owner != cred.AgentID || !store.ValidTaskID(taskID) {
		if err := s.AuthenticateAgent(ctx, cred); err != nil {
			return err
		}
		return store.ErrTaskNotFound(taskID)
	}
	return nil
}

// Report implements store.Store.
func (s *Store) Report(ctx context.Context, p store.ReportParams) (store.TaskState, error) {
	id := p.Cred.AgentID
	if err := s.ownTask(ctx, p.Cred, p.TaskID); err != nil {
		return 0, err
	}
	arr, err := s.run(ctx, reportScript,
		[]string{s.k.agent(id), s.k.task(id, p.TaskID), s.k.outHead(id, p.TaskID), s.k.outTail(id, p.TaskID)},
		s.shardArgs(s.k.tag(id), s.nowMS(), id, string(p.Cred.SecretHash), p.TaskID, itoa(p.Attempt),
			itoa(p.Outcome), string(p.Output), itoa(p.ExitCode), p.Error, flag(p.OutputTruncated), itoa(p.OutputSize),
			itoa(store.OutputCap(p.Cap)), flag(p.TimedOut)))
	if err != nil {
		return 0, err
	}
	// The script has published the change to every replica; waiters on this one
	// (a WaitTask, a Dispatch with wait, a WaitJob) hear it now instead of after
	// the message's trip through the subscription. A second fire is harmless:
	// watchers re-read and are coalesced.
	if len(arr) > 3 {
		s.handOver(ctx, p.TaskID, pairs(arr[3]))
	}
	s.hub.Notify(store.TaskKey(p.TaskID), store.JobKey(jobOfTask(p.TaskID)))
	s.advanceAll(ctx, msgStrs(arr[2]))
	return store.TaskState(msgInt(arr[1])), nil
}

// jobOfTask returns the job id a task id was made from (jobTaskID).
func jobOfTask(taskID string) string {
	i := strings.IndexByte(taskID, '-')
	if i < 1 {
		return ""
	}
	return "j" + taskID[1:i]
}

// GetTask implements store.Store.
func (s *Store) GetTask(ctx context.Context, id string) (store.Task, error) {
	_, ok := store.AgentOfTask(id)
	if !ok || !store.ValidTaskID(id) {
		return store.Task{}, store.ErrTaskNotFound(id)
	}
	if t, ok := s.ended.take(id); ok {
		return t, nil
	}
	tasks, err := s.getTasks(ctx, []string{id})
	if err != nil {
		return store.Task{}, err
	}
	if tasks[0].ID == "" {
		return store.Task{}, store.ErrTaskGone(id, time.UnixMilli(s.nowMS()), s.goneTask(ctx, id))
	}
	return tasks[0], nil
}

// CancelTask implements store.Store.
func (s *Store) CancelTask(ctx context.Context, id, reason string) (store.Task, error) {
	a, ok := store.AgentOfTask(id)
	if !ok || !store.ValidTaskID(id) {
		return store.Task{}, store.ErrTaskNotFound(id)
	}
	reason = store.OrDefault(reason, store.ReasonTaskCanceled)
	sh := shardOf(a)
	arr, err := s.run(ctx, cancelScript, []string{s.k.due(sh)}, s.shardArgs(s.k.shard[sh], s.nowMS(), reason, itoa(store.CancelModeTask), id))
	if err != nil {
		return store.Task{}, err
	}
	f := pairs(arr[2])
	ts := []store.Task{decodeTask(id, f)}
	s.advanceAll(ctx, msgStrs(arr[1]))
	if err := s.fillContent(ctx, ts, []map[string]string{f}); err != nil {
		return store.Task{}, err
	}
	return ts[0], nil
}

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

// getTasks reads task records with their kept output (taskScript), pipelined; a
// missing one comes back with no ID.
func (s *Store) getTasks(ctx context.Context, ids []string) ([]store.Task, error) {
	execs := make([]rueidis.LuaExec, len(ids))
	for i, id := range ids {
		a, _ := store.AgentOfTask(id)
		execs[i] = rueidis.LuaExec{Keys: []string{s.k.task(a, id), s.k.outHead(a, id), s.k.outTail(a, id)}}
	}
	out := make([]store.Task, len(ids))
	fs := make([]map[string]string, len(ids))
	for i, r := range s.runMulti(ctx, taskScript, execs) {
		arr, err := s.answer(ctx, r)
		if err != nil {
			return nil, err
		}
		if f := pairs(arr[1]); len(f) > 0 {
			out[i] = withOutput(decodeTask(ids[i], f), f, decodePieces(arr[2]), decodePieces(arr[3]))
			fs[i] = f
		}
	}
	if err := s.fillContent(ctx, out, fs); err != nil {
		return nil, err
	}
	return out, nil
}

// taskState is what the advancer and job counts need of a task.
type taskState struct {
	st     store.TaskState // 0: the record is gone (or was never created)
	held   bool
	exists bool
}

func (s *Store) taskStates(ctx context.Context, ids []string) ([]taskState, error) {
	out := make([]taskState, len(ids))
	const batch = 1000
	for lo := 0; lo < len(ids); lo += batch {
		chunk := ids[lo:min(lo+batch, len(ids))]
		cmds := make(rueidis.Commands, len(chunk))
		for i, id := range chunk {
			a, _ := store.AgentOfTask(id)
			cmds[i] = s.client.B().Hmget().Key(s.k.task(a, id)).Field("st", "held").Build()
		}
		for i, r := range s.client.DoMulti(ctx, cmds...) {
			vals, err := r.ToArray()
			if err != nil {
				return nil, s.wrap(ctx, err)
			}
			st, err := vals[0].AsInt64()
			if err != nil {
				continue
			}
			h, _ := vals[1].ToString()
			out[lo+i] = taskState{st: store.TaskState(st), held: h == "1", exists: true}
		}
	}
	return out, nil
}

// gone tells whether a task no longer counts for its job: ended, or missing.
func (t taskState) gone() bool { return !t.exists || t.st.Terminal() }
