package store

import (
	"strings"
	"time"
)

// Stats is what a store counts of everything it holds, for the server's
// cluster-wide gauges: agents by status, retained tasks by state, the oldest
// pending task, and the leases that ran out. Stores keep these as counters and
// indexes they update with each change (never by reading every task), so
// Stats costs the same however much history is retained; the Redis store reads
// a few keys per shard.
type Stats struct {
	// Agents counts the agents by status (AgentOnline, AgentOffline, AgentRevoked).
	Agents map[AgentStatus]int
	// Tasks counts the retained tasks by state; every state has an entry.
	Tasks map[TaskState]int
	// OldestPending is when the oldest PENDING task (held ones of a rollout
	// included) was dispatched; zero when none is pending.
	OldestPending time.Time
	// LeasesExpired counts the leases that ran out since the store's state
	// began, whatever became of their tasks (requeued, LOST, TIMED_OUT, CANCELED).
	LeasesExpired int64
}

// NewStats returns a Stats with every status and state at zero.
func NewStats() Stats {
	s := Stats{Agents: make(map[AgentStatus]int, 3), Tasks: make(map[TaskState]int, 8)}
	for _, st := range []AgentStatus{AgentOnline, AgentOffline, AgentRevoked} {
		s.Agents[st] = 0
	}
	for _, st := range TaskStates() {
		s.Tasks[st] = 0
	}
	return s
}

// TaskStates returns every task state, in order.
func TaskStates() []TaskState {
	return []TaskState{StatePending, StateRunning, StateSucceeded, StateFailed, StateCanceled, StateTimedOut, StateExpired, StateLost}
}

// TaskIDTime returns when a task id (or a job id) was made, from its time
// characters, or false when id is not one: the time its Dispatch ran, by the
// clock of the replica that ran it.
func TaskIDTime(id string) (time.Time, bool) {
	if len(id) < 12 || (id[0] != 't' && id[0] != 'j') {
		return time.Time{}, false
	}
	var us int64
	for i := 1; i < 12; i++ {
		c := strings.IndexByte(IDAlphabet, id[i])
		if c < 0 {
			return time.Time{}, false
		}
		us = us<<5 | int64(c)
	}
	return time.UnixMicro(us), true
}
