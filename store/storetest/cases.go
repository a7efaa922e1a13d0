package storetest

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/orange-forge/forge/store"
)

var cases = []struct {
	name string
	fn   func(h *harness)
}{
	{"RegisterAndAuthenticate", testRegister},
	{"RotateToken", testRotate},
	{"LeaseAndReport", testLeaseAndReport},
	{"ReportRules", testReportRules},
	{"LeaseExpiryRequeues", testLeaseExpiry},
	{"LostAfterMaxAttempts", testLost},
	{"HeartbeatExtendsAndAbandons", testHeartbeat},
	{"CancelPending", testCancelPending},
	{"CancelRunning", testCancelRunning},
	{"CancelRunningLeaseExpires", testCancelLeaseExpiry},
	{"DeliveryTTL", testDeliveryTTL},
	{"ExecutionTimeout", testTimeout},
	{"Revoke", testRevoke},
	{"SelectorTargets", testSelector},
	{"MaxConcurrency", testMaxConcurrency},
	{"MaxFailures", testMaxFailures},
	{"CancelJob", testCancelJob},
	{"Idempotency", testIdempotency},
	{"ListTasks", testListTasks},
	{"ListAgents", testListAgents},
	{"ListJobs", testListJobs},
	{"Watch", testWatch},
	{"PollGeneration", testPollGeneration},
	{"EnrollmentTokens", testEnrollment},
	{"PendingLimit", testPendingLimit},
	{"ConcurrentLeases", testConcurrentLeases},
	{"ConcurrentReapers", testConcurrentReapers},
	{"Retention", testRetention},
	{"LeaseOrderAndBatch", testLeaseBatch},
	{"RevokeReason", testRevokeReason},
}

func testRegister(h *harness) {
	a := h.register(map[string]string{"env": "prod"})
	if !store.ValidID(a.ID, 'a') {
		h.Fatalf("agent id %q is not well formed", a.ID)
	}
	if err := h.s.AuthenticateAgent(h.ctx, a.cred); err != nil {
		h.Fatalf("AuthenticateAgent: %v", err)
	}
	wantKind(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}), store.KindUnauthenticated, "wrong secret")
	wantKind(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: "a0000000000000000", SecretHash: a.cred.SecretHash}), store.KindUnauthenticated, "unknown agent")
	_, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}, Max: 1, Lease: time.Second})
	wantKind(h, err, store.KindUnauthenticated, "Lease with wrong secret")

	b := h.register(nil)
	if b.ID == a.ID {
		h.Fatalf("two registrations got the same id")
	}
	got, err := h.s.GetAgent(h.ctx, a.ID)
	if err != nil {
		h.Fatalf("GetAgent: %v", err)
	}
	if got.Name != a.Name || got.Labels["env"] != "prod" || got.Hostname != "host" || got.Version != "v1" ||
		!slices.Equal(got.TaskTypes, []string{"echo"}) || got.Status != store.AgentOnline {
		h.Fatalf("GetAgent = %+v", got)
	}
	h.clock.Advance(51 * time.Second)
	if got, _ := h.s.GetAgent(h.ctx, a.ID); got.Status != store.AgentOffline {
		h.Fatalf("after the online window the agent is %v, want offline", got.Status)
	}
	h.lease(a, 0)
	if got, _ := h.s.GetAgent(h.ctx, a.ID); got.Status != store.AgentOnline || !got.LastSeenAt.Equal(h.clock.Now()) {
		h.Fatalf("after a Lease the agent is %v last seen %v, want online now", got.Status, got.LastSeenAt)
	}
	_, err = h.s.GetAgent(h.ctx, "a0000000000000000")
	wantKind(h, err, store.KindNotFound, "GetAgent unknown")
}

func testRotate(h *harness) {
	a := h.register(nil)
	if err := h.s.RotateAgentToken(h.ctx, a.cred, hash("next")); err != nil {
		h.Fatalf("RotateAgentToken: %v", err)
	}
	if err := h.s.AuthenticateAgent(h.ctx, a.cred); err != nil {
		h.Fatalf("old token after rotation, before the new one is used: %v", err)
	}
	next := store.Cred{AgentID: a.ID, SecretHash: hash("next")}
	h.lease(testAgent{Agent: a.Agent, cred: next}, 0)
	wantKind(h, h.s.AuthenticateAgent(h.ctx, a.cred), store.KindUnauthenticated, "old token after the new one was used")
	if err := h.s.AuthenticateAgent(h.ctx, next); err != nil {
		h.Fatalf("new token: %v", err)
	}
}

func testLeaseAndReport(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	id := j.TaskIDs[0]
	if ag, ok := store.AgentOfTask(id); !ok || ag != a.ID {
		h.Fatalf("task id %q does not name agent %s", id, a.ID)
	}
	p := h.wantState(id, store.StatePending)
	if p.Attempt != 0 || p.JobID != j.ID || p.AgentID != a.ID || string(p.Payload) != "hello" || p.MaxAttempts != 3 {
		h.Fatalf("pending task = %+v", p)
	}
	if r := h.lease(a, 0); len(r.Tasks) != 0 {
		h.Fatalf("Lease with max 0 took %d tasks", len(r.Tasks))
	}
	now := h.clock.Now()
	t := h.leaseOne(a)
	if t.ID != id || t.Attempt != 1 || t.State != store.StateRunning || t.Type != "echo" || string(t.Payload) != "hello" ||
		!t.LeaseExpiresAt.Equal(now.Add(30*time.Second)) || !t.Deadline.Equal(now.Add(time.Minute)) || t.Timeout != time.Minute {
		h.Fatalf("leased task = %+v", t)
	}
	if r := h.lease(a, 5); len(r.Tasks) != 0 {
		h.Fatalf("a second Lease took %d tasks", len(r.Tasks))
	}
	ag, _ := h.s.GetAgent(h.ctx, a.ID)
	if !slices.Equal(ag.Running, []store.TaskRef{t.Ref()}) {
		h.Fatalf("agent running = %+v, want %+v", ag.Running, t.Ref())
	}
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: id, Attempt: 1, Outcome: store.OutcomeSucceeded,
		Output: []byte("hello"), ExitCode: 0, OutputSize: 5})
	if err != nil || st != store.StateSucceeded {
		h.Fatalf("Report = %v, %v", st, err)
	}
	done := h.wantState(id, store.StateSucceeded)
	if string(done.Output) != "hello" || done.OutputSize != 5 {
		h.Fatalf("finished task = %+v", done)
	}
	var states []store.TaskState
	for _, c := range done.History {
		states = append(states, c.State)
	}
	if !slices.Equal(states, []store.TaskState{store.StatePending, store.StateRunning, store.StateSucceeded}) {
		h.Fatalf("history = %+v", done.History)
	}
	jb, err := h.s.GetJob(h.ctx, j.ID)
	if err != nil || jb.Counts.Succeeded != 1 || jb.Counts.Total() != 1 || !jb.Counts.Done() {
		h.Fatalf("GetJob = %+v, %v", jb, err)
	}
	if ag, _ := h.s.GetAgent(h.ctx, a.ID); len(ag.Running) != 0 {
		h.Fatalf("agent still running %+v", ag.Running)
	}
}

func testReportRules(h *harness) {
	a, b := h.register(nil), h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	_, err := h.report(b, t.Ref(), store.OutcomeSucceeded)
	wantKind(h, err, store.KindNotFound, "report of another agent's task")
	_, err = h.report(a, store.TaskRef{TaskID: t.ID, Attempt: 2}, store.OutcomeSucceeded)
	wantKind(h, err, store.KindPrecondition, "report of a future attempt")
	_, err = h.report(a, store.TaskRef{TaskID: "t000000000000000-" + a.ID, Attempt: 1}, store.OutcomeSucceeded)
	wantKind(h, err, store.KindNotFound, "report of an unknown task")
	_, err = h.report(a, t.Ref(), store.OutcomeUnspecified)
	wantKind(h, err, store.KindInvalid, "report without outcome")
	h.wantState(t.ID, store.StateRunning)
	if st, err := h.report(a, t.Ref(), store.OutcomeFailed); err != nil || st != store.StateFailed {
		h.Fatalf("Report failed = %v, %v", st, err)
	}
	if st, err := h.report(a, t.Ref(), store.OutcomeFailed); err != nil || st != store.StateFailed {
		h.Fatalf("identical report again = %v, %v; want FAILED, nil", st, err)
	}
	_, err = h.report(a, t.Ref(), store.OutcomeSucceeded)
	wantKind(h, err, store.KindPrecondition, "different outcome for a reported attempt")
	h.wantState(j.TaskIDs[0], store.StateFailed)
}

func testLeaseExpiry(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t1 := h.leaseOne(a)
	h.clock.Advance(29 * time.Second)
	h.reap()
	h.wantState(t1.ID, store.StateRunning)
	h.clock.Advance(2 * time.Second)
	h.reap()
	p := h.wantState(t1.ID, store.StatePending)
	if p.Attempt != 1 {
		h.Fatalf("requeued task attempt = %d, want 1 until leased again", p.Attempt)
	}
	t2 := h.leaseOne(a)
	if t2.ID != t1.ID || t2.Attempt != 2 {
		h.Fatalf("re-leased task = %s attempt %d, want %s attempt 2", t2.ID, t2.Attempt, t1.ID)
	}
	_, err := h.report(a, t1.Ref(), store.OutcomeSucceeded)
	wantKind(h, err, store.KindPrecondition, "report of the expired attempt")
	hb, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Running: []store.TaskRef{t1.Ref()}, Lease: 30 * time.Second})
	if err != nil || !slices.Equal(hb.Abandon, []store.TaskRef{t1.Ref()}) {
		h.Fatalf("Heartbeat of the expired attempt = %+v, %v; want it abandoned", hb, err)
	}
	if st, err := h.report(a, t2.Ref(), store.OutcomeSucceeded); err != nil || st != store.StateSucceeded {
		h.Fatalf("report of attempt 2 = %v, %v", st, err)
	}
	_, err = h.report(a, t1.Ref(), store.OutcomeSucceeded)
	wantKind(h, err, store.KindPrecondition, "late report of attempt 1 after attempt 2 finished")
	h.wantState(j.TaskIDs[0], store.StateSucceeded)
}

func testLost(h *harness) {
	a := h.register(nil)
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.MaxAttempts = 2
	j, err := h.s.Dispatch(h.ctx, spec)
	if err != nil {
		h.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		t := h.leaseOne(a)
		if t.Attempt != int32(i) {
			h.Fatalf("attempt = %d, want %d", t.Attempt, i)
		}
		h.clock.Advance(31 * time.Second)
		h.reap()
	}
	lost := h.wantState(j.TaskIDs[0], store.StateLost)
	if lost.Error == "" {
		h.Fatalf("lost task has no reason: %+v", lost)
	}
	if r := h.lease(a, 1); len(r.Tasks) != 0 {
		h.Fatalf("a lost task was leased again")
	}
}

func testHeartbeat(h *harness) {
	a, b := h.register(nil), h.register(nil)
	h.dispatch(a)
	t := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	hb, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Running: []store.TaskRef{t.Ref()}, Lease: 30 * time.Second})
	if err != nil || len(hb.Abandon) != 0 || len(hb.Cancel) != 0 {
		h.Fatalf("Heartbeat = %+v, %v", hb, err)
	}
	// b names a's attempt: it is told to abandon it, and a's lease is unchanged.
	hb, err = h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: b.cred, Running: []store.TaskRef{t.Ref()}, Lease: time.Hour})
	if err != nil || !slices.Equal(hb.Abandon, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Heartbeat by another agent = %+v, %v", hb, err)
	}
	got := h.task(t.ID)
	if !got.LeaseExpiresAt.Equal(h.clock.Now().Add(30 * time.Second)) {
		h.Fatalf("lease expires %v, want %v", got.LeaseExpiresAt, h.clock.Now().Add(30*time.Second))
	}
	h.clock.Advance(25 * time.Second) // past the first lease, within the extension
	h.reap()
	h.wantState(t.ID, store.StateRunning)
	h.clock.Advance(6 * time.Second)
	h.reap()
	h.wantState(t.ID, store.StatePending)
}

func testCancelPending(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	got, err := h.s.CancelTask(h.ctx, j.TaskIDs[0], "")
	if err != nil || got.State != store.StateCanceled {
		h.Fatalf("CancelTask = %+v, %v", got, err)
	}
	if r := h.lease(a, 1); len(r.Tasks) != 0 {
		h.Fatalf("a cancelled task was leased")
	}
	_, err = h.s.CancelTask(h.ctx, j.TaskIDs[0], "")
	wantKind(h, err, store.KindPrecondition, "cancel of a finished task")
	_, err = h.s.CancelTask(h.ctx, "t000000000000000-a000000000000000", "")
	wantKind(h, err, store.KindNotFound, "cancel of an unknown task")
}

func testCancelRunning(h *harness) {
	a := h.register(nil)
	h.dispatch(a)
	t := h.leaseOne(a)
	w := h.s.Watch(store.AgentKey(a.ID))
	defer w.Stop()
	got, err := h.s.CancelTask(h.ctx, t.ID, "stop it")
	if err != nil || got.State != store.StateRunning || !got.CancelRequested {
		h.Fatalf("CancelTask of a running task = %+v, %v", got, err)
	}
	if !fired(w) {
		h.Fatalf("cancel did not wake the agent's watcher")
	}
	r := h.lease(a, 0)
	if !slices.Equal(r.Cancels, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Lease cancels = %+v, want %+v", r.Cancels, t.Ref())
	}
	if r := h.lease(a, 0); len(r.Cancels) != 0 {
		h.Fatalf("a cancel was delivered twice by Lease: %+v", r.Cancels)
	}
	hb, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Running: []store.TaskRef{t.Ref()}, Lease: 30 * time.Second})
	if err != nil || !slices.Equal(hb.Cancel, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Heartbeat = %+v, %v; want the cancel", hb, err)
	}
	st, err := h.report(a, t.Ref(), store.OutcomeSucceeded)
	if err != nil || st != store.StateCanceled {
		h.Fatalf("report after cancel = %v, %v; want CANCELED", st, err)
	}
	done := h.task(t.ID)
	if string(done.Output) != "out" {
		h.Fatalf("output of the cancelled task was not kept: %q", done.Output)
	}
}

func testCancelLeaseExpiry(h *harness) {
	a := h.register(nil)
	h.dispatch(a)
	t := h.leaseOne(a)
	if _, err := h.s.CancelTask(h.ctx, t.ID, ""); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(31 * time.Second)
	h.reap()
	h.wantState(t.ID, store.StateCanceled)
}

func testDeliveryTTL(h *harness) {
	a := h.register(nil)
	j1 := h.dispatch(a)
	h.clock.Advance(10*time.Minute + time.Second)
	j2 := h.dispatch(a)
	// A queued task past its TTL is never leased, even before Reap runs.
	t := h.leaseOne(a)
	if t.ID != j2.TaskIDs[0] {
		h.Fatalf("leased %s, want the fresh task %s", t.ID, j2.TaskIDs[0])
	}
	h.reap()
	h.wantState(j1.TaskIDs[0], store.StateExpired)

	j3 := h.dispatch(a)
	h.clock.Advance(11 * time.Minute)
	h.reap()
	h.wantState(j3.TaskIDs[0], store.StateExpired)
}

func testTimeout(h *harness) {
	a := h.register(nil)
	h.dispatch(a)
	t := h.leaseOne(a)
	for range 3 { // heartbeats keep the lease alive past the timeout
		h.clock.Advance(20 * time.Second)
		if _, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Running: []store.TaskRef{t.Ref()}, Lease: 30 * time.Second}); err != nil {
			h.Fatal(err)
		}
	}
	h.reap()
	got := h.wantState(t.ID, store.StateRunning)
	if !got.CancelRequested || !got.TimedOut {
		h.Fatalf("task past its deadline is not flagged: %+v", got)
	}
	if r := h.lease(a, 0); !slices.Equal(r.Cancels, []store.TaskRef{t.Ref()}) {
		h.Fatalf("Lease cancels = %+v, want the timed-out attempt", r.Cancels)
	}
	if st, err := h.report(a, t.Ref(), store.OutcomeFailed); err != nil || st != store.StateTimedOut {
		h.Fatalf("report after timeout = %v, %v; want TIMED_OUT", st, err)
	}

	// Without a report the lease runs out and the task still ends TIMED_OUT.
	h.dispatch(a)
	t2 := h.leaseOne(a)
	h.clock.Advance(20 * time.Second)
	h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Running: []store.TaskRef{t2.Ref()}, Lease: 45 * time.Second})
	h.clock.Advance(41 * time.Second)
	h.reap()
	h.wantState(t2.ID, store.StateRunning)
	h.clock.Advance(30 * time.Second)
	h.reap()
	h.wantState(t2.ID, store.StateTimedOut)
}

func testRevoke(h *harness) {
	a := h.register(nil)
	h.dispatch(a)
	h.dispatch(a)
	run := h.leaseOne(a)
	w := h.s.Watch(store.AgentKey(a.ID))
	defer w.Stop()
	ag, err := h.s.RevokeAgent(h.ctx, a.ID, "")
	if err != nil || ag.Status != store.AgentRevoked {
		h.Fatalf("RevokeAgent = %+v, %v", ag, err)
	}
	if !fired(w) {
		h.Fatalf("revoke did not wake the agent's watcher")
	}
	wantKind(h, h.s.AuthenticateAgent(h.ctx, a.cred), store.KindUnauthenticated, "revoked token")
	_, err = h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: time.Second})
	wantKind(h, err, store.KindUnauthenticated, "Lease with a revoked token")
	_, err = h.report(a, run.Ref(), store.OutcomeSucceeded)
	wantKind(h, err, store.KindUnauthenticated, "Report with a revoked token")
	tasks, _, _ := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID})
	if len(tasks) != 2 {
		h.Fatalf("agent has %d tasks, want 2", len(tasks))
	}
	for _, t := range tasks {
		if t.State != store.StateCanceled {
			h.Fatalf("task %s of a revoked agent is %s, want CANCELED", t.ID, t.State)
		}
	}
	_, err = h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: a.ID}))
	wantKind(h, err, store.KindPrecondition, "dispatch to a revoked agent")
	_, err = h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: "a0000000000000000"}))
	wantKind(h, err, store.KindNotFound, "dispatch to an unknown agent")
}

func testSelector(h *harness) {
	web := h.register(map[string]string{"env": "prod", "role": "web"})
	api := h.register(map[string]string{"env": "prod", "role": "api"})
	dev := h.register(map[string]string{"env": "dev", "role": "web"})
	h.clock.Advance(40 * time.Second)
	h.lease(web, 0)
	h.lease(dev, 0)
	h.clock.Advance(20 * time.Second) // api is now offline
	j, err := h.s.Dispatch(h.ctx, h.spec(store.Target{Selector: "env=prod"}))
	if err != nil {
		h.Fatal(err)
	}
	if len(j.TaskIDs) != 1 || h.task(j.TaskIDs[0]).AgentID != web.ID {
		h.Fatalf("env=prod (online) made tasks %v, want one for %s", j.TaskIDs, web.ID)
	}
	spec := h.spec(store.Target{Selector: "env=prod,role in (web,api)", IncludeOffline: true})
	j, err = h.s.Dispatch(h.ctx, spec)
	if err != nil || len(j.TaskIDs) != 2 {
		h.Fatalf("selector with include_offline made %v, %v; want 2 tasks", j.TaskIDs, err)
	}
	var agents []string
	for _, id := range j.TaskIDs {
		agents = append(agents, h.task(id).AgentID)
	}
	slices.Sort(agents)
	want := []string{web.ID, api.ID}
	slices.Sort(want)
	if !slices.Equal(agents, want) {
		h.Fatalf("tasks went to %v, want %v", agents, want)
	}
	j, err = h.s.Dispatch(h.ctx, h.spec(store.Target{All: true}))
	if err != nil || len(j.TaskIDs) != 2 {
		h.Fatalf("all online made %d tasks, %v; want 2", len(j.TaskIDs), err)
	}
	j, err = h.s.Dispatch(h.ctx, h.spec(store.Target{Selector: "env=nowhere"}))
	if err != nil || len(j.TaskIDs) != 0 || !j.Counts.Done() {
		h.Fatalf("empty match = %+v, %v; want an empty, done job", j, err)
	}
	_, err = h.s.Dispatch(h.ctx, h.spec(store.Target{Selector: "env in (a"}))
	wantKind(h, err, store.KindInvalid, "malformed selector")
}

func (h *harness) fleet(n int, labels map[string]string) []testAgent {
	out := make([]testAgent, n)
	for i := range out {
		out[i] = h.register(labels)
	}
	return out
}

func (h *harness) byAgent(agents []testAgent) map[string]testAgent {
	m := make(map[string]testAgent, len(agents))
	for _, a := range agents {
		m[a.ID] = a
	}
	return m
}

func testMaxConcurrency(h *harness) {
	agents := h.fleet(5, map[string]string{"pool": "mc"})
	spec := h.spec(store.Target{Selector: "pool=mc"})
	spec.MaxConcurrency = 2
	j, err := h.s.Dispatch(h.ctx, spec)
	if err != nil || len(j.TaskIDs) != 5 {
		h.Fatalf("Dispatch = %+v, %v", j, err)
	}
	byID := h.byAgent(agents)
	finished := 0
	for finished < 5 {
		var running []store.Task
		for _, a := range agents {
			running = append(running, h.lease(a, 1).Tasks...)
		}
		jb, _ := h.s.GetJob(h.ctx, j.ID)
		if len(running) == 0 || jb.Counts.Running > 2 || len(running) > 2 {
			h.Fatalf("round with %d leased, job running %d (counts %+v): want 1..2", len(running), jb.Counts.Running, jb.Counts)
		}
		for _, t := range running {
			if _, err := h.report(byID[t.AgentID], t.Ref(), store.OutcomeSucceeded); err != nil {
				h.Fatal(err)
			}
			finished++
		}
	}
	jb, _ := h.s.GetJob(h.ctx, j.ID)
	if jb.Counts.Succeeded != 5 || !jb.Counts.Done() {
		h.Fatalf("counts = %+v", jb.Counts)
	}
}

func testMaxFailures(h *harness) {
	agents := h.fleet(6, map[string]string{"pool": "mf"})
	spec := h.spec(store.Target{Selector: "pool=mf"})
	spec.MaxConcurrency = 2
	spec.MaxFailures = 2
	j, err := h.s.Dispatch(h.ctx, spec)
	if err != nil {
		h.Fatal(err)
	}
	byID := h.byAgent(agents)
	var first []store.Task
	for _, a := range agents {
		first = append(first, h.lease(a, 1).Tasks...)
	}
	if len(first) != 2 {
		h.Fatalf("leased %d tasks, want 2", len(first))
	}
	h.report(byID[first[0].AgentID], first[0].Ref(), store.OutcomeFailed)
	var second []store.Task
	for _, a := range agents {
		second = append(second, h.lease(a, 1).Tasks...)
	}
	if len(second) != 1 {
		h.Fatalf("after one failure leased %d new tasks, want 1", len(second))
	}
	h.report(byID[second[0].AgentID], second[0].Ref(), store.OutcomeFailed)
	jb, _ := h.s.GetJob(h.ctx, j.ID)
	if !jb.Canceled || jb.Counts.Failed != 2 || jb.Counts.Running != 1 || jb.Counts.Canceled != 3 || jb.Counts.Total() != 6 {
		h.Fatalf("after max_failures counts = %+v canceled=%v; want 2 failed, 1 running, 3 canceled", jb.Counts, jb.Canceled)
	}
	for _, a := range agents {
		if r := h.lease(a, 1); len(r.Tasks) != 0 {
			h.Fatalf("a stopped job started a task")
		}
	}
	h.report(byID[first[1].AgentID], first[1].Ref(), store.OutcomeSucceeded)
	jb, _ = h.s.GetJob(h.ctx, j.ID)
	if !jb.Counts.Done() || jb.Counts.Succeeded != 1 {
		h.Fatalf("final counts = %+v", jb.Counts)
	}
}

func testCancelJob(h *harness) {
	agents := h.fleet(3, map[string]string{"pool": "cj"})
	j, err := h.s.Dispatch(h.ctx, h.spec(store.Target{Selector: "pool=cj"}))
	if err != nil {
		h.Fatal(err)
	}
	t := h.leaseOne(agents[0])
	jb, err := h.s.CancelJob(h.ctx, j.ID, "")
	if err != nil || jb.Counts.Canceled != 2 || jb.Counts.Running != 1 {
		h.Fatalf("CancelJob = %+v, %v", jb.Counts, err)
	}
	if got := h.task(t.ID); !got.CancelRequested {
		h.Fatalf("running task of a cancelled job has no cancel request")
	}
	h.report(agents[0], t.Ref(), store.OutcomeSucceeded)
	jb, _ = h.s.GetJob(h.ctx, j.ID)
	if jb.Counts.Canceled != 3 || !jb.Counts.Done() {
		h.Fatalf("counts = %+v", jb.Counts)
	}
	_, err = h.s.CancelJob(h.ctx, "j000000000000000", "")
	wantKind(h, err, store.KindNotFound, "CancelJob unknown")
}

func testIdempotency(h *harness) {
	a := h.register(nil)
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.IdempotencyKey = "deploy-42"
	j1, err := h.s.Dispatch(h.ctx, spec)
	if err != nil || j1.Existing {
		h.Fatalf("first Dispatch = %+v, %v", j1, err)
	}
	j2, err := h.s.Dispatch(h.ctx, spec)
	if err != nil || j2.ID != j1.ID || !j2.Existing || !slices.Equal(j2.TaskIDs, j1.TaskIDs) {
		h.Fatalf("second Dispatch = %+v, %v; want job %s again", j2, err, j1.ID)
	}
	if r := h.lease(a, 10); len(r.Tasks) != 1 {
		h.Fatalf("two dispatches with one key made %d tasks", len(r.Tasks))
	}
}

func testListTasks(h *harness) {
	a, b := h.register(nil), h.register(nil)
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, h.dispatch(a).TaskIDs[0])
		h.clock.Advance(time.Millisecond)
	}
	jb := h.dispatch(b)
	t := h.leaseOne(a)
	h.report(a, t.Ref(), store.OutcomeSucceeded)

	got := pagedIDs(h, func(p store.Page) ([]store.Task, string, error) {
		return h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID, Page: p})
	}, func(x store.Task) string { return x.ID })
	want := slices.Clone(ids)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		h.Fatalf("ListTasks by agent, paged = %v, want newest first %v", got, want)
	}
	page, _, _ := h.s.ListTasks(h.ctx, store.TaskFilter{State: store.StateSucceeded})
	if len(page) != 1 || page[0].ID != ids[0] {
		h.Fatalf("ListTasks SUCCEEDED = %d tasks", len(page))
	}
	page, _, _ = h.s.ListTasks(h.ctx, store.TaskFilter{JobID: jb.ID})
	if len(page) != 1 || page[0].ID != jb.TaskIDs[0] {
		h.Fatalf("ListTasks by job = %+v", page)
	}
	page, _, _ = h.s.ListTasks(h.ctx, store.TaskFilter{})
	if len(page) != 6 {
		h.Fatalf("ListTasks all = %d, want 6", len(page))
	}
	page, _, _ = h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: "a0000000000000000"})
	if len(page) != 0 {
		h.Fatalf("ListTasks of an unknown agent = %d tasks", len(page))
	}
}

func testListAgents(h *harness) {
	var ids []string
	for i := 0; i < 5; i++ {
		role := "web"
		if i%2 == 1 {
			role = "db"
		}
		ids = append(ids, h.register(map[string]string{"role": role}).ID)
	}
	slices.Sort(ids)
	got := pagedIDs(h, func(p store.Page) ([]store.Agent, string, error) {
		return h.s.ListAgents(h.ctx, store.AgentFilter{Page: p})
	}, func(x store.Agent) string { return x.ID })
	if !slices.Equal(got, ids) {
		h.Fatalf("ListAgents paged = %v, want %v", got, ids)
	}
	web, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Selector: store.MustParseSelector("role=web")})
	if len(web) != 3 {
		h.Fatalf("role=web matched %d agents, want 3", len(web))
	}
	h.s.RevokeAgent(h.ctx, ids[0], "")
	rev, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Status: store.AgentRevoked})
	if len(rev) != 1 || rev[0].ID != ids[0] {
		h.Fatalf("revoked filter = %+v", rev)
	}
	on, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Status: store.AgentOnline})
	if len(on) != 4 {
		h.Fatalf("online filter = %d agents, want 4", len(on))
	}
}

func testListJobs(h *harness) {
	a := h.register(nil)
	var ids []string
	for i := 0; i < 3; i++ {
		ids = append(ids, h.dispatch(a).ID)
	}
	slices.Reverse(ids)
	got := pagedIDs(h, func(p store.Page) ([]store.Job, string, error) { return h.s.ListJobs(h.ctx, p) }, func(x store.Job) string { return x.ID })
	if !slices.Equal(got, ids) {
		h.Fatalf("ListJobs = %v, want %v", got, ids)
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
	drain(wt)
	drain(wj)
	h.report(a, t.Ref(), store.OutcomeSucceeded)
	if !fired(wt) || !fired(wj) {
		h.Fatalf("report did not fire the task's and job's watchers")
	}
	other := h.s.Watch(store.AgentKey("a0000000000000000"))
	defer other.Stop()
	h.dispatch(a)
	select {
	case <-other.C:
		h.Fatalf("a dispatch to one agent fired another agent's watcher")
	case <-time.After(100 * time.Millisecond):
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
	old, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: 30 * time.Second, Gen: r1.Gen})
	if err != nil || !old.Superseded || len(old.Tasks) != 0 {
		h.Fatalf("Lease of a superseded Poll = %+v, %v", old, err)
	}
	cur, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: 30 * time.Second, Gen: r2.Gen})
	if err != nil || cur.Superseded || len(cur.Tasks) != 1 {
		h.Fatalf("Lease of the current Poll = %+v, %v", cur, err)
	}
}

func testEnrollment(h *harness) {
	if _, err := h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e1", SecretHash: hash("s1"), MaxUses: 2, TTL: time.Hour, Description: "two"}); err != nil {
		h.Fatal(err)
	}
	use := &store.EnrollmentUse{ID: "e1", SecretHash: hash("s1")}
	reg := func() error {
		_, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: "x", SecretHash: hash("agent"), Enrollment: use})
		return err
	}
	if err := h.s.CheckEnrollmentToken(h.ctx, "e1", hash("s1")); err != nil {
		h.Fatalf("CheckEnrollmentToken: %v", err)
	}
	wantKind(h, h.s.CheckEnrollmentToken(h.ctx, "e1", hash("bad")), store.KindUnauthenticated, "wrong enrollment secret")
	_, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: "x", SecretHash: hash("a"), Enrollment: &store.EnrollmentUse{ID: "e1", SecretHash: hash("bad")}})
	wantKind(h, err, store.KindUnauthenticated, "register with a wrong enrollment secret")
	for i := 0; i < 2; i++ {
		if err := reg(); err != nil {
			h.Fatalf("registration %d: %v", i+1, err)
		}
	}
	wantKind(h, reg(), store.KindUnauthenticated, "used-up enrollment token")

	h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e2", SecretHash: hash("s2"), TTL: time.Hour})
	use = &store.EnrollmentUse{ID: "e2", SecretHash: hash("s2")}
	if err := reg(); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(2 * time.Hour)
	wantKind(h, reg(), store.KindUnauthenticated, "expired enrollment token")

	h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e3", SecretHash: hash("s3")})
	use = &store.EnrollmentUse{ID: "e3", SecretHash: hash("s3")}
	if err := reg(); err != nil {
		h.Fatal(err)
	}
	if _, err := h.s.RevokeEnrollmentToken(h.ctx, "e3"); err != nil {
		h.Fatal(err)
	}
	wantKind(h, reg(), store.KindUnauthenticated, "revoked enrollment token")
	list, err := h.s.ListEnrollmentTokens(h.ctx)
	if err != nil || len(list) != 3 {
		h.Fatalf("ListEnrollmentTokens = %d, %v", len(list), err)
	}
	for _, t := range list {
		if t.ID == "e1" && (t.Uses != 2 || t.MaxUses != 2 || t.Description != "two") {
			h.Fatalf("e1 = %+v", t)
		}
		if t.ID == "e3" && t.RevokedAt.IsZero() {
			h.Fatalf("e3 not revoked: %+v", t)
		}
	}
	_, err = h.s.RevokeEnrollmentToken(h.ctx, "nope")
	wantKind(h, err, store.KindNotFound, "revoke unknown enrollment token")
}

func testPendingLimit(h *harness) {
	a, b := h.register(map[string]string{"pool": "pl"}), h.register(map[string]string{"pool": "pl"})
	for i := 0; i < 50; i++ {
		h.dispatch(a)
	}
	_, err := h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: a.ID}))
	wantKind(h, err, store.KindExhausted, "dispatch past the pending limit")
	j, err := h.s.Dispatch(h.ctx, h.spec(store.Target{Selector: "pool=pl"}))
	if err != nil || len(j.TaskIDs) != 2 || j.Counts.Canceled != 1 || j.Counts.Pending != 1 {
		h.Fatalf("fan-out with one full agent = %+v, %v; want 1 pending and 1 canceled", j.Counts, err)
	}
	_ = b
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

func testConcurrentReapers(h *harness) {
	a := h.register(nil)
	const n = 20
	for i := 0; i < n; i++ {
		h.dispatch(a)
	}
	if r := h.lease(a, n); len(r.Tasks) != n {
		h.Fatalf("leased %d", len(r.Tasks))
	}
	h.clock.Advance(31 * time.Second)
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
		got := h.task(t.ID)
		requeues := 0
		for _, c := range got.History {
			if c.State == store.StatePending {
				requeues++
			}
		}
		if requeues != 2 {
			h.Fatalf("task %s history %+v: want dispatch plus one requeue", t.ID, got.History)
		}
	}
}

func testRetention(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	h.report(a, t.Ref(), store.OutcomeSucceeded)
	live := h.dispatch(a)
	h.clock.Advance(23 * time.Hour)
	h.reap()
	h.task(t.ID)
	h.clock.Advance(2 * time.Hour)
	h.reap()
	_, err := h.s.GetTask(h.ctx, t.ID)
	wantKind(h, err, store.KindNotFound, "task past retention")
	_, err = h.s.GetJob(h.ctx, j.ID)
	wantKind(h, err, store.KindNotFound, "job past retention")
	// A live task is never dropped: it ended EXPIRED by TTL within this window, so it
	// is retained from that moment on.
	h.wantState(live.TaskIDs[0], store.StateExpired)
}

func testLeaseBatch(h *harness) {
	a := h.register(nil)
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, h.dispatch(a).TaskIDs[0])
	}
	r := h.lease(a, 3)
	if len(r.Tasks) != 3 {
		h.Fatalf("Lease max 3 took %d", len(r.Tasks))
	}
	for i, t := range r.Tasks {
		if t.ID != ids[i] {
			h.Fatalf("lease order: got %s at %d, want %s (oldest first)", t.ID, i, ids[i])
		}
	}
	if r := h.lease(a, 64); len(r.Tasks) != 2 {
		h.Fatalf("second Lease took %d, want 2", len(r.Tasks))
	}
	_ = fmt.Sprint
}

func testRevokeReason(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	if _, err := h.s.RevokeAgent(h.ctx, a.ID, "key leaked"); err != nil {
		h.Fatal(err)
	}
	got := h.wantState(j.TaskIDs[0], store.StateCanceled)
	if last := got.History[len(got.History)-1].Reason; last != "agent revoked: key leaked" {
		h.Fatalf("revoked agent's task ended with %q, want %q", last, "agent revoked: key leaked")
	}
}

// pagedIDs walks every page of a list, two at a time, and returns the ids in order.
func pagedIDs[T any](h *harness, list func(store.Page) ([]T, string, error), id func(T) string) []string {
	h.Helper()
	var got []string
	tok := ""
	for {
		page, next, err := list(store.Page{Size: 2, Token: tok})
		if err != nil {
			h.Fatal(err)
		}
		for _, x := range page {
			got = append(got, id(x))
		}
		if next == "" {
			return got
		}
		tok = next
	}
}
