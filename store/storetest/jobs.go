package storetest

import (
	"fmt"
	"slices"
	"time"

	"github.com/orange-forge/forge/store"
)

var jobCases = []testCase{
	{"SelectorTargets", testSelector, nil},
	{"NameTargets", testNameTargets, nil},
	{"MaxConcurrency", testMaxConcurrency, nil},
	{"MaxFailures", testMaxFailures, nil},
	{"Cancel", testCancelJob, nil},
	{"Idempotency", testIdempotency, nil},
	{"List", testListJobs, nil},
	{"PendingLimit", testPendingLimit, nil},
	{"TargetsLimit", testTargetsLimit, nil},
	{"FanOutPayload", testFanOutPayload, nil},
	{"Signature", testJobSignature, nil},
	{"TypeNotHandled", testTypeNotHandled, nil},
}

// testTypeNotHandled: a Dispatch whose type no agent its target matched handles
// (each said its types at Register) is refused with KindPrecondition naming the
// type and the agents' types, creates nothing and frees its idempotency key;
// with Queue it is created anyway. One agent that handles it, or one that named
// no type, is enough; a target matching nobody makes an empty job as before.
func testTypeNotHandled(h *harness) {
	echo := h.fleet(2, map[string]string{"pool": "types"}) // each handles echo
	spec := func(tg store.Target, typ string) store.JobSpec {
		sp := h.spec(tg)
		sp.Type, sp.IdempotencyKey = typ, "types-"+typ+"-"+tg.String()
		return sp
	}
	refused := store.Errorf(store.KindPrecondition, store.FmtTypeUnhandled, `"exec"`, 1, "echo")
	_, err := h.s.Dispatch(h.ctx, spec(store.Target{AgentID: echo[0].ID}, "exec"))
	wantErr(h, err, refused, "Dispatch of a type the agent does not handle")
	sel := store.Target{Selector: "pool=types"}
	_, err = h.s.Dispatch(h.ctx, spec(sel, "exec"))
	wantErr(h, err, store.Errorf(store.KindPrecondition, store.FmtTypeUnhandled, `"exec"`, 2, "echo"), "fan-out of a type no agent handles")
	if ts, _, err := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: echo[0].ID}); err != nil || len(ts) != 0 {
		h.Fatalf("a refused dispatch left tasks: %v, %v", ts, err)
	}
	// Queued anyway, with the same idempotency keys: the refusals freed them.
	for _, tg := range []store.Target{{AgentID: echo[0].ID}, sel} {
		sp := spec(tg, "exec")
		sp.Queue = true
		j, err := h.s.Dispatch(h.ctx, sp)
		if err != nil || j.Existing || len(j.TaskIDs) != map[bool]int{true: 1, false: 2}[tg.AgentID != ""] {
			h.Fatalf("Dispatch with Queue to %v = %+v, %v", tg, j, err)
		}
	}
	// An agent that named no type may handle any; one that handles it is enough.
	h.n++
	untyped, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: "any", Labels: map[string]string{"pool": "types"},
		SecretHash: hash("any-" + h.Name())})
	if err != nil {
		h.Fatal(err)
	}
	if j, err := h.s.Dispatch(h.ctx, spec(sel, "custom")); err != nil || len(j.TaskIDs) != 3 {
		h.Fatalf("fan-out reaching an agent without types = %+v, %v; want 3 tasks", j, err)
	}
	if j, err := h.s.Dispatch(h.ctx, spec(store.Target{AgentID: untyped.ID}, "custom")); err != nil || len(j.TaskIDs) != 1 {
		h.Fatalf("dispatch to an agent without types = %+v, %v", j, err)
	}
	if j, err := h.s.Dispatch(h.ctx, spec(store.Target{Selector: "pool=nobody"}, "exec")); err != nil || len(j.TaskIDs) != 0 {
		h.Fatalf("fan-out matching nobody = %+v, %v; want an empty job", j, err)
	}
}

// testJobSignature: a job dispatched with an id and a signature of the
// caller's keeps both, and every task of it is given them with its job's
// target — by Lease, GetTask and ListTasks — single-agent jobs and fan-outs
// alike; a retry with the idempotency key answers the first job, its own id and
// signature kept.
func testJobSignature(h *harness) {
	agents := h.fleet(3, map[string]string{"pool": "sig"})
	t0 := h.now().Truncate(time.Millisecond)
	for _, tg := range []store.Target{{AgentID: agents[0].ID}, {Selector: "pool=sig"}} {
		spec := h.spec(tg)
		spec.ID = store.NewJobID()
		spec.IdempotencyKey = "sig-" + tg.String()
		spec.Sig = store.JobSig{KeyID: "k1", Sig: []byte("\x00signature\xff"), CreatedAt: t0, NotAfter: t0.Add(time.Hour)}
		j := h.dispatchSpec(spec)
		if j.ID != spec.ID {
			h.Fatalf("job id %s, want the one given, %s", j.ID, spec.ID)
		}
		again := spec
		again.ID = store.NewJobID()
		again.Sig.KeyID = "k2"
		if r := h.dispatchSpec(again); r.ID != spec.ID || !r.Existing || r.Spec.Sig.KeyID != "k1" {
			h.Fatalf("a retry with the key = job %s existing %v signed by %q; want %s, by k1", r.ID, r.Existing, r.Spec.Sig.KeyID, spec.ID)
		}
		want := func(what string, t store.Task) {
			h.Helper()
			if t.JobSig.KeyID != "k1" || string(t.JobSig.Sig) != string(spec.Sig.Sig) || !t.JobSig.CreatedAt.Equal(t0) ||
				!t.JobSig.NotAfter.Equal(t0.Add(time.Hour)) || t.Target != tg {
				h.Fatalf("%s %s: signature %+v target %+v; want %+v and %+v", what, t.ID, t.JobSig, t.Target, spec.Sig, tg)
			}
		}
		if g := h.job(j.ID); g.Spec.Sig.KeyID != "k1" || string(g.Spec.Sig.Sig) != string(spec.Sig.Sig) {
			h.Fatalf("GetJob: signature %+v", g.Spec.Sig)
		}
		for _, id := range j.TaskIDs {
			want("GetTask", h.task(id))
		}
		tasks, _, err := h.s.ListTasks(h.ctx, store.TaskFilter{JobID: j.ID})
		if err != nil {
			h.Fatal(err)
		}
		for _, t := range tasks {
			want("ListTasks", t)
		}
		want("Lease", h.leaseOne(agents[0]))
	}
	// A job id not of the shape NewJobID makes is refused alike by every store:
	// one not an id, and one of the id alphabet but of another length.
	for _, bad := range []string{"not-a-job-id", "j0123456789"} {
		_, err := h.s.Dispatch(h.ctx, store.JobSpec{ID: bad, Type: "echo", Target: store.Target{All: true},
			Timeout: timeout, DeliveryTTL: deliveryTTL, MaxAttempts: 1})
		wantErr(h, err, store.ErrJobIDNotNew(bad), "a malformed job id")
	}

	// A job id that names a job already is refused (already exists), with or
	// without an idempotency key of its own, which is then left free; the
	// same dispatch repeated with its idempotency key answers its job.
	spec := h.spec(store.Target{AgentID: agents[0].ID})
	spec.ID, spec.IdempotencyKey = store.NewJobID(), "chosen-id"
	first, err := h.s.Dispatch(h.ctx, spec)
	if err != nil || first.ID != spec.ID {
		h.Fatalf("Dispatch with a chosen job id = %+v, %v", first, err)
	}
	again, err := h.s.Dispatch(h.ctx, spec)
	if err != nil || again.ID != first.ID || !again.Existing || !slices.Equal(again.TaskIDs, first.TaskIDs) {
		h.Fatalf("the same dispatch repeated with its idempotency key = %+v, %v; want job %s again", again, err, first.ID)
	}
	for _, key := range []string{"", "another-key"} {
		taken := h.spec(store.Target{All: true})
		taken.ID, taken.IdempotencyKey = first.ID, key
		_, err := h.s.Dispatch(h.ctx, taken)
		wantErr(h, err, store.ErrJobExists(first.ID), fmt.Sprintf("a dispatch naming a job id taken (idempotency key %q)", key))
	}
	free := h.spec(store.Target{AgentID: agents[0].ID})
	free.IdempotencyKey = "another-key"
	if j, err := h.s.Dispatch(h.ctx, free); err != nil || j.Existing || j.ID == first.ID {
		h.Fatalf("Dispatch with the key a refused dispatch named = %+v, %v; want a new job", j, err)
	}
	if got := h.job(first.ID); !slices.Equal(got.TaskIDs, first.TaskIDs) {
		h.Fatalf("the job whose id was named again has tasks %v, want %v", got.TaskIDs, first.TaskIDs)
	}
}

// testTargetsLimit: a dispatch reaching more agents than Config.MaxTargets is
// refused with ErrTooManyTargets and creates nothing — no job, no task, its
// idempotency key left free; one reaching exactly the limit goes ahead.
func testTargetsLimit(h *harness) {
	agents := h.fleet(maxTargets, map[string]string{"pool": "cap"})
	extra := h.register(map[string]string{"pool": "more"})
	spec := h.spec(store.Target{All: true})
	spec.IdempotencyKey = "fan-out"
	_, err := h.s.Dispatch(h.ctx, spec)
	wantErr(h, err, store.ErrTooManyTargets(maxTargets), "a dispatch to one agent more than the limit")
	if jobs, _, err := h.s.ListJobs(h.ctx, store.Page{}); err != nil || len(jobs) != 0 {
		h.Fatalf("after the refusal: jobs %v, %v; want none", jobs, err)
	}
	for _, a := range append(agents, extra) {
		if ag := h.agent(a.ID); ag.Pending != 0 {
			h.Fatalf("after the refusal agent %s has %d pending tasks", a.ID, ag.Pending)
		}
	}
	spec.Target = store.Target{Selector: "pool=cap"}
	j := h.dispatchSpec(spec) // the key was left free
	if len(j.TaskIDs) != maxTargets || j.Existing {
		h.Fatalf("a dispatch to exactly the limit made %d tasks (existing %v), want %d", len(j.TaskIDs), j.Existing, maxTargets)
	}
}

// testFanOutPayload: every task of a fan-out carries the payload dispatched,
// whether read (GetTask, ListTasks), leased or cancelled.
func testFanOutPayload(h *harness) {
	agents := h.fleet(4, map[string]string{"pool": "pl"})
	spec := h.spec(store.Target{Selector: "pool=pl"})
	spec.Payload = []byte("a payload \x00 with \xff any bytes")
	j := h.dispatchSpec(spec)
	for _, id := range j.TaskIDs {
		if got := h.task(id).Payload; string(got) != string(spec.Payload) {
			h.Fatalf("GetTask %s: payload %q, want %q", id, got, spec.Payload)
		}
	}
	tasks, _, err := h.s.ListTasks(h.ctx, store.TaskFilter{JobID: j.ID})
	if err != nil || len(tasks) != len(agents) {
		h.Fatalf("ListTasks = %d tasks, %v", len(tasks), err)
	}
	for _, t := range tasks {
		if string(t.Payload) != string(spec.Payload) {
			h.Fatalf("ListTasks %s: payload %q", t.ID, t.Payload)
		}
	}
	for _, a := range agents[:2] {
		if t := h.leaseOne(a); string(t.Payload) != string(spec.Payload) {
			h.Fatalf("leased %s: payload %q", t.ID, t.Payload)
		}
	}
	c, err := h.s.CancelTask(h.ctx, j.TaskIDs[3], "")
	if err != nil || string(c.Payload) != string(spec.Payload) {
		h.Fatalf("CancelTask = payload %q, %v", c.Payload, err)
	}
}

func testSelector(h *harness) {
	web := h.register(map[string]string{"env": "prod", "role": "web"})
	api := h.register(map[string]string{"env": "prod", "role": "api"})
	dev := h.register(map[string]string{"env": "dev", "role": "web"})
	h.clock.Advance(40 * time.Second)
	h.lease(web, 0)
	h.lease(dev, 0)
	h.clock.Advance(20 * time.Second) // api is now offline
	agentsOf := func(j store.Job) []string {
		var out []string
		for _, id := range j.TaskIDs {
			out = append(out, h.task(id).AgentID)
		}
		return out
	}
	j := h.dispatchSpec(h.spec(store.Target{Selector: "env=prod"}))
	if got := agentsOf(j); !slices.Equal(got, []string{web.ID}) {
		h.Fatalf("env=prod (online) went to %v, want %s", got, web.ID)
	}
	h.wantCounts(j.ID, store.Counts{Pending: 1})
	j = h.dispatchSpec(h.spec(store.Target{Selector: "env=prod,role in (web,api)", IncludeOffline: true}))
	if got, want := agentsOf(j), sorted([]string{web.ID, api.ID}); !slices.Equal(got, want) {
		h.Fatalf("selector with include_offline went to %v, want %v in id order", got, want)
	}
	j = h.dispatchSpec(h.spec(store.Target{All: true}))
	if got, want := agentsOf(j), sorted([]string{web.ID, dev.ID}); !slices.Equal(got, want) {
		h.Fatalf("all online went to %v, want %v", got, want)
	}
	if j.Spec.Target != (store.Target{All: true}) || j.Spec.Type != "echo" || string(j.Spec.Payload) != "hello" || !j.CreatedAt.Equal(h.now()) {
		h.Fatalf("job = %+v", j)
	}
	j = h.dispatchSpec(h.spec(store.Target{Selector: "env=nowhere"}))
	if len(j.TaskIDs) != 0 || !j.Counts.Done() || j.Counts != (store.Counts{}) {
		h.Fatalf("empty match = %+v; want an empty, done job", j)
	}
	h.wantCounts(j.ID, store.Counts{})
	_, err := h.s.Dispatch(h.ctx, h.spec(store.Target{Selector: "env in (a"}))
	if store.KindOf(err) != store.KindInvalid {
		h.Fatalf("malformed selector: %v (kind %d), want KindInvalid", err, store.KindOf(err))
	}
}

// testNameTargets: a name or a glob over names reaches the non-revoked agents
// whose name matches, online ones unless IncludeOffline, like a selector.
func testNameTargets(h *harness) {
	web1 := h.registerNamed("web-1", nil)
	web2 := h.registerNamed("web-2", nil)
	web10 := h.registerNamed("web-10", nil)
	dup := h.registerNamed("web-1", map[string]string{"note": "same hostname"})
	gone := h.registerNamed("web-3", nil)
	db := h.registerNamed("db/web-1", nil)
	h.clock.Advance(40 * time.Second)
	for _, a := range []testAgent{web1, web2, web10, dup, db} {
		h.lease(a, 0)
	}
	h.clock.Advance(20 * time.Second) // web-3 is now offline
	if _, err := h.s.RevokeAgent(h.ctx, web2.ID, ""); err != nil {
		h.Fatal(err)
	}
	agentsOf := func(j store.Job) []string {
		var out []string
		for _, id := range j.TaskIDs {
			out = append(out, h.task(id).AgentID)
		}
		return out
	}
	for _, c := range []struct {
		pattern string
		offline bool
		want    []testAgent
	}{
		{"web-1", false, []testAgent{web1, dup}},             // names are not unique
		{"web-*", false, []testAgent{web1, web10, dup}},      // web-2 revoked, web-3 offline
		{"web-*", true, []testAgent{web1, web10, dup, gone}}, // offline too, never revoked
		{"web-?", false, []testAgent{web1, dup}},
		{"web-[0-9]0", false, []testAgent{web10}},
		{"web-[!1]*", true, []testAgent{gone}},
		{"*web-1", false, []testAgent{web1, dup, db}}, // * crosses '/'
		{`web\-1`, false, []testAgent{web1, dup}},
		{"nobody", false, nil},
	} {
		var want []string
		for _, a := range c.want {
			want = append(want, a.ID)
		}
		j := h.dispatchSpec(h.spec(store.Target{AgentName: c.pattern, IncludeOffline: c.offline}))
		if got := agentsOf(j); !slices.Equal(got, sorted(want)) {
			h.Fatalf("agent name %q (include offline %v) went to %v, want %v in id order", c.pattern, c.offline, got, sorted(want))
		}
		if c.want == nil && (!j.Counts.Done() || j.Counts != (store.Counts{})) {
			h.Fatalf("no match = %+v; want an empty, done job", j)
		}
		if j.Spec.Target.AgentName != c.pattern {
			h.Fatalf("job target = %+v", j.Spec.Target)
		}
		if got, err := h.s.GetJob(h.ctx, j.ID); err != nil || got.Spec.Target.AgentName != c.pattern || got.Spec.Target.String() != "agents named "+c.pattern {
			h.Fatalf("GetJob target = %+v (%q), %v", got.Spec.Target, got.Spec.Target.String(), err)
		}
	}
	for _, bad := range []string{"web-[1", `web\`, "web-[3-1]", " "} {
		_, err := h.s.Dispatch(h.ctx, h.spec(store.Target{AgentName: bad}))
		if store.KindOf(err) != store.KindInvalid {
			h.Fatalf("malformed name pattern %q: %v (kind %d), want KindInvalid", bad, err, store.KindOf(err))
		}
	}
	named, _, err := h.s.ListAgents(h.ctx, store.AgentFilter{Name: mustName(h, "web-1*")})
	if got, want := ids(named, func(x store.Agent) string { return x.ID }), sorted([]string{web1.ID, web10.ID, dup.ID}); err != nil || !slices.Equal(got, want) {
		h.Fatalf("ListAgents named web-1* = %v, %v; want %v", got, err, want)
	}
}

func mustName(h *harness, s string) store.NamePattern {
	h.Helper()
	p, err := store.ParseNamePattern(s)
	if err != nil {
		h.Fatal(err)
	}
	return p
}

func testMaxConcurrency(h *harness) {
	agents := h.fleet(5, map[string]string{"pool": "mc"})
	spec := h.spec(store.Target{Selector: "pool=mc"})
	spec.MaxConcurrency = 2
	t0 := h.now()
	j := h.dispatchSpec(spec)
	if len(j.TaskIDs) != 5 || j.Counts != (store.Counts{Pending: 5}) {
		h.Fatalf("Dispatch = %+v", j)
	}
	for i, id := range j.TaskIDs {
		t := h.task(id)
		if held := i >= 2; t.Held != held || t.DeliverBy.IsZero() != held {
			h.Fatalf("task %d: held %v deliver by %v; want the first 2 released", i, t.Held, t.DeliverBy)
		}
	}
	byID := byAgent(agents)
	finished := 0
	for round := 1; finished < 5; round++ {
		h.clock.Advance(time.Second)
		var running []store.Task
		for _, a := range agents {
			running = append(running, h.lease(a, 1).Tasks...)
		}
		want := min(2, 5-finished)
		if len(running) != want {
			h.Fatalf("round %d leased %d tasks, want %d", round, len(running), want)
		}
		h.wantCounts(j.ID, store.Counts{Running: want, Pending: 5 - finished - want, Succeeded: finished})
		for _, t := range running {
			h.mustReport(byID[t.AgentID], t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
			finished++
		}
	}
	h.wantCounts(j.ID, store.Counts{Succeeded: 5})
	// A held task's delivery TTL counts from its release: the fifth was released
	// by the second round's reports.
	if last := h.task(j.TaskIDs[4]); !last.DeliverBy.Equal(t0.Add(2*time.Second + deliveryTTL)) {
		h.Fatalf("the last task's delivery TTL ends %v, want %v", last.DeliverBy, t0.Add(2*time.Second+deliveryTTL))
	}
}

func testMaxFailures(h *harness) {
	agents := h.fleet(6, map[string]string{"pool": "mf"})
	spec := h.spec(store.Target{Selector: "pool=mf"})
	spec.MaxConcurrency = 2
	spec.MaxFailures = 2
	j := h.dispatchSpec(spec)
	byID := byAgent(agents)
	var first []store.Task
	for _, a := range agents {
		first = append(first, h.lease(a, 1).Tasks...)
	}
	if len(first) != 2 {
		h.Fatalf("leased %d tasks, want 2", len(first))
	}
	h.mustReport(byID[first[0].AgentID], first[0].Ref(), store.OutcomeFailed, store.StateFailed)
	if jb := h.wantCounts(j.ID, store.Counts{Failed: 1, Running: 1, Pending: 4}); jb.Canceled {
		h.Fatalf("the job stopped after one failure")
	}
	var second []store.Task
	for _, a := range agents {
		second = append(second, h.lease(a, 1).Tasks...)
	}
	if len(second) != 1 {
		h.Fatalf("after one failure leased %d new tasks, want 1", len(second))
	}
	h.clock.Advance(time.Second)
	tStop := h.now()
	h.mustReport(byID[second[0].AgentID], second[0].Ref(), store.OutcomeFailed, store.StateFailed)
	if jb := h.wantCounts(j.ID, store.Counts{Failed: 2, Running: 1, Canceled: 3}); !jb.Canceled {
		h.Fatalf("max_failures reached, but the job is not stopped")
	}
	stopped := 0
	for _, id := range j.TaskIDs {
		if t := h.task(id); t.State == store.StateCanceled {
			stopped++
			h.wantHistory(id,
				step{store.StatePending, store.ReasonDispatched, 0, j.CreatedAt},
				step{store.StateCanceled, store.ReasonMaxFailures(2), 0, tStop})
			h.wantEnded(id, store.StateCanceled, "job stopped: max_failures (2) reached")
		}
	}
	if stopped != 3 {
		h.Fatalf("%d tasks stopped, want 3", stopped)
	}
	for _, a := range agents {
		if r := h.lease(a, 1); len(r.Tasks) != 0 {
			h.Fatalf("a stopped job started a task")
		}
	}
	// The running one finishes as it ends: no cancel was asked of it.
	if t := h.task(first[1].ID); t.CancelRequested {
		h.Fatalf("max_failures asked a running task to stop: %+v", t)
	}
	h.mustReport(byID[first[1].AgentID], first[1].Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	h.wantCounts(j.ID, store.Counts{Failed: 2, Succeeded: 1, Canceled: 3})
}

func testCancelJob(h *harness) {
	agents := h.fleet(3, map[string]string{"pool": "cj"})
	j := h.dispatchSpec(h.spec(store.Target{Selector: "pool=cj"}))
	byID := byAgent(agents)
	t := h.leaseOne(byID[h.task(j.TaskIDs[0]).AgentID])
	h.clock.Advance(time.Second)
	tCancel := h.now()
	jb, err := h.s.CancelJob(h.ctx, j.ID, "")
	if err != nil || jb.Counts != (store.Counts{Canceled: 2, Running: 1}) || !jb.Canceled {
		h.Fatalf("CancelJob = %+v, %v", jb, err)
	}
	for _, id := range j.TaskIDs[1:] {
		h.wantHistory(id,
			step{store.StatePending, store.ReasonDispatched, 0, j.CreatedAt},
			step{store.StateCanceled, store.ReasonJobCanceled, 0, tCancel})
	}
	if got := h.task(t.ID); !got.CancelRequested || got.CancelReason != store.ReasonJobCanceled {
		h.Fatalf("running task of a cancelled job = %+v; want a cancel request", got)
	}
	// Cancelling again changes nothing.
	if jb, err := h.s.CancelJob(h.ctx, j.ID, "again"); err != nil || jb.Counts != (store.Counts{Canceled: 2, Running: 1}) {
		h.Fatalf("second CancelJob = %+v, %v", jb, err)
	}
	h.mustReport(byID[t.AgentID], t.Ref(), store.OutcomeSucceeded, store.StateCanceled)
	h.wantEnded(t.ID, store.StateCanceled, cause(store.ReasonJobCanceled, store.ReasonSucceeded))
	h.wantCounts(j.ID, store.Counts{Canceled: 3})
	_, err = h.s.CancelJob(h.ctx, "j000000000000000", "")
	wantErr(h, err, store.ErrJobNotFound("j000000000000000"), "CancelJob of an unknown job")
	_, err = h.s.GetJob(h.ctx, "j000000000000000")
	wantErr(h, err, store.ErrJobNotFound("j000000000000000"), "GetJob of an unknown job")
	_, err = h.s.GetJob(h.ctx, "nope")
	wantErr(h, err, store.ErrJobNotFound("nope"), "GetJob of a malformed id")

	// The operator's reason is kept as given.
	j2 := h.dispatchSpec(h.spec(store.Target{Selector: "pool=cj"}))
	if _, err := h.s.CancelJob(h.ctx, j2.ID, "wrong target"); err != nil {
		h.Fatal(err)
	}
	for _, id := range j2.TaskIDs {
		h.wantEnded(id, store.StateCanceled, "wrong target")
	}
}

func testIdempotency(h *harness) {
	a := h.register(nil)
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.IdempotencyKey = "deploy-42"
	j1 := h.dispatchSpec(spec)
	if j1.Existing || j1.Spec.IdempotencyKey != "deploy-42" {
		h.Fatalf("first Dispatch = %+v", j1)
	}
	j2 := h.dispatchSpec(spec)
	if j2.ID != j1.ID || !j2.Existing || !slices.Equal(j2.TaskIDs, j1.TaskIDs) || j2.Counts != j1.Counts {
		h.Fatalf("second Dispatch = %+v; want job %s again", j2, j1.ID)
	}
	if r := h.lease(a, 10); len(r.Tasks) != 1 {
		h.Fatalf("two dispatches with one key made %d tasks", len(r.Tasks))
	}
	if j3 := h.dispatchSpec(spec); j3.ID != j1.ID || j3.Counts != (store.Counts{Running: 1}) {
		h.Fatalf("third Dispatch = %+v; want job %s with its counts now", j3, j1.ID)
	}
	spec.IdempotencyKey = "deploy-43"
	if j4 := h.dispatchSpec(spec); j4.ID == j1.ID || j4.Existing {
		h.Fatalf("another key = %+v; want a new job", j4)
	}
}

func testListJobs(h *harness) {
	a := h.register(nil)
	var all []string
	for i := 0; i < 3; i++ {
		all = append(all, h.dispatch(a).ID)
	}
	slices.Reverse(all)
	got := pagedIDs(h, func(p store.Page) ([]store.Job, string, error) { return h.s.ListJobs(h.ctx, p) }, func(x store.Job) string { return x.ID })
	if !slices.Equal(got, all) {
		h.Fatalf("ListJobs = %v, want newest first %v", got, all)
	}
	page, _, err := h.s.ListJobs(h.ctx, store.Page{})
	if err != nil || len(page) != 3 || page[0].Counts != (store.Counts{Pending: 1}) {
		h.Fatalf("ListJobs = %+v, %v", page, err)
	}
}

func testPendingLimit(h *harness) {
	a, b := h.register(map[string]string{"pool": "pl"}), h.register(map[string]string{"pool": "pl"})
	for i := 0; i < maxPending; i++ {
		h.dispatch(a)
	}
	_, err := h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: a.ID}))
	wantErr(h, err, store.ErrAgentQueueFull(a.ID, maxPending), "dispatch past the pending limit")
	j := h.dispatchSpec(h.spec(store.Target{Selector: "pool=pl"}))
	h.wantCounts(j.ID, store.Counts{Pending: 1, Canceled: 1})
	for _, id := range j.TaskIDs {
		switch t := h.task(id); t.AgentID {
		case a.ID:
			h.wantEnded(id, store.StateCanceled, store.ReasonQueueFull(maxPending))
		case b.ID:
			h.wantState(id, store.StatePending)
		}
	}
	if ag := h.agent(a.ID); ag.Pending != maxPending {
		h.Fatalf("agent pending %d, want %d", ag.Pending, maxPending)
	}
	// A leased task frees its place in the queue.
	h.leaseOne(a)
	h.dispatch(a)
}
