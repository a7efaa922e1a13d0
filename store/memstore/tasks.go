package memstore

import (
	"context"
	"slices"
	"time"

	"github.com/orange-forge/forge/store"
)

// Lease implements store.Store.
func (s *Store) Lease(ctx context.Context, p store.LeaseParams) (store.LeaseResult, error) {
	return locked(ctx, s, func(now time.Time) (store.LeaseResult, error) {
		a, err := s.auth(p.Cred)
		if err != nil {
			return store.LeaseResult{}, err
		}
		if p.Gen == 0 {
			a.gen++
			if now.Before(a.pollUntil) {
				// An older Poll may still be held: wake it so it finds itself superseded.
				s.hub.Notify(store.AgentKey(a.ID))
			}
			a.pollUntil = now.Add(p.Hold)
		} else if p.Gen != a.gen {
			// A superseded Poll's re-check is not a call of the agent: it
			// neither counts as seen nor ends a stop.
			return store.LeaseResult{Gen: p.Gen, Superseded: true}, nil
		}
		a.LastSeenAt, a.stopped = now, false
		res := store.LeaseResult{Gen: a.gen}
		if len(a.queue) > 0 && p.Max > 0 {
			res.Tasks = s.leaseQueued(a, p, now)
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
	})
}

// leaseQueued leases up to p.Max tasks from the head of a's queue, expiring
// those past their delivery TTL on the way. It is a function of its own so
// that an idle agent's Poll, which takes nothing, does not carry its frame.
//
//go:noinline
func (s *Store) leaseQueued(a *agent, p store.LeaseParams, now time.Time) []store.Task {
	var out []store.Task
	for len(out) < p.Max && len(a.queue) > 0 {
		t := a.queue[0]
		a.queue = a.queue[1:]
		if !now.Before(t.DeliverBy) {
			s.expire(t, now)
			continue
		}
		t.Attempt++
		t.LeaseExpiresAt = now.Add(p.Lease)
		t.Deadline = now.Add(t.Timeout)
		s.setState(t, store.StateRunning, store.ReasonLeased(t.Attempt), now)
		a.running[t.ID] = t
		out = append(out, t.clone())
	}
	return out
}

// Heartbeat implements store.Store.
func (s *Store) Heartbeat(ctx context.Context, p store.HeartbeatParams) (store.HeartbeatResult, error) {
	return locked(ctx, s, func(now time.Time) (store.HeartbeatResult, error) {
		a, err := s.auth(p.Cred)
		if err != nil {
			return store.HeartbeatResult{}, err
		}
		a.LastSeenAt, a.stopped = now, p.Stopped
		if p.Stopped {
			// The Poll it held, if any, is over: woken, it finds itself
			// superseded and answers at once without ending the stop.
			a.gen++
			if now.Before(a.pollUntil) {
				s.hub.Notify(store.AgentKey(a.ID))
			}
			a.pollUntil = time.Time{}
		}
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
	})
}

// ReturnTasks implements store.Store.
func (s *Store) ReturnTasks(ctx context.Context, p store.ReturnParams) ([]store.TaskRef, error) {
	return locked(ctx, s, func(now time.Time) ([]store.TaskRef, error) {
		a, err := s.auth(p.Cred)
		if err != nil {
			return nil, err
		}
		a.LastSeenAt = now
		var out []store.TaskRef
		for _, r := range p.Tasks {
			t := a.running[r.TaskID]
			if t == nil || t.Attempt != r.Attempt {
				continue
			}
			st, reason := store.ReturnEnd(t.Task)
			if st != store.StatePending {
				s.end(t, st, reason, now)
			} else {
				s.requeue(t, reason, now)
				t.Attempt-- // as if never leased; the history names the attempt returned
			}
			out = append(out, r)
		}
		return out, nil
	})
}

// Report implements store.Store.
func (s *Store) Report(ctx context.Context, p store.ReportParams) (store.TaskState, error) {
	return locked(ctx, s, func(now time.Time) (store.TaskState, error) {
		a, err := s.auth(p.Cred)
		if err != nil {
			return 0, err
		}
		a.LastSeenAt, a.stopped = now, false
		t := s.tasks[p.TaskID]
		if t == nil || t.AgentID != a.ID {
			return 0, store.ErrTaskNotFound(p.TaskID)
		}
		repeat, err := store.CheckReport(t.Task, t.reported, p)
		if err != nil {
			return 0, err
		}
		if repeat {
			return t.State, nil
		}
		t.out.reset(p.Attempt)
		if len(p.Output) > 0 {
			t.out.add(p.Attempt, store.StreamStdout, p.Output, store.OutputCap(p.Cap))
			s.hub.Notify(store.OutputKey(t.ID))
		}
		t.reportedTruncated = p.OutputTruncated
		t.reportedSize = p.OutputSize
		t.ExitCode = p.ExitCode
		t.Error = p.Error
		t.reported = p.Outcome
		state, reason := store.ReportEnd(t.Task, p, now)
		s.end(t, state, reason, now)
		return state, nil
	})
}

// GetTask implements store.Store.
func (s *Store) GetTask(ctx context.Context, id string) (store.Task, error) {
	return locked(ctx, s, func(now time.Time) (store.Task, error) {
		t := s.tasks[id]
		if t == nil {
			return store.Task{}, store.ErrTaskGone(id, now, s.goneTask(id))
		}
		return t.clone(), nil
	})
}

type taskPage struct {
	tasks []store.Task
	next  string
}

// ListTasks implements store.Store.
func (s *Store) ListTasks(ctx context.Context, f store.TaskFilter) ([]store.Task, string, error) {
	p, err := locked(ctx, s, func(time.Time) (taskPage, error) {
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
		size := store.PageSize(f.Size)
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
				return taskPage{out, out[len(out)-1].ID}, nil
			}
			out = append(out, t.clone())
		}
		return taskPage{tasks: out}, nil
	})
	return p.tasks, p.next, err
}

// CancelTask implements store.Store.
func (s *Store) CancelTask(ctx context.Context, id, reason string) (store.Task, error) {
	return locked(ctx, s, func(now time.Time) (store.Task, error) {
		t, err := find(s.tasks, id, store.ErrTaskNotFound)
		if err != nil {
			return store.Task{}, err
		}
		if err := s.cancel(t, store.CancelModeTask, store.OrDefault(reason, store.ReasonTaskCanceled), now); err != nil {
			return store.Task{}, err
		}
		return t.clone(), nil
	})
}

// cancel does what cancel mode m does to task t.
func (s *Store) cancel(t *task, m store.CancelMode, reason string, now time.Time) error {
	switch m.Action(t.State) {
	case store.CancelEnd:
		s.end(t, store.StateCanceled, reason, now)
	case store.CancelRequest:
		s.requestCancel(t, reason, now)
	case store.CancelRefuse:
		return store.ErrTaskEnded(t.ID, t.State)
	}
	return nil
}

// requestCancel records a cancel request on a running task and wakes its agent.
func (s *Store) requestCancel(t *task, reason string, now time.Time) {
	if t.CancelRequested {
		return
	}
	t.CancelRequested = true
	t.CancelReason = reason
	t.cancelDelivered = false
	t.UpdatedAt = now
	s.hub.Notify(store.AgentKey(t.AgentID), store.TaskKey(t.ID), store.JobKey(t.JobID))
}

func (t *task) setState(st store.TaskState, reason string, now time.Time) {
	t.State = st
	t.UpdatedAt = now
	t.History = append(t.History, store.StateChange{State: st, At: now, Reason: reason, Attempt: t.Attempt})
}

func (s *Store) setState(t *task, st store.TaskState, reason string, now time.Time) {
	s.byState[t.State]--
	s.byState[st]++
	t.setState(st, reason, now)
	s.hub.Notify(store.TaskKey(t.ID), store.JobKey(t.JobID))
}

func (s *Store) expire(t *task, now time.Time) {
	st, reason := store.DeliveryExpiryEnd(t.Task)
	s.end(t, st, reason, now)
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
	t.feedSeq = s.feed.add(t.ID)
	s.ended = append(s.ended, t.ID)
	s.keepAgent(a, now)
	j := s.jobs[t.JobID]
	if j == nil {
		return
	}
	if j.live--; j.live == 0 && j.made {
		s.jobEnded(j)
	}
	if wasReleased {
		j.active--
	} else if i := slices.Index(j.held, t); i >= 0 {
		j.held = slices.Delete(j.held, i, i+1)
	}
	if st.Failure() {
		j.failures++
	}
	s.advance(j, now)
}
