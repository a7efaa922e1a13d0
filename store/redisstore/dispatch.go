package redisstore

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// A fan-out is written in bounded pieces, so that a dispatch to every agent of a
// large fleet neither holds Redis nor queues far ahead of other callers'
// commands on the shared connections: a script creates or releases at most
// dispatchBatch tasks (of one shard), at most dispatchPipeline scripts go out
// per round trip, and while the tasks are created a round trip per node of
// Redis (at least 2, at most maxInFlight) is outstanding at once, so every
// master of a cluster works on the fan-out at the same time (runBatches; the
// release goes one round trip at a time).
const (
	dispatchBatch    = 256
	dispatchPipeline = 4
	maxInFlight      = 8
)

// dispatchBudget bounds the work of one fan-out Dispatch up to its commit, and
// then its release, each for a fan-out of up to budgetTasks tasks; a larger one
// gets budgetPerTask more per task beyond them, so a fan-out to a whole large
// fleet on a loaded Redis fits the time it needs rather than failing at a
// fixed bound (at 50,000 tasks: 2 minutes + 45 s). abandonKeyless is how long
// after it began the reaper abandons one without an idempotency key that never
// committed: well past the budget (see abandonAfter), so a slow dispatch is
// never abandoned under its own feet; its commit would fail anyway.
const (
	dispatchBudget = 2 * time.Minute
	budgetTasks    = 5000
	budgetPerTask  = time.Millisecond
	abandonKeyless = 10 * time.Minute
)

// budgetFor is the time a fan-out of n tasks may take up to its commit, and
// again for its release.
func budgetFor(n int) time.Duration {
	return dispatchBudget + time.Duration(max(n-budgetTasks, 0))*budgetPerTask
}

// abandonAfter is how long after it began an uncommitted fan-out of n tasks
// without an idempotency key is abandoned by the reaper: abandonKeyless, or
// three budgets for one so large that its budget comes near it.
func abandonAfter(n int) time.Duration {
	return max(abandonKeyless, 3*budgetFor(n))
}

// dispatchMany creates fan-out job jid, or, with resume, finishes creating it.
// It is all or resumable:
//
//  1. the job record is written, not committed (made 0; it expires unless
//     committed), with its task list and the payload — the only copy: the tasks
//     keep none (see fillContent) — and listed for the advancer at the time it
//     must be abandoned by unless committed (idemPending with an idempotency
//     key, abandonKeyless without);
//  2. the tasks are created held, in batches (createTasks);
//  3. the job is committed (jobCommitScript), listed, and its idempotency key
//     made permanent, in one round trip: from here on it is accepted;
//  4. its tasks are released in batches (a rollout's first max_concurrency, by
//     the advancer); should this fail, the reaper's advancer finishes it.
//
// A failure before the commit leaves nothing that runs. With an idempotency key,
// a retry takes the job up where it stopped; without one, the job is abandoned
// at once (or by the reaper) and its tasks end CANCELED. The error says which
// (store.ErrDispatchIncomplete).
func (s *Store) dispatchMany(ctx context.Context, spec store.JobSpec, match store.AgentMatcher, jid string, now int64, idemKey string, resume *jobRecord) (store.Job, error) {
	outer := ctx
	// Matching reads every agent the target may reach, so it gets the budget of
	// --max-targets of them (all when unlimited: budgetFor(0) then, as before).
	ctx, cancel := context.WithTimeout(outer, budgetFor(s.cfg.MaxTargets))
	defer cancel()
	var targets []target
	if resume != nil && resume.tasks != nil {
		// The record was written: its task list stands, whatever the target matches now.
		targets = targetsOf(resume.tasks)
	} else {
		ids, types, err := s.matchAgents(ctx, match, spec.Target.IncludeOffline, now)
		if store.KindOf(err) == store.KindUnavailable {
			return s.incomplete(ctx, jid, idemKey, err, false) // nothing written yet
		}
		if err != nil {
			return store.Job{}, err
		}
		if !spec.Queue {
			if err := store.CheckTaskType(spec.Type, types); err != nil {
				return store.Job{}, err
			}
		}
		targets = make([]target, len(ids))
		for i, a := range ids {
			targets[i] = target{jobTaskID(jid, a), a}
		}
	}
	// From here on the budget is the task count's.
	ctx, cancel = context.WithTimeout(outer, budgetFor(len(targets)))
	defer cancel()
	limited := spec.MaxConcurrency > 0 || spec.MaxFailures > 0
	abandonAt := now + abandonAfter(len(targets)).Milliseconds()
	if idemKey != "" {
		abandonAt = now + idemPending.Milliseconds()
	}
	fields := append(s.jobFields(spec, taskIDsOf(targets), now), "made", "0", "ab", itoa(abandonAt))
	stored, err := s.draftJob(ctx, jid, fields, abandonAt)
	if err != nil {
		return s.incomplete(ctx, jid, idemKey, err, false)
	}
	if stored != nil {
		targets = targetsOf(stored) // another attempt of this dispatch wrote it first
		fields = append(s.jobFields(spec, stored, now), "made", "0", "ab", itoa(abandonAt))
	}
	counts, err := s.createTasks(ctx, spec, jid, now, targets, createMode{limited: limited, hold: true, inJob: true})
	if err != nil {
		return s.incomplete(ctx, jid, idemKey, err, false)
	}
	if err := s.commitJob(ctx, jid, now, idemKey); err != nil {
		return s.incomplete(ctx, jid, idemKey, err, true)
	}
	// The job is accepted: its release gets a budget of its own (should it run
	// out, the reaper's advancer finishes the release).
	rctx, rcancel := context.WithTimeout(outer, budgetFor(len(targets)))
	defer rcancel()
	s.startJob(rctx, jid, limited, taskIDsOf(targets))
	return s.answerJob(jid, fields, counts), nil
}

// draftJob writes a fan-out's uncommitted job record unless it exists, and lists
// it for the advancer at abandonAt; one pipelined round trip. It returns the
// task list of a record that existed, or nil.
func (s *Store) draftJob(ctx context.Context, jid string, fields []string, abandonAt int64) ([]string, error) {
	b := s.client.B()
	args := append([]string{itoa(idemPending.Milliseconds() + time.Hour.Milliseconds())}, fields...)
	res := s.client.DoMulti(ctx,
		s.call(jobDraftScript, []string{s.k.job(jid)}, args),
		b.Zadd().Key(s.k.jobsAdvance()).Nx().ScoreMember().ScoreMember(float64(abandonAt), jid).Build())
	res[0] = s.recover(ctx, jobDraftScript, []string{s.k.job(jid)}, args, res[0])
	if err := res[1].Error(); err != nil {
		return nil, s.wrap(ctx, err)
	}
	arr, err := s.answer(ctx, res[0])
	if err != nil {
		return nil, err
	}
	if stored := msgStr(arr[1]); stored != fieldValue(fields, "tasks") {
		return splitIDs(stored), nil
	}
	return nil, nil
}

// errAbandoned is the cause of a commit refused because the job was abandoned.
var errAbandoned = fmt.Errorf("the job was abandoned before it was committed")

// commitJob commits a fan-out (jobCommitScript), lists it, makes its
// idempotency key permanent and puts it before the advancer soon (which
// finishes releasing its tasks should this Dispatch stop before it does): one
// pipelined round trip.
func (s *Store) commitJob(ctx context.Context, jid string, now int64, idemKey string) error {
	b := s.client.B()
	cmds := rueidis.Commands{
		s.call(jobCommitScript, []string{s.k.job(jid)}, nil),
		b.Zadd().Key(s.k.jobs()).ScoreMember().ScoreMember(0, jid).Build(),
		b.Zadd().Key(s.k.jobsRetain()).ScoreMember().ScoreMember(float64(now+s.cfg.Retention.Milliseconds()), jid).Build(),
		b.Zadd().Key(s.k.jobsAdvance()).ScoreMember().ScoreMember(float64(s.nowMS()+advanceEvery.Milliseconds()), jid).Build(),
	}
	if idemKey != "" {
		cmds = append(cmds, b.Persist().Key(idemKey).Build())
	}
	res := s.client.DoMulti(ctx, cmds...)
	res[0] = s.recover(ctx, jobCommitScript, []string{s.k.job(jid)}, nil, res[0])
	for _, r := range res {
		if err := r.Error(); err != nil {
			return s.wrap(ctx, err)
		}
	}
	v, err := res[0].ToString()
	if err != nil {
		return s.wrap(ctx, err)
	}
	switch v {
	case "made":
		return nil
	case "abandoned":
		return errAbandoned
	default:
		return fmt.Errorf("committing job %s: the record is %s", jid, v)
	}
}

// startJob releases a committed fan-out's tasks: all of them, in batches, and
// then takes it off the advancer's list; a rollout's first ones, through the
// advancer. A failure is logged: the job is accepted, and the reaper's advancer
// finishes the step.
func (s *Store) startJob(ctx context.Context, jid string, limited bool, taskIDs []string) {
	if limited {
		s.advanceAll(ctx, []string{jid})
		return
	}
	if err := s.releaseAll(ctx, jid, taskIDs); err != nil {
		s.log.Warn("releasing a job's tasks failed; the reaper will finish it", "job", jid, "err", err)
	}
}

// releaseAll releases every held task of a committed job without rollout limits
// and takes the job off the advancer's list.
func (s *Store) releaseAll(ctx context.Context, jid string, taskIDs []string) error {
	if _, err := s.perShard(ctx, releaseScript, taskIDs, nil); err != nil {
		return err
	}
	if err := s.client.Do(ctx, s.client.B().Zrem().Key(s.k.jobsAdvance()).Member(jid).Build()).Error(); err != nil {
		return s.wrap(ctx, err)
	}
	return nil
}

// incomplete answers a fan-out that failed with cause before it was known to be
// committed (commitUnknown: the commit itself failed, so it may have happened).
// With an idempotency key, a retry completes the job. Without one, the job is
// abandoned at once, so none of its tasks runs; if the commit turns out to have
// happened, the job is accepted after all: its tasks are released and it is
// answered. Should abandoning fail too, the reaper abandons it later — unless
// the commit may have happened, which the error then says.
func (s *Store) incomplete(ctx context.Context, jid, idemKey string, cause error, commitUnknown bool) (store.Job, error) {
	if idemKey != "" {
		return store.Job{}, store.ErrDispatchIncomplete(fmt.Sprintf(store.FmtDispatchResume, jid), cause)
	}
	state, err := s.abandonNow(ctx, jid)
	switch {
	case err == nil && state == "made":
		// The commit happened: the job is accepted. Answer it as it stands.
		job, gerr := s.GetJob(context.WithoutCancel(ctx), jid)
		if gerr != nil {
			return store.Job{}, store.ErrDispatchIncomplete(fmt.Sprintf(store.FmtDispatchUnknown, jid), cause)
		}
		s.startJob(context.WithoutCancel(ctx), jid, job.Spec.MaxConcurrency > 0 || job.Spec.MaxFailures > 0, job.TaskIDs)
		return job, nil
	case err != nil && commitUnknown:
		return store.Job{}, store.ErrDispatchIncomplete(fmt.Sprintf(store.FmtDispatchUnknown, jid), cause)
	}
	return store.Job{}, store.ErrDispatchIncomplete(store.MsgDispatchNotAccepted, cause)
}

// abandonNow abandons an uncommitted fan-out and ends its tasks, under a context
// of its own (the Dispatch's may be what ended). It answers what the job was
// found to be: "abandoned", "made" (committed: left as it is) or "gone".
func (s *Store) abandonNow(ctx context.Context, jid string) (string, error) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	state, err := s.exec(actx, jobAbandonScript, []string{s.k.job(jid)}, []string{store.ReasonDispatchIncomplete}).ToString()
	if err != nil {
		s.log.Warn("abandoning an incomplete dispatch failed; the reaper will", "job", jid, "err", err)
		return "", s.wrap(actx, err)
	}
	if state == "abandoned" {
		if err := s.finishAbandoned(actx, jid); err != nil {
			s.log.Warn("ending the tasks of an abandoned dispatch failed; the reaper will", "job", jid, "err", err)
		}
	}
	return state, nil
}

// finishAbandoned ends the tasks of an abandoned fan-out (none ever ran: they
// were held), frees its idempotency key, lists it so retention drops it in
// time, and takes it off the advancer's list. Each step is idempotent; the
// reaper repeats them until the last succeeds.
func (s *Store) finishAbandoned(ctx context.Context, jid string) error {
	vals, err := s.client.Do(ctx, s.client.B().Hmget().Key(s.k.job(jid)).Field("tasks", "idem", "ca").Build()).ToArray()
	if err != nil {
		return s.wrap(ctx, err)
	}
	tasks, _ := vals[0].ToString()
	idem, _ := vals[1].ToString()
	ca, _ := vals[2].ToString()
	if _, err := s.cancelTasks(ctx, splitIDs(tasks), store.CancelModeStop, store.ReasonDispatchIncomplete); err != nil {
		return err
	}
	b := s.client.B()
	if idem != "" {
		if err := s.exec(ctx, delIfScript, []string{s.k.idem(idem)}, []string{jid}).Error(); err != nil {
			return s.wrap(ctx, err)
		}
	}
	for _, r := range s.client.DoMulti(ctx,
		b.Zadd().Key(s.k.jobs()).ScoreMember().ScoreMember(0, jid).Build(),
		b.Zadd().Key(s.k.jobsRetain()).ScoreMember().ScoreMember(float64(atoi(ca)+s.cfg.Retention.Milliseconds()), jid).Build(),
		b.Zrem().Key(s.k.jobsAdvance()).Member(jid).Build()) {
		if err := r.Error(); err != nil {
			return s.wrap(ctx, err)
		}
	}
	return nil
}
