package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// logBuffer keeps an agent's log lines (text) and shows them through t too.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  bytes.Buffer
}

func newLogBuffer(t *testing.T) *logBuffer { return &logBuffer{t: t} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// savedID returns the agent id kept in a state dir.
func savedID(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var id struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(b, &id); err != nil {
		t.Fatal(err)
	}
	return id.AgentID
}

// TestReenrollWhenStateLost: the server loses its state (an in-memory server
// restarted, a Redis without persistence restarted) while an agent polls. The
// server answers the agent's token "unknown agent"; the agent enrolls again by
// itself with its enrollment token, says so in its log, keeps the new identity
// in its state dir, and runs tasks under it. The server's log and metrics show
// the re-enrollment.
func TestReenrollWhenStateLost(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := &env{Server: forgetest.Start(t, forgetest.Options{Backend: backend, OwnRedis: backend == forgetest.Redis}), t: t}
		dir := filepath.Join(t.TempDir(), "state")
		logs := newLogBuffer(t)
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir, Logger: logs.logger()},
			map[string]agent.Handler{"echo": agent.EchoHandler()})
		old := a.ID()
		wantState(t, e.wait(e.dispatch(old, "echo", []byte("before"), 0)), forgev1.TaskState_TASK_STATE_SUCCEEDED)

		e.LoseState()
		waitFor(t, 20*time.Second, "the agent to enroll again", func() bool { return a.ID() != old })
		select {
		case <-a.done:
			t.Fatalf("Run returned: %v", a.err)
		default:
		}
		id := a.ID()
		if got := savedID(t, dir); got != id {
			t.Fatalf("state dir keeps %s, want the new identity %s", got, id)
		}
		ti := e.wait(e.dispatch(id, "echo", []byte("after"), 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if string(ti.Output) != "after" {
			t.Fatalf("output %q", ti.Output)
		}
		if log := logs.String(); !strings.Contains(log, "enrolling again") || !strings.Contains(log, "msg=\"enrolled again\"") ||
			!strings.Contains(log, "previous_agent="+old) {
			t.Fatalf("the agent's log does not say it enrolled again:\n%s", log)
		}
		if !strings.Contains(e.Log.String(), `"previous_agent":"`+old+`"`) {
			t.Fatalf("the server's log does not show the re-enrollment of %s", old)
		}
		if n := e.Metric("forge_agents_reenrolled_total"); n != 1 {
			t.Fatalf("forge_agents_reenrolled_total = %v, want 1", n)
		}
		if n := e.Metric(`forge_agent_tokens_refused_total{reason="unknown"}`); n < 1 {
			t.Fatalf(`forge_agent_tokens_refused_total{reason="unknown"} = %v, want at least 1`, n)
		}
		if err := a.stop(t); err != nil {
			t.Fatal(err)
		}
	})
}

// TestUnknownWithoutEnrollTokenStops: an agent started from its saved identity
// without an enrollment token cannot enroll again when the server lost its
// state: Run returns ErrUnknown, which says so.
func TestUnknownWithoutEnrollTokenStops(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := &env{Server: forgetest.Start(t, forgetest.Options{Backend: backend, OwnRedis: backend == forgetest.Redis}), t: t}
		dir := t.TempDir()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir}, map[string]agent.Handler{"echo": agent.EchoHandler()})
		if err := a.stop(t); err != nil {
			t.Fatal(err)
		}
		b := runAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir, Logger: testLogger(t)}, nil)
		waitFor(t, 10*time.Second, "the agent to start", func() bool { return b.ID() != "" })
		e.LoseState()
		select {
		case <-b.done:
			if !errors.Is(b.err, agent.ErrUnknown) {
				t.Fatalf("Run: %v, want ErrUnknown", b.err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run did not return")
		}
	})
}

// runAgent starts an agent as startAgent does, but as configured: without an
// enrollment token unless cfg has one, and without waiting for its identity.
func runAgent(t *testing.T, cfg agent.Config, handlers map[string]agent.Handler) *started {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for typ, h := range handlers {
		a.Handle(typ, h)
	}
	ctx, cancel := context.WithCancel(t.Context())
	s := &started{Agent: a, cancel: cancel, done: make(chan struct{})}
	go func() {
		s.err = a.Run(ctx)
		close(s.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
		}
	})
	return s
}

// TestCleanStopIsOfflineAtOnce: an agent stopped cleanly tells the server with
// its last call; it is offline at once, and a selector dispatch right after no
// longer matches it.
func TestCleanStopIsOfflineAtOnce(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, Labels: map[string]string{"env": "stop"}},
			map[string]agent.Handler{"echo": agent.EchoHandler()})
		id := a.ID()
		status := func() forgev1.AgentStatus {
			res, err := e.Control.GetAgent(t.Context(), connect.NewRequest(&forgev1.GetAgentRequest{AgentId: id}))
			if err != nil {
				t.Fatal(err)
			}
			return res.Msg.Agent.Status
		}
		if st := status(); st != forgev1.AgentStatus_AGENT_STATUS_ONLINE {
			t.Fatalf("running agent is %v", st)
		}
		// Stop it while it holds a Poll, as an idle agent nearly always does. (A
		// Poll sent just before the stop and handled by the server after the
		// sign-off would count as a later call: see docs/design.md.)
		waitFor(t, 10*time.Second, "the agent's Poll to be held", func() bool { return e.HeldPolls() == 1 })
		if err := a.stop(t); err != nil {
			t.Fatal(err)
		}
		if st := status(); st != forgev1.AgentStatus_AGENT_STATUS_OFFLINE {
			t.Fatalf("stopped agent is %v, want offline at once", st)
		}
		res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_Selector{Selector: "env=stop"}}))
		if err != nil || len(res.Msg.TaskIds) != 0 {
			t.Fatalf("Dispatch to env=stop after the stop = %v, %v; want no task", res, err)
		}
		if !strings.Contains(e.Log.String(), `"msg":"agent stopped: offline now","agent":"`+id+`"`) {
			t.Fatalf("the server's log does not show the stop:\n%s", e.Log.Tail(5))
		}
	})
}

// TestRestartWithNewNameAndLabels: an agent started again from its saved
// identity with another name, other labels and other task types keeps its
// identity, and the server takes what it was given at this start (selectors
// match the new labels at once); the server's log says what changed, and the
// agent's says the server took them. Revoked while stopped, it stops at its
// next start and records the revocation.
func TestRestartWithNewNameAndLabels(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		dir := t.TempDir()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir, Name: "old-name",
			Labels: map[string]string{"env": "dev"}}, map[string]agent.Handler{"echo": agent.EchoHandler()})
		id := a.ID()
		if err := a.stop(t); err != nil {
			t.Fatal(err)
		}
		logs := newLogBuffer(t)
		b := startAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir, Name: "new-name", Logger: logs.logger(),
			Labels: map[string]string{"env": "prod", "role": "db"}},
			map[string]agent.Handler{"echo": agent.EchoHandler(), "exec": agent.EchoHandler()})
		if b.ID() != id {
			t.Fatalf("restarted as %s, want the saved identity %s", b.ID(), id)
		}
		var got *forgev1.AgentInfo
		waitFor(t, 10*time.Second, "the server to take the new name", func() bool {
			res, err := e.Control.GetAgent(t.Context(), connect.NewRequest(&forgev1.GetAgentRequest{AgentId: id}))
			if err != nil {
				t.Fatal(err)
			}
			got = res.Msg.Agent
			return got.Name == "new-name"
		})
		if got.Labels["env"] != "prod" || got.Labels["role"] != "db" || len(got.Labels) != 2 ||
			got.Status != forgev1.AgentStatus_AGENT_STATUS_ONLINE {
			t.Fatalf("agent after the restart: %+v", got)
		}
		res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
			Target: &forgev1.DispatchRequest_Selector{Selector: "role=db"}}))
		if err != nil || len(res.Msg.TaskIds) != 1 {
			t.Fatalf("Dispatch to role=db = %v, %v; want one task", res, err)
		}
		wantState(t, e.wait(res.Msg.TaskIds[0]), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if log := e.Log.String(); !strings.Contains(log, `name \"old-name\" -> \"new-name\"`) ||
			!strings.Contains(log, `labels env=dev->prod +role=db`) || !strings.Contains(log, `task types [echo] -> [echo exec]`) {
			t.Fatalf("the server's log does not say what changed:\n%s", e.Log.Tail(8))
		}
		if !strings.Contains(logs.String(), "the server took this agent's name, labels and task types") {
			t.Fatalf("the agent's log does not say the server took the new name:\n%s", logs.String())
		}
		if err := b.stop(t); err != nil {
			t.Fatal(err)
		}

		if _, err := e.Control.RevokeAgent(t.Context(), connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: id})); err != nil {
			t.Fatal(err)
		}
		c := runAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir, EnrollToken: enrollToken, Logger: testLogger(t)},
			map[string]agent.Handler{"echo": agent.EchoHandler()})
		select {
		case <-c.done:
			if !errors.Is(c.err, agent.ErrRevoked) {
				t.Fatalf("Run: %v, want ErrRevoked", c.err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Run of a revoked agent did not return")
		}
		if _, err := os.Stat(filepath.Join(dir, "revoked.json")); err != nil {
			t.Fatalf("the revocation is not recorded: %v", err)
		}
	})
}

// TestAgentLogsWhatItIsAndDoes: the agent's log says what it is when it is
// ready (identity, name, labels, task types, servers), each task it starts and
// how it ended, and, when its server goes away, which server it moves to —
// "now using server" for one it had not used, not "reachable again".
func TestAgentLogsWhatItIsAndDoes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, forgetest.Memory, server.Config{})
	f := &flaky{addr: "127.0.0.1:0", h: e.Server.Server}
	f.up(t)
	t.Cleanup(f.down)
	first := "http://" + f.addr
	logs := newLogBuffer(t)
	a := startAgent(t, agent.Config{Servers: []string{first, e.URL}, Name: "web-1", Logger: logs.logger(),
		Labels: map[string]string{"role": "web", "env": "dev"}}, map[string]agent.Handler{"echo": agent.EchoHandler()})
	waitFor(t, 10*time.Second, "the agent to say it is ready", func() bool { return strings.Contains(logs.String(), "waiting for tasks") })
	ready := `msg="agent ready; waiting for tasks" agent=` + a.ID() + ` name=web-1 labels="env=dev,role=web" task_types=echo servers=` +
		first + "," + e.URL + " concurrency=4"
	if !strings.Contains(logs.String(), ready) {
		t.Fatalf("the agent's log does not say what it is (want %s):\n%s", ready, logs.String())
	}
	id := e.dispatch(a.ID(), "echo", []byte("x"), 0)
	wantState(t, e.wait(id), forgev1.TaskState_TASK_STATE_SUCCEEDED)
	waitFor(t, 10*time.Second, "the task's end in the log", func() bool {
		return strings.Contains(logs.String(), `msg="task ended" task=`+id+" attempt=1 state=SUCCEEDED took=")
	})
	if !strings.Contains(logs.String(), `msg="task started" task=`+id+" attempt=1 type=echo") {
		t.Fatalf("the agent's log does not show the task start:\n%s", logs.String())
	}

	f.down()
	waitFor(t, 20*time.Second, "the move to the second server in the log", func() bool {
		return strings.Contains(logs.String(), `msg="now using server; waiting for tasks" server=`+e.URL)
	})
	if log := logs.String(); !strings.Contains(log, `msg="server unreachable; moving to the next server" from=`+first+" to="+e.URL) ||
		strings.Contains(log, "reachable again") {
		t.Fatalf("the agent's log does not show the failover as it happened:\n%s", log)
	}
	wantState(t, e.wait(e.dispatch(a.ID(), "echo", []byte("y"), 0)), forgev1.TaskState_TASK_STATE_SUCCEEDED)
}

// TestDefaultName: without a name, an agent is named after its host; with a
// state dir (other than the packaged service's), the name gets a suffix of its
// own, the same for the same dir and different for another.
func TestDefaultName(t *testing.T) {
	t.Parallel()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	d1, d2 := t.TempDir(), t.TempDir()
	n1, n2 := agent.DefaultName(d1), agent.DefaultName(d2)
	if agent.DefaultName("") != host || agent.DefaultName("/var/lib/forge-agent") != host {
		t.Fatalf("DefaultName without a state dir, or with the service's: %q, %q; want %q",
			agent.DefaultName(""), agent.DefaultName("/var/lib/forge-agent"), host)
	}
	if !strings.HasPrefix(n1, host+"-") || len(n1) != len(host)+5 || n1 == n2 {
		t.Fatalf("DefaultName of two state dirs: %q, %q", n1, n2)
	}
	if agent.DefaultName(d1+"/") != n1 || agent.DefaultName(d1) != n1 {
		t.Fatalf("DefaultName is not stable for one dir")
	}
}
