package storetest

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

var agentCases = []testCase{
	{"RegisterAndAuthenticate", testRegister, nil},
	{"RotateToken", testRotate, nil},
	{"Status", testStatus, nil},
	{"Stopped", testStopped, nil},
	{"Revoke", testRevoke, nil},
	{"RevokeReason", testRevokeReason, nil},
	{"List", testListAgents, nil},
	{"RemovedWhenUnseen", testRemoveUnseen, nil},
	{"Update", testUpdateAgent, nil},
	{"Names", testAgentNames, nil},
}

// testAgentNames: a name that a pattern or a listing would misread (empty, a
// glob character, shaped like an agent id, spaced or escaped to pass for
// another) is refused with KindInvalid at Register and at Update, and nothing
// is stored; names that patterns match as written are taken.
func testAgentNames(h *harness) {
	a := h.registerNamed("web-1", nil)
	for _, bad := range []string{"", "*", "web-*", "web-?", "web-[1]", `web\1`, "web-1 ", "web\u00a01", "web\x1b[31m",
		"a" + strings.Repeat("b", store.AgentIDLen-1)} {
		_, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: bad, SecretHash: hash("bad")})
		wantErr(h, err, store.CheckAgentName(bad), fmt.Sprintf("RegisterAgent named %q", bad))
		_, err = h.s.UpdateAgent(h.ctx, a.cred, store.RegisterParams{Name: bad})
		wantErr(h, err, store.CheckAgentName(bad), fmt.Sprintf("UpdateAgent to the name %q", bad))
	}
	if list, _, err := h.s.ListAgents(h.ctx, store.AgentFilter{}); err != nil || len(list) != 1 || list[0].Name != "web-1" {
		h.Fatalf("after refused names, ListAgents = %+v, %v; want web-1 alone", list, err)
	}
	for _, good := range []string{"web 1", "db/web-1", "café-日本", "a" + strings.Repeat("b", store.AgentIDLen)} {
		if _, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: good, SecretHash: hash(good)}); err != nil {
			h.Fatalf("RegisterAgent named %q: %v", good, err)
		}
	}
}

// testUpdateAgent: an agent that starts again with its saved identity gives its
// name, labels, hostname, version and task types, which replace the stored ones
// (selectors and name patterns match the new ones at once); it is online again
// even after a clean stop; the agent as it was comes back; a wrong, unknown or
// revoked credential changes nothing.
func testUpdateAgent(h *harness) {
	a := h.registerNamed("web-1", map[string]string{"env": "dev", "role": "web"})
	other := h.registerNamed("web-2", map[string]string{"env": "dev"})
	if _, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Lease: leaseFor, Stopped: true}); err != nil {
		h.Fatal(err)
	}
	if got := h.agent(a.ID); got.Status != store.AgentOffline {
		h.Fatalf("stopped agent is %v", got.Status)
	}
	h.clock.Advance(time.Second)
	p := store.RegisterParams{Name: "db-1", Hostname: "host2", Version: "v2",
		Labels: map[string]string{"env": "prod", "tier": "db"}, TaskTypes: []string{"echo", "exec"}}
	was, err := h.s.UpdateAgent(h.ctx, a.cred, p)
	if err != nil {
		h.Fatalf("UpdateAgent: %v", err)
	}
	if was.ID != a.ID || was.Name != "web-1" || was.Hostname != "host" || was.Version != "v1" ||
		!maps(was.Labels, map[string]string{"env": "dev", "role": "web"}) || !slices.Equal(was.TaskTypes, []string{"echo"}) {
		h.Fatalf("UpdateAgent answered the agent as it was = %+v", was)
	}
	got := h.agent(a.ID)
	if got.Name != "db-1" || got.Hostname != "host2" || got.Version != "v2" || !maps(got.Labels, p.Labels) ||
		!slices.Equal(got.TaskTypes, p.TaskTypes) || got.Status != store.AgentOnline || !got.LastSeenAt.Equal(h.now()) ||
		!got.RegisteredAt.Equal(a.RegisteredAt) {
		h.Fatalf("after UpdateAgent: %+v", got)
	}
	if st, err := h.s.Stats(h.ctx); err != nil || st.Agents[store.AgentOnline] != 2 || st.Agents[store.AgentOffline] != 0 {
		h.Fatalf("Stats after UpdateAgent of a stopped agent = %+v, %v; want both agents online", st.Agents, err)
	}
	for _, c := range []struct {
		f    store.AgentFilter
		want []string
	}{
		{store.AgentFilter{Selector: store.MustParseSelector("env=prod")}, []string{a.ID}},
		{store.AgentFilter{Selector: store.MustParseSelector("role=web")}, nil},
		{store.AgentFilter{Selector: store.MustParseSelector("env=dev")}, []string{other.ID}},
	} {
		list, _, err := h.s.ListAgents(h.ctx, c.f)
		if err != nil {
			h.Fatal(err)
		}
		var ids []string
		for _, x := range list {
			ids = append(ids, x.ID)
		}
		if !slices.Equal(ids, c.want) {
			h.Fatalf("ListAgents(%v) = %v, want %v", c.f.Selector, ids, c.want)
		}
	}
	j := h.dispatchSpec(h.spec(store.Target{AgentName: "db-*"}))
	if len(j.TaskIDs) != 1 || !strings.HasSuffix(j.TaskIDs[0], a.ID) {
		h.Fatalf("dispatch to the new name made tasks %v", j.TaskIDs)
	}

	_, err = h.s.UpdateAgent(h.ctx, store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}, p)
	wantErr(h, err, store.ErrUnknownAgent(), "UpdateAgent with a wrong secret")
	_, err = h.s.UpdateAgent(h.ctx, store.Cred{AgentID: store.NewAgentID(), SecretHash: hash("x")}, p)
	wantErr(h, err, store.ErrUnknownAgent(), "UpdateAgent of an unknown agent")
	if _, err := h.s.RevokeAgent(h.ctx, other.ID, ""); err != nil {
		h.Fatal(err)
	}
	_, err = h.s.UpdateAgent(h.ctx, other.cred, p)
	wantErr(h, err, store.ErrRevokedAgent(), "UpdateAgent of a revoked agent")
	if got := h.agent(other.ID); got.Name != "web-2" || got.Status != store.AgentRevoked {
		h.Fatalf("a refused UpdateAgent changed the agent: %+v", got)
	}
}

// testRemoveUnseen: an agent unseen for the agent retention (revoked or not) is
// removed by Reap — its record and tokens gone, its live tasks CANCELED — no
// later than an hour after the retention runs out; one that keeps calling stays.
func testRemoveUnseen(h *harness) {
	gone, stays, revoked := h.register(nil), h.register(nil), h.register(nil)
	spec := h.spec(store.Target{AgentID: gone.ID})
	spec.DeliveryTTL = 30 * 24 * time.Hour
	j := h.dispatchSpec(spec)
	if _, err := h.s.RevokeAgent(h.ctx, revoked.ID, ""); err != nil {
		h.Fatal(err)
	}
	for day := 1; day < 10; day++ {
		h.clock.Advance(24 * time.Hour)
		h.lease(stays, 0)
		h.reap()
	}
	h.clock.Advance(24*time.Hour - time.Second) // a second short of the retention
	h.reap()
	h.agent(gone.ID)
	h.agent(revoked.ID)
	h.clock.Advance(time.Hour + time.Second)
	h.reap()
	for _, a := range []testAgent{gone, revoked} {
		_, err := h.s.GetAgent(h.ctx, a.ID)
		wantErr(h, err, store.ErrAgentNotFound(a.ID), "GetAgent of an agent removed after the retention")
	}
	wantErr(h, h.s.AuthenticateAgent(h.ctx, gone.cred), store.ErrUnknownAgent(), "the token of a removed agent")
	h.wantEnded(j.TaskIDs[0], store.StateCanceled, store.ReasonAgentRemoved(agentRet))
	h.wantCounts(j.ID, store.Counts{Canceled: 1})
	agents, _, err := h.s.ListAgents(h.ctx, store.AgentFilter{})
	if err != nil || len(agents) != 1 || agents[0].ID != stays.ID {
		h.Fatalf("ListAgents after the removal = %v, %v; want only %s", agents, err, stays.ID)
	}
	_, err = h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: gone.ID}))
	wantErr(h, err, store.ErrAgentNotFound(gone.ID), "Dispatch to a removed agent")
	if err := h.s.AuthenticateAgent(h.ctx, stays.cred); err != nil {
		h.Fatalf("the agent that kept calling: %v", err)
	}
}

const unknownAgent = "a0000000000000000"

func testRegister(h *harness) {
	a := h.register(map[string]string{"env": "prod"})
	if !store.ValidID(a.ID, 'a') {
		h.Fatalf("agent id %q is not well formed", a.ID)
	}
	if err := h.s.AuthenticateAgent(h.ctx, a.cred); err != nil {
		h.Fatalf("AuthenticateAgent: %v", err)
	}
	wantErr(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}), store.ErrUnknownAgent(), "wrong secret")
	wantErr(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: a.ID}), store.ErrUnknownAgent(), "no secret")
	wantErr(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: unknownAgent, SecretHash: a.cred.SecretHash}), store.ErrUnknownAgent(), "unknown agent")
	wantErr(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: "not an id", SecretHash: a.cred.SecretHash}), store.ErrUnknownAgent(), "malformed agent id")
	_, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}, Max: 1, Lease: time.Second})
	wantErr(h, err, store.ErrUnknownAgent(), "Lease with a wrong secret")
	_, err = h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}, Lease: time.Second})
	wantErr(h, err, store.ErrUnknownAgent(), "Heartbeat with a wrong secret")
	_, err = h.report(testAgent{cred: store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}}, store.TaskRef{TaskID: "t000000000000000-" + a.ID, Attempt: 1}, store.OutcomeSucceeded)
	wantErr(h, err, store.ErrUnknownAgent(), "Report with a wrong secret")
	_, err = h.s.Lease(h.ctx, store.LeaseParams{Cred: store.Cred{AgentID: unknownAgent, SecretHash: a.cred.SecretHash}, Max: 1, Lease: time.Second})
	wantErr(h, err, store.ErrUnknownAgent(), "Lease of an agent never registered")
	_, err = h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: store.Cred{AgentID: unknownAgent, SecretHash: a.cred.SecretHash}, Lease: time.Second})
	wantErr(h, err, store.ErrUnknownAgent(), "Heartbeat of an agent never registered")

	b := h.register(nil)
	if b.ID == a.ID {
		h.Fatalf("two registrations got the same id")
	}
	got := h.agent(a.ID)
	now := h.now()
	if got.Name != a.Name || !maps(got.Labels, map[string]string{"env": "prod"}) || got.Hostname != "host" || got.Version != "v1" ||
		!slices.Equal(got.TaskTypes, []string{"echo"}) || got.Status != store.AgentOnline ||
		!got.RegisteredAt.Equal(now) || !got.LastSeenAt.Equal(now) || !got.RevokedAt.IsZero() || got.Pending != 0 || len(got.Running) != 0 {
		h.Fatalf("GetAgent = %+v", got)
	}
	_, err = h.s.GetAgent(h.ctx, unknownAgent)
	wantErr(h, err, store.ErrAgentNotFound(unknownAgent), "GetAgent of an unknown agent")
	_, err = h.s.GetAgent(h.ctx, "nope")
	wantErr(h, err, store.ErrAgentNotFound("nope"), "GetAgent of a malformed id")
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
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
	wantErr(h, h.s.AuthenticateAgent(h.ctx, a.cred), store.ErrUnknownAgent(), "old token after the new one was used")
	if err := h.s.AuthenticateAgent(h.ctx, next); err != nil {
		h.Fatalf("new token: %v", err)
	}
	wantErr(h, h.s.RotateAgentToken(h.ctx, a.cred, hash("other")), store.ErrUnknownAgent(), "rotation with the retired token")
}

// testStatus follows an agent's status as time passes, comparing it with
// store.StatusAt of what the agent did: its last call and its Poll's hold.
func testStatus(h *harness) {
	a := h.register(nil)
	want := func(seen, pollUntil time.Time, what string) {
		h.Helper()
		w := store.StatusAt(false, false, seen, pollUntil, h.now(), onlineWindow)
		if got := h.agent(a.ID); got.Status != w || !got.LastSeenAt.Equal(seen) {
			h.Fatalf("%s: agent %v last seen %v, want %v last seen %v", what, got.Status, got.LastSeenAt, w, seen)
		}
		on, _, err := h.s.ListAgents(h.ctx, store.AgentFilter{Status: w})
		if err != nil || !slices.Contains(ids(on, func(x store.Agent) string { return x.ID }), a.ID) {
			h.Fatalf("%s: ListAgents with status %v does not list the agent (%v)", what, w, err)
		}
	}
	seen := h.now()
	want(seen, time.Time{}, "at registration")
	h.clock.Advance(onlineWindow - time.Millisecond)
	want(seen, time.Time{}, "just inside the online window")
	h.clock.Advance(time.Millisecond)
	want(seen, time.Time{}, "at the end of the online window")
	if h.agent(a.ID).Status != store.AgentOffline {
		h.Fatalf("an agent silent for the online window is not offline")
	}

	// A held Poll keeps the agent online past the window, until its hold ends.
	const hold = 2 * onlineWindow
	if _, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: leaseFor, Hold: hold}); err != nil {
		h.Fatal(err)
	}
	seen = h.now()
	pollUntil := seen.Add(hold)
	h.clock.Advance(hold - time.Millisecond)
	want(seen, pollUntil, "while a Poll is held past the window")
	if h.agent(a.ID).Status != store.AgentOnline {
		h.Fatalf("an agent holding a Poll is not online")
	}
	h.clock.Advance(time.Millisecond)
	want(seen, pollUntil, "when the Poll's hold ends")

	// A Lease that answers with a task ends its Poll's hold at once.
	h.dispatch(a)
	if _, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: leaseFor, Hold: hold}); err != nil {
		h.Fatal(err)
	}
	seen = h.now()
	h.clock.Advance(onlineWindow)
	want(seen, time.Time{}, "after a Poll answered with a task")
	if h.agent(a.ID).Status != store.AgentOffline {
		h.Fatalf("a Poll answered at once still holds the agent online")
	}

	// Heartbeat and Report count as calls.
	h.heartbeat(a, leaseFor)
	want(h.now(), time.Time{}, "after a Heartbeat")
}

func testRevoke(h *harness) {
	pool := h.fleet(2, map[string]string{"pool": "rv"})
	t0 := h.now()
	// A rollout job over both agents: one task released, the other held. The
	// agent with the held task is the one revoked: that ends the held task too.
	spec := h.spec(store.Target{Selector: "pool=rv"})
	spec.MaxConcurrency = 1
	rollout := h.dispatchSpec(spec)
	if len(rollout.TaskIDs) != 2 {
		h.Fatalf("rollout made %d tasks", len(rollout.TaskIDs))
	}
	held := h.task(rollout.TaskIDs[1])
	if !held.Held || h.task(rollout.TaskIDs[0]).Held {
		h.Fatalf("rollout tasks: want the first released and the second held")
	}
	a, other := byAgent(pool)[held.AgentID], pool[0]
	if other.ID == a.ID {
		other = pool[1]
	}
	h.dispatch(a)
	run := h.leaseOne(a)
	pending := h.dispatch(a).TaskIDs[0]
	w := h.s.Watch(store.AgentKey(a.ID))
	defer w.Stop()
	h.clock.Advance(time.Second)
	t1 := h.now()
	ag, err := h.s.RevokeAgent(h.ctx, a.ID, "")
	if err != nil || ag.Status != store.AgentRevoked || !ag.RevokedAt.Equal(t1) || len(ag.Running) != 0 || ag.Pending != 0 {
		h.Fatalf("RevokeAgent = %+v, %v", ag, err)
	}
	if !fired(w) {
		h.Fatalf("revoke did not wake the agent's watcher")
	}
	wantErr(h, h.s.AuthenticateAgent(h.ctx, a.cred), store.ErrRevokedAgent(), "revoked token")
	_, err = h.s.Lease(h.ctx, h.leaseParams(a, 1))
	wantErr(h, err, store.ErrRevokedAgent(), "Lease with a revoked token")
	_, err = h.report(a, run.Ref(), store.OutcomeSucceeded)
	wantErr(h, err, store.ErrRevokedAgent(), "Report with a revoked token")
	_, err = h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Lease: leaseFor})
	wantErr(h, err, store.ErrRevokedAgent(), "Heartbeat with a revoked token")
	wantErr(h, h.s.RotateAgentToken(h.ctx, a.cred, hash("other")), store.ErrRevokedAgent(), "rotation with a revoked token")
	// The revocation is told whatever the secret: a revoked agent is never told
	// it is unknown, which would let it enroll again.
	wantErr(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: a.ID, SecretHash: hash("wrong")}), store.ErrRevokedAgent(),
		"a revoked agent's id with a wrong secret")
	if _, err := h.s.RevokeAgent(h.ctx, a.ID, "again"); err != nil {
		h.Fatal(err)
	}
	wantErr(h, h.s.AuthenticateAgent(h.ctx, a.cred), store.ErrRevokedAgent(), "revoked twice")

	h.wantHistory(pending,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateCanceled, store.ReasonAgentRevoked, 0, t1})
	h.wantHistory(run.ID,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateRunning, store.ReasonLeased(1), 1, t0},
		step{store.StateCanceled, store.ReasonAgentRevoked, 1, t1})
	h.wantHistory(held.ID,
		step{store.StatePending, store.ReasonDispatched, 0, t0},
		step{store.StateCanceled, store.ReasonAgentRevoked, 0, t1})
	for _, id := range []string{pending, run.ID, held.ID} {
		h.wantEnded(id, store.StateCanceled, store.ReasonAgentRevoked)
	}
	h.wantCounts(rollout.ID, store.Counts{Pending: 1, Canceled: 1})
	tasks, _, _ := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID})
	if len(tasks) != 3 {
		h.Fatalf("agent has %d tasks, want 3", len(tasks))
	}

	again, err := h.s.RevokeAgent(h.ctx, a.ID, "again")
	if err != nil || !again.RevokedAt.Equal(t1) {
		h.Fatalf("revoking twice = %+v, %v; want it unchanged", again, err)
	}
	h.wantEnded(pending, store.StateCanceled, store.ReasonAgentRevoked)

	_, err = h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: a.ID}))
	wantErr(h, err, store.ErrAgentRevoked(a.ID), "dispatch to a revoked agent")
	_, err = h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: unknownAgent}))
	wantErr(h, err, store.ErrAgentNotFound(unknownAgent), "dispatch to an unknown agent")
	_, err = h.s.RevokeAgent(h.ctx, unknownAgent, "")
	wantErr(h, err, store.ErrAgentNotFound(unknownAgent), "revoke of an unknown agent")
	if j := h.dispatchSpec(h.spec(store.Target{Selector: "pool=rv", IncludeOffline: true})); len(j.TaskIDs) != 1 || h.task(j.TaskIDs[0]).AgentID != other.ID {
		h.Fatalf("a selector reached a revoked agent: %v", j.TaskIDs)
	}
}

func testRevokeReason(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	if _, err := h.s.RevokeAgent(h.ctx, a.ID, "key leaked"); err != nil {
		h.Fatal(err)
	}
	h.wantEnded(j.TaskIDs[0], store.StateCanceled, store.ReasonRevoked("key leaked"))
	if store.ReasonRevoked("key leaked") != "agent revoked: key leaked" {
		h.Fatalf("ReasonRevoked = %q", store.ReasonRevoked("key leaked"))
	}
}

func testListAgents(h *harness) {
	var all []string
	for i := 0; i < 5; i++ {
		role := "web"
		if i%2 == 1 {
			role = "db"
		}
		all = append(all, h.register(map[string]string{"role": role}).ID)
	}
	all = sorted(all)
	got := pagedIDs(h, func(p store.Page) ([]store.Agent, string, error) {
		return h.s.ListAgents(h.ctx, store.AgentFilter{Page: p})
	}, func(x store.Agent) string { return x.ID })
	if !slices.Equal(got, all) {
		h.Fatalf("ListAgents paged = %v, want %v", got, all)
	}
	web, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Selector: store.MustParseSelector("role=web")})
	if len(web) != 3 {
		h.Fatalf("role=web matched %d agents, want 3", len(web))
	}
	if _, err := h.s.RevokeAgent(h.ctx, all[0], ""); err != nil {
		h.Fatal(err)
	}
	rev, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Status: store.AgentRevoked})
	if len(rev) != 1 || rev[0].ID != all[0] {
		h.Fatalf("revoked filter = %+v", rev)
	}
	on, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Status: store.AgentOnline})
	if !slices.Equal(ids(on, func(x store.Agent) string { return x.ID }), all[1:]) {
		h.Fatalf("online filter = %d agents, want %v", len(on), all[1:])
	}
	h.clock.Advance(onlineWindow)
	off, _, _ := h.s.ListAgents(h.ctx, store.AgentFilter{Status: store.AgentOffline})
	if len(off) != 4 {
		h.Fatalf("offline filter after the window = %d agents, want 4", len(off))
	}
}

// testStopped: a Heartbeat that says the agent stopped makes it OFFLINE at once,
// even with a Poll held and within the online window; selectors and `all` no
// longer match it (unless IncludeOffline); its next call makes it ONLINE again.
// The Poll it held is over: a re-check of it is superseded and is not a call.
func testStopped(h *harness) {
	a := h.register(map[string]string{"pool": "stop"})
	held, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: leaseFor, Hold: holdFor})
	if err != nil {
		h.Fatal(err)
	}
	status := func(want store.AgentStatus, what string) {
		h.Helper()
		got := h.agent(a.ID)
		if got.Status != want || !got.LastSeenAt.Equal(h.now()) {
			h.Fatalf("%s: agent %v last seen %v, want %v last seen %v", what, got.Status, got.LastSeenAt, want, h.now())
		}
		on, _, err := h.s.ListAgents(h.ctx, store.AgentFilter{Status: want})
		if err != nil || !slices.Contains(ids(on, func(x store.Agent) string { return x.ID }), a.ID) {
			h.Fatalf("%s: ListAgents with status %v does not list the agent (%v)", what, want, err)
		}
	}
	status(store.AgentOnline, "holding a Poll")
	h.clock.Advance(time.Second)
	if _, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Lease: leaseFor, Stopped: true}); err != nil {
		h.Fatal(err)
	}
	status(store.AgentOffline, "after its stopping Heartbeat")
	stoppedAt := h.now()
	h.clock.Advance(time.Second)
	re, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 1, Lease: leaseFor, Hold: holdFor, Gen: held.Gen})
	if err != nil || !re.Superseded {
		h.Fatalf("re-check of the Poll held before the stop = superseded %v, %v; want superseded", re.Superseded, err)
	}
	if got := h.agent(a.ID); got.Status != store.AgentOffline || !got.LastSeenAt.Equal(stoppedAt) {
		h.Fatalf("after a re-check of the Poll held before the stop: agent %v last seen %v, want %v last seen %v",
			got.Status, got.LastSeenAt, store.AgentOffline, stoppedAt)
	}
	for _, tg := range []store.Target{{Selector: "pool=stop"}, {All: true}} {
		if j := h.dispatchSpec(h.spec(tg)); len(j.TaskIDs) != 0 {
			h.Fatalf("dispatch to %v after the stop made %d tasks", tg, len(j.TaskIDs))
		}
	}
	spec := h.spec(store.Target{Selector: "pool=stop", IncludeOffline: true})
	if j := h.dispatchSpec(spec); len(j.TaskIDs) != 1 {
		h.Fatalf("dispatch with IncludeOffline after the stop made %d tasks, want 1", len(j.TaskIDs))
	}
	h.clock.Advance(time.Second)
	h.heartbeat(a, leaseFor)
	status(store.AgentOnline, "after a Heartbeat of its next run")
	if _, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Lease: leaseFor, Stopped: true}); err != nil {
		h.Fatal(err)
	}
	status(store.AgentOffline, "stopped again")
	h.clock.Advance(time.Second)
	if _, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: 0, Lease: leaseFor, Hold: holdFor}); err != nil {
		h.Fatal(err)
	}
	status(store.AgentOnline, "after a Lease of its next run")
}
