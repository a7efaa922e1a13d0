package server_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/store"
)

// wantRefused fails unless err is unauthenticated with exactly the message msg.
func wantRefused(t *testing.T, err error, msg, what string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnauthenticated || ce.Message() != msg {
		t.Fatalf("%s: %v; want unauthenticated %q", what, err, msg)
	}
}

// agentCalls makes every call an agent makes with its own token and hands each
// answer to check.
func agentCalls(t *testing.T, ag forgev1connect.AgentServiceClient, check func(err error, what string)) {
	t.Helper()
	ctx := t.Context()
	_, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
	check(err, "Poll")
	_, err = ag.Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
	check(err, "Heartbeat")
	_, err = ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: "t0000000000000000-a000000000000000",
		Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
	check(err, "ReportResult")
	_, err = ag.RotateToken(ctx, connect.NewRequest(&forgev1.RotateTokenRequest{}))
	check(err, "RotateToken")
}

// TestAgentTokenRefusals: an agent token is refused "unknown agent" when the
// server never knew it (an unknown id, a wrong secret) or lost its state (an
// in-memory server restarted, a Redis without persistence restarted: on Redis
// the replica's token cache still vouches for the token, and the store's own
// check refuses it), and "agent revoked" when it was revoked — on every agent
// call. The refusals are counted by reason.
func TestAgentTokenRefusals(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b, OwnRedis: b == forgetest.Redis})
		idA, tokA := e.Register("a", nil)
		idB, tokB := e.Register("b", nil)
		if _, err := e.Control.RevokeAgent(t.Context(), connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: idB})); err != nil {
			t.Fatal(err)
		}
		agentCalls(t, e.Agent(tokB), func(err error, what string) { wantRefused(t, err, "agent revoked", "revoked agent: "+what) })
		secret := tokA[strings.LastIndexByte(tokA, '_')+1:]
		for name, tok := range map[string]string{
			"never known":  "fa_a0000000000000000_" + secret,
			"wrong secret": "fa_" + idA + "_" + strings.Repeat("z", len(secret)),
		} {
			agentCalls(t, e.Agent(tok), func(err error, what string) { wantRefused(t, err, "unknown agent", name+": "+what) })
		}
		if n := e.Metric(`forge_agent_tokens_refused_total{reason="revoked"}`); n != 4 {
			t.Fatalf(`refused{reason="revoked"} = %v, want 4`, n)
		}
		if n := e.Metric(`forge_agent_tokens_refused_total{reason="unknown"}`); n != 8 {
			t.Fatalf(`refused{reason="unknown"} = %v, want 8`, n)
		}

		// A works, and its token is in the replica's cache, until the state is lost.
		agA := e.Agent(tokA)
		if _, err := agA.Heartbeat(t.Context(), connect.NewRequest(&forgev1.HeartbeatRequest{})); err != nil {
			t.Fatal(err)
		}
		e.LoseState()
		agentCalls(t, agA, func(err error, what string) { wantRefused(t, err, "unknown agent", "after the state was lost: "+what) })
		if !strings.Contains(e.Log.String(), "agent tokens refused: unknown agent") {
			t.Fatalf("the server's log does not mention the unknown agent:\n%s", e.Log.Tail(20))
		}
	})
}

// TestRegisterAgain: a Register that names the identity the server no longer
// knew (previous_agent_id) makes a new identity like any other, and is counted
// and logged as a re-enrollment; a malformed previous id is invalid.
func TestRegisterAgain(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		const prev = "a0000000000000000"
		ctx := t.Context()
		enr := e.Agent(forgetest.EnrollToken)
		res, err := enr.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "back", PreviousAgentId: prev}))
		if err != nil {
			t.Fatal(err)
		}
		if res.Msg.AgentId == prev {
			t.Fatal("the new identity took the previous id")
		}
		if n := e.Metric("forge_agents_reenrolled_total"); n != 1 {
			t.Fatalf("forge_agents_reenrolled_total = %v, want 1", n)
		}
		if log := e.Log.String(); !strings.Contains(log, `"previous_agent":"`+prev+`"`) || !strings.Contains(log, `"agent":"`+res.Msg.AgentId+`"`) {
			t.Fatalf("the server's log does not show the re-enrollment:\n%s", e.Log.Tail(10))
		}
		_, err = enr.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x", PreviousAgentId: "not an id"}))
		wantCode(t, err, connect.CodeInvalidArgument)
		if _, err := enr.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "new"})); err != nil {
			t.Fatal(err)
		}
		if n := e.Metric("forge_agents_reenrolled_total"); n != 1 {
			t.Fatalf("a first registration counted as a re-enrollment: %v", n)
		}
	})
}

// TestRegisterSavedIdentity: a Register made with an agent's own token (an agent
// starting again with its saved identity) replaces the name, labels, hostname,
// version and task types the server held, answers the same identity without a
// token, logs what changed, and creates nothing; an unknown or revoked token is
// refused as on any other call.
func TestRegisterSavedIdentity(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		ctx := t.Context()
		id, tok := e.Register("web-1", map[string]string{"env": "dev", "role": "web"})
		ag := e.Agent(tok)
		res, err := ag.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "db-1", Hostname: "h2", Version: "v2",
			Labels: map[string]string{"env": "prod", "role": "web", "tier": "db"}, TaskTypes: []string{"exec", "echo"}}))
		if err != nil {
			t.Fatal(err)
		}
		if m := res.Msg; m.AgentId != id || m.AgentToken != "" || m.PollWait == nil || m.HeartbeatInterval == nil {
			t.Fatalf("Register with the agent's token answered %+v", m)
		}
		// The hold the agents are told is the one default the Go agent and client use too.
		if d := res.Msg.PollWait.AsDuration(); d != store.DefaultPollHold || client.DefaultHold != store.DefaultPollHold {
			t.Fatalf("poll_wait %v, client.DefaultHold %v; want both store.DefaultPollHold (%v)", d, client.DefaultHold, store.DefaultPollHold)
		}
		got, err := e.Control.GetAgent(ctx, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if a := got.Msg.Agent; a.Name != "db-1" || a.Hostname != "h2" || a.Version != "v2" || a.Labels["env"] != "prod" ||
			a.Labels["tier"] != "db" || len(a.Labels) != 3 {
			t.Fatalf("agent after Register with its token: %+v", a)
		}
		list, err := e.Control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if err != nil || len(list.Msg.Agents) != 1 {
			t.Fatalf("ListAgents = %v, %v; want the one agent", list, err)
		}
		want := `name "web-1" -> "db-1"; hostname "" -> "h2"; version "" -> "v2"; labels env=dev->prod +tier=db; task types [] -> [echo exec]`
		if got := logAttr(e.Log.Lines(), "changed"); got != want {
			t.Fatalf("the server's log says changed=%q, want %q:\n%s", got, want, e.Log.Tail(5))
		}
		// The same again changes nothing and says so.
		if _, err := ag.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "db-1", Hostname: "h2", Version: "v2",
			Labels: map[string]string{"env": "prod", "role": "web", "tier": "db"}, TaskTypes: []string{"echo", "exec"}})); err != nil {
			t.Fatal(err)
		}
		if last := e.Log.Tail(1); !strings.Contains(last, "started again with its saved identity") || strings.Contains(last, "changed") {
			t.Fatalf("an unchanged Register logged %s", last)
		}
		_, err = ag.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x", PreviousAgentId: id}))
		wantCode(t, err, connect.CodeInvalidArgument)
		_, err = ag.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "bad\x1b[2J"}))
		wantCode(t, err, connect.CodeInvalidArgument)

		secret := tok[strings.LastIndexByte(tok, '_')+1:]
		_, err = e.Agent("fa_a0000000000000000_"+secret).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
		wantRefused(t, err, "unknown agent", "Register with an unknown agent token")
		if _, err := e.Control.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: id})); err != nil {
			t.Fatal(err)
		}
		_, err = ag.Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
		wantRefused(t, err, "agent revoked", "Register with a revoked agent token")
		// An operator token is still the wrong kind.
		_, err = e.Agent(forgetest.AdminToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
		wantCode(t, err, connect.CodePermissionDenied)
	})
}

// logAttr returns the value of attribute key in the last JSON log line that has it.
func logAttr(lines []string, key string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		var m map[string]any
		if json.Unmarshal([]byte(lines[i]), &m) == nil {
			if v, ok := m[key].(string); ok {
				return v
			}
		}
	}
	return ""
}

// TestDispatchTypeNotHandled: a Dispatch of a type no agent its target matched
// handles is refused with failed_precondition naming the type and the agents'
// types, for one agent and for a fan-out; with queue it is created.
func TestDispatchTypeNotHandled(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		ctx := t.Context()
		res, err := e.Agent(forgetest.EnrollToken).Register(ctx, connect.NewRequest(&forgev1.RegisterRequest{Name: "web-1",
			Labels: map[string]string{"role": "web"}, TaskTypes: []string{"exec", "echo"}}))
		if err != nil {
			t.Fatal(err)
		}
		id := res.Msg.AgentId
		want := `no agent the target matched handles task type "deploy" (agents matched: 1; their task types: echo, exec)`
		for _, req := range []*forgev1.DispatchRequest{
			{Type: "deploy", Target: &forgev1.DispatchRequest_AgentId{AgentId: id}},
			{Type: "deploy", Target: &forgev1.DispatchRequest_Selector{Selector: "role=web"}},
		} {
			_, err := e.Control.Dispatch(ctx, connect.NewRequest(req))
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeFailedPrecondition || !strings.HasPrefix(ce.Message(), want) ||
				!strings.Contains(ce.Message(), "set queue") {
				t.Fatalf("Dispatch(%v) = %v; want failed_precondition %q", req.Target, err, want)
			}
			req.Queue = true
			d, err := e.Control.Dispatch(ctx, connect.NewRequest(req))
			if err != nil || len(d.Msg.TaskIds) != 1 {
				t.Fatalf("Dispatch(%v) with queue = %v, %v", req.Target, d, err)
			}
		}
	})
}
