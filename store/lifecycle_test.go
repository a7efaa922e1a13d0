package store_test

import (
	"testing"
	"time"

	"github.com/orange-forge/forge/store"
)

// The texts users read, pinned: a change here is a change users see, so it must be
// deliberate (and the Redis store's prelude regenerated).
func TestReasons(t *testing.T) {
	t.Parallel()
	for _, c := range [][2]string{
		{store.ReasonLeased(2), "leased (attempt 2)"},
		{store.ReasonTimedOut(90 * time.Second), "timed out after 1m30s"},
		{store.ReasonExpired(time.Hour), "not picked up within its delivery TTL (1h0m0s)"},
		{store.ReasonMaxFailures(3), "job stopped: max_failures (3) reached"},
		{store.ReasonQueueFull(10000), "agent's queue is full (10000 pending tasks, the limit)"},
		{store.ReasonRevoked(""), "agent revoked"},
		{store.ReasonRevoked("key leaked"), "agent revoked: key leaked"},
		{store.OrDefault("", store.ReasonTaskCanceled), "canceled by operator"},
		{store.OrDefault("", store.ReasonJobCanceled), "job canceled by operator"},
		{store.OrDefault("mine", store.ReasonJobCanceled), "mine"},
		{store.ErrTaskNotFound("t1-a1").Error(), `task "t1-a1" not found`},
		{store.ErrAgentQueueFull("a1", 5).Error(), `agent "a1" already has 5 pending tasks (the limit)`},
		{store.ErrEnrollmentExists("e1").Error(), "enrollment token e1 exists"},
		{store.ErrTaskEnded("t1-a1", store.StateTimedOut).Error(), `task "t1-a1" already ended TIMED_OUT`},
		{store.ErrAgentNotFound("a\n").Error(), `agent "a\n" not found`},
		{leaseEnd(store.Task{Attempt: 1, MaxAttempts: 3}), "lease expired (attempt 1); requeued"},
		{leaseEnd(store.Task{Attempt: 3, MaxAttempts: 3}), "lease expired 3 times (max_attempts)"},
		{leaseEnd(store.Task{CancelRequested: true, CancelReason: "stop"}), "stop (lease expired)"},
	} {
		if got, want := c[0], c[1]; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func leaseEnd(t store.Task) string {
	_, why := store.LeaseExpiryEnd(t)
	return why
}

func TestPageSize(t *testing.T) {
	t.Parallel()
	for n, want := range map[int]int{-1: 100, 0: 100, 1: 1, 100: 100, 1000: 1000, 1001: 1000, 1 << 30: 1000} {
		if got := store.PageSize(n); got != want {
			t.Errorf("PageSize(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestStatusAt(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const w = 50 * time.Second
	for _, c := range []struct {
		revoked, stopped bool
		seen, pollUntil  time.Time
		want             store.AgentStatus
	}{
		{false, false, now, time.Time{}, store.AgentOnline},
		{false, false, now.Add(-w + time.Millisecond), time.Time{}, store.AgentOnline},
		{false, false, now.Add(-w), time.Time{}, store.AgentOffline},
		{false, false, now.Add(-time.Hour), now.Add(time.Millisecond), store.AgentOnline},
		{false, false, now.Add(-time.Hour), now, store.AgentOffline},
		{true, false, now, now.Add(time.Hour), store.AgentRevoked},
		{false, true, now, time.Time{}, store.AgentOffline},
		{false, true, now, now.Add(time.Hour), store.AgentOffline},
		{true, true, now, time.Time{}, store.AgentRevoked},
	} {
		if got := store.StatusAt(c.revoked, c.stopped, c.seen, c.pollUntil, now, w); got != c.want {
			t.Errorf("StatusAt(revoked %v, stopped %v, seen %v ago, poll held %v more) = %v, want %v",
				c.revoked, c.stopped, now.Sub(c.seen), c.pollUntil.Sub(now), got, c.want)
		}
	}
}

func TestCancelActions(t *testing.T) {
	t.Parallel()
	want := map[store.CancelMode][3]store.CancelAction{ // PENDING, RUNNING, a terminal state
		store.CancelModeTask: {store.CancelEnd, store.CancelRequest, store.CancelRefuse},
		store.CancelModeJob:  {store.CancelEnd, store.CancelRequest, store.CancelSkip},
		store.CancelModeStop: {store.CancelEnd, store.CancelSkip, store.CancelSkip},
	}
	for m, w := range want {
		for st := store.StatePending; st <= store.StateLost; st++ {
			i := min(int(st)-1, 2)
			if got := m.Action(st); got != w[i] {
				t.Errorf("mode %d on %v = %d, want %d", m, st, got, w[i])
			}
		}
	}
}

func TestFailures(t *testing.T) {
	t.Parallel()
	var got []store.TaskState
	for st := store.StateUnspecified; st <= store.StateLost; st++ {
		if st.Failure() {
			got = append(got, st)
		}
	}
	if want := []store.TaskState{store.StateFailed, store.StateTimedOut, store.StateExpired, store.StateLost}; len(got) != len(want) ||
		got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Errorf("failures are %v, want %v", got, want)
	}
}

func TestErrTaskNotFoundAt(t *testing.T) {
	id := store.NewTaskID(store.NewAgentID())
	made, ok := store.CreatedAt(id)
	if !ok || time.Since(made) > time.Minute || time.Since(made) < 0 {
		t.Fatalf("CreatedAt(%s) = %v, %v", id, made, ok)
	}
	week := 7 * 24 * time.Hour
	if err := store.ErrTaskNotFoundAt(id, made.Add(week), week); err.Error() != store.ErrTaskNotFound(id).Error() {
		t.Errorf("within the retention: %q", err)
	}
	err := store.ErrTaskNotFoundAt(id, made.Add(week+26*time.Hour+time.Minute), week)
	want := `task "` + id + `" not found: it was created 194h0m0s ago, and finished tasks are kept for 168h0m0s (--retention); it has aged out, or never existed`
	if store.KindOf(err) != store.KindNotFound || err.Error() != want {
		t.Errorf("past the retention: %q (kind %v)\nwant %q", err, store.KindOf(err), want)
	}
	if err := store.ErrTaskNotFoundAt("t-bad", made.Add(2*week), week); err.Error() != store.ErrTaskNotFound("t-bad").Error() {
		t.Errorf("a malformed id: %q", err)
	}
}
