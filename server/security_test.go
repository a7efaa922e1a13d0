package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store/storetest"
)

// world is a server with a clock the test moves (when given), and two agents:
// A running task tA (attempt 1), B running tB (attempt 1) with tB2 pending.
type world struct {
	*forgetest.Server
	t        *testing.T
	clock    *storetest.Clock
	idA, idB string
	tokA     string
	tokB     string
	agA, agB forgev1connect.AgentServiceClient
	tA, tB   string
	tB2      string
}

const testLease = 30 * time.Second

func newWorld(t *testing.T, b forgetest.Backend, clock *storetest.Clock) *world {
	t.Helper()
	opt := forgetest.Options{Backend: b, Server: server.Config{Lease: testLease, DisableReaper: true}}
	if clock != nil {
		opt.Store.Clock = clock
	}
	w := &world{Server: forgetest.Start(t, opt), t: t, clock: clock}
	w.idA, w.tokA = w.Register("a", nil)
	w.idB, w.tokB = w.Register("b", nil)
	w.agA, w.agB = w.Agent(w.tokA), w.Agent(w.tokB)
	w.tA = w.DispatchTo(w.idA)
	w.tB = w.DispatchTo(w.idB)
	w.tB2 = w.DispatchTo(w.idB)
	for _, ag := range []forgev1connect.AgentServiceClient{w.agA, w.agB} {
		p, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(p.Msg.Tasks) != 1 || p.Msg.Tasks[0].Attempt != 1 {
			t.Fatalf("setup Poll = %v, %v", p, err)
		}
	}
	return w
}

// snapshot renders everything an attack could change: every agent (but its
// last-seen time, which any authenticated call moves), every task with its
// lease and history, and every stored enrollment token.
func (w *world) snapshot() string {
	w.t.Helper()
	ctx := w.t.Context()
	var lines []string
	add := func(m proto.Message) {
		b, err := protojson.Marshal(m)
		if err != nil {
			w.t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	agents, err := w.Control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{PageSize: 1000}))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, a := range agents.Msg.Agents {
		a.LastSeenAt = nil
		add(a)
	}
	tasks, err := w.Control.ListTasks(ctx, connect.NewRequest(&forgev1.ListTasksRequest{PageSize: 1000}))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, t := range tasks.Msg.Tasks {
		add(t)
	}
	toks, err := w.Control.ListEnrollmentTokens(ctx, connect.NewRequest(&forgev1.ListEnrollmentTokensRequest{}))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, t := range toks.Msg.Tokens {
		add(t)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func (w *world) unchanged(name, before string) {
	w.t.Helper()
	if after := w.snapshot(); after != before {
		w.t.Errorf("%s changed the server's state:\nbefore:\n%s\nafter:\n%s", name, before, after)
	}
}

// raw posts body as a Connect unary call and names its outcome: "ok", the Connect
// code, or the HTTP status when there is no Connect error.
func (w *world) raw(path, token, ctype, body string) string {
	status, code, _ := w.Post(w.t.Context(), path, token, ctype, strings.NewReader(body))
	switch {
	case code != "":
		return code
	case status == http.StatusOK:
		return "ok"
	}
	return fmt.Sprint(status)
}

// TestAttacks runs each attack against a fresh world and checks both the code it
// gets and that nothing changed: tasks, leases, history, agents, enrollment tokens.
func TestAttacks(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const js = "application/json"
	// Past protojson's recursion limit (10,000); shallower nesting in unknown fields
	// is skipped, as unknown fields are.
	nested := strings.Repeat(`{"running":[`, 20000) + strings.Repeat("]}", 20000)
	nestedGroups := strings.Repeat("\x9b\x06", 20000) + strings.Repeat("\x9c\x06", 20000) // field 99, start and end group
	cases := []struct {
		name   string
		want   string
		attack func(w *world) string
	}{
		{"no token", "unauthenticated", func(w *world) string {
			_, err := w.Agent("").Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
			return codeOf(err)
		}},
		{"wrong token", "unauthenticated", func(w *world) string {
			_, err := w.Agent("fa_"+w.idA+"_"+strings.Repeat("x", 32)).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{
				TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"token over 512 bytes", "unauthenticated", func(w *world) string {
			_, err := w.Agent(w.tokA+strings.Repeat("x", 600)).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
			return codeOf(err)
		}},
		{"A's token under the Basic scheme", "unauthenticated", func(w *world) string {
			req, _ := http.NewRequestWithContext(ctx, "POST", w.URL+"/forge.v1.AgentService/Heartbeat", strings.NewReader("{}"))
			req.Header.Set("Content-Type", js)
			req.SetBasicAuth(w.tokA, "")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				return err.Error()
			}
			res.Body.Close()
			if res.StatusCode == http.StatusUnauthorized {
				return "unauthenticated"
			}
			return res.Status
		}},
		{"A's secret under B's id", "unauthenticated", func(w *world) string {
			secretA := w.tokA[len("fa_"+w.idA+"_"):]
			_, err := w.Agent("fa_"+w.idB+"_"+secretA).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{
				TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"operator token as an agent: Heartbeat", "permission_denied", func(w *world) string {
			_, err := w.Agent(adminToken).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{{TaskId: w.tB, Attempt: 1}}}))
			return codeOf(err)
		}},
		{"operator token as an agent: ReportResult", "permission_denied", func(w *world) string {
			_, err := w.Agent(adminToken).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"operator token as an agent: RotateToken", "permission_denied", func(w *world) string {
			_, err := w.Agent(adminToken).RotateToken(ctx, connect.NewRequest(&forgev1.RotateTokenRequest{}))
			return codeOf(err)
		}},
		{"operator token on Register", "permission_denied", func(w *world) string {
			_, err := w.Agent(adminToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
			return codeOf(err)
		}},
		{"enrollment token as an agent: ReportResult", "permission_denied", func(w *world) string {
			_, err := w.Agent(enrollToken).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"agent token on ControlService: RevokeAgent of B", "permission_denied", func(w *world) string {
			_, err := w.ControlAs(w.tokA).RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: w.idB}))
			return codeOf(err)
		}},
		{"agent token on ControlService: CancelTask of B's task", "permission_denied", func(w *world) string {
			_, err := w.ControlAs(w.tokA).CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: w.tB}))
			return codeOf(err)
		}},
		{"agent token on ControlService: Dispatch", "permission_denied", func(w *world) string {
			_, err := w.ControlAs(w.tokA).Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Target: &forgev1.DispatchRequest_All{All: true}}))
			return codeOf(err)
		}},
		{"agent token on ControlService: CreateEnrollmentToken", "permission_denied", func(w *world) string {
			_, err := w.ControlAs(w.tokA).CreateEnrollmentToken(ctx, connect.NewRequest(&forgev1.CreateEnrollmentTokenRequest{}))
			return codeOf(err)
		}},
		{"A heartbeats B's attempt", "ok", func(w *world) string {
			ref := &forgev1.TaskRef{TaskId: w.tB, Attempt: 1}
			res, err := w.agA.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{ref}}))
			if err != nil {
				return codeOf(err)
			}
			if len(res.Msg.Abandon) != 1 || !proto.Equal(res.Msg.Abandon[0], ref) || len(res.Msg.Cancel) != 0 {
				return fmt.Sprintf("answered %v, want B's attempt as abandon", res.Msg)
			}
			return "ok"
		}},
		{"A reports B's running task", "not_found", func(w *world) string {
			_, err := w.agA.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED, Output: []byte("pwned")}))
			return codeOf(err)
		}},
		{"A reports B's pending task", "not_found", func(w *world) string {
			_, err := w.agA.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tB2, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
			return codeOf(err)
		}},
		{"A hands back B's attempt", "ok", func(w *world) string {
			res, err := w.agA.ReturnTasks(ctx, connect.NewRequest(&forgev1.ReturnTasksRequest{Tasks: []*forgev1.TaskRef{{TaskId: w.tB, Attempt: 1}}}))
			if err != nil {
				return codeOf(err)
			}
			if len(res.Msg.Returned) != 0 {
				return fmt.Sprintf("handed back %v", res.Msg.Returned)
			}
			return "ok"
		}},
		{"A writes output into B's running task", "not_found", func(w *world) string {
			_, err := w.agA.AppendOutput(ctx, connect.NewRequest(&forgev1.AppendOutputRequest{TaskId: w.tB, Attempt: 1,
				Stream: forgev1.Stream_STREAM_STDOUT, Data: []byte("pwned")}))
			return codeOf(err)
		}},
		{"agent token reads B's output", "permission_denied", func(w *world) string {
			_, err := w.ControlAs(w.tokA).ReadOutput(ctx, connect.NewRequest(&forgev1.ReadOutputRequest{TaskId: w.tB}))
			return codeOf(err)
		}},
		{"agent token reads B's task", "permission_denied", func(w *world) string {
			_, err := w.ControlAs(w.tokA).GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: w.tB}))
			return codeOf(err)
		}},
		{"100,000 labels on Register", "invalid_argument", func(w *world) string {
			var b strings.Builder
			b.WriteString(`{"name":"many","labels":{`)
			for i := range 100000 {
				if i > 0 {
					b.WriteString(",")
				}
				fmt.Fprintf(&b, `"k%d":"v"`, i)
			}
			b.WriteString("}}")
			return w.raw("/forge.v1.AgentService/Register", enrollToken, js, b.String())
		}},
		{"a name that is not UTF-8 (proto)", "invalid_argument", func(w *world) string {
			return w.raw("/forge.v1.AgentService/Register", enrollToken, "application/proto", "\x0a\x03a\xffb")
		}},
		{"A polls: never gets B's tasks", "ok", func(w *world) string {
			res, err := w.agA.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{MaxTasks: i32(64), Wait: durationpb.New(0)}))
			if err != nil {
				return codeOf(err)
			}
			if len(res.Msg.Tasks)+len(res.Msg.Cancels) != 0 {
				return fmt.Sprintf("A got %v", res.Msg)
			}
			return "ok"
		}},
		{"future attempt of A's own task", "failed_precondition", func(w *world) string {
			_, err := w.agA.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 2, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
			return codeOf(err)
		}},
		{"oversized body on ReportResult", "resource_exhausted", func(w *world) string {
			out := strings.Repeat("QUFB", (5<<20)/3)
			return w.raw("/forge.v1.AgentService/ReportResult", w.tokA, js, `{"taskId":"`+w.tA+`","attempt":1,"outcome":"OUTCOME_SUCCEEDED","output":"`+out+`"}`)
		}},
		{"deeply nested JSON on Heartbeat", "invalid_argument", func(w *world) string {
			return w.raw("/forge.v1.AgentService/Heartbeat", w.tokA, js, nested)
		}},
		{"deeply nested JSON on Register", "invalid_argument", func(w *world) string {
			return w.raw("/forge.v1.AgentService/Register", enrollToken, js, `{"name":"x","hostname":`+strings.Repeat(`{"a":`, 20000)+"1"+strings.Repeat("}", 20000)+`}`)
		}},
		{"deeply nested proto (unknown groups) on Heartbeat", "invalid_argument", func(w *world) string {
			return w.raw("/forge.v1.AgentService/Heartbeat", w.tokA, "application/proto", nestedGroups)
		}},
		{"malformed JSON on ReportResult", "invalid_argument", func(w *world) string {
			return w.raw("/forge.v1.AgentService/ReportResult", w.tokA, js, `{"taskId":"`+w.tA+`","attempt":1,"outcome":"OUTCOME_SUCCEEDED"`)
		}},
		{"malformed proto on ReportResult", "invalid_argument", func(w *world) string {
			return w.raw("/forge.v1.AgentService/ReportResult", w.tokA, "application/proto", "\x0a\xff\xff\xff\x0f")
		}},
		{"wrong content type on Register", "415", func(w *world) string {
			return w.raw("/forge.v1.AgentService/Register", enrollToken, "text/plain", `{"name":"x"}`)
		}},
		{"wrong content type on RevokeAgent", "415", func(w *world) string {
			return w.raw("/forge.v1.ControlService/RevokeAgent", adminToken, "application/x-www-form-urlencoded", `agentId=`+w.idB)
		}},
	}
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				w := newWorld(t, b, storetest.NewClock())
				// Move time, so that an attack which wrongly touched a lease would show.
				w.clock.Advance(time.Second)
				before := w.snapshot()
				if got := c.attack(w); got != c.want {
					t.Errorf("got %s, want %s", got, c.want)
				}
				w.unchanged(c.name, before)
				// The victims still work: A and B finish their own tasks.
				for _, x := range []struct {
					ag forgev1connect.AgentServiceClient
					id string
				}{{w.agA, w.tA}, {w.agB, w.tB}} {
					if _, err := x.ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: x.id, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
						t.Errorf("after the attack, reporting %s: %v", x.id, err)
					}
				}
			})
		}
	})
}

// TestAttackStaleAttempt replays a report and a heartbeat of attempt 1 after the
// lease ran out and the task went out again as attempt 2.
func TestAttackStaleAttempt(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		w := newWorld(t, b, storetest.NewClock())
		w.clock.Advance(testLease + time.Second)
		if err := w.Store.Reap(ctx); err != nil {
			t.Fatal(err)
		}
		p, err := w.agA.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(p.Msg.Tasks) != 1 || p.Msg.Tasks[0].Id != w.tA || p.Msg.Tasks[0].Attempt != 2 {
			t.Fatalf("Poll after the lease ran out = %v, %v; want %s attempt 2", p, err, w.tA)
		}
		w.clock.Advance(time.Second)
		before := w.snapshot()
		_, err = w.agA.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
		wantCode(t, err, connect.CodeFailedPrecondition)
		hb, err := w.agA.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{{TaskId: w.tA, Attempt: 1}}}))
		if err != nil || len(hb.Msg.Abandon) != 1 || hb.Msg.Abandon[0].Attempt != 1 {
			t.Fatalf("Heartbeat of the stale attempt = %v, %v; want it abandoned", hb, err)
		}
		w.unchanged("replaying attempt 1", before)
		if got := w.Task(w.tA); got.State != forgev1.TaskState_TASK_STATE_RUNNING || got.Attempt != 2 {
			t.Fatalf("task after the replay = %v", got)
		}
	})
}

// TestAttackRevokedAgent revokes A while it holds a Poll and has its token cached
// by two replicas sharing one store.
func TestAttackRevokedAgent(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		w := newWorld(t, b, nil)
		// A second replica over the same store, which has seen A's token too.
		agA2 := w.Replica(server.Config{DisableReaper: true}).Agent(w.tokA)
		if _, err := agA2.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{})); err != nil {
			t.Fatal(err)
		}
		bBefore := []*forgev1.TaskInfo{w.Task(w.tB), w.Task(w.tB2)}

		held := pollAsync(ctx, w.agA, &forgev1.PollRequest{MaxTasks: i32(0), Wait: durationpb.New(20 * time.Second)})
		waitHeld(t, w.Server, 1)
		start := time.Now()
		if _, err := w.Control.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: w.idA})); err != nil {
			t.Fatal(err)
		}
		r := get(held, t)
		t.Logf("the held Poll answered %v after the revoke", r.at.Sub(start))
		// At once means well before the 20 s hold would have ended it.
		if connect.CodeOf(r.err) != connect.CodeUnauthenticated || r.at.Sub(start) > 10*time.Second {
			t.Fatalf("held Poll answered %v after %v; want unauthenticated at once", r.err, r.at.Sub(start))
		}
		for name, ag := range map[string]forgev1connect.AgentServiceClient{"replica 1": w.agA, "replica 2 (token cached)": agA2} {
			_, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
			wantCode(t, err, connect.CodeUnauthenticated)
			_, err = ag.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{{TaskId: w.tA, Attempt: 1}}}))
			wantCode(t, err, connect.CodeUnauthenticated)
			_, err = ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
			wantCode(t, err, connect.CodeUnauthenticated)
			_, err = ag.RotateToken(ctx, connect.NewRequest(&forgev1.RotateTokenRequest{}))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("%s: RotateToken of a revoked agent = %v", name, err)
			}
		}
		got := w.Task(w.tA)
		if got.State != forgev1.TaskState_TASK_STATE_CANCELED || !strings.Contains(got.Error+fmt.Sprint(got.History), "agent revoked") {
			t.Fatalf("A's task after revoke = %v; want CANCELED, agent revoked", got)
		}
		ag, _ := w.Control.GetAgent(ctx, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: w.idA}))
		if ag.Msg.Agent.Status != forgev1.AgentStatus_AGENT_STATUS_REVOKED {
			t.Fatalf("A's status = %v", ag.Msg.Agent.Status)
		}
		for i, id := range []string{w.tB, w.tB2} {
			if now := w.Task(id); !proto.Equal(now, bBefore[i]) {
				t.Fatalf("revoking A changed B's task:\n%v\n%v", bBefore[i], now)
			}
		}
	})
}

// TestAttackEnrollmentTokens tries stored enrollment tokens that are used up,
// expired, revoked or tampered with, and one in the wrong place.
func TestAttackEnrollmentTokens(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		w := newWorld(t, b, nil)
		create := func(req *forgev1.CreateEnrollmentTokenRequest) (string, string) {
			res, err := w.Control.CreateEnrollmentToken(ctx, connect.NewRequest(req))
			if err != nil {
				t.Fatal(err)
			}
			return res.Msg.Token, res.Msg.Info.Id
		}
		once, _ := create(&forgev1.CreateEnrollmentTokenRequest{Description: "once", MaxUses: 1})
		short, _ := create(&forgev1.CreateEnrollmentTokenRequest{Description: "short", Ttl: durationpb.New(50 * time.Millisecond)})
		revoked, revokedID := create(&forgev1.CreateEnrollmentTokenRequest{Description: "revoked"})
		good, _ := create(&forgev1.CreateEnrollmentTokenRequest{Description: "good"})
		if _, err := w.Agent(once).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "first"})); err != nil {
			t.Fatalf("first use of a one-use token: %v", err)
		}
		if _, err := w.Control.RevokeEnrollmentToken(ctx, connect.NewRequest(&forgev1.RevokeEnrollmentTokenRequest{Id: revokedID})); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // past the short token's ttl
		tampered := good[:len(good)-4] + "zzzz"
		if tampered == good {
			tampered = good[:len(good)-4] + "yyyy"
		}
		before := w.snapshot()
		for _, c := range []struct {
			name, token string
		}{{"used up", once}, {"expired", short}, {"revoked", revoked}, {"tampered secret", tampered}} {
			_, err := w.Agent(c.token).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: c.name}))
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("Register with a %s enrollment token: %v, want unauthenticated", c.name, err)
			}
		}
		_, err := w.ControlAs(good).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		wantCode(t, err, connect.CodePermissionDenied)
		_, err = w.Agent(good).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		wantCode(t, err, connect.CodePermissionDenied)
		w.unchanged("refused enrollments", before)
		if _, err := w.Agent(good).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "good"})); err != nil {
			t.Fatalf("a good stored token after the attacks: %v", err)
		}
	})
}

// TestAttackReRegisterName registers a new agent under A's name and labels: it
// gets a new identity and none of A's tasks.
func TestAttackReRegisterName(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		w := newWorld(t, b, storetest.NewClock())
		pendingA := w.DispatchTo(w.idA) // waiting in A's queue
		before := w.Task(pendingA)
		id, tok := w.Register("a", nil)
		if id == w.idA || tok == w.tokA || strings.Contains(tok, w.idA) {
			t.Fatalf("re-registering name a gave id %s token %s; A is %s", id, tok, w.idA)
		}
		imp := w.Agent(tok)
		p, err := imp.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{MaxTasks: i32(64), Wait: durationpb.New(0)}))
		if err != nil || len(p.Msg.Tasks) != 0 {
			t.Fatalf("the newcomer's Poll = %v, %v; want nothing", p, err)
		}
		_, err = imp.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
		wantCode(t, err, connect.CodeNotFound)
		if now := w.Task(pendingA); !proto.Equal(now, before) {
			t.Fatalf("A's pending task changed: %v", now)
		}
		p, err = w.agA.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(p.Msg.Tasks) != 1 || p.Msg.Tasks[0].Id != pendingA {
			t.Fatalf("A's own Poll = %v, %v; want its pending task", p, err)
		}
	})
}

// TestRotateToken checks the overlap: the old token works until the new one is
// first used, then only the new one does.
func TestRotateToken(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		w := newWorld(t, b, nil)
		res, err := w.agA.RotateToken(ctx, connect.NewRequest(&forgev1.RotateTokenRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		newTok := res.Msg.AgentToken
		if newTok == w.tokA || !strings.HasPrefix(newTok, "fa_"+w.idA+"_") {
			t.Fatalf("rotated token %q", newTok)
		}
		hb := func(ag forgev1connect.AgentServiceClient) error {
			_, err := ag.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{{TaskId: w.tA, Attempt: 1}}}))
			return err
		}
		if err := hb(w.agA); err != nil {
			t.Fatalf("old token before the new one is used: %v", err)
		}
		if err := hb(w.Agent(newTok)); err != nil {
			t.Fatalf("new token: %v", err)
		}
		wantCode(t, hb(w.agA), connect.CodeUnauthenticated)
		if err := hb(w.Agent(newTok)); err != nil {
			t.Fatalf("new token after the old one retired: %v", err)
		}
		// The task is A's still, and the new token reports it.
		if _, err := w.Agent(newTok).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTokensNeverLoggedOrStored drives every call that makes, takes or changes a
// token, then looks for the tokens in each log line, in the API's answers about
// agents and enrollment tokens, and in everything the store holds. It also
// checks the audit trail: who and from where, for each control action and
// registration.
func TestTokensNeverLoggedOrStored(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		w := newWorld(t, b, nil) // registers A and B, dispatches, polls
		secrets := []string{enrollToken, adminToken, w.tokA, w.tokB}
		ct, err := w.Control.CreateEnrollmentToken(ctx, connect.NewRequest(&forgev1.CreateEnrollmentTokenRequest{Description: "d", MaxUses: 5}))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, ct.Msg.Token)
		reg, err := w.Agent(ct.Msg.Token).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "c"}))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, reg.Msg.AgentToken)
		if _, err := w.agA.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
			t.Fatal(err)
		}
		rot, err := w.agB.RotateToken(ctx, connect.NewRequest(&forgev1.RotateTokenRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, rot.Msg.AgentToken)
		if _, err := w.Agent(rot.Msg.AgentToken).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{})); err != nil {
			t.Fatal(err)
		}
		// Failed attempts with real-looking tokens must not be logged either.
		wrong := "fa_" + w.idA + "_" + strings.Repeat("q", 32)
		secrets = append(secrets, wrong)
		w.Agent(wrong).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
		w.Agent(w.tokB).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{})) // retired by the rotation
		w.ControlAs(w.tokA).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if _, err := w.Control.CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: w.tB2, Reason: "r"})); err != nil {
			t.Fatal(err)
		}
		d, err := w.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Target: &forgev1.DispatchRequest_AgentId{AgentId: reg.Msg.AgentId}}))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Control.CancelJob(ctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: d.Msg.JobId})); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Control.RevokeEnrollmentToken(ctx, connect.NewRequest(&forgev1.RevokeEnrollmentTokenRequest{Id: ct.Msg.Info.Id})); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Control.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: w.idA})); err != nil {
			t.Fatal(err)
		}

		// Every form a token could leak in: whole, its secret part alone.
		var needles []string
		for _, s := range secrets {
			needles = append(needles, s)
			if i := strings.LastIndexByte(s, '_'); i > 0 && len(s)-i > 16 {
				needles = append(needles, s[i+1:])
			}
		}
		audits := map[string]int{}
		for _, line := range w.Log.Lines() {
			for _, n := range needles {
				if strings.Contains(line, n) {
					t.Errorf("a log line shows a token: %s", line)
				}
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line is not JSON: %q", line)
			}
			msg, _ := rec["msg"].(string)
			if !strings.HasPrefix(msg, "audit: ") {
				continue
			}
			by, _ := rec["by"].(string)
			from, _ := rec["from"].(string)
			if by == "" || !strings.Contains(from, "127.0.0.1:") {
				t.Errorf("audit line without who or from where: %s", line)
			}
			audits[strings.TrimPrefix(msg, "audit: ")]++
		}
		for action, n := range map[string]int{"agent registered": 3, "dispatch": 4, "cancel task": 1, "cancel job": 1,
			"create enrollment token": 1, "revoke enrollment token": 1, "revoke agent": 1, "agent token rotated": 1} {
			if audits[action] != n {
				t.Errorf("%d audit lines %q, want %d (all: %v)", audits[action], action, n, audits)
			}
		}

		// What the API says about agents and tokens holds no secret.
		agents, _ := w.Control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		toks, _ := w.Control.ListEnrollmentTokens(ctx, connect.NewRequest(&forgev1.ListEnrollmentTokensRequest{}))
		one, _ := w.Control.GetAgent(ctx, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: w.idB}))
		for _, m := range []proto.Message{agents.Msg, toks.Msg, one.Msg} {
			b, _ := protojson.Marshal(m)
			for _, n := range needles {
				if strings.Contains(string(b), n) {
					t.Errorf("%T shows a token: %s", m, b)
				}
			}
		}
		// Nor does anything the store holds: every string and byte slice in the
		// memstore's memory, every Redis key with its values.
		w.Close()
		stored := w.Stored()
		t.Logf("%d strings stored", len(stored))
		for _, s := range stored {
			for _, n := range needles {
				if strings.Contains(s, n) {
					t.Errorf("the store holds a token in clear: %.120q", s)
				}
			}
		}
	})
}
