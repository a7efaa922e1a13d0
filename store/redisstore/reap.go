package redisstore

import (
	"context"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// reapBatch bounds the due entries one reap script handles, so no script holds
// Redis for long; a shard with more is called again at once.
const reapBatch = 200

// Reap implements store.Store. One pass: every shard's due work, then the
// advancer over rollout jobs not looked at lately, then retention of jobs by
// age, then by count (keepjobs.go). Any
// number of replicas may run it at once: each script re-checks what it finds, so
// each change happens once.
//
// A pass starts with one pipelined round trip of plain reads — the first due
// entry of each shard's due index (retention included: the shard's stream of
// finished tasks has one entry there, finDue), and the rollout and retention
// indexes — and runs the reap script (pipelined) only on shards with something
// due, so a pass with nothing to do costs NumShards+2 commands and no script.
func (s *Store) Reap(ctx context.Context) error {
	s.ended.forget() // retention may drop what they hold
	now := s.nowMS()
	b := s.client.B()
	cmds := make(rueidis.Commands, 0, NumShards+2)
	for sh := 0; sh < NumShards; sh++ {
		cmds = append(cmds, b.Zrange().Key(s.k.due(sh)).Min("-inf").Max(itoa(now)).Byscore().Limit(0, 1).Build())
	}
	cmds = append(cmds,
		b.Zrange().Key(s.k.jobsAdvance()).Min("-inf").Max(itoa(now)).Byscore().Limit(0, 100).Build(),
		b.Zrange().Key(s.k.jobsRetain()).Min("-inf").Max(itoa(now)).Byscore().Limit(0, 100).Build())
	res := s.client.DoMulti(ctx, cmds...)
	var shards []int
	for sh := 0; sh < NumShards; sh++ {
		ids, err := res[sh].AsStrSlice()
		if err != nil {
			return s.wrap(ctx, err)
		}
		if len(ids) > 0 {
			shards = append(shards, sh)
		}
	}
	advanceDue, err := res[NumShards].AsStrSlice()
	if err != nil {
		return s.wrap(ctx, err)
	}
	retainDue, err := res[NumShards+1].AsStrSlice()
	if err != nil {
		return s.wrap(ctx, err)
	}
	jobs := map[string]bool{}
	for len(shards) > 0 {
		now := s.nowMS()
		execs := make([]rueidis.LuaExec, len(shards))
		for i, sh := range shards {
			execs[i] = rueidis.LuaExec{Keys: []string{s.k.due(sh)}, Args: s.shardArgs(s.k.shard[sh], now, itoa(reapBatch),
				itoa(s.agentRetentionMS()), store.ReasonAgentRemoved(s.cfg.AgentRetention))}
		}
		var more []int
		for i, r := range s.runMulti(ctx, reapScript, execs) {
			arr, err := s.answer(ctx, r)
			if err != nil {
				return err
			}
			if msgInt(arr[1]) == 1 {
				more = append(more, shards[i])
			}
			for _, j := range msgStrs(arr[2]) {
				jobs[j] = true
			}
			if gone := msgStrs(arr[3]); len(gone) > 0 {
				// Off the agent list too (its own slot); should this fail, ListAgents
				// and dispatches skip an id whose record is gone.
				if err := s.client.Do(ctx, s.client.B().Zrem().Key(s.k.agents()).Member(gone...).Build()).Error(); err != nil {
					return s.wrap(ctx, err)
				}
				s.log.Info("removed agents unseen for the agent retention", "agents", len(gone), "retention", s.cfg.AgentRetention.String())
			}
		}
		shards = more
	}
	for j := range jobs {
		if err := s.advance(ctx, j); err != nil {
			return err
		}
	}
	if err := s.sweepAdvance(ctx, now, advanceDue); err != nil {
		return err
	}
	if err := s.sweepJobs(ctx, now, retainDue); err != nil {
		return err
	}
	return s.keepJobs(ctx)
}

// sweepAdvance advances rollout jobs whose turn has come (ids, read at now): the
// backstop for a crash between a task's end and its job's advance.
func (s *Store) sweepAdvance(ctx context.Context, now int64, ids []string) error {
	for _, id := range ids {
		// Claim the job's turn first (only the replica whose ZADD moved the score
		// advances it now); the others leave it.
		n, err := s.client.Do(ctx, s.client.B().Zadd().Key(s.k.jobsAdvance()).Xx().Gt().Ch().ScoreMember().
			ScoreMember(float64(now+advanceEvery.Milliseconds()), id).Build()).AsInt64()
		if err != nil {
			return s.wrap(ctx, err)
		}
		if n == 0 {
			continue
		}
		if err := s.advance(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// sweepJobs drops jobs past retention whose tasks are all gone (each task record
// is dropped by its shard's reap script once it has been finished for the
// retention). A job whose tasks live on is looked at again an hour later.
func (s *Store) sweepJobs(ctx context.Context, now int64, ids []string) error {
	for _, id := range ids {
		tasks, err := s.jobTaskIDs(ctx, id)
		if err != nil {
			return err
		}
		states, err := s.taskStates(ctx, tasks)
		if err != nil {
			return err
		}
		live := false
		for _, t := range states {
			live = live || t.exists
		}
		b := s.client.B()
		if live {
			err := s.client.Do(ctx, b.Zadd().Key(s.k.jobsRetain()).Xx().ScoreMember().ScoreMember(float64(now+3600_000), id).Build()).Error()
			if err != nil {
				return s.wrap(ctx, err)
			}
			continue
		}
		s.jobs.drop(id)
		idem, err := s.exec(ctx, dropJobScript, []string{s.k.job(id)}, nil).ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return s.wrap(ctx, err)
		}
		if idem != "" {
			if err := s.exec(ctx, delIfScript, []string{s.k.idem(idem)}, []string{id}).Error(); err != nil {
				return s.wrap(ctx, err)
			}
		}
		for _, r := range s.client.DoMulti(ctx,
			b.Zrem().Key(s.k.jobs()).Member(id).Build(),
			b.Zrem().Key(s.k.jobsAdvance()).Member(id).Build(),
			b.Zrem().Key(s.k.jobsRetain()).Member(id).Build(),
			b.Zrem().Key(s.k.jobsFinished()).Member(id).Build()) {
			if err := r.Error(); err != nil {
				return s.wrap(ctx, err)
			}
		}
	}
	return nil
}
