package storetest

import (
	"time"

	"github.com/orange-forge/forge/store"
)

var retentionCases = []testCase{
	{"FinishedTasksAndJobs", testRetention},
	{"IdempotencyKeyGoesWithItsJob", testRetentionIdempotency},
}

func testRetention(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	live := h.dispatch(a)
	h.clock.Advance(retention - time.Hour)
	h.reap()
	h.task(t.ID)
	h.job(j.ID)
	h.clock.Advance(2 * time.Hour)
	h.reap()
	_, err := h.s.GetTask(h.ctx, t.ID)
	wantErr(h, err, store.ErrTaskNotFound(t.ID), "task past retention")
	_, err = h.s.GetJob(h.ctx, j.ID)
	wantErr(h, err, store.ErrJobNotFound(j.ID), "job past retention")
	if tasks, _, _ := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID}); len(tasks) != 1 || tasks[0].ID != live.TaskIDs[0] {
		h.Fatalf("ListTasks of the agent = %d tasks; want only the live one", len(tasks))
	}
	if jobs, _, _ := h.s.ListJobs(h.ctx, store.Page{}); len(jobs) != 1 || jobs[0].ID != live.ID {
		h.Fatalf("ListJobs = %d jobs; want only the live one", len(jobs))
	}
	// A live task is never dropped: it ended EXPIRED by its TTL within this
	// window, so it is retained from that moment on.
	h.wantEnded(live.TaskIDs[0], store.StateExpired, store.ReasonExpired(deliveryTTL))
	h.job(live.ID)
}

func testRetentionIdempotency(h *harness) {
	a := h.register(nil)
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.IdempotencyKey = "nightly"
	j1 := h.dispatchSpec(spec)
	if _, err := h.s.CancelTask(h.ctx, j1.TaskIDs[0], ""); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(retention + time.Hour)
	h.reap()
	_, err := h.s.GetJob(h.ctx, j1.ID)
	wantErr(h, err, store.ErrJobNotFound(j1.ID), "job past retention")
	if j2 := h.dispatchSpec(spec); j2.ID == j1.ID || j2.Existing {
		h.Fatalf("the key of a dropped job still names it: %+v", j2)
	}
}
