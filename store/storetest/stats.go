package storetest

import (
	stdmaps "maps"
	"time"

	"github.com/orange-forge/forge/store"
)

var statsCases = []testCase{
	{"Counts", testStats, nil},
}

// wantStats checks Stats exactly: agents by status, tasks by state (states not
// named are zero), the oldest pending task's dispatch time and expired leases.
func (h *harness) wantStats(agents map[store.AgentStatus]int, tasks map[store.TaskState]int, oldest time.Time, expired int64) {
	h.Helper()
	got, err := h.s.Stats(h.ctx)
	if err != nil {
		h.Fatalf("Stats: %v", err)
	}
	want := store.NewStats()
	stdmaps.Copy(want.Agents, agents)
	stdmaps.Copy(want.Tasks, tasks)
	if !stdmaps.Equal(got.Agents, want.Agents) {
		h.Errorf("Stats agents = %v, want %v", got.Agents, want.Agents)
	}
	if !stdmaps.Equal(got.Tasks, want.Tasks) {
		h.Errorf("Stats tasks = %v, want %v", got.Tasks, want.Tasks)
	}
	if !got.OldestPending.Equal(oldest) {
		h.Errorf("Stats oldest pending = %v, want %v", got.OldestPending, oldest)
	}
	if got.LeasesExpired != expired {
		h.Errorf("Stats leases expired = %d, want %d", got.LeasesExpired, expired)
	}
	if h.Failed() {
		h.FailNow()
	}
}

func testStats(h *harness) {
	const on, off, rev = store.AgentOnline, store.AgentOffline, store.AgentRevoked
	const pending, running, succeeded, canceled = store.StatePending, store.StateRunning, store.StateSucceeded, store.StateCanceled
	h.wantStats(nil, nil, time.Time{}, 0)

	a, b, c, d := h.register(nil), h.register(nil), h.register(nil), h.register(nil)
	h.wantStats(map[store.AgentStatus]int{on: 4}, nil, time.Time{}, 0)

	t0 := h.now()
	j1 := h.dispatch(a)
	h.clock.Advance(time.Second)
	t1 := h.now()
	h.dispatch(a)
	h.dispatch(d)
	h.wantStats(map[store.AgentStatus]int{on: 4}, map[store.TaskState]int{pending: 3}, t0, 0)

	// A clean stop is offline at once; a revoked agent's tasks end CANCELED.
	if _, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: c.cred, Lease: leaseFor, Stopped: true}); err != nil {
		h.Fatal(err)
	}
	if _, err := h.s.RevokeAgent(h.ctx, d.ID, ""); err != nil {
		h.Fatal(err)
	}
	h.wantStats(map[store.AgentStatus]int{on: 2, off: 1, rev: 1}, map[store.TaskState]int{pending: 2, canceled: 1}, t0, 0)

	// The first task runs and succeeds: the second is now the oldest pending.
	first := h.leaseOne(a)
	if first.ID != j1.TaskIDs[0] {
		h.Fatalf("leased %s, want the oldest task %s", first.ID, j1.TaskIDs[0])
	}
	h.wantStats(map[store.AgentStatus]int{on: 2, off: 1, rev: 1}, map[store.TaskState]int{pending: 1, running: 1, canceled: 1}, t1, 0)
	h.mustReport(a, first.Ref(), store.OutcomeSucceeded, succeeded)
	h.wantStats(map[store.AgentStatus]int{on: 2, off: 1, rev: 1}, map[store.TaskState]int{pending: 1, succeeded: 1, canceled: 1}, t1, 0)

	// Past the online window only agents that called since are online. The
	// lease ran out: the task is pending again, dispatched at t1 still.
	second := h.leaseOne(a)
	h.clock.Advance(onlineWindow)
	h.lease(a, 0)
	h.wantStats(map[store.AgentStatus]int{on: 1, off: 2, rev: 1}, map[store.TaskState]int{running: 1, succeeded: 1, canceled: 1}, time.Time{}, 0)
	h.reap()
	h.wantState(second.ID, pending)
	h.wantStats(map[store.AgentStatus]int{on: 1, off: 2, rev: 1}, map[store.TaskState]int{pending: 1, succeeded: 1, canceled: 1}, t1, 1)
	h.heartbeat(b, leaseFor)
	h.wantStats(map[store.AgentStatus]int{on: 2, off: 1, rev: 1}, map[store.TaskState]int{pending: 1, succeeded: 1, canceled: 1}, t1, 1)

	// Retention drops finished tasks from the counts, and removed agents from theirs;
	// the requeued task, never picked up again, ends LOST (it ran once).
	h.clock.Advance(retention + time.Hour)
	h.reap()
	h.wantStats(map[store.AgentStatus]int{off: 3, rev: 1}, map[store.TaskState]int{store.StateLost: 1}, time.Time{}, 1)
	h.clock.Advance(agentRet)
	h.reap()
	h.reap()
	h.wantStats(nil, nil, time.Time{}, 1)
}
