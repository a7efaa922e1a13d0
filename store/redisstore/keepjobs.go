package redisstore

import (
	"context"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// The count of jobs kept (store.Config.KeepJobs) works from two indexes, so no
// pass reads more than what finished since the last one and what it drops:
//
//   - each shard's stream of finished tasks (fin), read past the shard's own
//     cursor (jfc): a job one of whose tasks finished since is looked at — its
//     per-shard counts, one read a shard it reaches — and, if none of its tasks
//     is live, listed as finished (jfin, scored with the time it finished);
//   - the finished jobs, oldest first: while more than KeepJobs are listed,
//     the oldest go with their tasks (dropJobTasksScript in each shard the job
//     reaches, then its record and listings), at most keepJobsBatch a pass. A
//     job with a task an export has not written keeps that task, and stays
//     listed until the export has written it.
//
// Every step may run twice (replicas reap at once, or one dies between two
// steps): listing is ZADD NX, a cursor moves only after what it read is
// listed, and a drop re-checks each record.

// keepJobsRead bounds the entries of each shard's stream one pass reads, and
// keepJobsBatch the finished jobs one pass drops.
const (
	keepJobsRead  = 200
	keepJobsBatch = 100
)

// keepJobs does one pass of the count of jobs kept: list the jobs that
// finished, then drop the oldest past the count.
func (s *Store) keepJobs(ctx context.Context) error {
	if s.cfg.KeepJobs <= 0 {
		return nil
	}
	listed, err := s.listFinishedJobs(ctx)
	if err != nil {
		return err
	}
	if listed <= int64(s.cfg.KeepJobs) {
		return nil
	}
	return s.dropOldestJobs(ctx)
}

// listFinishedJobs reads each shard's stream of finished tasks past its cursor,
// lists the jobs of those tasks that have finished, moves the cursors on, and
// returns how many finished jobs are listed.
func (s *Store) listFinishedJobs(ctx context.Context) (int64, error) {
	b := s.client.B()
	cmds := make(rueidis.Commands, NumShards)
	for sh := range NumShards {
		cmds[sh] = b.Get().Key(s.k.jobsRead(sh)).Build()
	}
	for sh, r := range s.client.DoMulti(ctx, cmds...) {
		v, err := r.ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return 0, s.wrap(ctx, err)
		}
		from := "-"
		if v != "" {
			from = "(" + v
		}
		cmds[sh] = b.Xrange().Key(s.k.finished(sh)).Start(from).End("+").Count(keepJobsRead).Build()
	}
	ended := map[string]int64{} // job id -> when its newest task read finished (ms)
	var jobs []string
	cursors := map[int]string{}
	for sh, r := range s.client.DoMulti(ctx, cmds...) {
		entries, err := r.AsXRange()
		if err != nil && !rueidis.IsRedisNil(err) {
			return 0, s.wrap(ctx, err)
		}
		for _, e := range entries {
			jid := jobOfTask(e.FieldValues["t"])
			if !store.ValidJobID(jid) {
				continue
			}
			at := atoi(strings.SplitN(e.ID, "-", 2)[0])
			if _, seen := ended[jid]; !seen {
				jobs = append(jobs, jid)
			}
			ended[jid] = max(ended[jid], at)
		}
		if len(entries) > 0 {
			cursors[sh] = entries[len(entries)-1].ID
		}
	}
	finished, err := s.finishedJobs(ctx, jobs)
	if err != nil {
		return 0, err
	}
	args := make([]string, 0, 2*len(finished))
	for _, jid := range finished {
		args = append(args, itoa(ended[jid]), jid)
	}
	listed, err := s.exec(ctx, jobsFinishedScript, []string{s.k.jobsFinished()}, args).AsInt64()
	if err != nil {
		return 0, s.wrap(ctx, err)
	}
	execs := make([]rueidis.LuaExec, 0, len(cursors))
	for sh, id := range cursors {
		execs = append(execs, rueidis.LuaExec{Keys: []string{s.k.jobsRead(sh)}, Args: []string{id}})
	}
	for _, r := range s.runMulti(ctx, setScript, execs) {
		if err := r.Error(); err != nil {
			return 0, s.wrap(ctx, err)
		}
	}
	return listed, nil
}

// finishedJobs returns those of jobs whose dispatch is complete and none of
// whose tasks is live, from their records and per-shard counts: two pipelined
// round trips. A job's task list (a fan-out's is long) is read only when the
// job cache lacks it. A single-agent job keeps no counts (see moved in
// scripts.go): its one task is in the finished stream, so it has finished.
func (s *Store) finishedJobs(ctx context.Context, jobs []string) ([]string, error) {
	if len(jobs) == 0 {
		return nil, nil
	}
	b := s.client.B()
	cmds := make(rueidis.Commands, len(jobs))
	cached := make([]*cachedJob, len(jobs))
	for i, jid := range jobs {
		if cached[i] = s.jobs.get(jid); cached[i] != nil {
			cmds[i] = b.Hmget().Key(s.k.job(jid)).Field("ca", "made", "abandoned").Build()
		} else {
			cmds[i] = b.Hmget().Key(s.k.job(jid)).Field("ca", "made", "abandoned", "tasks", "tgt").Build()
		}
	}
	var counted, out []string
	var reads rueidis.Commands
	var spans []int
	for i, r := range s.client.DoMulti(ctx, cmds...) {
		vals, err := r.ToArray()
		if err != nil {
			return nil, s.wrap(ctx, err)
		}
		ca, _ := vals[0].ToString()
		made, _ := vals[1].ToString()
		abandoned, _ := vals[2].ToString()
		if ca == "" || (made == "0" && abandoned != "1") {
			continue // gone, or a fan-out still being made
		}
		var shards []int
		solo := false
		if cached[i] != nil {
			shards, solo = cached[i].shards, cached[i].solo != ""
		} else {
			tasks, _ := vals[3].ToString()
			ids := splitIDs(tasks)
			shards = taskShards(ids)
			solo = vals[4].IsNil() && soloTarget(ids).AgentID != "" // as decodeJob and jobCache.put tell
		}
		if solo {
			out = append(out, jobs[i])
			continue
		}
		for _, sh := range shards {
			reads = append(reads, b.Hmget().Key(s.k.jobCounts(sh, jobs[i])).Field(itoa(store.StatePending), itoa(store.StateRunning)).Build())
		}
		counted = append(counted, jobs[i])
		spans = append(spans, len(shards))
	}
	if len(reads) == 0 {
		return out, nil
	}
	res := s.client.DoMulti(ctx, reads...)
	for i, jid := range counted {
		live := int64(0)
		for _, r := range res[:spans[i]] {
			vals, err := r.ToArray()
			if err != nil {
				return nil, s.wrap(ctx, err)
			}
			for _, v := range vals {
				n, _ := v.AsInt64()
				live += n
			}
		}
		res = res[spans[i]:]
		if live == 0 {
			out = append(out, jid)
		}
	}
	return out, nil
}

// dropOldestJobs drops the oldest of the listed finished jobs past KeepJobs
// (those an export holds back stay, and the next ones go in their stead),
// looking at no more than keepJobsBatch. The jobs past the count are read in
// one script (oldestJobsScript), so replicas dropping at once agree on them.
func (s *Store) dropOldestJobs(ctx context.Context) error {
	ids, err := s.exec(ctx, oldestJobsScript, []string{s.k.jobsFinished()},
		[]string{itoa(s.cfg.KeepJobs), itoa(keepJobsBatch)}).AsStrSlice()
	if err != nil {
		return s.wrap(ctx, err)
	}
	for _, jid := range ids {
		if _, err := s.dropFinishedJob(ctx, jid); err != nil {
			return err
		}
	}
	return nil
}

// dropFinishedJob drops a finished job with its tasks, but no task an export
// has yet to write; it tells whether the job went.
func (s *Store) dropFinishedJob(ctx context.Context, jid string) (bool, error) {
	tasks, err := s.jobTaskIDs(ctx, jid)
	if err != nil {
		return false, err
	}
	answers, err := s.perShard(ctx, dropJobTasksScript, tasks, nil)
	if err != nil {
		return false, err
	}
	for _, arr := range answers {
		if msgInt(arr[1]) > 0 {
			return false, nil // the export's turn first
		}
	}
	upTo, _ := store.CreatedAt(jid)
	for _, id := range tasks {
		if made, ok := store.CreatedAt(id); ok && made.After(upTo) {
			upTo = made
		}
	}
	s.jobs.drop(jid)
	idem, err := s.exec(ctx, dropJobScript, []string{s.k.job(jid)}, nil).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return false, s.wrap(ctx, err)
	}
	if idem != "" {
		if err := s.exec(ctx, delIfScript, []string{s.k.idem(idem)}, []string{jid}).Error(); err != nil {
			return false, s.wrap(ctx, err)
		}
	}
	err = s.exec(ctx, jobGoneScript,
		[]string{s.k.jobs(), s.k.jobsAdvance(), s.k.jobsRetain(), s.k.jobsFinished(), s.k.jobsCut()},
		[]string{jid, itoa(upTo.UnixMicro())}).Error()
	if err != nil {
		return false, s.wrap(ctx, err)
	}
	return true, nil
}

// gone returns what retention dropped, for a not_found answer: with a count
// of jobs kept, one read of the newest job it dropped.
func (s *Store) gone(ctx context.Context) store.Dropped {
	return s.goneTask(ctx, "")
}

// goneTask is gone for task id (none: ""): with a count kept per agent, one
// more read, of the newest task of its agent that count dropped (the agent
// record's kd, see keepAgent), sent with gone's in one round trip.
func (s *Store) goneTask(ctx context.Context, id string) store.Dropped {
	d := store.Dropped{Retention: s.cfg.Retention, KeepJobs: s.cfg.KeepJobs, KeepPerAgent: s.cfg.KeepPerAgent}
	var cmds rueidis.Commands
	jobs, agent := -1, -1
	if s.cfg.KeepJobs > 0 {
		jobs = len(cmds)
		cmds = append(cmds, s.client.B().Zscore().Key(s.k.jobsCut()).Member("c").Build())
	}
	if aid, ok := store.AgentOfTask(id); ok && s.cfg.KeepPerAgent > 0 {
		agent = len(cmds)
		cmds = append(cmds, s.client.B().Hget().Key(s.k.agent(aid)).Field("kd").Build())
	}
	if len(cmds) == 0 {
		return d
	}
	res := s.client.DoMulti(ctx, cmds...)
	if jobs >= 0 {
		if us, err := res[jobs].AsFloat64(); err == nil && us > 0 {
			d.JobsUpTo = time.UnixMicro(int64(us))
		}
	}
	if agent >= 0 {
		if us, err := res[agent].AsInt64(); err == nil && us > 0 {
			d.AgentUpTo = time.UnixMicro(us)
		}
	}
	return d
}
