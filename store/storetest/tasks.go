package storetest

import (
	"slices"
	"time"

	"github.com/orange-forge/forge/store"
)

var taskCases = []testCase{
	{"LeaseAndReport", testLeaseAndReport, nil},
	{"ReportRules", testReportRules, nil},
	{"CancelPending", testCancelPending, nil},
	{"CancelRunning", testCancelRunning, nil},
	{"List", testListTasks, nil},
	{"Watch", testWatch, nil},
}

const unknownTask = "t000000000000000-a000000000000000"

func testLeaseAndReport(h *harness) {
	a := h.register(nil)
	t0 := h.now()
	j := h.dispatch(a)
	id := j.TaskIDs[0]
	if ag, ok := store.AgentOfTask(id); !ok || ag != a.ID || !store.ValidTaskID(id) {
		h.Fatalf("task id %q does not name agent %s", id, a.ID)
	}
	p := h.wantState(id, store.StatePending)
	if p.Attempt != 0 || p.JobID != j.ID || p.AgentID != a.ID || string(p.Payload) != "hello" || p.MaxAttempts != 3 ||
		p.Type != "echo" || p.Timeout != timeout || p.DeliveryTTL != deliveryTTL || p.Held || !p.DeliverBy.Equal(t0.Add(deliveryTTL)) ||
		!p.CreatedAt.Equal(t0) || p.Error != "" {
		h.Fatalf("pending task = %+v", p)
	}
	h.wantCounts(j.ID, store.Counts{Pending: 1})
	if r := h.lease(a, 0); len(r.Tasks) != 0 {
		h.Fatalf("Lease with max 0 took %d tasks", len(r.Tasks))
	}
	h.clock.Advance(time.Second)
	t1 := h.now()
	t := h.leaseOne(a)
	if t.ID != id || t.Attempt != 1 || t.State != store.StateRunning || t.Type != "echo" || string(t.Payload) != "hello" ||
		!t.LeaseExpiresAt.Equal(t1.Add(leaseFor)) || !t.Deadline.Equal(t1.Add(timeout)) || t.Timeout != timeout {
		h.Fatalf("leased task = %+v", t)
	}
	if r := h.lease(a, 5); len(r.Tasks) != 0 {
		h.Fatalf("a second Lease took %d tasks", len(r.Tasks))
	}
	ag := h.agent(a.ID)
	if !slices.Equal(ag.Running, []store.TaskRef{t.Ref()}) || ag.Pending != 0 {
		h.Fatalf("agent running %+v pending %d, want %+v and none", ag.Running, ag.Pending, t.Ref())
	}
	h.wantCounts(j.ID, store.Counts{Running: 1})
	h.clock.Advance(time.Second)
	t2 := h.now()
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: id, Attempt: 1, Outcome: store.OutcomeSucceeded,
		Output: []byte("hello"), ExitCode: 0, OutputSize: 5})
	if err != nil || st != store.StateSucceeded {
		h.Fatalf("Report = %v, %v", st, err)
	}
	done := h.wantHistory(id,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateRunning, store.ReasonLeased(1), 1, t1},
		step{store.StateSucceeded, store.ReasonSucceeded, 1, t2})
	if string(done.Output) != "hello" || done.OutputSize != 5 || done.Error != "" || !done.UpdatedAt.Equal(t2) || !done.LeaseExpiresAt.IsZero() {
		h.Fatalf("finished task = %+v", done)
	}
	if jb := h.wantCounts(j.ID, store.Counts{Succeeded: 1}); !jb.Counts.Done() || jb.Canceled {
		h.Fatalf("GetJob = %+v", jb)
	}
	if ag := h.agent(a.ID); len(ag.Running) != 0 {
		h.Fatalf("agent still running %+v", ag.Running)
	}
	// The output's size is at least its length, whatever the report says.
	h.dispatch(a)
	t = h.leaseOne(a)
	if _, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: t.ID, Attempt: 1, Outcome: store.OutcomeFailed,
		Output: []byte("oops"), ExitCode: 3, Error: "exit status 3", OutputTruncated: true}); err != nil {
		h.Fatal(err)
	}
	if f := h.task(t.ID); f.OutputSize != 4 || !f.OutputTruncated || f.ExitCode != 3 || f.Error != "exit status 3" ||
		f.History[len(f.History)-1].Reason != store.ReasonFailed {
		h.Fatalf("failed task = %+v", f)
	}
}

func testReportRules(h *harness) {
	a, b := h.register(nil), h.register(nil)
	h.dispatch(a)
	t := h.leaseOne(a)
	id := t.ID
	_, err := h.report(b, t.Ref(), store.OutcomeSucceeded)
	wantErr(h, err, store.ErrTaskNotFound(id), "report of another agent's task")
	_, err = h.report(a, store.TaskRef{TaskID: id, Attempt: 2}, store.OutcomeSucceeded)
	wantErr(h, err, errStale(2, id, 1, store.StateRunning), "report of a future attempt")
	_, err = h.report(a, store.TaskRef{TaskID: "t000000000000000-" + a.ID, Attempt: 1}, store.OutcomeSucceeded)
	wantErr(h, err, store.ErrTaskNotFound("t000000000000000-"+a.ID), "report of an unknown task")
	_, err = h.report(a, store.TaskRef{TaskID: "t-x-" + a.ID, Attempt: 1}, store.OutcomeSucceeded)
	wantErr(h, err, store.ErrTaskNotFound("t-x-"+a.ID), "report of a malformed task id")
	_, err = h.report(a, t.Ref(), store.OutcomeUnspecified)
	wantErr(h, err, store.Errorf(store.KindInvalid, "%s", store.MsgBadOutcome), "report without outcome")
	h.wantState(id, store.StateRunning)

	h.mustReport(a, t.Ref(), store.OutcomeFailed, store.StateFailed)
	h.mustReport(a, t.Ref(), store.OutcomeFailed, store.StateFailed) // the identical report again
	_, err = h.report(a, t.Ref(), store.OutcomeSucceeded)
	wantErr(h, err, store.ErrTaskEnded(id, store.StateFailed), "different outcome for a reported attempt")
	_, err = h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: id, Attempt: 1, Outcome: store.OutcomeFailed, ExitCode: 9})
	wantErr(h, err, store.ErrTaskEnded(id, store.StateFailed), "different exit code for a reported attempt")
	_, err = h.report(a, store.TaskRef{TaskID: id, Attempt: 2}, store.OutcomeFailed)
	wantErr(h, err, errStaleEnded(2, id, store.StateFailed, 1), "report of another attempt of an ended task")
	_, err = h.report(a, t.Ref(), store.OutcomeUnspecified)
	wantErr(h, err, store.Errorf(store.KindInvalid, "%s", store.MsgBadOutcome), "report without outcome of an ended task")
	if f := h.task(id); len(f.History) != 3 {
		h.Fatalf("refused reports changed the history: %s", showHistory(f.History))
	}

	// An ended task that was never reported has no report to repeat.
	h.dispatch(a)
	c := h.leaseOne(a)
	if _, err := h.s.CancelTask(h.ctx, c.ID, ""); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(leaseFor)
	h.reap()
	h.wantEnded(c.ID, store.StateCanceled, cause(store.ReasonTaskCanceled, store.ReasonLeaseExpired))
	_, err = h.report(a, c.Ref(), store.OutcomeSucceeded)
	wantErr(h, err, store.ErrTaskEnded(c.ID, store.StateCanceled), "report of an attempt ended by its lease")
}

func testCancelPending(h *harness) {
	a := h.register(nil)
	t0 := h.now()
	j := h.dispatch(a)
	id := j.TaskIDs[0]
	h.clock.Advance(time.Second)
	got, err := h.s.CancelTask(h.ctx, id, "")
	if err != nil || got.State != store.StateCanceled || got.ID != id {
		h.Fatalf("CancelTask = %+v, %v", got, err)
	}
	h.wantHistory(id,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateCanceled, store.ReasonTaskCanceled, 0, t0.Add(time.Second)})
	h.wantEnded(id, store.StateCanceled, store.ReasonTaskCanceled)
	h.wantCounts(j.ID, store.Counts{Canceled: 1})
	if r := h.lease(a, 1); len(r.Tasks) != 0 {
		h.Fatalf("a cancelled task was leased")
	}
	_, err = h.s.CancelTask(h.ctx, id, "")
	wantErr(h, err, store.ErrTaskEnded(id, store.StateCanceled), "cancel of a finished task")
	_, err = h.s.CancelTask(h.ctx, unknownTask, "")
	wantErr(h, err, store.ErrTaskNotFound(unknownTask), "cancel of an unknown task")
	_, err = h.s.CancelTask(h.ctx, "nope", "")
	wantErr(h, err, store.ErrTaskNotFound("nope"), "cancel of a malformed task id")
	_, err = h.s.GetTask(h.ctx, unknownTask)
	wantErr(h, err, store.ErrTaskNotFound(unknownTask), "GetTask of an unknown task")

	// The operator's reason is kept as given.
	j = h.dispatch(a)
	if _, err := h.s.CancelTask(h.ctx, j.TaskIDs[0], "not needed"); err != nil {
		h.Fatal(err)
	}
	h.wantEnded(j.TaskIDs[0], store.StateCanceled, "not needed")
}

func testCancelRunning(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	w := h.s.Watch(store.AgentKey(a.ID))
	defer w.Stop()
	h.clock.Advance(time.Second)
	got, err := h.s.CancelTask(h.ctx, t.ID, "stop it")
	if err != nil || got.State != store.StateRunning || !got.CancelRequested || got.CancelReason != "stop it" || !got.UpdatedAt.Equal(h.now()) {
		h.Fatalf("CancelTask of a running task = %+v, %v", got, err)
	}
	if !fired(w) {
		h.Fatalf("cancel did not wake the agent's watcher")
	}
	// A second cancel changes nothing: the first reason stays.
	if got, err := h.s.CancelTask(h.ctx, t.ID, "again"); err != nil || got.CancelReason != "stop it" {
		h.Fatalf("second CancelTask = %+v, %v", got, err)
	}
	r := h.lease(a, 0)
	if !slices.Equal(r.Cancels, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Lease cancels = %+v, want %+v", r.Cancels, t.Ref())
	}
	if r := h.lease(a, 0); len(r.Cancels) != 0 {
		h.Fatalf("a cancel was delivered twice by Lease: %+v", r.Cancels)
	}
	for range 2 { // Heartbeat repeats it every time
		if hb := h.heartbeat(a, leaseFor, t.Ref()); !slices.Equal(hb.Cancel, []store.TaskRef{t.Ref()}) || len(hb.Abandon) != 0 {
			h.Fatalf("Heartbeat = %+v; want the cancel", hb)
		}
	}
	h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateCanceled)
	done := h.wantEnded(t.ID, store.StateCanceled, cause("stop it", store.ReasonSucceeded))
	if string(done.Output) != "out" {
		h.Fatalf("output of the cancelled task was not kept: %q", done.Output)
	}
	h.wantCounts(j.ID, store.Counts{Canceled: 1})
}

func testListTasks(h *harness) {
	a, b := h.register(nil), h.register(nil)
	var all []string
	for i := 0; i < 5; i++ {
		all = append(all, h.dispatch(a).TaskIDs[0])
		h.clock.Advance(time.Millisecond)
	}
	jb := h.dispatch(b)
	t := h.leaseOne(a)
	h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)

	got := pagedIDs(h, func(p store.Page) ([]store.Task, string, error) {
		return h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID, Page: p})
	}, func(x store.Task) string { return x.ID })
	want := slices.Clone(all)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		h.Fatalf("ListTasks by agent, paged = %v, want newest first %v", got, want)
	}
	taskIDs := func(f store.TaskFilter) []string {
		h.Helper()
		page, next, err := h.s.ListTasks(h.ctx, f)
		if err != nil || next != "" {
			h.Fatalf("ListTasks(%+v) = next %q, %v", f, next, err)
		}
		return ids(page, func(x store.Task) string { return x.ID })
	}
	if got := taskIDs(store.TaskFilter{State: store.StateSucceeded}); !slices.Equal(got, all[:1]) {
		h.Fatalf("ListTasks SUCCEEDED = %v, want %v", got, all[:1])
	}
	if got := taskIDs(store.TaskFilter{AgentID: a.ID, State: store.StatePending}); !slices.Equal(got, want[:4]) {
		h.Fatalf("ListTasks of a, PENDING = %v, want %v", got, want[:4])
	}
	if got := taskIDs(store.TaskFilter{JobID: jb.ID}); !slices.Equal(got, jb.TaskIDs) {
		h.Fatalf("ListTasks by job = %v, want %v", got, jb.TaskIDs)
	}
	if got := taskIDs(store.TaskFilter{}); !slices.Equal(got, append([]string{jb.TaskIDs[0]}, want...)) {
		h.Fatalf("ListTasks = %v, want every task newest first", got)
	}
	for _, f := range []store.TaskFilter{{AgentID: unknownAgent}, {JobID: "j000000000000000"}, {AgentID: "nope"}, {JobID: "nope"}} {
		if got := taskIDs(f); len(got) != 0 {
			h.Fatalf("ListTasks(%+v) = %v, want none", f, got)
		}
	}
}

func testWatch(h *harness) {
	a := h.register(nil)
	wa := h.s.Watch(store.AgentKey(a.ID))
	defer wa.Stop()
	j := h.dispatch(a)
	if !fired(wa) {
		h.Fatalf("dispatch did not fire the agent's watcher")
	}
	wt := h.s.Watch(store.TaskKey(j.TaskIDs[0]))
	defer wt.Stop()
	wj := h.s.Watch(store.JobKey(j.ID))
	defer wj.Stop()
	t := h.leaseOne(a)
	if !fired(wt) || !fired(wj) {
		h.Fatalf("a lease did not fire the task's and job's watchers")
	}
	drain(wt)
	drain(wj)
	h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	if !fired(wt) || !fired(wj) {
		h.Fatalf("report did not fire the task's and job's watchers")
	}
	other := h.s.Watch(store.AgentKey(unknownAgent))
	defer other.Stop()
	h.dispatch(a)
	select {
	case <-other.C:
		h.Fatalf("a dispatch to one agent fired another agent's watcher")
	case <-time.After(100 * time.Millisecond):
	}
}
