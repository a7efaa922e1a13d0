package memstore

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

// Reap implements store.Store.
func (s *Store) Reap(ctx context.Context) error {
	return lockedDo(ctx, s, func(now time.Time) error {
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
					t.CancelReason = store.ReasonTimedOut(t.Timeout)
					t.cancelDelivered = false
					s.hub.Notify(store.AgentKey(t.AgentID), store.TaskKey(t.ID))
				}
				if now.Before(t.LeaseExpiresAt) {
					continue
				}
				s.leasesExpired++
				if st, reason := store.LeaseExpiryEnd(t.Task); st == store.StatePending {
					s.requeue(t, reason, now)
				} else {
					s.end(t, st, reason, now)
				}
			}
		}
		s.dropExpired(now)
		if ret := s.cfg.AgentRetention; ret > 0 && !now.Before(s.nextAgentSweep) {
			s.removeUnseenAgents(now)
			s.nextAgentSweep = now.Add(min(time.Hour, ret))
		}
		return nil
	})
}

// removeUnseenAgents removes the agents unseen for the retention, with their
// tokens; their live tasks end CANCELED. Their finished tasks stay until their
// own retention.
func (s *Store) removeUnseenAgents(now time.Time) {
	reason := store.ReasonAgentRemoved(s.cfg.AgentRetention)
	for id, a := range s.agents {
		if !store.AgentExpired(a.LastSeenAt, now, s.cfg.AgentRetention) {
			continue
		}
		for _, tid := range a.tasks {
			if t := s.tasks[tid]; t != nil && !t.State.Terminal() {
				s.end(t, store.StateCanceled, reason, now)
			}
		}
		delete(s.agents, id)
		s.hub.Notify(store.AgentKey(id))
	}
}

// requeue puts a task whose lease expired back in its agent's queue, in order of
// creation, for the next attempt.
func (s *Store) requeue(t *task, reason string, now time.Time) {
	a := s.agents[t.AgentID]
	delete(a.running, t.ID)
	t.LeaseExpiresAt = time.Time{}
	t.Deadline = time.Time{}
	t.DeliverBy = now.Add(t.DeliveryTTL)
	i, _ := slices.BinarySearchFunc(a.queue, t, func(x, y *task) int { return strings.Compare(x.ID, y.ID) })
	a.queue = slices.Insert(a.queue, i, t)
	s.setState(t, store.StatePending, reason, now)
	s.hub.Notify(store.AgentKey(a.ID))
}

// dropExpired removes finished tasks and jobs older than the retention: tasks
// from the front of the list of ended tasks while they ended before the cut
// (and the export, while one runs, has written them), then jobs made before it
// whose tasks are all gone, looking at no more than jobLook jobs still holding
// tasks — so a pass costs what it drops, not the history kept. Then the count
// of jobs (keepJobs).
func (s *Store) dropExpired(now time.Time) {
	defer s.feed.trim(func(id string) bool { return s.tasks[id] == nil })
	cut := now.Add(-s.cfg.Retention)
	n := 0
	for ; n < len(s.ended); n++ {
		t := s.tasks[s.ended[n]]
		if t == nil {
			continue // dropped with its agent, or ended twice in the list
		}
		if !t.State.Terminal() || !t.UpdatedAt.Before(cut) || s.feed.held(t.feedSeq, now) {
			break
		}
		s.dropTask(t)
	}
	s.ended = slices.Delete(s.ended, 0, n)
	const jobLook = 1000
	keep, looked := s.jobOrder[:0], 0
	for i, id := range s.jobOrder {
		j := s.jobs[id]
		if j == nil {
			continue
		}
		if !j.CreatedAt.Before(cut) || looked == jobLook {
			keep = append(keep, s.jobOrder[i:]...)
			break
		}
		if j.dropped < len(j.TaskIDs) {
			keep = append(keep, id)
			looked++
			continue
		}
		s.dropJob(j)
	}
	s.jobOrder = keep
	s.keepJobs(now)
}

// dropJob removes a job whose tasks are all gone.
func (s *Store) dropJob(j *job) {
	delete(s.jobs, j.ID)
	if j.finished {
		s.finKept--
	}
	if j.Spec.IdempotencyKey != "" && s.idem[j.Spec.IdempotencyKey] == j.ID {
		delete(s.idem, j.Spec.IdempotencyKey)
	}
}

// jobEnded records a job all of whose tasks ended, for the count of jobs kept.
func (s *Store) jobEnded(j *job) {
	if j.finished {
		return
	}
	j.finished = true
	s.finKept++
	if s.cfg.KeepJobs > 0 {
		s.finJobs = append(s.finJobs, j.ID)
	}
}

// keepJobsBatch bounds the finished jobs one Reap pass looks at for the count
// of jobs kept, so a pass costs what it drops (each job: its own tasks).
const keepJobsBatch = 100

// keepJobs drops the oldest finished jobs, with their tasks, while more than
// Config.KeepJobs are kept, looking at no more than keepJobsBatch of them. A
// job with a task the export has not written stays (only its written tasks
// go) and is looked at again next pass.
func (s *Store) keepJobs(now time.Time) {
	keep := s.cfg.KeepJobs
	if keep <= 0 {
		return
	}
	var held []string
	i, looked := 0, 0
	for ; i < len(s.finJobs) && looked < keepJobsBatch; i++ {
		j := s.jobs[s.finJobs[i]]
		if j == nil {
			continue // dropped by age
		}
		if s.finKept-len(held) <= keep {
			break
		}
		looked++
		if !s.dropFinishedJob(j, now) {
			held = append(held, j.ID)
		}
	}
	s.finJobs = append(held, s.finJobs[i:]...)
}

// dropFinishedJob drops a finished job with its tasks, but no task an export
// has yet to write: it tells whether the job went.
func (s *Store) dropFinishedJob(j *job, now time.Time) bool {
	left := false
	upTo := j.CreatedAt
	if made, ok := store.CreatedAt(j.ID); ok {
		upTo = made
	}
	for _, id := range j.TaskIDs {
		if made, ok := store.CreatedAt(id); ok && made.After(upTo) {
			upTo = made
		}
		t := s.tasks[id]
		switch {
		case t == nil:
		case s.feed.held(t.feedSeq, now):
			left = true
		default:
			s.dropTask(t)
		}
	}
	if left {
		return false
	}
	s.dropJob(j)
	if upTo.After(s.jobsUpTo) {
		s.jobsUpTo = upTo
	}
	return true
}

// dropTask removes a finished task, from its agent's list and its job's count.
func (s *Store) dropTask(t *task) {
	s.byState[t.State]--
	delete(s.tasks, t.ID)
	if a := s.agents[t.AgentID]; a != nil {
		i, ok := slices.BinarySearch(a.tasks, t.ID) // ids sort by creation
		if !ok {
			i = slices.Index(a.tasks, t.ID) // one made with a caller's job id
		}
		if i >= 0 {
			a.tasks = slices.Delete(a.tasks, i, i+1)
		}
	}
	if j := s.jobs[t.JobID]; j != nil {
		j.dropped++
	}
}

// keepAgent drops up to four of an agent's oldest finished tasks while it
// holds more than Config.KeepPerAgent tasks — of those, the ones an export
// running has written.
func (s *Store) keepAgent(a *agent, now time.Time) {
	keep := s.cfg.KeepPerAgent
	if keep <= 0 || len(a.tasks) <= keep {
		return
	}
	var drop []*task
	for _, id := range a.tasks[:min(len(a.tasks)-keep, 4)] {
		if t := s.tasks[id]; t != nil && t.State.Terminal() && !s.feed.held(t.feedSeq, now) {
			drop = append(drop, t)
		}
	}
	for _, t := range drop {
		a.keptUpTo = store.DropMark(a.keptUpTo, t.ID)
		s.dropTask(t)
	}
}
