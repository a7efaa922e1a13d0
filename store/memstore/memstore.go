// Package memstore is the in-memory Store: the embedded default of `forge server`,
// with the same semantics as the Redis store (both pass store/storetest). State is
// lost when the process exits.
package memstore

import (
	"context"
	"crypto/subtle"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/orange-forge/forge/store"
)

// Store is an in-memory store.Store. One mutex guards everything: every operation
// is short, and waiting is done outside it through the Hub.
type Store struct {
	cfg store.Config
	hub *store.Hub

	mu     sync.Mutex
	agents map[string]*agent
	tasks  map[string]*task
	live   map[string]*task // PENDING and RUNNING tasks, for Reap
	jobs   map[string]*job
	idem   map[string]string // idempotency key -> job id
	enroll map[string]*store.EnrollmentToken
	closed bool
}

type agent struct {
	store.Agent
	cur, next []byte
	queue     []*task          // released PENDING tasks, oldest first
	running   map[string]*task // RUNNING tasks by id
	tasks     []string         // every retained task id, oldest first
	gen       int64            // poll generation
	pollUntil time.Time        // when the newest Poll's hold ends
}

type task struct {
	store.Task
	cancelDelivered bool
	reported        bool
	reportedOutcome store.Outcome
}

type job struct {
	store.Job
	held     []*task // tasks waiting for a concurrency slot, in order
	active   int     // released, not yet terminal
	failures int
}

var _ store.Store = (*Store)(nil)

// New returns an empty Store.
func New(cfg store.Config) *Store {
	return &Store{
		cfg:    cfg.WithDefaults(),
		hub:    store.NewHub(),
		agents: make(map[string]*agent),
		tasks:  make(map[string]*task),
		live:   make(map[string]*task),
		jobs:   make(map[string]*job),
		idem:   make(map[string]string),
		enroll: make(map[string]*store.EnrollmentToken),
	}
}

func (s *Store) now() time.Time { return s.cfg.Clock.Now() }

// lock takes the mutex unless the store is closed or ctx is done.
func (s *Store) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return store.Wrap(store.KindUnavailable, err, "request cancelled")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return store.Errorf(store.KindUnavailable, "store is closed")
	}
	return nil
}

// ---- agents ----

// RegisterAgent implements store.Store.
func (s *Store) RegisterAgent(ctx context.Context, p store.RegisterParams) (store.Agent, error) {
	if err := s.lock(ctx); err != nil {
		return store.Agent{}, err
	}
	defer s.mu.Unlock()
	now := s.now()
	if p.Enrollment != nil {
		t, err := s.checkEnrollment(p.Enrollment.ID, p.Enrollment.SecretHash, now)
		if err != nil {
			return store.Agent{}, err
		}
		t.Uses++
	}
	a := &agent{
		Agent: store.Agent{
			ID:           store.NewAgentID(),
			Name:         p.Name,
			Hostname:     p.Hostname,
			Version:      p.Version,
			Labels:       cloneMap(p.Labels),
			TaskTypes:    slices.Clone(p.TaskTypes),
			RegisteredAt: now,
			LastSeenAt:   now,
		},
		cur:     slices.Clone(p.SecretHash),
		running: make(map[string]*task),
	}
	s.agents[a.ID] = a
	return s.agentView(a, now), nil
}

// auth finds the agent of a credential; the caller holds the lock.
func (s *Store) auth(c store.Cred) (*agent, error) {
	a := s.agents[c.AgentID]
	if a == nil || !a.RevokedAt.IsZero() || len(c.SecretHash) == 0 {
		return nil, store.Errorf(store.KindUnauthenticated, "agent token is not valid")
	}
	if subtle.ConstantTimeCompare(a.cur, c.SecretHash) == 1 {
		return a, nil
	}
	if a.next != nil && subtle.ConstantTimeCompare(a.next, c.SecretHash) == 1 {
		a.cur, a.next = a.next, nil
		return a, nil
	}
	return nil, store.Errorf(store.KindUnauthenticated, "agent token is not valid")
}

// AuthenticateAgent implements store.Store.
func (s *Store) AuthenticateAgent(ctx context.Context, c store.Cred) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	_, err := s.auth(c)
	return err
}

// RotateAgentToken implements store.Store.
func (s *Store) RotateAgentToken(ctx context.Context, c store.Cred, newSecretHash []byte) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	a, err := s.auth(c)
	if err != nil {
		return err
	}
	a.next = slices.Clone(newSecretHash)
	return nil
}

func (s *Store) status(a *agent, now time.Time) store.AgentStatus {
	switch {
	case !a.RevokedAt.IsZero():
		return store.AgentRevoked
	case now.Sub(a.LastSeenAt) < s.cfg.OnlineWindow || now.Before(a.pollUntil):
		return store.AgentOnline
	default:
		return store.AgentOffline
	}
}

func (s *Store) agentView(a *agent, now time.Time) store.Agent {
	v := a.Agent
	v.Labels = cloneMap(a.Labels)
	v.TaskTypes = slices.Clone(a.TaskTypes)
	v.Status = s.status(a, now)
	v.Pending = len(a.queue)
	v.Running = nil
	for _, t := range a.running {
		v.Running = append(v.Running, t.Ref())
	}
	slices.SortFunc(v.Running, func(x, y store.TaskRef) int { return strings.Compare(x.TaskID, y.TaskID) })
	return v
}

// GetAgent implements store.Store.
func (s *Store) GetAgent(ctx context.Context, id string) (store.Agent, error) {
	if err := s.lock(ctx); err != nil {
		return store.Agent{}, err
	}
	defer s.mu.Unlock()
	a := s.agents[id]
	if a == nil {
		return store.Agent{}, store.Errorf(store.KindNotFound, "agent %q not found", id)
	}
	return s.agentView(a, s.now()), nil
}

// ListAgents implements store.Store.
func (s *Store) ListAgents(ctx context.Context, f store.AgentFilter) ([]store.Agent, string, error) {
	if err := s.lock(ctx); err != nil {
		return nil, "", err
	}
	defer s.mu.Unlock()
	now := s.now()
	ids := make([]string, 0, len(s.agents))
	for id := range s.agents {
		if id > f.Token {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	size := pageSize(f.Size)
	var out []store.Agent
	for _, id := range ids {
		a := s.agents[id]
		if !f.Selector.Matches(a.Labels) {
			continue
		}
		if f.Status != store.AgentUnspecified && s.status(a, now) != f.Status {
			continue
		}
		if len(out) == size {
			return out, out[len(out)-1].ID, nil
		}
		out = append(out, s.agentView(a, now))
	}
	return out, "", nil
}

// RevokeAgent implements store.Store.
func (s *Store) RevokeAgent(ctx context.Context, id, reason string) (store.Agent, error) {
	if err := s.lock(ctx); err != nil {
		return store.Agent{}, err
	}
	defer s.mu.Unlock()
	a := s.agents[id]
	if a == nil {
		return store.Agent{}, store.Errorf(store.KindNotFound, "agent %q not found", id)
	}
	now := s.now()
	if a.RevokedAt.IsZero() {
		a.RevokedAt = now
		a.cur, a.next = nil, nil
		if reason == "" {
			reason = "agent revoked"
		} else {
			reason = "agent revoked: " + reason
		}
		for _, t := range slices.Clone(a.queue) {
			s.end(t, store.StateCanceled, reason, now)
		}
		for _, t := range a.running {
			s.end(t, store.StateCanceled, reason, now)
		}
		// Held tasks of rollout jobs would otherwise be released to a revoked agent.
		for _, tid := range a.tasks {
			if t := s.tasks[tid]; t != nil && t.Held {
				s.end(t, store.StateCanceled, reason, now)
			}
		}
		s.hub.Notify(store.AgentKey(id))
	}
	return s.agentView(a, now), nil
}

// ---- agent calls ----

// Lease implements store.Store.
func (s *Store) Lease(ctx context.Context, p store.LeaseParams) (store.LeaseResult, error) {
	if err := s.lock(ctx); err != nil {
		return store.LeaseResult{}, err
	}
	defer s.mu.Unlock()
	a, err := s.auth(p.Cred)
	if err != nil {
		return store.LeaseResult{}, err
	}
	now := s.now()
	a.LastSeenAt = now
	if p.Gen == 0 {
		a.gen++
		if now.Before(a.pollUntil) {
			// An older Poll may still be held: wake it so it finds itself superseded.
			s.hub.Notify(store.AgentKey(a.ID))
		}
		a.pollUntil = now.Add(p.Hold)
	} else if p.Gen != a.gen {
		return store.LeaseResult{Gen: p.Gen, Superseded: true}, nil
	}
	res := store.LeaseResult{Gen: a.gen}
	for len(res.Tasks) < p.Max && len(a.queue) > 0 {
		t := a.queue[0]
		a.queue = a.queue[1:]
		if !now.Before(t.DeliverBy) {
			s.expire(t, now)
			continue
		}
		t.Attempt++
		t.LeaseExpiresAt = now.Add(p.Lease)
		t.Deadline = now.Add(t.Timeout)
		s.setState(t, store.StateRunning, fmt.Sprintf("leased (attempt %d)", t.Attempt), now)
		a.running[t.ID] = t
		res.Tasks = append(res.Tasks, t.clone())
	}
	for _, t := range a.running {
		if t.CancelRequested && !t.cancelDelivered {
			t.cancelDelivered = true
			res.Cancels = append(res.Cancels, t.Ref())
		}
	}
	if len(res.Tasks) > 0 || len(res.Cancels) > 0 {
		a.pollUntil = time.Time{} // this Poll is answered now
	}
	return res, nil
}

// Heartbeat implements store.Store.
func (s *Store) Heartbeat(ctx context.Context, p store.HeartbeatParams) (store.HeartbeatResult, error) {
	if err := s.lock(ctx); err != nil {
		return store.HeartbeatResult{}, err
	}
	defer s.mu.Unlock()
	a, err := s.auth(p.Cred)
	if err != nil {
		return store.HeartbeatResult{}, err
	}
	now := s.now()
	a.LastSeenAt = now
	var res store.HeartbeatResult
	for _, r := range p.Running {
		t := a.running[r.TaskID]
		if t == nil || t.Attempt != r.Attempt {
			res.Abandon = append(res.Abandon, r)
			continue
		}
		if exp := now.Add(p.Lease); exp.After(t.LeaseExpiresAt) {
			t.LeaseExpiresAt = exp
		}
		if t.CancelRequested {
			t.cancelDelivered = true
			res.Cancel = append(res.Cancel, r)
		}
	}
	return res, nil
}

// Report implements store.Store.
func (s *Store) Report(ctx context.Context, p store.ReportParams) (store.TaskState, error) {
	if err := s.lock(ctx); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	a, err := s.auth(p.Cred)
	if err != nil {
		return 0, err
	}
	now := s.now()
	a.LastSeenAt = now
	t := s.tasks[p.TaskID]
	if t == nil || t.AgentID != a.ID {
		return 0, store.Errorf(store.KindNotFound, "task %q not found", p.TaskID)
	}
	if p.Outcome != store.OutcomeSucceeded && p.Outcome != store.OutcomeFailed {
		return 0, store.Errorf(store.KindInvalid, "outcome must be OUTCOME_SUCCEEDED or OUTCOME_FAILED")
	}
	if t.State.Terminal() {
		if t.reported && t.Attempt == p.Attempt && t.reportedOutcome == p.Outcome && t.ExitCode == p.ExitCode {
			return t.State, nil
		}
		if t.Attempt != p.Attempt {
			return 0, store.Errorf(store.KindPrecondition, "attempt %d of task %q is stale: the task ended %s at attempt %d", p.Attempt, t.ID, t.State, t.Attempt)
		}
		return 0, store.Errorf(store.KindPrecondition, "task %q already ended %s", t.ID, t.State)
	}
	if t.State != store.StateRunning || t.Attempt != p.Attempt {
		return 0, store.Errorf(store.KindPrecondition, "attempt %d of task %q is stale: the current attempt is %d (%s)", p.Attempt, t.ID, t.Attempt, t.State)
	}
	t.Output = slices.Clone(p.Output)
	t.OutputTruncated = p.OutputTruncated
	t.OutputSize = p.OutputSize
	if t.OutputSize < int64(len(p.Output)) {
		t.OutputSize = int64(len(p.Output))
	}
	t.ExitCode = p.ExitCode
	t.Error = p.Error
	t.reported = true
	t.reportedOutcome = p.Outcome
	state, reason := store.StateSucceeded, "reported succeeded"
	if p.Outcome == store.OutcomeFailed {
		state, reason = store.StateFailed, "reported failed"
	}
	switch {
	case t.TimedOut:
		state, reason = store.StateTimedOut, t.CancelReason+" ("+reason+")"
	case t.CancelRequested:
		state, reason = store.StateCanceled, t.CancelReason+" ("+reason+")"
	}
	s.end(t, state, reason, now)
	return state, nil
}

// ---- tasks and jobs ----

// Dispatch implements store.Store.
func (s *Store) Dispatch(ctx context.Context, spec store.JobSpec) (store.Job, error) {
	sel, err := store.ParseSelector(spec.Target.Selector)
	if err != nil {
		return store.Job{}, err
	}
	if err := s.lock(ctx); err != nil {
		return store.Job{}, err
	}
	defer s.mu.Unlock()
	now := s.now()
	if spec.IdempotencyKey != "" {
		if id, ok := s.idem[spec.IdempotencyKey]; ok {
			if j := s.jobs[id]; j != nil {
				v := s.jobView(j)
				v.Existing = true
				return v, nil
			}
		}
	}
	var targets []*agent
	switch {
	case spec.Target.AgentID != "":
		a := s.agents[spec.Target.AgentID]
		if a == nil {
			return store.Job{}, store.Errorf(store.KindNotFound, "agent %q not found", spec.Target.AgentID)
		}
		if !a.RevokedAt.IsZero() {
			return store.Job{}, store.Errorf(store.KindPrecondition, "agent %q is revoked", a.ID)
		}
		if len(a.queue) >= s.cfg.MaxPendingPerAgent {
			return store.Job{}, store.Errorf(store.KindExhausted, "agent %q already has %d pending tasks (the limit)", a.ID, len(a.queue))
		}
		targets = []*agent{a}
	default:
		for _, a := range s.agents {
			if a.RevokedAt.IsZero() && sel.Matches(a.Labels) &&
				(spec.Target.IncludeOffline || s.status(a, now) == store.AgentOnline) {
				targets = append(targets, a)
			}
		}
		slices.SortFunc(targets, func(x, y *agent) int { return strings.Compare(x.ID, y.ID) })
	}
	j := &job{Job: store.Job{ID: store.NewJobID(), Spec: spec, CreatedAt: now}}
	j.Spec.Payload = slices.Clone(spec.Payload)
	s.jobs[j.ID] = j
	if spec.IdempotencyKey != "" {
		s.idem[spec.IdempotencyKey] = j.ID
	}
	for _, a := range targets {
		t := &task{Task: store.Task{
			ID:          store.NewTaskID(a.ID),
			JobID:       j.ID,
			AgentID:     a.ID,
			Type:        spec.Type,
			Payload:     j.Spec.Payload,
			MaxAttempts: spec.MaxAttempts,
			Timeout:     spec.Timeout,
			DeliveryTTL: spec.DeliveryTTL,
			CreatedAt:   now,
		}}
		t.setState(store.StatePending, "dispatched", now)
		s.tasks[t.ID] = t
		s.live[t.ID] = t
		a.tasks = append(a.tasks, t.ID)
		j.TaskIDs = append(j.TaskIDs, t.ID)
		switch {
		case len(a.queue) >= s.cfg.MaxPendingPerAgent:
			s.end(t, store.StateCanceled, fmt.Sprintf("agent's queue is full (%d pending tasks, the limit)", len(a.queue)), now)
		case spec.MaxConcurrency > 0 && j.active >= int(spec.MaxConcurrency):
			t.Held = true
			j.held = append(j.held, t)
		default:
			s.release(j, t, now)
		}
	}
	s.hub.Notify(store.JobKey(j.ID))
	return s.jobView(j), nil
}

// release puts a task in its agent's queue.
func (s *Store) release(j *job, t *task, now time.Time) {
	t.Held = false
	t.DeliverBy = now.Add(t.DeliveryTTL)
	j.active++
	a := s.agents[t.AgentID]
	a.queue = append(a.queue, t)
	s.hub.Notify(store.AgentKey(a.ID))
}

func (t *task) setState(st store.TaskState, reason string, now time.Time) {
	t.State = st
	t.UpdatedAt = now
	t.History = append(t.History, store.StateChange{State: st, At: now, Reason: reason, Attempt: t.Attempt})
}

func (s *Store) setState(t *task, st store.TaskState, reason string, now time.Time) {
	t.setState(st, reason, now)
	s.hub.Notify(store.TaskKey(t.ID), store.JobKey(t.JobID))
}

func (s *Store) expire(t *task, now time.Time) {
	s.end(t, store.StateExpired, fmt.Sprintf("not picked up within its delivery TTL (%s)", t.DeliveryTTL), now)
}

// end moves a live task to a terminal state and does the job's bookkeeping.
func (s *Store) end(t *task, st store.TaskState, reason string, now time.Time) {
	if t.State.Terminal() {
		return
	}
	a := s.agents[t.AgentID]
	wasReleased := !t.Held
	if t.State == store.StatePending && !t.Held {
		if i := slices.Index(a.queue, t); i >= 0 {
			a.queue = slices.Delete(a.queue, i, i+1)
		}
	}
	delete(a.running, t.ID)
	delete(s.live, t.ID)
	t.Held = false
	t.LeaseExpiresAt = time.Time{}
	if t.Error == "" && st != store.StateSucceeded && st != store.StateFailed {
		t.Error = reason
	}
	s.setState(t, st, reason, now)
	j := s.jobs[t.JobID]
	if j == nil {
		return
	}
	if wasReleased {
		j.active--
	} else if i := slices.Index(j.held, t); i >= 0 {
		j.held = slices.Delete(j.held, i, i+1)
	}
	switch st {
	case store.StateFailed, store.StateTimedOut, store.StateLost, store.StateExpired:
		j.failures++
	}
	s.advance(j, now)
}

// advance applies a job's rollout limits: stop on max_failures, then release held
// tasks while slots are free.
func (s *Store) advance(j *job, now time.Time) {
	if mf := int(j.Spec.MaxFailures); mf > 0 && j.failures >= mf && !j.Canceled {
		s.stopJob(j, fmt.Sprintf("job stopped: max_failures (%d) reached", mf), now)
	}
	if j.Canceled {
		return
	}
	for len(j.held) > 0 && (j.Spec.MaxConcurrency <= 0 || j.active < int(j.Spec.MaxConcurrency)) {
		t := j.held[0]
		j.held = j.held[1:]
		s.release(j, t, now)
	}
}

// stopJob marks the job stopped and ends every task of it that has not started.
func (s *Store) stopJob(j *job, reason string, now time.Time) {
	j.Canceled = true
	for _, id := range j.TaskIDs { // held tasks are PENDING too
		if t := s.tasks[id]; t != nil && t.State == store.StatePending {
			s.end(t, store.StateCanceled, reason, now)
		}
	}
}

func (s *Store) jobView(j *job) store.Job {
	v := j.Job
	v.TaskIDs = slices.Clone(j.TaskIDs)
	v.Spec.Payload = slices.Clone(j.Spec.Payload)
	v.Counts = store.Counts{}
	for _, id := range j.TaskIDs {
		if t := s.tasks[id]; t != nil {
			v.Counts.Add(t.State, 1)
		}
	}
	return v
}

// GetJob implements store.Store.
func (s *Store) GetJob(ctx context.Context, id string) (store.Job, error) {
	if err := s.lock(ctx); err != nil {
		return store.Job{}, err
	}
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return store.Job{}, store.Errorf(store.KindNotFound, "job %q not found", id)
	}
	return s.jobView(j), nil
}

// ListJobs implements store.Store.
func (s *Store) ListJobs(ctx context.Context, page store.Page) ([]store.Job, string, error) {
	if err := s.lock(ctx); err != nil {
		return nil, "", err
	}
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.jobs))
	for id := range s.jobs {
		if page.Token == "" || id < page.Token {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	size := pageSize(page.Size)
	next := ""
	if len(ids) > size {
		ids = ids[:size]
		next = ids[size-1]
	}
	out := make([]store.Job, len(ids))
	for i, id := range ids {
		out[i] = s.jobView(s.jobs[id])
	}
	return out, next, nil
}

// CancelJob implements store.Store.
func (s *Store) CancelJob(ctx context.Context, id, reason string) (store.Job, error) {
	if err := s.lock(ctx); err != nil {
		return store.Job{}, err
	}
	defer s.mu.Unlock()
	j := s.jobs[id]
	if j == nil {
		return store.Job{}, store.Errorf(store.KindNotFound, "job %q not found", id)
	}
	if reason == "" {
		reason = "job canceled by operator"
	}
	now := s.now()
	if !j.Canceled {
		s.stopJob(j, reason, now)
	}
	for _, tid := range j.TaskIDs {
		if t := s.tasks[tid]; t != nil && t.State == store.StateRunning {
			s.requestCancel(t, reason)
		}
	}
	return s.jobView(j), nil
}

func (s *Store) requestCancel(t *task, reason string) {
	if t.CancelRequested {
		return
	}
	t.CancelRequested = true
	t.CancelReason = reason
	t.cancelDelivered = false
	t.UpdatedAt = s.now()
	s.hub.Notify(store.AgentKey(t.AgentID), store.TaskKey(t.ID), store.JobKey(t.JobID))
}

// GetTask implements store.Store.
func (s *Store) GetTask(ctx context.Context, id string) (store.Task, error) {
	if err := s.lock(ctx); err != nil {
		return store.Task{}, err
	}
	defer s.mu.Unlock()
	t := s.tasks[id]
	if t == nil {
		return store.Task{}, store.Errorf(store.KindNotFound, "task %q not found", id)
	}
	return t.clone(), nil
}

// ListTasks implements store.Store.
func (s *Store) ListTasks(ctx context.Context, f store.TaskFilter) ([]store.Task, string, error) {
	if err := s.lock(ctx); err != nil {
		return nil, "", err
	}
	defer s.mu.Unlock()
	var ids []string
	switch {
	case f.JobID != "":
		if j := s.jobs[f.JobID]; j != nil {
			ids = slices.Clone(j.TaskIDs)
		}
	case f.AgentID != "":
		if a := s.agents[f.AgentID]; a != nil {
			ids = slices.Clone(a.tasks)
		}
	default:
		ids = make([]string, 0, len(s.tasks))
		for id := range s.tasks {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	size := pageSize(f.Size)
	var out []store.Task
	for _, id := range ids {
		if f.Token != "" && id >= f.Token {
			continue
		}
		t := s.tasks[id]
		if t == nil || (f.AgentID != "" && t.AgentID != f.AgentID) || (f.State != store.StateUnspecified && t.State != f.State) {
			continue
		}
		if len(out) == size {
			return out, out[len(out)-1].ID, nil
		}
		out = append(out, t.clone())
	}
	return out, "", nil
}

// CancelTask implements store.Store.
func (s *Store) CancelTask(ctx context.Context, id, reason string) (store.Task, error) {
	if err := s.lock(ctx); err != nil {
		return store.Task{}, err
	}
	defer s.mu.Unlock()
	t := s.tasks[id]
	if t == nil {
		return store.Task{}, store.Errorf(store.KindNotFound, "task %q not found", id)
	}
	if reason == "" {
		reason = "canceled by operator"
	}
	switch t.State {
	case store.StatePending:
		s.end(t, store.StateCanceled, reason, s.now())
	case store.StateRunning:
		s.requestCancel(t, reason)
	default:
		return store.Task{}, store.Errorf(store.KindPrecondition, "task %q already ended %s", id, t.State)
	}
	return t.clone(), nil
}

// ---- enrollment tokens ----

func (s *Store) checkEnrollment(id string, hash []byte, now time.Time) (*store.EnrollmentToken, error) {
	t := s.enroll[id]
	if t == nil || subtle.ConstantTimeCompare(t.SecretHash, hash) != 1 {
		return nil, store.Errorf(store.KindUnauthenticated, "enrollment token is not valid")
	}
	switch {
	case !t.RevokedAt.IsZero():
		return nil, store.Errorf(store.KindUnauthenticated, "enrollment token %s is revoked", id)
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return nil, store.Errorf(store.KindUnauthenticated, "enrollment token %s has expired", id)
	case t.MaxUses > 0 && t.Uses >= t.MaxUses:
		return nil, store.Errorf(store.KindUnauthenticated, "enrollment token %s is used up (%d uses)", id, t.MaxUses)
	}
	return t, nil
}

// CreateEnrollmentToken implements store.Store.
func (s *Store) CreateEnrollmentToken(ctx context.Context, t store.EnrollmentToken) (store.EnrollmentToken, error) {
	if err := s.lock(ctx); err != nil {
		return store.EnrollmentToken{}, err
	}
	defer s.mu.Unlock()
	if _, ok := s.enroll[t.ID]; ok {
		return store.EnrollmentToken{}, store.Errorf(store.KindPrecondition, "enrollment token %s exists", t.ID)
	}
	t.CreatedAt = s.now()
	t.SecretHash = slices.Clone(t.SecretHash)
	s.enroll[t.ID] = &t
	return t, nil
}

// ListEnrollmentTokens implements store.Store.
func (s *Store) ListEnrollmentTokens(ctx context.Context) ([]store.EnrollmentToken, error) {
	if err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	out := make([]store.EnrollmentToken, 0, len(s.enroll))
	for _, t := range s.enroll {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(x, y store.EnrollmentToken) int { return x.CreatedAt.Compare(y.CreatedAt) })
	return out, nil
}

// RevokeEnrollmentToken implements store.Store.
func (s *Store) RevokeEnrollmentToken(ctx context.Context, id string) (store.EnrollmentToken, error) {
	if err := s.lock(ctx); err != nil {
		return store.EnrollmentToken{}, err
	}
	defer s.mu.Unlock()
	t := s.enroll[id]
	if t == nil {
		return store.EnrollmentToken{}, store.Errorf(store.KindNotFound, "enrollment token %q not found", id)
	}
	if t.RevokedAt.IsZero() {
		t.RevokedAt = s.now()
	}
	return *t, nil
}

// CheckEnrollmentToken implements store.Store.
func (s *Store) CheckEnrollmentToken(ctx context.Context, id string, secretHash []byte) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	_, err := s.checkEnrollment(id, secretHash, s.now())
	return err
}

// ---- time-driven work ----

// Reap implements store.Store.
func (s *Store) Reap(ctx context.Context) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := s.now()
	for _, t := range s.live {
		switch t.State {
		case store.StatePending:
			if !t.Held && !now.Before(t.DeliverBy) {
				s.expire(t, now)
			}
		case store.StateRunning:
			if !now.Before(t.Deadline) && !t.TimedOut {
				t.TimedOut = true
				t.CancelRequested = true
				t.CancelReason = fmt.Sprintf("timed out after %s", t.Timeout)
				t.cancelDelivered = false
				s.hub.Notify(store.AgentKey(t.AgentID), store.TaskKey(t.ID))
			}
			if now.Before(t.LeaseExpiresAt) {
				continue
			}
			switch {
			case t.TimedOut:
				s.end(t, store.StateTimedOut, t.CancelReason+" (lease expired)", now)
			case t.CancelRequested:
				s.end(t, store.StateCanceled, t.CancelReason+" (lease expired)", now)
			case t.Attempt >= t.MaxAttempts:
				s.end(t, store.StateLost, fmt.Sprintf("lease expired %d times (max_attempts)", t.Attempt), now)
			default:
				s.requeue(t, now)
			}
		}
	}
	s.dropExpired(now)
	return nil
}

// requeue puts a task whose lease expired back in its agent's queue, in order of
// creation, for the next attempt.
func (s *Store) requeue(t *task, now time.Time) {
	a := s.agents[t.AgentID]
	delete(a.running, t.ID)
	t.LeaseExpiresAt = time.Time{}
	t.Deadline = time.Time{}
	t.DeliverBy = now.Add(t.DeliveryTTL)
	i, _ := slices.BinarySearchFunc(a.queue, t, func(x, y *task) int { return strings.Compare(x.ID, y.ID) })
	a.queue = slices.Insert(a.queue, i, t)
	s.setState(t, store.StatePending, fmt.Sprintf("lease expired (attempt %d); requeued", t.Attempt), now)
	s.hub.Notify(store.AgentKey(a.ID))
}

// dropExpired removes finished tasks and jobs older than the retention.
func (s *Store) dropExpired(now time.Time) {
	cut := now.Add(-s.cfg.Retention)
	for id, j := range s.jobs {
		if !j.CreatedAt.Before(cut) {
			continue
		}
		keep := j.TaskIDs[:0]
		for _, tid := range j.TaskIDs {
			t := s.tasks[tid]
			if t != nil && (!t.State.Terminal() || !t.UpdatedAt.Before(cut)) {
				keep = append(keep, tid)
				continue
			}
			if t != nil {
				delete(s.tasks, tid)
				if a := s.agents[t.AgentID]; a != nil {
					if i := slices.Index(a.tasks, tid); i >= 0 {
						a.tasks = slices.Delete(a.tasks, i, i+1)
					}
				}
			}
		}
		j.TaskIDs = keep
		if len(keep) == 0 {
			delete(s.jobs, id)
			if j.Spec.IdempotencyKey != "" && s.idem[j.Spec.IdempotencyKey] == id {
				delete(s.idem, j.Spec.IdempotencyKey)
			}
		}
	}
}

// ---- plumbing ----

// Watch implements store.Store.
func (s *Store) Watch(keys ...string) *store.Watcher { return s.hub.Watch(keys...) }

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	s.mu.Unlock()
	return nil
}

// Close implements store.Store. Later calls fail with KindUnavailable.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.hub.NotifyAll()
	return nil
}

func (t *task) clone() store.Task {
	v := t.Task
	v.Payload = slices.Clone(t.Payload)
	v.Output = slices.Clone(t.Output)
	v.History = slices.Clone(t.History)
	return v
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func pageSize(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > 1000:
		return 1000
	}
	return n
}
