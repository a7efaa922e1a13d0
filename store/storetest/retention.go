package storetest

import (
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

var retentionCases = []testCase{
	{"FinishedTasksAndJobs", testRetention, nil},
	{"IdempotencyKeyGoesWithItsJob", testRetentionIdempotency, nil},
	{"AgedOutSaysSo", testRetentionAgedOut, nil},
	{"NewestPerAgent", testRetentionPerAgent, func(c *store.Config) { c.KeepPerAgent = 3 }},
}

// testRetentionPerAgent: with KeepPerAgent 3 an agent keeps its newest three
// tasks; older finished ones go as newer ones end, another agent's stay.
func testRetentionPerAgent(h *harness) {
	a, b := h.register(nil), h.register(nil)
	var ids []string
	for range 6 {
		h.dispatch(a)
		t := h.leaseOne(a)
		h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
		ids = append(ids, t.ID)
	}
	h.dispatch(b)
	other := h.leaseOne(b)
	h.mustReport(b, other.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	tasks, _, err := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID})
	if err != nil {
		h.Fatal(err)
	}
	var got []string
	for _, t := range tasks {
		got = append(got, t.ID)
	}
	if !sameSet(got, ids[3:]) {
		h.Fatalf("the agent keeps %v, want its newest three %v", got, ids[3:])
	}
	for _, id := range ids[:3] {
		if _, err := h.s.GetTask(h.ctx, id); store.KindOf(err) != store.KindNotFound {
			h.Fatalf("GetTask of a task past the count: %v", err)
		}
	}
	h.task(other.ID)
}

// taskIDAt returns a task id of agent made at t (its time characters), as
// store.NewTaskID would have made it then.
func taskIDAt(agentID string, t time.Time) string {
	const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	us := t.UnixMicro()
	var b [11]byte
	for i := 10; i >= 0; i-- {
		b[i] = alphabet[us&31]
		us >>= 5
	}
	return "t" + string(b[:]) + "0000-" + agentID
}

// testRetentionAgedOut: GetTask of a task id made longer than the retention
// ago says it may have aged out; of a recent one, plainly not found.
func testRetentionAgedOut(h *harness) {
	a := h.register(nil)
	now := h.clock.Now()
	old := taskIDAt(a.ID, now.Add(-retention-26*time.Hour))
	_, err := h.s.GetTask(h.ctx, old)
	wantErr(h, err, store.ErrTaskNotFoundAt(old, now, retention), "GetTask of a task past retention")
	if !strings.Contains(err.Error(), "aged out") {
		h.Fatalf("GetTask of a task past retention: %q does not say it aged out", err)
	}
	recent := taskIDAt(a.ID, now.Add(-time.Hour))
	_, err = h.s.GetTask(h.ctx, recent)
	wantErr(h, err, store.ErrTaskNotFound(recent), "GetTask of an unknown recent task")
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
