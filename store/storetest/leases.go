package storetest

import (
	"slices"
	"sync"
	"time"

	"github.com/orange-forge/forge/store"
)

var leaseCases = []testCase{
	{"ExpiryRequeues", testLeaseExpiry, nil},
	{"LostAfterMaxAttempts", testLost, nil},
	{"HeartbeatExtendsAndAbandons", testHeartbeat, nil},
	{"CancelRunningLeaseExpires", testCancelLeaseExpiry, nil},
	{"OrderAndBatch", testLeaseBatch, nil},
	{"PollGeneration", testPollGeneration, nil},
	{"Concurrent", testConcurrentLeases, nil},
	{"ReturnRequeues", testReturn, nil},
}

func testReturn(h *harness) {
	a, b := h.register(nil), h.register(nil)
	t0 := h.now()
	j := h.dispatch(a)
	h.dispatch(a)
	h.dispatch(a)
	r := h.lease(a, 3)
	if len(r.Tasks) != 3 {
		h.Fatalf("leased %d tasks, want 3", len(r.Tasks))
	}
	keep, back, stop := r.Tasks[0], r.Tasks[1], r.Tasks[2]
	h.clock.Advance(time.Second)
	tRet := h.now()
	// Another agent's attempt, or another attempt of a held task, is left alone.
	if got := h.returnTasks(b, keep.Ref()); len(got) != 0 {
		h.Fatalf("b handed back a's attempt: %v", got)
	}
	if got := h.returnTasks(a, store.TaskRef{TaskID: back.ID, Attempt: 2}, store.TaskRef{TaskID: unknownTask, Attempt: 1}); len(got) != 0 {
		h.Fatalf("attempts a does not hold were handed back: %v", got)
	}
	if _, err := h.s.CancelTask(h.ctx, stop.ID, ""); err != nil {
		h.Fatal(err)
	}
	got := h.returnTasks(a, back.Ref(), stop.Ref())
	if !slices.Equal(got, []store.TaskRef{back.Ref(), stop.Ref()}) {
		h.Fatalf("handed back %v, want %v", got, []store.TaskRef{back.Ref(), stop.Ref()})
	}
	p := h.wantState(back.ID, store.StatePending)
	if p.Attempt != 0 || !p.LeaseExpiresAt.IsZero() || !p.Deadline.IsZero() || !p.DeliverBy.Equal(tRet.Add(deliveryTTL)) {
		h.Fatalf("handed-back task = %+v; want attempt 0, no lease, no deadline, a new delivery TTL", p)
	}
	h.wantEnded(stop.ID, store.StateCanceled, cause(store.ReasonTaskCanceled, store.ReasonReturned(1)))
	if ag := h.agent(a.ID); ag.Pending != 1 || !slices.Equal(ag.Running, []store.TaskRef{keep.Ref()}) {
		h.Fatalf("agent after the hand-back: pending %d running %v", ag.Pending, ag.Running)
	}
	// Handing back again changes nothing.
	if got := h.returnTasks(a, back.Ref()); len(got) != 0 {
		h.Fatalf("handed back twice: %v", got)
	}
	// The next Lease takes it again, as the same attempt number.
	again := h.leaseOne(a)
	if again.ID != back.ID || again.Attempt != 1 {
		h.Fatalf("leased %s attempt %d, want %s attempt 1", again.ID, again.Attempt, back.ID)
	}
	h.wantHistory(back.ID,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateRunning, store.ReasonLeased(1), 1, t0},
		step{store.StatePending, store.ReasonReturned(1), 1, tRet},
		step{store.StateRunning, store.ReasonLeased(1), 1, tRet})
	h.mustReport(a, again.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	h.wantCounts(j.ID, store.Counts{Running: 1})
	_, err := h.s.ReturnTasks(h.ctx, store.ReturnParams{Cred: store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}, Tasks: []store.TaskRef{keep.Ref()}})
	wantErr(h, err, store.ErrUnknownAgent(), "hand-back with a wrong secret")
	h.wantState(keep.ID, store.StateRunning)
}

func testLeaseExpiry(h *harness) {
	a := h.register(nil)
	t0 := h.now()
	j := h.dispatch(a)
	t1 := h.leaseOne(a)
	h.clock.Advance(leaseFor - time.Millisecond)
	h.reap()
	h.wantState(t1.ID, store.StateRunning)
	h.clock.Advance(time.Millisecond)
	h.reap()
	tExp := h.now()
	p := h.wantState(t1.ID, store.StatePending)
	if p.Attempt != 1 || !p.LeaseExpiresAt.IsZero() || !p.Deadline.IsZero() || !p.DeliverBy.Equal(tExp.Add(deliveryTTL)) {
		h.Fatalf("requeued task = %+v; want attempt 1 until leased again, no lease, no deadline, a new delivery TTL", p)
	}
	if ag := h.agent(a.ID); ag.Pending != 1 || len(ag.Running) != 0 {
		h.Fatalf("agent after the requeue: pending %d running %v", ag.Pending, ag.Running)
	}
	h.wantCounts(j.ID, store.Counts{Pending: 1})
	h.clock.Advance(time.Second)
	tLease2 := h.now()
	t2 := h.leaseOne(a)
	if t2.ID != t1.ID || t2.Attempt != 2 {
		h.Fatalf("re-leased task = %s attempt %d, want %s attempt 2", t2.ID, t2.Attempt, t1.ID)
	}
	_, err := h.report(a, t1.Ref(), store.OutcomeSucceeded)
	wantErr(h, err, errStale(1, t1.ID, 2, store.StateRunning), "report of the expired attempt")
	if hb := h.heartbeat(a, leaseFor, t1.Ref(), t2.Ref()); !slices.Equal(hb.Abandon, []store.TaskRef{t1.Ref()}) || len(hb.Cancel) != 0 {
		h.Fatalf("Heartbeat of the expired and the current attempt = %+v; want the expired one abandoned", hb)
	}
	h.mustReport(a, t2.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	_, err = h.report(a, t1.Ref(), store.OutcomeSucceeded)
	wantErr(h, err, errStaleEnded(1, t1.ID, store.StateSucceeded, 2), "late report of attempt 1 after attempt 2 finished")
	h.wantHistory(t1.ID,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateRunning, store.ReasonLeased(1), 1, t0},
		step{store.StatePending, leaseExpired(store.Task{Attempt: 1, MaxAttempts: 3}), 1, tExp},
		step{store.StateRunning, store.ReasonLeased(2), 2, tLease2},
		step{store.StateSucceeded, store.ReasonSucceeded, 2, tLease2})
}

func testLost(h *harness) {
	a := h.register(nil)
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.MaxAttempts = 2
	t0 := h.now()
	j := h.dispatchSpec(spec)
	var at []time.Time
	for i := 1; i <= 2; i++ {
		t := h.leaseOne(a)
		if t.Attempt != int32(i) || t.MaxAttempts != 2 {
			h.Fatalf("attempt = %d of %d, want %d of 2", t.Attempt, t.MaxAttempts, i)
		}
		at = append(at, h.now())
		h.clock.Advance(leaseFor)
		h.reap()
	}
	lostReason := leaseExpired(store.Task{Attempt: 2, MaxAttempts: 2})
	h.wantHistory(j.TaskIDs[0],
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateRunning, store.ReasonLeased(1), 1, at[0]},
		step{store.StatePending, leaseExpired(store.Task{Attempt: 1, MaxAttempts: 2}), 1, at[1]},
		step{store.StateRunning, store.ReasonLeased(2), 2, at[1]},
		step{store.StateLost, lostReason, 2, h.now()})
	h.wantEnded(j.TaskIDs[0], store.StateLost, lostReason)
	h.wantCounts(j.ID, store.Counts{Lost: 1})
	if r := h.lease(a, 1); len(r.Tasks) != 0 {
		h.Fatalf("a lost task was leased again")
	}
}

func testHeartbeat(h *harness) {
	a, b := h.register(nil), h.register(nil)
	h.dispatch(a)
	t := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	if hb := h.heartbeat(a, leaseFor, t.Ref()); len(hb.Abandon) != 0 || len(hb.Cancel) != 0 {
		h.Fatalf("Heartbeat = %+v", hb)
	}
	extended := h.now().Add(leaseFor)
	// b names a's attempt: it is told to abandon it, and a's lease is unchanged.
	if hb := h.heartbeat(b, time.Hour, t.Ref()); !slices.Equal(hb.Abandon, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Heartbeat by another agent = %+v", hb)
	}
	// A shorter lease never shortens the one given.
	h.heartbeat(a, time.Second, t.Ref())
	if got := h.task(t.ID); !got.LeaseExpiresAt.Equal(extended) {
		h.Fatalf("lease expires %v, want %v", got.LeaseExpiresAt, extended)
	}
	if hb := h.heartbeat(a, leaseFor, store.TaskRef{TaskID: unknownTask, Attempt: 1}, store.TaskRef{TaskID: t.ID, Attempt: 7}); len(hb.Abandon) != 2 {
		h.Fatalf("Heartbeat naming attempts a does not hold = %+v; want both abandoned", hb)
	}
	h.clock.Advance(25 * time.Second) // past the first lease, within the extension
	h.reap()
	h.wantState(t.ID, store.StateRunning)
	h.clock.Advance(5 * time.Second)
	h.reap()
	h.wantState(t.ID, store.StatePending)
}

func testCancelLeaseExpiry(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	if _, err := h.s.CancelTask(h.ctx, t.ID, ""); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(leaseFor)
	h.reap()
	h.wantEnded(t.ID, store.StateCanceled, cause(store.ReasonTaskCanceled, store.ReasonLeaseExpired))
	h.wantCounts(j.ID, store.Counts{Canceled: 1})
}

func testLeaseBatch(h *harness) {
	a := h.register(nil)
	var all []string
	for i := 0; i < 5; i++ {
		all = append(all, h.dispatch(a).TaskIDs[0])
	}
	r := h.lease(a, 3)
	if got := ids(r.Tasks, func(t store.Task) string { return t.ID }); !slices.Equal(got, all[:3]) {
		h.Fatalf("Lease max 3 took %v, want the oldest three %v", got, all[:3])
	}
	if ag := h.agent(a.ID); ag.Pending != 2 || len(ag.Running) != 3 {
		h.Fatalf("agent pending %d running %d, want 2 and 3", ag.Pending, len(ag.Running))
	}
	if r := h.lease(a, 64); len(r.Tasks) != 2 {
		h.Fatalf("second Lease took %d, want 2", len(r.Tasks))
	}
}

func testPollGeneration(h *harness) {
	a := h.register(nil)
	r1 := h.lease(a, 1)
	w := h.s.Watch(store.AgentKey(a.ID))
	defer w.Stop()
	r2 := h.lease(a, 1)
	if r2.Gen == r1.Gen {
		h.Fatalf("a new Poll kept generation %d", r1.Gen)
	}
	if !fired(w) {
		h.Fatalf("a new Poll did not wake the older one")
	}
	h.dispatch(a)
	old, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: leaseFor, Gen: r1.Gen})
	if err != nil || !old.Superseded || len(old.Tasks) != 0 || old.Gen != r1.Gen {
		h.Fatalf("Lease of a superseded Poll = %+v, %v", old, err)
	}
	cur, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: leaseFor, Gen: r2.Gen})
	if err != nil || cur.Superseded || len(cur.Tasks) != 1 || cur.Gen != r2.Gen {
		h.Fatalf("Lease of the current Poll = %+v, %v", cur, err)
	}
}

func testConcurrentLeases(h *harness) {
	a := h.register(nil)
	const n = 40
	for i := 0; i < n; i++ {
		h.dispatch(a)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 3, Lease: time.Minute})
				if err != nil {
					h.Error(err)
					return
				}
				if len(r.Tasks) == 0 {
					return
				}
				mu.Lock()
				for _, t := range r.Tasks {
					seen[t.ID]++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(seen) != n {
		h.Fatalf("leased %d distinct tasks, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			h.Fatalf("task %s leased %d times", id, c)
		}
	}
}

// leaseExpired is the reason store.LeaseExpiryEnd gives for an attempt of t.
func leaseExpired(t store.Task) string {
	_, reason := store.LeaseExpiryEnd(t)
	return reason
}
