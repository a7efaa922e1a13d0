package storetest

import (
	"slices"
	"sync"
	"time"

	"github.com/orange-forge/forge/store"
)

var reapingCases = []testCase{
	{"DeliveryTTL", testDeliveryTTL, nil},
	{"RequeuedNotPickedUpAgain", testRequeuedNotPickedUpAgain, nil},
	{"ExecutionTimeout", testTimeout, nil},
	{"TimeoutFoundByReport", testTimeoutFoundByReport, nil},
	{"ConcurrentReapers", testConcurrentReapers, nil},
}

func testDeliveryTTL(h *harness) {
	a := h.register(nil)
	t0 := h.now()
	j1 := h.dispatch(a)
	h.clock.Advance(deliveryTTL)
	tLease := h.now()
	j2 := h.dispatch(a)
	// A queued task at its delivery TTL is never leased, even before Reap runs:
	// the Lease ends it EXPIRED and takes the next.
	if t := h.leaseOne(a); t.ID != j2.TaskIDs[0] {
		h.Fatalf("leased %s, want the fresh task %s", t.ID, j2.TaskIDs[0])
	}
	h.wantHistory(j1.TaskIDs[0],
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateExpired, store.ReasonExpired(deliveryTTL), 0, tLease})
	h.wantEnded(j1.TaskIDs[0], store.StateExpired, store.ReasonExpired(deliveryTTL))
	h.wantCounts(j1.ID, store.Counts{Expired: 1})

	// Reap ends a task at its delivery TTL, not a moment before.
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.DeliveryTTL = 90 * time.Second
	t3 := h.now()
	j3 := h.dispatchSpec(spec)
	h.clock.Advance(spec.DeliveryTTL - time.Millisecond)
	h.reap()
	h.wantState(j3.TaskIDs[0], store.StatePending)
	h.clock.Advance(time.Millisecond)
	h.reap()
	h.wantHistory(j3.TaskIDs[0],
		step{store.StatePending, store.ReasonDispatched, 0, t3},
		step{store.StateExpired, store.ReasonExpired(90 * time.Second), 0, t3.Add(spec.DeliveryTTL)})
	h.wantEnded(j3.TaskIDs[0], store.StateExpired, "not picked up within its delivery TTL (1m30s)")
}

// A task whose lease lapsed (its agent stopped answering) and that no agent
// picked up again within its delivery TTL ends LOST, not EXPIRED: it was picked
// up once. The requeue gives it a new delivery TTL, counted from the requeue —
// found by Reap, or by a Lease that finds it too late. A task handed back
// unstarted is as if never leased, so it still ends EXPIRED.
func testRequeuedNotPickedUpAgain(h *harness) {
	a := h.register(nil)
	t0 := h.now()
	j := h.dispatch(a)
	t1 := h.leaseOne(a)
	h.clock.Advance(leaseFor)
	h.reap()
	tReq := h.now()
	h.wantState(t1.ID, store.StatePending)
	h.clock.Advance(deliveryTTL - time.Millisecond)
	h.reap()
	h.wantState(t1.ID, store.StatePending)
	h.clock.Advance(time.Millisecond)
	h.reap()
	lost := store.ReasonLostUnpicked(deliveryTTL)
	h.wantHistory(t1.ID,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateRunning, store.ReasonLeased(1), 1, t0},
		step{store.StatePending, leaseExpired(store.Task{Attempt: 1, MaxAttempts: 3}), 1, tReq},
		step{store.StateLost, lost, 1, tReq.Add(deliveryTTL)})
	h.wantEnded(t1.ID, store.StateLost, lost)
	h.wantCounts(j.ID, store.Counts{Lost: 1})
	if lost != "its agent stopped answering and it was not picked up again within its delivery TTL (10m0s)" {
		h.Fatalf("reason = %q", lost)
	}

	// A Lease that finds the requeued task past its delivery TTL ends it LOST too.
	j2 := h.dispatch(a)
	t2 := h.leaseOne(a)
	h.clock.Advance(leaseFor)
	h.reap()
	h.wantState(t2.ID, store.StatePending)
	h.clock.Advance(deliveryTTL)
	if r := h.lease(a, 1); len(r.Tasks) != 0 {
		h.Fatalf("leased %+v past its delivery TTL", r.Tasks)
	}
	h.wantEnded(t2.ID, store.StateLost, lost)
	h.wantCounts(j2.ID, store.Counts{Lost: 1})

	// Handed back unstarted at attempt 1 it is back at attempt 0: EXPIRED.
	j3 := h.dispatch(a)
	t3 := h.leaseOne(a)
	h.returnTasks(a, t3.Ref())
	h.clock.Advance(deliveryTTL)
	h.reap()
	h.wantEnded(t3.ID, store.StateExpired, store.ReasonExpired(deliveryTTL))
	h.wantCounts(j3.ID, store.Counts{Expired: 1})
}

func testTimeout(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	for range 3 { // heartbeats keep the lease alive past the timeout
		h.clock.Advance(20 * time.Second)
		h.heartbeat(a, leaseFor, t.Ref())
	}
	w := h.s.Watch(store.AgentKey(a.ID))
	defer w.Stop()
	h.reap()
	got := h.wantState(t.ID, store.StateRunning)
	if !got.CancelRequested || !got.TimedOut || got.CancelReason != store.ReasonTimedOut(timeout) {
		h.Fatalf("task past its deadline is not flagged: %+v", got)
	}
	if !fired(w) {
		h.Fatalf("a timeout did not wake the agent")
	}
	if r := h.lease(a, 0); !slices.Equal(r.Cancels, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Lease cancels = %+v, want the timed-out attempt", r.Cancels)
	}
	// A cancel asked later does not change why the attempt must stop.
	if _, err := h.s.CancelTask(h.ctx, t.ID, "later"); err != nil {
		h.Fatal(err)
	}
	h.mustReport(a, t.Ref(), store.OutcomeFailed, store.StateTimedOut)
	h.wantEnded(t.ID, store.StateTimedOut, cause(store.ReasonTimedOut(timeout), store.ReasonFailed))
	h.wantCounts(j.ID, store.Counts{TimedOut: 1})
	if store.ReasonTimedOut(timeout) != "timed out after 1m0s" {
		h.Fatalf("ReasonTimedOut = %q", store.ReasonTimedOut(timeout))
	}

	// Without a report the lease runs out and the task still ends TIMED_OUT.
	j2 := h.dispatch(a)
	t2 := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, 45*time.Second, t2.Ref())
	h.clock.Advance(41 * time.Second)
	h.reap()
	if got := h.wantState(t2.ID, store.StateRunning); !got.TimedOut {
		h.Fatalf("task past its deadline is not flagged: %+v", got)
	}
	h.clock.Advance(30 * time.Second)
	h.reap()
	h.wantEnded(t2.ID, store.StateTimedOut, cause(store.ReasonTimedOut(timeout), store.ReasonLeaseExpired))
	h.wantCounts(j2.ID, store.Counts{TimedOut: 1})
}

// testTimeoutFoundByReport: a timeout ends TIMED_OUT wherever it is found — a
// report that comes at or past the deadline before any Reap flagged the attempt,
// or the agent saying it stopped the attempt at its own count of the timeout —
// whatever the outcome reported.
func testTimeoutFoundByReport(h *harness) {
	a := h.register(nil)
	// Past the deadline, unflagged: no Reap ran.
	j := h.dispatch(a)
	t := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, leaseFor, t.Ref())
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, leaseFor, t.Ref())
	h.clock.Advance(20 * time.Second) // at the deadline exactly
	if got := h.task(t.ID); got.TimedOut {
		h.Fatalf("flagged without a Reap: %+v", got)
	}
	h.mustReport(a, t.Ref(), store.OutcomeFailed, store.StateTimedOut)
	h.wantEnded(t.ID, store.StateTimedOut, cause(store.ReasonTimedOut(timeout), store.ReasonFailed))
	h.wantCounts(j.ID, store.Counts{TimedOut: 1})

	// A success reported past the deadline timed out all the same.
	j2 := h.dispatch(a)
	t2 := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, leaseFor, t2.Ref())
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, leaseFor, t2.Ref())
	h.clock.Advance(21 * time.Second)
	h.mustReport(a, t2.Ref(), store.OutcomeSucceeded, store.StateTimedOut)
	h.wantEnded(t2.ID, store.StateTimedOut, cause(store.ReasonTimedOut(timeout), store.ReasonSucceeded))
	h.wantCounts(j2.ID, store.Counts{TimedOut: 1})

	// The agent stopped it at its own count of the timeout, which starts when it
	// received the task, so the store's clock may not be there yet.
	j3 := h.dispatch(a)
	t3 := h.leaseOne(a)
	h.clock.Advance(time.Second)
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: t3.ID, Attempt: t3.Attempt,
		Outcome: store.OutcomeFailed, ExitCode: 143, TimedOut: true})
	if err != nil || st != store.StateTimedOut {
		h.Fatalf("Report(timed out by the agent) = %v, %v; want TIMED_OUT", st, err)
	}
	h.wantEnded(t3.ID, store.StateTimedOut, cause(store.ReasonTimedOut(timeout), store.ReasonFailed))
	h.wantCounts(j3.ID, store.Counts{TimedOut: 1})
	if got := h.task(t3.ID); got.ExitCode != 143 {
		h.Fatalf("exit code %d, want the reported 143", got.ExitCode)
	}

	// Just before the deadline, a report ends the task as reported.
	j4 := h.dispatch(a)
	t4 := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, leaseFor, t4.Ref())
	h.clock.Advance(20 * time.Second)
	h.heartbeat(a, leaseFor, t4.Ref())
	h.clock.Advance(20*time.Second - time.Millisecond)
	h.mustReport(a, t4.Ref(), store.OutcomeFailed, store.StateFailed)
	h.wantCounts(j4.ID, store.Counts{Failed: 1})
}

func testConcurrentReapers(h *harness) {
	a := h.register(nil)
	const n = 20
	t0 := h.now()
	for i := 0; i < n; i++ {
		h.dispatch(a)
	}
	if r := h.lease(a, n); len(r.Tasks) != n {
		h.Fatalf("leased %d", len(r.Tasks))
	}
	h.clock.Advance(leaseFor)
	t1 := h.now()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.s.Reap(h.ctx); err != nil {
				h.Error(err)
			}
		}()
	}
	wg.Wait()
	r := h.lease(a, n)
	if len(r.Tasks) != n {
		h.Fatalf("after concurrent reaping leased %d tasks, want %d", len(r.Tasks), n)
	}
	for _, t := range r.Tasks {
		if t.Attempt != 2 {
			h.Fatalf("task %s at attempt %d, want 2 (requeued exactly once)", t.ID, t.Attempt)
		}
		h.wantHistory(t.ID,
			step{store.StatePending, store.ReasonDispatched, 0, t0},
			step{store.StateRunning, store.ReasonLeased(1), 1, t0},
			step{store.StatePending, leaseExpired(store.Task{Attempt: 1, MaxAttempts: 3}), 1, t1},
			step{store.StateRunning, store.ReasonLeased(2), 2, t1})
	}
}
