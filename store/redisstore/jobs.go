package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// advanceEvery is how long Reap's advancer leaves a live rollout job alone after
// looking at it; the job is normally advanced at once, by the call that ended one
// of its tasks, so this only bounds the delay after a crash between the two steps.
const advanceEvery = 10 * time.Second

// idemPending is how long an idempotency key claimed by a Dispatch lives before
// the Dispatch completes and makes it permanent. A retry with the key within it
// takes up the same job and finishes it; a key whose dispatch never completed is
// forgotten after it.
const idemPending = 24 * time.Hour

// jobTaskID returns the id of a job's task for an agent: the job id's time and
// random characters, so a retried dispatch names the same tasks, and the agent id,
// as store.NewTaskID makes them (a job has one task per agent).
func jobTaskID(jobID, agentID string) string { return "t" + jobID[1:] + "-" + agentID }

// Dispatch implements store.Store. A new dispatch to one agent without rollout
// limits (dispatchOneTrip) creates its task, in a script that checks the agent,
// and writes the job record in one pipelined round trip (three with an
// idempotency key: claiming it, then marking the record made once the task
// exists); other dispatches to one agent (dispatchOne) create the task
// first, then write the job record. A fan-out
// (dispatchMany, dispatch.go) writes the job record first and its tasks in
// bounded batches, held, and releases them only once the job is committed, so
// it is all or resumable. Both first claim the idempotency key (SET NX,
// expiring after idemPending).
//
// Every step is idempotent for a job id: task ids derive from the job id and
// the agent, an existing task is left alone, and an existing job record keeps its
// task list. So a Dispatch with an idempotency key that failed at any step (or
// whose replica died) is finished by a retry with the same key — one job, every
// task it lists created — and a retry while the first attempt still runs agrees
// with it. The key is freed only when the dispatch was refused before anything
// was written (an unknown, revoked or full agent; too many targets).
func (s *Store) Dispatch(ctx context.Context, spec store.JobSpec) (store.Job, error) {
	match, err := spec.Target.Matcher()
	if err != nil {
		return store.Job{}, err
	}
	now := s.nowMS()
	jid := spec.ID
	if jid == "" {
		jid = store.NewJobID()
	} else if !store.ValidJobID(jid) {
		return store.Job{}, store.ErrJobIDNotNew(jid)
	}
	var idemKey string
	var resume *jobRecord
	if spec.IdempotencyKey != "" {
		idemKey = s.k.idem(spec.IdempotencyKey)
		err := s.client.Do(ctx, s.client.B().Set().Key(idemKey).Value(jid).Nx().Px(idemPending).Build()).Error()
		if rueidis.IsRedisNil(err) {
			j, rec, err := s.existingJob(ctx, idemKey)
			if err != nil || rec == nil {
				return j, err
			}
			jid, resume = rec.id, rec
			if rec.createdAt > 0 {
				now = rec.createdAt
			}
		} else if err != nil {
			return store.Job{}, s.wrap(ctx, err)
		}
	}
	if spec.ID != "" && resume == nil {
		// A job id the caller chose (the server does, to sign it) must be new: a
		// repeat is known by its idempotency key, never by its id. One more
		// round trip, only for a chosen id.
		if err := s.jobIDFree(ctx, jid, idemKey); err != nil {
			return store.Job{}, err
		}
	}
	var job store.Job
	if spec.Target.AgentID != "" {
		job, err = s.dispatchOne(ctx, spec, jid, now, idemKey, resume)
	} else {
		job, err = s.dispatchMany(ctx, spec, match, jid, now, idemKey, resume)
	}
	if err != nil {
		if idemKey != "" && resume == nil && refusedBeforeWriting(err) {
			// Free the key for a corrected retry; should this fail, a retry meets
			// the same refusal until the key expires.
			if derr := s.exec(context.WithoutCancel(ctx), delIfScript, []string{idemKey}, []string{jid}).Error(); derr != nil {
				s.log.Warn("freeing the idempotency key of a refused dispatch failed; it expires by itself",
					"expires_in", idemPending.String(), "err", derr)
			}
		}
		return store.Job{}, err
	}
	job.Existing = resume != nil
	return job, nil
}

// jobIDFree refuses a chosen job id that names a job already, freeing the
// idempotency key this dispatch claimed for it.
func (s *Store) jobIDFree(ctx context.Context, jid, idemKey string) error {
	n, err := s.client.Do(ctx, s.client.B().Exists().Key(s.k.job(jid)).Build()).AsInt64()
	if err != nil {
		return s.wrap(ctx, err)
	}
	if n == 0 {
		return nil
	}
	if idemKey != "" {
		if derr := s.exec(context.WithoutCancel(ctx), delIfScript, []string{idemKey}, []string{jid}).Error(); derr != nil {
			s.log.Warn("freeing the idempotency key of a refused dispatch failed; it expires by itself",
				"expires_in", idemPending.String(), "err", derr)
		}
	}
	return store.ErrJobExists(jid)
}

// refusedBeforeWriting tells whether a dispatch error is a refusal made before
// anything was written: the create script of a single-agent dispatch refusing,
// or a fan-out reaching too many agents.
func refusedBeforeWriting(err error) bool {
	if store.IsDispatchIncomplete(err) {
		return false
	}
	switch store.KindOf(err) {
	case store.KindNotFound, store.KindPrecondition, store.KindExhausted, store.KindInvalid:
		return true
	}
	return false
}

// jobRecord is what a retried dispatch needs of the job its idempotency key names.
type jobRecord struct {
	id        string
	tasks     []string // nil when the record was not written
	createdAt int64
}

// existingJob answers a Dispatch whose idempotency key is taken: the job, when
// its dispatch completed; otherwise the record to take it up again from.
func (s *Store) existingJob(ctx context.Context, idemKey string) (store.Job, *jobRecord, error) {
	jid, err := s.client.Do(ctx, s.client.B().Get().Key(idemKey).Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return store.Job{}, nil, s.wrap(ctx, err)
	}
	if jid == "" {
		// Freed or dropped since the SET: this caller may claim it again.
		return store.Job{}, nil, store.Errorf(store.KindUnavailable, "a dispatch with this idempotency key just ended; retry")
	}
	vals, err := s.client.Do(ctx, s.client.B().Hmget().Key(s.k.job(jid)).Field("made", "tasks", "ca", "abandoned").Build()).ToArray()
	if err != nil {
		return store.Job{}, nil, s.wrap(ctx, err)
	}
	if ab, _ := vals[3].ToString(); ab == "1" {
		// Abandoned (its key is being freed): this caller may claim it again.
		return store.Job{}, nil, store.Errorf(store.KindUnavailable, "a dispatch with this idempotency key just ended; retry")
	}
	made, _ := vals[0].ToString()
	if made == "1" {
		j, err := s.GetJob(ctx, jid)
		if err != nil {
			return store.Job{}, nil, err
		}
		j.Existing = true
		return j, nil, nil
	}
	rec := &jobRecord{id: jid}
	if ca, err := vals[2].ToString(); err == nil {
		tasks, _ := vals[1].ToString()
		rec.tasks = splitIDs(tasks)
		if rec.tasks == nil {
			rec.tasks = []string{}
		}
		rec.createdAt = atoi(ca)
	}
	return store.Job{}, rec, nil
}

type target struct{ taskID, agentID string }

// dispatchOne creates job jid for one agent, or, with resume, finishes
// creating it: the task first (its script checks the agent and writes nothing
// when it refuses), with the payload in its own record, then, in one pipelined
// round trip, the job record (marked made), its listing and the idempotency key
// made permanent.
func (s *Store) dispatchOne(ctx context.Context, spec store.JobSpec, jid string, now int64, idemKey string, resume *jobRecord) (store.Job, error) {
	var targets []target
	if resume != nil && resume.tasks != nil {
		// The record was written: its task list stands.
		targets = targetsOf(resume.tasks)
	} else {
		if !store.ValidID(spec.Target.AgentID, 'a') {
			return store.Job{}, store.ErrAgentNotFound(spec.Target.AgentID)
		}
		targets = []target{{jobTaskID(jid, spec.Target.AgentID), spec.Target.AgentID}}
	}
	limited := spec.MaxConcurrency > 0 || spec.MaxFailures > 0
	if resume == nil && !limited {
		return s.dispatchOneTrip(ctx, spec, jid, now, idemKey, targets[0])
	}
	counts, err := s.createTasks(ctx, spec, jid, now, targets, createMode{limited: limited, hold: spec.MaxConcurrency > 0, single: true,
		checkType: !spec.Queue && (resume == nil || resume.tasks == nil)})
	var tu *typeUnhandledError
	if errors.As(err, &tu) {
		return store.Job{}, store.CheckTaskType(spec.Type, [][]string{tu.types})
	}
	if err != nil {
		return store.Job{}, err
	}
	fields := s.jobFields(spec, taskIDsOf(targets), now)
	// The job record (made: its task exists), its indexes and the idempotency
	// key: one round trip.
	if _, err := s.writeJob(ctx, jid, append(fields, "made", "1"), now, limited, idemKey); err != nil {
		return store.Job{}, s.unwriteOne(ctx, jid, targets, idemKey, err)
	}
	if resume != nil && resume.tasks != nil {
		// A record written before without the mark (it exists, so the write above left it).
		if err := s.client.Do(ctx, s.client.B().Hset().Key(s.k.job(jid)).FieldValue().FieldValue("made", "1").Build()).Error(); err != nil {
			return store.Job{}, s.wrap(ctx, err)
		}
	}
	if limited {
		// The job is accepted once its task exists; should this step fail, Reap's
		// advancer takes the job up (it is listed for it).
		s.advanceAll(ctx, []string{jid})
	}
	return s.answerJob(jid, fields, counts), nil
}

// unwriteOne answers a single-agent dispatch whose task exists but whose job
// record could not be written (Redis full, or gone): with an idempotency key a
// retry completes the same job; without one the task ends CANCELED at once
// ("dispatch did not complete"), so no task runs for a job that does not exist.
func (s *Store) unwriteOne(ctx context.Context, jid string, targets []target, idemKey string, cause error) error {
	if idemKey != "" {
		return store.ErrDispatchIncomplete(fmt.Sprintf(store.FmtDispatchResume, jid), cause)
	}
	if _, err := s.cancelTasks(context.WithoutCancel(ctx), taskIDsOf(targets), store.CancelModeJob, store.ReasonDispatchIncomplete); err != nil {
		return store.ErrDispatchIncomplete(fmt.Sprintf(store.FmtDispatchUnknown, jid), cause)
	}
	return store.ErrDispatchIncomplete(store.MsgDispatchNotAccepted, cause)
}

// dispatchOneTrip is dispatchOne's common case — a new job for one agent, no
// rollout limits — in one round trip: the task's script (which checks the
// agent), the job record and its listings go out pipelined, each to its own
// node on a cluster. When the script refuses (an unknown, revoked or full
// agent), it has created nothing, and the job record written beside it is
// taken away again: a second round trip on that path only, before which a
// ListJobs may see the record. When the script fails otherwise (a slot moving,
// Redis unreachable), the record stays, not made: the task may or may not
// exist, and the job is then as it would be after any partial dispatch.
//
// With an idempotency key, the record is marked made and the key made
// permanent only once the script has answered that the task exists, in a
// second round trip (the third of such a dispatch, after claiming the key):
// the record is written beside the script, not after it, so a mark written
// with it would answer a retry with a job whose task was never created.
func (s *Store) dispatchOneTrip(ctx context.Context, spec store.JobSpec, jid string, now int64, idemKey string, t target) (store.Job, error) {
	sh := shardOf(t.agentID)
	args := s.createArgs(spec, jid, now, sh, createMode{single: true, checkType: !spec.Queue}, []string{t.taskID, t.agentID})
	keys := []string{s.k.due(sh)}
	fields := s.jobFields(spec, []string{t.taskID}, now)
	b := s.client.B()
	cmds := rueidis.Commands{
		s.call(createTasksScript, keys, args),
		s.call(jobCreateScript, []string{s.k.job(jid)}, fields),
		b.Zadd().Key(s.k.jobs()).ScoreMember().ScoreMember(0, jid).Build(),
		b.Zadd().Key(s.k.jobsRetain()).ScoreMember().ScoreMember(float64(now+s.cfg.Retention.Milliseconds()), jid).Build(),
	}
	res := s.client.DoMulti(ctx, cmds...)
	res[0] = s.recover(ctx, createTasksScript, keys, args, res[0])
	res[1] = s.recover(ctx, jobCreateScript, []string{s.k.job(jid)}, fields, res[1])
	arr, err := s.answer(ctx, res[0])
	var tu *typeUnhandledError
	if errors.As(err, &tu) {
		err = store.CheckTaskType(spec.Type, [][]string{tu.types})
	}
	if err != nil {
		if refusedBeforeWriting(err) {
			s.unwriteJob(context.WithoutCancel(ctx), jid)
		}
		return store.Job{}, err
	}
	// The task exists: a job record or listing that could not be written
	// (Redis full, or gone) is answered as dispatchOne answers it.
	if _, err := s.answer(ctx, res[1]); err != nil {
		return store.Job{}, s.unwriteOne(ctx, jid, []target{t}, idemKey, err)
	}
	for _, r := range res[2:] {
		if err := r.Error(); err != nil {
			return store.Job{}, s.unwriteOne(ctx, jid, []target{t}, idemKey, s.wrap(ctx, err))
		}
	}
	if idemKey != "" {
		// The task exists: the job is made, and its key kept (existingJob).
		for _, r := range s.client.DoMulti(ctx,
			b.Hset().Key(s.k.job(jid)).FieldValue().FieldValue("made", "1").Build(),
			b.Persist().Key(idemKey).Build()) {
			if err := r.Error(); err != nil {
				return store.Job{}, s.unwriteOne(ctx, jid, []target{t}, idemKey, s.wrap(ctx, err))
			}
		}
	}
	var counts store.Counts
	if len(arr) > 1 {
		addCounts(&counts, pairs(arr[1]))
	}
	return s.answerJob(jid, fields, counts), nil
}

// unwriteJob takes away the record and listings of a job whose only task was
// refused; should it fail, retention drops them in time.
func (s *Store) unwriteJob(ctx context.Context, jid string) {
	b := s.client.B()
	for _, r := range s.client.DoMulti(ctx,
		b.Del().Key(s.k.job(jid)).Build(),
		b.Zrem().Key(s.k.jobs()).Member(jid).Build(),
		b.Zrem().Key(s.k.jobsRetain()).Member(jid).Build()) {
		if err := r.Error(); err != nil {
			s.log.Warn("taking away the job record of a refused dispatch failed; retention drops it", "job", jid, "err", err)
			return
		}
	}
}

// answerJob is the job a Dispatch answers: built from what was written and the
// counts the task scripts answered, not read back.
func (s *Store) answerJob(jid string, fields []string, counts store.Counts) store.Job {
	f := make(map[string]string, len(fields)/2)
	for i := 0; i+1 < len(fields); i += 2 {
		f[fields[i]] = fields[i+1]
	}
	job := s.jobs.put(decodeJob(jid, f)).view()
	job.Counts = counts
	return job
}

// createMode says how createTasks makes a job's tasks.
type createMode struct {
	limited bool // the job has rollout limits: the advancer looks after each end
	hold    bool // create them held (a rollout, or a fan-out not yet committed)
	single  bool // one agent: refuse an unknown, revoked or full one, creating nothing
	inJob   bool // the payload is in the job record only (a fan-out)
	// checkType refuses a single agent that does not handle the job's type
	// (store.CheckTaskType), creating nothing.
	checkType bool
}

// createTasks creates a job's tasks, one script per batch of at most
// dispatchBatch tasks of one shard, run with runBatches, and returns the job's
// counts as the scripts answered them.
func (s *Store) createTasks(ctx context.Context, spec store.JobSpec, jid string, now int64, targets []target, m createMode) (store.Counts, error) {
	var byShard [NumShards][]string
	for _, t := range targets {
		sh := shardOf(t.agentID)
		byShard[sh] = append(byShard[sh], t.taskID, t.agentID)
	}
	var execs []rueidis.LuaExec
	var shards []int
	for _, b := range interleave(&byShard, 2*dispatchBatch) {
		execs = append(execs, rueidis.LuaExec{Keys: []string{s.k.due(b.shard)}, Args: s.createArgs(spec, jid, now, b.shard, m, b.items)})
		shards = append(shards, b.shard)
	}
	// Each batch answers its shard's counts as they stand after it; batches of
	// one shard may end in any order, and the one that ended last has the most
	// tasks counted (n).
	last := map[int]map[string]string{}
	err := s.runBatches(ctx, createTasksScript, execs, true, func(i int, arr []rueidis.RedisMessage) {
		if len(arr) < 2 {
			return
		}
		f := pairs(arr[1])
		if prev, ok := last[shards[i]]; !ok || atoi(f["n"]) >= atoi(prev["n"]) {
			last[shards[i]] = f
		}
	})
	var counts store.Counts
	for _, f := range last {
		addCounts(&counts, f)
	}
	return counts, err
}

// shardBatch is a batch of one shard's items: task ids, or task id, agent id pairs.
type shardBatch struct {
	shard int
	items []string
}

// interleave cuts each shard's items into batches of at most size and orders
// them first batches of every shard, then second batches, and so on, so that
// the calls runBatches has in flight at once fall on many shards, and so on
// every master of a cluster.
func interleave(byShard *[NumShards][]string, size int) []shardBatch {
	var out []shardBatch
	for lo := 0; ; lo += size {
		more := false
		for sh, items := range byShard {
			if lo < len(items) {
				out = append(out, shardBatch{sh, items[lo:min(lo+size, len(items))]})
				more = true
			}
		}
		if !more {
			return out
		}
	}
}

// createArgs returns the ARGV of a createTasksScript call making the tasks of
// pairs (task id, agent id, ...), all in shard sh.
func (s *Store) createArgs(spec store.JobSpec, jid string, now int64, sh int, m createMode, pairs []string) []string {
	payload, sig := string(spec.Payload), encodeJobSig(spec.Sig)
	if m.inJob {
		payload, sig = "", ""
	}
	args := s.shardArgs(s.k.shard[sh], now, itoa(s.cfg.MaxPendingPerAgent), jid, spec.Type, payload,
		itoa(spec.MaxAttempts), ms(spec.Timeout), ms(spec.DeliveryTTL), flag(m.limited), flag(m.hold), flag(m.single),
		store.ReasonTimedOut(spec.Timeout), spec.DeliveryTTL.String(), flag(m.inJob), sig, flag(m.checkType))
	return append(args, pairs...)
}

// runBatches runs the calls of sc, dispatchPipeline to a round trip, handing
// each answer to each (with the call's index; never two at once); it stops at
// the first error. With parallel, up to inFlight round trips are outstanding
// at once (inParallel), so the masters of a cluster all work at once and none
// waits for a round to finish on the slowest; without, one round trip follows
// the other. Either way another caller's command waits in Redis behind at
// most the few calls outstanding.
//
// Creating a fan-out's held tasks runs in parallel: it wakes no agent.
// Releasing and cancelling do not: each released task wakes its agent, whose
// Poll, Lease and Report then compete with the release for the replicas and
// Redis. Measured at 5,000 agents over 5 replicas on the 2-core test machine, a
// release in parallel woke the whole fleet at once and overloaded it (Poll
// answers lost past their callers' deadlines, tasks back only after their
// lease ran out: all results after 49–63 s instead of 9–17 s); one round trip
// at a time paces the wake-ups at the rate the fleet's own traffic leaves room for.
func (s *Store) runBatches(ctx context.Context, sc *script, execs []rueidis.LuaExec, parallel bool, each func(int, []rueidis.RedisMessage)) error {
	var mu sync.Mutex
	trips := (len(execs) + dispatchPipeline - 1) / dispatchPipeline
	trip := func(ctx context.Context, trip int) error {
		lo := trip * dispatchPipeline
		for i, r := range s.runMulti(ctx, sc, execs[lo:min(lo+dispatchPipeline, len(execs))]) {
			arr, err := s.answer(ctx, r)
			if err != nil {
				return err
			}
			if each != nil {
				mu.Lock()
				each(lo+i, arr)
				mu.Unlock()
			}
		}
		return nil
	}
	if parallel {
		return s.inParallel(ctx, trips, trip)
	}
	for i := range trips {
		if err := trip(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// inFlight is how many fan-out round trips runBatches (and matchAgents) keep
// outstanding: one per node the client knows (a cluster's replicas included:
// they only raise the bound), at least 2 so a single Redis never idles between
// two, at most maxInFlight.
func (s *Store) inFlight() int {
	return min(max(2, len(s.client.Nodes())), maxInFlight)
}

// taskIDsOf returns the task ids of targets, in order.
func taskIDsOf(targets []target) []string {
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = t.taskID
	}
	return ids
}

// targetsOf returns the targets of a job's task list.
func targetsOf(taskIDs []string) []target {
	out := make([]target, 0, len(taskIDs))
	for _, id := range taskIDs {
		if a, ok := store.AgentOfTask(id); ok {
			out = append(out, target{id, a})
		}
	}
	return out
}

// jobFields returns the field, value pairs of a new job record. A field whose
// value is empty or zero is left out (its readers take a missing one as that),
// so a job record — kept as long as its tasks — holds only what it says; the
// rollout bookkeeping (rel, dp, dpf) is written only for a job with rollout
// limits, the one kind the advancer steps (jobStepScript). A single-agent
// job's target is its one task's agent, so it is not written (decodeJob).
func (s *Store) jobFields(spec store.JobSpec, taskIDs []string, now int64) []string {
	f := []string{"type", spec.Type, "ca", itoa(now), "tasks", strings.Join(taskIDs, " ")}
	if soloTarget(taskIDs) != spec.Target {
		tgt, _ := json.Marshal(spec.Target)
		f = append(f, "tgt", string(tgt))
	}
	for _, kv := range [...][2]string{
		{"pl", string(spec.Payload)}, {"to", ms(spec.Timeout)}, {"ttl", ms(spec.DeliveryTTL)},
		{"max", itoa(spec.MaxAttempts)}, {"mc", itoa(spec.MaxConcurrency)}, {"mf", itoa(spec.MaxFailures)},
		{"idem", spec.IdempotencyKey}, {"by", spec.CreatedBy}, {"js", encodeJobSig(spec.Sig)},
	} {
		if kv[1] != "" && kv[1] != "0" {
			f = append(f, kv[0], kv[1])
		}
	}
	if spec.MaxConcurrency > 0 || spec.MaxFailures > 0 {
		f = append(f, "rel", "0", "dp", "0", "dpf", "0")
	}
	return f
}

// writeJob writes a job record unless it exists, lists it, and makes its
// idempotency key permanent if given, pipelined: one round trip. It returns the
// task list of a record that existed (another attempt of the same dispatch wrote
// it), or nil.
func (s *Store) writeJob(ctx context.Context, jid string, fields []string, now int64, limited bool, persist string) ([]string, error) {
	b := s.client.B()
	cmds := rueidis.Commands{
		s.call(jobCreateScript, []string{s.k.job(jid)}, fields),
		b.Zadd().Key(s.k.jobs()).ScoreMember().ScoreMember(0, jid).Build(),
		b.Zadd().Key(s.k.jobsRetain()).ScoreMember().ScoreMember(float64(now+s.cfg.Retention.Milliseconds()), jid).Build(),
	}
	if limited {
		cmds = append(cmds, b.Zadd().Key(s.k.jobsAdvance()).ScoreMember().ScoreMember(float64(now+advanceEvery.Milliseconds()), jid).Build())
	}
	if persist != "" {
		cmds = append(cmds, b.Persist().Key(persist).Build())
	}
	res := s.client.DoMulti(ctx, cmds...)
	res[0] = s.recover(ctx, jobCreateScript, []string{s.k.job(jid)}, fields, res[0])
	for _, r := range res[1:] {
		if err := r.Error(); err != nil {
			return nil, s.wrap(ctx, err)
		}
	}
	arr, err := s.answer(ctx, res[0])
	if err != nil {
		return nil, err
	}
	stored := msgStr(arr[1])
	if stored == fieldValue(fields, "tasks") {
		return nil, nil
	}
	return splitIDs(stored), nil
}

// fieldValue returns the value of name in field, value pairs.
func fieldValue(fields []string, name string) string {
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == name {
			return fields[i+1]
		}
	}
	return ""
}

// matchAgents returns the agents a fan-out reaches — those match selects,
// not revoked, and online now unless includeOffline — in id order, with the
// task types each said it handles. It stops with ErrTooManyTargets once more
// than Config.MaxTargets match.
//
// Online agents are found through each shard's index of agents by last call
// ({P:sNN}:on), all 64 read in one pipelined round trip, so only agents seen
// lately are looked at, in every master at once; all of them (includeOffline)
// through the global agent list. Either way each candidate's record then
// decides, read in pipelined chunks of matchChunk with several chunks
// outstanding at once.
func (s *Store) matchAgents(ctx context.Context, match store.AgentMatcher, includeOffline bool, now int64) ([]string, [][]string, error) {
	ids, err := s.matchCandidates(ctx, includeOffline, now)
	if err != nil {
		return nil, nil, err
	}
	type found struct {
		id    string
		types []string
	}
	var (
		mu  sync.Mutex
		out []found
	)
	var chunks [][]string
	for lo := 0; lo < len(ids); lo += matchChunk {
		chunks = append(chunks, ids[lo:min(lo+matchChunk, len(ids))])
	}
	err = s.inParallel(ctx, len(chunks), func(ctx context.Context, c int) error {
		chunk := chunks[c]
		cmds := make(rueidis.Commands, len(chunk))
		for i, id := range chunk {
			cmds[i] = s.client.B().Hmget().Key(s.k.agent(id)).Field("labels", "rev", "seen", "pu", "name", "so", "types").Build()
		}
		var mine []found
		for i, r := range s.client.DoMulti(ctx, cmds...) {
			vals, err := r.ToArray()
			if err != nil {
				return s.wrap(ctx, err)
			}
			if len(vals) != 7 || !vals[1].IsNil() {
				continue // revoked (or malformed)
			}
			labelsJSON, err := vals[0].ToString()
			if err != nil {
				continue // unknown agent
			}
			var labels map[string]string
			_ = json.Unmarshal([]byte(labelsJSON), &labels) // see decodeAgent
			name, _ := vals[4].ToString()
			if !match.Matches(name, labels) {
				continue
			}
			seen, _ := vals[2].AsInt64()
			pu, _ := vals[3].AsInt64()
			so, _ := vals[5].ToString()
			if !includeOffline && s.status(false, so == "1", seen, pu, now) != store.AgentOnline {
				continue
			}
			var types []string
			if ty, _ := vals[6].ToString(); ty != "" && ty != "null" {
				_ = json.Unmarshal([]byte(ty), &types) // see decodeAgent
			}
			mine = append(mine, found{chunk[i], types})
		}
		mu.Lock()
		defer mu.Unlock()
		out = append(out, mine...)
		return store.CheckTargets(len(out), s.cfg.MaxTargets)
	})
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(out, func(a, b found) int { return strings.Compare(a.id, b.id) })
	agents := make([]string, len(out))
	typesOf := make([][]string, len(out))
	for i, f := range out {
		agents[i], typesOf[i] = f.id, f.types
	}
	return agents, typesOf, nil
}

// matchChunk is how many agent records matchAgents reads in one round trip.
const matchChunk = 1000

// matchCandidates returns the agents matchAgents looks at: every listed agent
// with includeOffline; otherwise those each shard's online index has seen
// since well before the online window began (an agent holding a Poll was seen
// when it began it, at most a poll hold ago, which is within the window; the
// margin covers clocks a little apart), each once.
func (s *Store) matchCandidates(ctx context.Context, includeOffline bool, now int64) ([]string, error) {
	if includeOffline {
		ids, err := s.client.Do(ctx, s.client.B().Zrange().Key(s.k.agents()).Min("0").Max("-1").Build()).AsStrSlice()
		if err != nil {
			return nil, s.wrap(ctx, err)
		}
		return ids, nil
	}
	since := strconv.FormatInt(now-2*s.cfg.OnlineWindow.Milliseconds()-time.Minute.Milliseconds(), 10)
	cmds := make(rueidis.Commands, NumShards)
	for sh := range cmds {
		cmds[sh] = s.client.B().Zrange().Key(s.k.online(sh)).Min(since).Max("+inf").Byscore().Build()
	}
	var ids []string
	for _, r := range s.client.DoMulti(ctx, cmds...) {
		part, err := r.AsStrSlice()
		if err != nil {
			return nil, s.wrap(ctx, err)
		}
		ids = append(ids, part...)
	}
	return ids, nil
}

// inParallel calls f for 0..n-1, with up to inFlight calls at once, and
// returns the first error, after which no new call starts (and the context
// the others were given ends).
func (s *Store) inParallel(ctx context.Context, n int, f func(context.Context, int) error) error {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	for range min(s.inFlight(), n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(ctx, i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// advance is the job advancer. It re-derives a rollout job's next step from
// stored state alone: the job's ordered task list, the length of its released
// prefix (rel), and a prefix known to be finished (dp, with dpf failures in it,
// so each pass reads only the tasks past it). It stops the job when max_failures
// is reached and releases held tasks while fewer than max_concurrency run. The
// bookkeeping moves by compare-and-set, so replicas advancing the same job at once
// never release more than the limit; releasing and cancelling are idempotent, so
// a crash between the bookkeeping and the task scripts is repaired by the next pass.
//
// It also finishes what a fan-out's Dispatch left undone (see dispatchMany): a
// committed job without rollout limits gets its held tasks released; one never
// committed is left alone until the time it must be abandoned by, then
// abandoned, its tasks ended.
func (s *Store) advance(ctx context.Context, jid string) error {
	for try := 0; try < 20; try++ {
		vals, err := s.client.Do(ctx, s.client.B().Hmget().Key(s.k.job(jid)).
			Field("mc", "mf", "rel", "dp", "dpf", "canceled", "crs", "tasks", "made", "abandoned", "ab", "ca").Build()).ToArray()
		if err != nil {
			return s.wrap(ctx, err)
		}
		str := func(i int) string { v, _ := vals[i].ToString(); return v }
		if str(11) == "" {
			return nil // the job is gone
		}
		mc, mf := int(atoi(str(0))), int(atoi(str(1)))
		rel, dp, dpf := int(atoi(str(2))), int(atoi(str(3))), int(atoi(str(4)))
		canceled, reason := str(5) == "1", str(6)
		ids := splitIDs(str(7))
		switch made, abandoned := str(8), str(9) == "1"; {
		case abandoned:
			return s.finishAbandoned(ctx, jid)
		case made == "0":
			// A fan-out not committed (made is unset on single-agent jobs and on
			// records older than fan-out commits, which are committed).
			if abandonAt := atoi(str(10)); s.nowMS() < abandonAt {
				if err := s.client.Do(ctx, s.client.B().Zadd().Key(s.k.jobsAdvance()).Xx().ScoreMember().ScoreMember(float64(abandonAt), jid).Build()).Error(); err != nil {
					return s.wrap(ctx, err)
				}
				return nil
			}
			state, err := s.exec(ctx, jobAbandonScript, []string{s.k.job(jid)}, []string{store.ReasonDispatchIncomplete}).ToString()
			if err != nil {
				return s.wrap(ctx, err)
			}
			if state == "made" {
				continue // committed after all: look again
			}
			s.log.Warn("abandoned a dispatch that never completed; its tasks end", "job", jid, "tasks", len(ids))
			return s.finishAbandoned(ctx, jid)
		case mc == 0 && mf == 0:
			return s.releaseAll(ctx, jid, ids)
		}
		dp = min(dp, len(ids))
		states, err := s.taskStates(ctx, ids[dp:])
		if err != nil {
			return err
		}
		at := func(i int) taskState { return states[i-dp] }
		newDP, newDPF := dp, dpf
		for newDP < len(ids) && at(newDP).gone() {
			if at(newDP).st.Failure() {
				newDPF++
			}
			newDP++
		}
		failures := dpf
		for i := dp; i < len(ids); i++ {
			if at(i).st.Failure() {
				failures++
			}
		}
		stop := !canceled && mf > 0 && failures >= mf
		if stop {
			reason = store.ReasonMaxFailures(int32(mf))
		}
		var release []string
		newRel := rel
		if !canceled && !stop && mc > 0 {
			active := 0
			for i := dp; i < len(ids); i++ {
				t := at(i)
				if t.gone() {
					continue
				}
				if i < rel {
					if t.held && t.st == store.StatePending {
						release = append(release, ids[i]) // released by a step that did not finish
					}
					active++
					continue
				}
				if active >= mc {
					break
				}
				release = append(release, ids[i])
				active++
				newRel = i + 1
			}
		}
		if newRel != rel || newDP != dp || newDPF != dpf || stop {
			r, err := s.exec(ctx, jobStepScript, []string{s.k.job(jid)},
				[]string{itoa(rel), itoa(dp), itoa(newRel), itoa(newDP), itoa(newDPF), flag(stop), reason}).ToInt64()
			if err != nil {
				return s.wrap(ctx, err)
			}
			if r == 0 {
				continue // another replica moved the job: look again
			}
			if r < 0 {
				return nil
			}
		}
		if _, err := s.perShard(ctx, releaseScript, release, nil); err != nil {
			return err
		}
		if stop || canceled {
			var pending []string
			for i := dp; i < len(ids); i++ {
				if t := at(i); t.exists && t.st == store.StatePending {
					pending = append(pending, ids[i])
				}
			}
			reason = store.OrDefault(reason, store.ReasonJobCanceled)
			// The tasks this ends are this job's: the job is stopped, so their ends
			// call for nothing more, and a later pass moves the finished prefix on.
			if _, err := s.cancelTasks(ctx, pending, store.CancelModeStop, reason); err != nil {
				return err
			}
		}
		if newDP == len(ids) {
			if err := s.client.Do(ctx, s.client.B().Zrem().Key(s.k.jobsAdvance()).Member(jid).Build()).Error(); err != nil {
				return s.wrap(ctx, err)
			}
		}
		return nil
	}
	return store.Errorf(store.KindUnavailable, "job %s is contended; retry", jid)
}

// advanceAll advances each job once; a failure is logged, not returned: the call
// that ended the task succeeded, and Reap's advancer will take the job up again.
func (s *Store) advanceAll(ctx context.Context, jobs []string) {
	seen := make(map[string]bool, len(jobs))
	for _, j := range jobs {
		if seen[j] {
			continue
		}
		seen[j] = true
		if err := s.advance(ctx, j); err != nil {
			s.log.Warn("advancing job failed; the reaper will retry", "job", j, "err", err)
		}
	}
}

// cancelTasks runs cancelScript in mode m over tasks of any shards and returns
// the jobs to advance (those whose rollout an ended task moves on).
func (s *Store) cancelTasks(ctx context.Context, taskIDs []string, m store.CancelMode, reason string) ([]string, error) {
	answers, err := s.perShard(ctx, cancelScript, taskIDs, []string{reason, itoa(m)})
	if err != nil {
		return nil, err
	}
	var jobs []string
	for _, arr := range answers {
		jobs = append(jobs, msgStrs(arr[1])...)
	}
	return jobs, nil
}

// perShard runs a shard script over task ids grouped by shard, with the given
// ARGV before the ids, and returns each call's answer or the first error. A
// shard's ids go in calls of at most dispatchBatch, run by runBatches one round
// trip after the other (they wake agents), so cancelling or releasing a whole
// fan-out holds Redis no longer than creating it.
func (s *Store) perShard(ctx context.Context, sc *script, taskIDs []string, pre []string) ([][]rueidis.RedisMessage, error) {
	if len(taskIDs) == 0 {
		return nil, nil
	}
	now := s.nowMS()
	var byShard [NumShards][]string
	for _, id := range taskIDs {
		a, ok := store.AgentOfTask(id)
		if !ok {
			continue
		}
		sh := shardOf(a)
		byShard[sh] = append(byShard[sh], id)
	}
	var execs []rueidis.LuaExec
	for _, b := range interleave(&byShard, dispatchBatch) {
		execs = append(execs, rueidis.LuaExec{Keys: []string{s.k.due(b.shard)}, Args: append(s.shardArgs(s.k.shard[b.shard], now, pre...), b.items...)})
	}
	answers := make([][]rueidis.RedisMessage, 0, len(execs))
	err := s.runBatches(ctx, sc, execs, false, func(_ int, arr []rueidis.RedisMessage) { answers = append(answers, arr) })
	return answers, err
}

// GetJob implements store.Store. A job this Store has seen before costs one
// round trip: its fixed part comes from the job cache, and its changing fields
// and per-shard counts are read together. Otherwise the record is read first.
func (s *Store) GetJob(ctx context.Context, id string) (store.Job, error) {
	if !store.ValidID(id, 'j') {
		return store.Job{}, store.ErrJobNotFound(id)
	}
	if e := s.jobs.get(id); e != nil {
		b := s.client.B()
		cmds := append(rueidis.Commands{b.Hmget().Key(s.k.job(id)).Field("ca", "canceled").Build()}, s.countReads(id, e)...)
		res := s.client.DoMulti(ctx, cmds...)
		vals, err := res[0].ToArray()
		if err != nil {
			return store.Job{}, s.wrap(ctx, err)
		}
		if len(vals) != 2 || vals[0].IsNil() {
			s.jobs.drop(id)
			return store.Job{}, store.ErrJobGone(id, time.UnixMilli(s.nowMS()), s.gone(ctx))
		}
		j := e.view()
		j.Canceled = msgStr(vals[1]) == "1"
		if j.Counts, err = s.sumCounts(ctx, e, res[1:]); err != nil {
			return store.Job{}, err
		}
		return j, nil
	}
	f, err := s.client.Do(ctx, s.client.B().Hgetall().Key(s.k.job(id)).Build()).AsStrMap()
	if err != nil {
		return store.Job{}, s.wrap(ctx, err)
	}
	if len(f) == 0 {
		return store.Job{}, store.ErrJobGone(id, time.UnixMilli(s.nowMS()), s.gone(ctx))
	}
	e := s.jobs.put(decodeJob(id, f))
	j := e.view()
	j.Canceled = f["canceled"] == "1"
	counts, err := s.jobCounts(ctx, id, e)
	if err != nil {
		return store.Job{}, err
	}
	j.Counts = counts
	return j, nil
}

// decodeJob decodes a job record, all but its counts.
func decodeJob(id string, f map[string]string) store.Job {
	j := store.Job{
		ID: id,
		Spec: store.JobSpec{
			Type:           f["type"],
			Timeout:        msDur(f["to"]),
			DeliveryTTL:    msDur(f["ttl"]),
			MaxAttempts:    int32(atoi(f["max"])),
			MaxConcurrency: int32(atoi(f["mc"])),
			MaxFailures:    int32(atoi(f["mf"])),
			IdempotencyKey: f["idem"],
			CreatedBy:      f["by"],
		},
		TaskIDs:   splitIDs(f["tasks"]),
		Canceled:  f["canceled"] == "1",
		CreatedAt: msTime(f["ca"]),
	}
	if p := f["pl"]; p != "" {
		j.Spec.Payload = []byte(p)
	}
	if tgt, ok := f["tgt"]; ok {
		_ = json.Unmarshal([]byte(tgt), &j.Spec.Target) // written by jobFields from a Target
	} else {
		j.Spec.Target = soloTarget(j.TaskIDs)
	}
	j.Spec.Sig = decodeJobSig(f["js"])
	return j
}

// soloTarget is the target of a single-agent job with this task list, which
// its record leaves out (jobFields): its one task's agent. Any other task list
// has none (the zero Target, which no dispatch has).
func soloTarget(taskIDs []string) store.Target {
	if len(taskIDs) != 1 {
		return store.Target{}
	}
	a, _ := store.AgentOfTask(taskIDs[0])
	return store.Target{AgentID: a}
}

// jobCounts sums the per-shard counts of a job's tasks: one read per shard the
// job reaches, however many tasks it has. Each shard's counts change in the same
// script as the task states they count, so they are exact.
func (s *Store) jobCounts(ctx context.Context, jid string, e *cachedJob) (store.Counts, error) {
	cmds := s.countReads(jid, e)
	if len(cmds) == 0 {
		return store.Counts{}, nil
	}
	return s.sumCounts(ctx, e, s.client.DoMulti(ctx, cmds...))
}

// countReads returns the reads of a job's counts (summed by sumCounts): its
// counts in each shard its tasks are in (jc), or, for a single-agent job, its
// one task's state. Such a job's counts are always that task in its state, so
// they are read from the task and not kept (moved, in scripts.go): a task of
// one writes no jc, and one written by an earlier version, which kept them,
// goes when the task ends. A finished single-agent job keeps two keys, its
// record and its task's.
func (s *Store) countReads(jid string, e *cachedJob) rueidis.Commands {
	b := s.client.B()
	if e.solo != "" {
		a, _ := store.AgentOfTask(e.solo)
		return rueidis.Commands{b.Hget().Key(s.k.task(a, e.solo)).Field("st").Build()}
	}
	cmds := make(rueidis.Commands, 0, len(e.shards))
	for _, sh := range e.shards {
		cmds = append(cmds, b.Hgetall().Key(s.k.jobCounts(sh, jid)).Build())
	}
	return cmds
}

// sumCounts sums the answers to countReads(_, e). A single-agent job counts
// its task in its state, and nothing once the task is gone (as its jc did).
func (s *Store) sumCounts(ctx context.Context, e *cachedJob, res []rueidis.RedisResult) (store.Counts, error) {
	var c store.Counts
	if e.solo != "" {
		st, err := res[0].ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return c, s.wrap(ctx, err)
		}
		if st != "" {
			c.Add(store.TaskState(atoi(st)), 1)
		}
		return c, nil
	}
	for _, r := range res {
		f, err := r.AsStrMap()
		if err != nil {
			return c, s.wrap(ctx, err)
		}
		addCounts(&c, f)
	}
	return c, nil
}

// addCounts adds one shard's counts of a job (its jc hash) to c.
func addCounts(c *store.Counts, f map[string]string) {
	for st := store.StatePending; st <= store.StateLost; st++ {
		if n := atoi(f[itoa(st)]); n > 0 {
			c.Add(st, int(n))
		}
	}
}

// ListJobs implements store.Store: newest first, from the job list; the page
// token is the last job id of the page.
func (s *Store) ListJobs(ctx context.Context, page store.Page) ([]store.Job, string, error) {
	size := store.PageSize(page.Size)
	maxLex := "+"
	if page.Token != "" {
		maxLex = "(" + page.Token
	}
	ids, err := s.client.Do(ctx, s.client.B().Zrange().Key(s.k.jobs()).Min(maxLex).Max("-").Bylex().Rev().Limit(0, int64(size+1)).Build()).AsStrSlice()
	if err != nil {
		return nil, "", s.wrap(ctx, err)
	}
	next := ""
	if len(ids) > size {
		ids = ids[:size]
		next = ids[size-1]
	}
	out := make([]store.Job, 0, len(ids))
	for _, id := range ids {
		j, err := s.GetJob(ctx, id)
		if store.KindOf(err) == store.KindNotFound {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		out = append(out, j)
	}
	return out, next, nil
}

// CancelJob implements store.Store.
func (s *Store) CancelJob(ctx context.Context, id, reason string) (store.Job, error) {
	if !store.ValidID(id, 'j') {
		return store.Job{}, store.ErrJobNotFound(id)
	}
	reason = store.OrDefault(reason, store.ReasonJobCanceled)
	vals, err := s.client.Do(ctx, s.client.B().Hmget().Key(s.k.job(id)).Field("tasks", "canceled", "ca").Build()).ToArray()
	if err != nil {
		return store.Job{}, s.wrap(ctx, err)
	}
	if ca, _ := vals[2].ToString(); ca == "" {
		return store.Job{}, store.ErrJobNotFound(id)
	}
	tasks, _ := vals[0].ToString()
	if c, _ := vals[1].ToString(); c != "1" {
		if err := s.exec(ctx, jobCancelScript, []string{s.k.job(id)}, []string{reason}).Error(); err != nil {
			return store.Job{}, s.wrap(ctx, err)
		}
	}
	jobs, err := s.cancelTasks(ctx, splitIDs(tasks), store.CancelModeJob, reason)
	if err != nil {
		return store.Job{}, err
	}
	s.advanceAll(ctx, append(jobs, id))
	return s.GetJob(ctx, id)
}
