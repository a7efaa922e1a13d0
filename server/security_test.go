package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
	"github.com/orange-forge/forge/store/storetest"
)

// world is a server over a memstore with a clock the test moves, and two agents:
// A running task tA (attempt 1), B running tB (attempt 1) with tB2 pending.
type world struct {
	t        *testing.T
	clock    *storetest.Clock
	st       *memstore.Store
	srv      *server.Server
	url      string
	log      *syncBuffer
	control  forgev1connect.ControlServiceClient
	idA, idB string
	tokA     string
	tokB     string
	agA, agB forgev1connect.AgentServiceClient
	tA, tB   string
	tB2      string
}

// syncBuffer is a bytes.Buffer safe for the server's concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const testLease = 30 * time.Second

func newWorld(t *testing.T, clock *storetest.Clock) *world {
	t.Helper()
	w := &world{t: t, clock: clock, log: &syncBuffer{}}
	cfg := store.Config{}
	if clock != nil {
		cfg.Clock = clock
	}
	w.st = memstore.New(cfg)
	var err error
	w.srv, err = server.New(server.Config{Store: w.st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken},
		Logger: slog.New(slog.NewJSONHandler(w.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Lease:  testLease, DisableReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(w.srv)
	t.Cleanup(func() { w.srv.Close(); hs.Close(); w.st.Close() })
	w.url = hs.URL
	w.control = forgev1connect.NewControlServiceClient(http.DefaultClient, hs.URL, connect.WithInterceptors(bearer(adminToken)))
	w.idA, w.tokA = w.register("a", nil)
	w.idB, w.tokB = w.register("b", nil)
	w.agA, w.agB = w.agent(w.tokA), w.agent(w.tokB)
	w.tA = w.dispatch(w.idA)
	w.tB = w.dispatch(w.idB)
	w.tB2 = w.dispatch(w.idB)
	for _, ag := range []forgev1connect.AgentServiceClient{w.agA, w.agB} {
		p, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(p.Msg.Tasks) != 1 || p.Msg.Tasks[0].Attempt != 1 {
			t.Fatalf("setup Poll = %v, %v", p, err)
		}
	}
	return w
}

func (w *world) agent(tok string) forgev1connect.AgentServiceClient {
	return forgev1connect.NewAgentServiceClient(http.DefaultClient, w.url, connect.WithInterceptors(bearer(tok)))
}

func (w *world) register(name string, labels map[string]string) (id, token string) {
	w.t.Helper()
	res, err := w.agent(enrollToken).Register(w.t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: name, Labels: labels}))
	if err != nil {
		w.t.Fatalf("Register: %v", err)
	}
	return res.Msg.AgentId, res.Msg.AgentToken
}

func (w *world) dispatch(agentID string) string {
	w.t.Helper()
	res, err := w.control.Dispatch(w.t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
		Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}))
	if err != nil {
		w.t.Fatal(err)
	}
	return res.Msg.TaskIds[0]
}

func (w *world) task(id string) *forgev1.TaskInfo {
	w.t.Helper()
	res, err := w.control.GetTask(w.t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
	if err != nil {
		w.t.Fatal(err)
	}
	return res.Msg.Task
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
	agents, err := w.control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{PageSize: 1000}))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, a := range agents.Msg.Agents {
		a.LastSeenAt = nil
		add(a)
	}
	tasks, err := w.control.ListTasks(ctx, connect.NewRequest(&forgev1.ListTasksRequest{PageSize: 1000}))
	if err != nil {
		w.t.Fatal(err)
	}
	for _, t := range tasks.Msg.Tasks {
		add(t)
	}
	toks, err := w.control.ListEnrollmentTokens(ctx, connect.NewRequest(&forgev1.ListEnrollmentTokensRequest{}))
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

// codeOf names a call's outcome as the wire shows it: "ok" or the Connect code.
func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

// raw posts body as a Connect unary call and names its outcome: "ok", the Connect
// code, or the HTTP status when there is no Connect error.
func (w *world) raw(path, token, ctype, body string) string {
	status, code, _ := post(w.t, w.url, path, token, ctype, strings.NewReader(body))
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
			_, err := w.agent("").Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
			return codeOf(err)
		}},
		{"wrong token", "unauthenticated", func(w *world) string {
			_, err := w.agent("fa_"+w.idA+"_"+strings.Repeat("x", 32)).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{
				TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"token over 512 bytes", "unauthenticated", func(w *world) string {
			_, err := w.agent(w.tokA+strings.Repeat("x", 600)).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
			return codeOf(err)
		}},
		{"A's token under the Basic scheme", "unauthenticated", func(w *world) string {
			req, _ := http.NewRequestWithContext(ctx, "POST", w.url+"/forge.v1.AgentService/Heartbeat", strings.NewReader("{}"))
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
			_, err := w.agent("fa_"+w.idB+"_"+secretA).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{
				TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"operator token as an agent: Heartbeat", "permission_denied", func(w *world) string {
			_, err := w.agent(adminToken).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{Running: []*forgev1.TaskRef{{TaskId: w.tB, Attempt: 1}}}))
			return codeOf(err)
		}},
		{"operator token as an agent: ReportResult", "permission_denied", func(w *world) string {
			_, err := w.agent(adminToken).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"operator token as an agent: RotateToken", "permission_denied", func(w *world) string {
			_, err := w.agent(adminToken).RotateToken(ctx, connect.NewRequest(&forgev1.RotateTokenRequest{}))
			return codeOf(err)
		}},
		{"operator token on Register", "permission_denied", func(w *world) string {
			_, err := w.agent(adminToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
			return codeOf(err)
		}},
		{"enrollment token as an agent: ReportResult", "permission_denied", func(w *world) string {
			_, err := w.agent(enrollToken).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tB, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
			return codeOf(err)
		}},
		{"agent token on ControlService: RevokeAgent of B", "permission_denied", func(w *world) string {
			_, err := w.controlAs(w.tokA).RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: w.idB}))
			return codeOf(err)
		}},
		{"agent token on ControlService: CancelTask of B's task", "permission_denied", func(w *world) string {
			_, err := w.controlAs(w.tokA).CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: w.tB}))
			return codeOf(err)
		}},
		{"agent token on ControlService: Dispatch", "permission_denied", func(w *world) string {
			_, err := w.controlAs(w.tokA).Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Target: &forgev1.DispatchRequest_All{All: true}}))
			return codeOf(err)
		}},
		{"agent token on ControlService: CreateEnrollmentToken", "permission_denied", func(w *world) string {
			_, err := w.controlAs(w.tokA).CreateEnrollmentToken(ctx, connect.NewRequest(&forgev1.CreateEnrollmentTokenRequest{}))
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
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, storetest.NewClock())
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
}

func (w *world) controlAs(tok string) forgev1connect.ControlServiceClient {
	return forgev1connect.NewControlServiceClient(http.DefaultClient, w.url, connect.WithInterceptors(bearer(tok)))
}

// TestAttackStaleAttempt replays a report and a heartbeat of attempt 1 after the
// lease ran out and the task went out again as attempt 2.
func TestAttackStaleAttempt(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t, storetest.NewClock())
	w.clock.Advance(testLease + time.Second)
	if err := w.st.Reap(ctx); err != nil {
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
	if got := w.task(w.tA); got.State != forgev1.TaskState_TASK_STATE_RUNNING || got.Attempt != 2 {
		t.Fatalf("task after the replay = %v", got)
	}
}

// TestAttackRevokedAgent revokes A while it holds a Poll and has its token cached
// by two replicas sharing one store.
func TestAttackRevokedAgent(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t, nil)
	// A second replica over the same store, which has seen A's token too.
	srv2, err := server.New(server.Config{Store: w.st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken}, DisableReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	hs2 := httptest.NewServer(srv2)
	t.Cleanup(func() { srv2.Close(); hs2.Close() })
	agA2 := forgev1connect.NewAgentServiceClient(http.DefaultClient, hs2.URL, connect.WithInterceptors(bearer(w.tokA)))
	if _, err := agA2.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{})); err != nil {
		t.Fatal(err)
	}
	bBefore := []*forgev1.TaskInfo{w.task(w.tB), w.task(w.tB2)}

	held := pollAsync(ctx, w.agA, &forgev1.PollRequest{MaxTasks: i32(0), Wait: durationpb.New(20 * time.Second)})
	deadline := time.Now().Add(5 * time.Second)
	for w.srv.HeldPolls() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if _, err := w.control.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: w.idA})); err != nil {
		t.Fatal(err)
	}
	r := get(held, t)
	if connect.CodeOf(r.err) != connect.CodeUnauthenticated || r.at.Sub(start) > 2*time.Second {
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
	got := w.task(w.tA)
	if got.State != forgev1.TaskState_TASK_STATE_CANCELED || !strings.Contains(got.Error+fmt.Sprint(got.History), "agent revoked") {
		t.Fatalf("A's task after revoke = %v; want CANCELED, agent revoked", got)
	}
	ag, _ := w.control.GetAgent(ctx, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: w.idA}))
	if ag.Msg.Agent.Status != forgev1.AgentStatus_AGENT_STATUS_REVOKED {
		t.Fatalf("A's status = %v", ag.Msg.Agent.Status)
	}
	for i, id := range []string{w.tB, w.tB2} {
		if now := w.task(id); !proto.Equal(now, bBefore[i]) {
			t.Fatalf("revoking A changed B's task:\n%v\n%v", bBefore[i], now)
		}
	}
}

// TestAttackEnrollmentTokens tries stored enrollment tokens that are used up,
// expired, revoked or tampered with, and one in the wrong place.
func TestAttackEnrollmentTokens(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t, nil)
	create := func(req *forgev1.CreateEnrollmentTokenRequest) (string, string) {
		res, err := w.control.CreateEnrollmentToken(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.Token, res.Msg.Info.Id
	}
	once, _ := create(&forgev1.CreateEnrollmentTokenRequest{Description: "once", MaxUses: 1})
	short, _ := create(&forgev1.CreateEnrollmentTokenRequest{Description: "short", Ttl: durationpb.New(50 * time.Millisecond)})
	revoked, revokedID := create(&forgev1.CreateEnrollmentTokenRequest{Description: "revoked"})
	good, _ := create(&forgev1.CreateEnrollmentTokenRequest{Description: "good"})
	if _, err := w.agent(once).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "first"})); err != nil {
		t.Fatalf("first use of a one-use token: %v", err)
	}
	if _, err := w.control.RevokeEnrollmentToken(ctx, connect.NewRequest(&forgev1.RevokeEnrollmentTokenRequest{Id: revokedID})); err != nil {
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
		_, err := w.agent(c.token).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: c.name}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("Register with a %s enrollment token: %v, want unauthenticated", c.name, err)
		}
	}
	_, err := w.controlAs(good).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
	wantCode(t, err, connect.CodePermissionDenied)
	_, err = w.agent(good).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
	wantCode(t, err, connect.CodePermissionDenied)
	w.unchanged("refused enrollments", before)
	if _, err := w.agent(good).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "good"})); err != nil {
		t.Fatalf("a good stored token after the attacks: %v", err)
	}
}

// TestAttackReRegisterName registers a new agent under A's name and labels: it
// gets a new identity and none of A's tasks.
func TestAttackReRegisterName(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t, storetest.NewClock())
	pendingA := w.dispatch(w.idA) // waiting in A's queue
	before := w.task(pendingA)
	id, tok := w.register("a", nil)
	if id == w.idA || tok == w.tokA || strings.Contains(tok, w.idA) {
		t.Fatalf("re-registering name a gave id %s token %s; A is %s", id, tok, w.idA)
	}
	imp := w.agent(tok)
	p, err := imp.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{MaxTasks: i32(64), Wait: durationpb.New(0)}))
	if err != nil || len(p.Msg.Tasks) != 0 {
		t.Fatalf("the newcomer's Poll = %v, %v; want nothing", p, err)
	}
	_, err = imp.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
	wantCode(t, err, connect.CodeNotFound)
	if now := w.task(pendingA); !proto.Equal(now, before) {
		t.Fatalf("A's pending task changed: %v", now)
	}
	p, err = w.agA.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
	if err != nil || len(p.Msg.Tasks) != 1 || p.Msg.Tasks[0].Id != pendingA {
		t.Fatalf("A's own Poll = %v, %v; want its pending task", p, err)
	}
}

// TestRotateToken checks the overlap: the old token works until the new one is
// first used, then only the new one does.
func TestRotateToken(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t, nil)
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
	if err := hb(w.agent(newTok)); err != nil {
		t.Fatalf("new token: %v", err)
	}
	wantCode(t, hb(w.agA), connect.CodeUnauthenticated)
	if err := hb(w.agent(newTok)); err != nil {
		t.Fatalf("new token after the old one retired: %v", err)
	}
	// The task is A's still, and the new token reports it.
	if _, err := w.agent(newTok).ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: w.tA, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
		t.Fatal(err)
	}
}

// TestTokensNeverLoggedOrStored drives every call that makes, takes or changes a
// token, then looks for the tokens in each log line, in the API's answers about
// agents and enrollment tokens, and anywhere in the memstore's memory. It also
// checks the audit trail: who and from where, for each control action and
// registration.
func TestTokensNeverLoggedOrStored(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	w := newWorld(t, nil) // registers A and B, dispatches, polls
	secrets := []string{enrollToken, adminToken, w.tokA, w.tokB}
	ct, err := w.control.CreateEnrollmentToken(ctx, connect.NewRequest(&forgev1.CreateEnrollmentTokenRequest{Description: "d", MaxUses: 5}))
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, ct.Msg.Token)
	reg, err := w.agent(ct.Msg.Token).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "c"}))
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
	if _, err := w.agent(rot.Msg.AgentToken).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{})); err != nil {
		t.Fatal(err)
	}
	// Failed attempts with real-looking tokens must not be logged either.
	wrong := "fa_" + w.idA + "_" + strings.Repeat("q", 32)
	secrets = append(secrets, wrong)
	w.agent(wrong).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
	w.agent(w.tokB).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{})) // retired by the rotation
	w.controlAs(w.tokA).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
	if _, err := w.control.CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: w.tB2, Reason: "r"})); err != nil {
		t.Fatal(err)
	}
	d, err := w.control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Target: &forgev1.DispatchRequest_AgentId{AgentId: reg.Msg.AgentId}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.control.CancelJob(ctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: d.Msg.JobId})); err != nil {
		t.Fatal(err)
	}
	if _, err := w.control.RevokeEnrollmentToken(ctx, connect.NewRequest(&forgev1.RevokeEnrollmentTokenRequest{Id: ct.Msg.Info.Id})); err != nil {
		t.Fatal(err)
	}
	if _, err := w.control.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: w.idA})); err != nil {
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
	for _, line := range strings.Split(strings.TrimSpace(w.log.String()), "\n") {
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
	agents, _ := w.control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
	toks, _ := w.control.ListEnrollmentTokens(ctx, connect.NewRequest(&forgev1.ListEnrollmentTokensRequest{}))
	one, _ := w.control.GetAgent(ctx, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: w.idB}))
	for _, m := range []proto.Message{agents.Msg, toks.Msg, one.Msg} {
		b, _ := protojson.Marshal(m)
		for _, n := range needles {
			if strings.Contains(string(b), n) {
				t.Errorf("%T shows a token: %s", m, b)
			}
		}
	}
	// Nor does any string or byte slice anywhere in the store's memory.
	w.srv.Close()
	for _, s := range stringsIn(reflect.ValueOf(w.st), map[uintptr]bool{}) {
		for _, n := range needles {
			if strings.Contains(s, n) {
				t.Errorf("the store holds a token in clear: %.120q", s)
			}
		}
	}
}

// stringsIn returns every string and byte slice reachable from v, unexported
// fields included.
func stringsIn(v reflect.Value, seen map[uintptr]bool) []string {
	switch v.Kind() {
	case reflect.String:
		return []string{v.String()}
	case reflect.Pointer, reflect.Map, reflect.Slice:
		if v.IsNil() {
			return nil
		}
		if v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Uint8 {
			return []string{string(v.Bytes())}
		}
		if v.Kind() != reflect.Slice {
			if seen[v.Pointer()] {
				return nil
			}
			seen[v.Pointer()] = true
		}
	}
	var out []string
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			out = stringsIn(v.Elem(), seen)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			out = append(out, stringsIn(v.Field(i), seen)...)
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			out = append(out, stringsIn(v.Index(i), seen)...)
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			out = append(out, stringsIn(it.Key(), seen)...)
			out = append(out, stringsIn(it.Value(), seen)...)
		}
	}
	return out
}
