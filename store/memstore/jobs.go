package memstore

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

// Dispatch implements store.Store.
func (s *Store) Dispatch(ctx context.Context, spec store.JobSpec) (store.Job, error) {
	match, err := spec.Target.Matcher()
	if err != nil {
		return store.Job{}, err
	}
	return locked(ctx, s, func(now time.Time) (store.Job, error) {
		if spec.IdempotencyKey != "" {
			if j := s.jobs[s.idem[spec.IdempotencyKey]]; j != nil {
				v := s.jobView(j)
				v.Existing = true
				return v, nil
			}
		}
		targets, err := s.targets(spec.Target, match, now)
		if err != nil {
			return store.Job{}, err
		}
		if err := store.CheckTargets(len(targets), s.cfg.MaxTargets); err != nil {
			return store.Job{}, err
		}
		if !spec.Queue {
			types := make([][]string, len(targets))
			for i, a := range targets {
				types[i] = a.TaskTypes
			}
			if err := store.CheckTaskType(spec.Type, types); err != nil {
				return store.Job{}, err
			}
		}
		id := spec.ID
		if id == "" {
			id = store.NewJobID()
		} else if !store.ValidJobID(id) {
			return store.Job{}, store.ErrJobIDNotNew(id)
		} else if s.jobs[id] != nil {
			return store.Job{}, store.ErrJobExists(id)
		}
		j := &job{Job: store.Job{ID: id, Spec: spec, CreatedAt: now}}
		j.Spec.Payload = slices.Clone(spec.Payload)
		s.jobs[j.ID] = j
		s.jobOrder = append(s.jobOrder, j.ID)
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
				JobSig:      spec.Sig,
				Target:      spec.Target,
				MaxAttempts: spec.MaxAttempts,
				Timeout:     spec.Timeout,
				DeliveryTTL: spec.DeliveryTTL,
				CreatedAt:   now,
			}}
			t.setState(store.StatePending, store.ReasonDispatched, now)
			s.byState[store.StatePending]++
			s.tasks[t.ID] = t
			s.live[t.ID] = t
			j.live++
			a.tasks = append(a.tasks, t.ID)
			j.TaskIDs = append(j.TaskIDs, t.ID)
			switch {
			case len(a.queue) >= s.cfg.MaxPendingPerAgent:
				s.end(t, store.StateCanceled, store.ReasonQueueFull(len(a.queue)), now)
			case spec.MaxConcurrency > 0 && j.active >= int(spec.MaxConcurrency):
				t.Held = true
				j.held = append(j.held, t)
			default:
				s.release(j, t, now)
			}
		}
		j.made = true
		if j.live == 0 {
			s.jobEnded(j)
		}
		s.hub.Notify(store.JobKey(j.ID))
		return s.jobView(j), nil
	})
}

// targets returns the agents a job goes to: the one named (which must exist, not
// be revoked and have room in its queue), or every non-revoked agent the target
// matches that is online (or any, with IncludeOffline), in id order.
func (s *Store) targets(tg store.Target, match store.AgentMatcher, now time.Time) ([]*agent, error) {
	if tg.AgentID != "" {
		a, err := find(s.agents, tg.AgentID, store.ErrAgentNotFound)
		switch {
		case err != nil:
			return nil, err
		case !a.RevokedAt.IsZero():
			return nil, store.ErrAgentRevoked(a.ID)
		case len(a.queue) >= s.cfg.MaxPendingPerAgent:
			return nil, store.ErrAgentQueueFull(a.ID, len(a.queue))
		}
		return []*agent{a}, nil
	}
	var out []*agent
	for _, a := range s.agents {
		if a.RevokedAt.IsZero() && match.Matches(a.Name, a.Labels) &&
			(tg.IncludeOffline || s.status(a, now) == store.AgentOnline) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(x, y *agent) int { return strings.Compare(x.ID, y.ID) })
	return out, nil
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

// advance applies a job's rollout limits: stop on max_failures, then release held
// tasks while slots are free.
func (s *Store) advance(j *job, now time.Time) {
	if mf := j.Spec.MaxFailures; mf > 0 && j.failures >= int(mf) && !j.Canceled {
		s.cancelJob(j, store.CancelModeStop, store.ReasonMaxFailures(mf), now)
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

// cancelJob marks the job canceled, so it starts no more tasks, and does what
// cancel mode m does to each of its tasks.
func (s *Store) cancelJob(j *job, m store.CancelMode, reason string, now time.Time) {
	j.Canceled = true
	for _, id := range j.TaskIDs { // held tasks are PENDING too
		if t := s.tasks[id]; t != nil {
			_ = s.cancel(t, m, reason, now) // only CancelModeTask refuses
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
	return locked(ctx, s, func(now time.Time) (store.Job, error) {
		j := s.jobs[id]
		if j == nil {
			return store.Job{}, store.ErrJobGone(id, now, s.gone())
		}
		return s.jobView(j), nil
	})
}

type jobPage struct {
	jobs []store.Job
	next string
}

// ListJobs implements store.Store.
func (s *Store) ListJobs(ctx context.Context, page store.Page) ([]store.Job, string, error) {
	p, err := locked(ctx, s, func(time.Time) (jobPage, error) {
		ids := make([]string, 0, len(s.jobs))
		for id := range s.jobs {
			if page.Token == "" || id < page.Token {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		slices.Reverse(ids)
		size := store.PageSize(page.Size)
		next := ""
		if len(ids) > size {
			ids = ids[:size]
			next = ids[size-1]
		}
		out := make([]store.Job, len(ids))
		for i, id := range ids {
			out[i] = s.jobView(s.jobs[id])
		}
		return jobPage{out, next}, nil
	})
	return p.jobs, p.next, err
}

// CancelJob implements store.Store.
func (s *Store) CancelJob(ctx context.Context, id, reason string) (store.Job, error) {
	return locked(ctx, s, func(now time.Time) (store.Job, error) {
		j, err := find(s.jobs, id, store.ErrJobNotFound)
		if err != nil {
			return store.Job{}, err
		}
		s.cancelJob(j, store.CancelModeJob, store.OrDefault(reason, store.ReasonJobCanceled), now)
		return s.jobView(j), nil
	})
}
