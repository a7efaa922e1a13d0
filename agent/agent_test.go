package agent_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

func TestMain(m *testing.M) { forgetest.Main(m) }

const enrollToken = forgetest.EnrollToken

// env is a real forge server on a loopback port with an operator client.
type env struct {
	*forgetest.Server
	t *testing.T
}

func newEnv(t *testing.T, b forgetest.Backend, cfg server.Config) *env {
	t.Helper()
	return &env{Server: forgetest.Start(t, forgetest.Options{Backend: b, Server: cfg}), t: t}
}

// testLogger logs through t, so a failing test shows what the agent did.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// started is a running agent.
type started struct {
	*agent.Agent
	cancel context.CancelFunc
	done   chan struct{} // closed when Run returned, with err set
	err    error
}

// stop cancels the agent's context and returns Run's result.
func (s *started) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case <-s.done:
		return s.err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
		return nil
	}
}

func startAgent(t *testing.T, cfg agent.Config, handlers map[string]agent.Handler) *started {
	t.Helper()
	if cfg.EnrollToken == "" {
		cfg.EnrollToken = enrollToken
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
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
	waitFor(t, 10*time.Second, "agent registered", func() bool { return a.ID() != "" })
	return s
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) dispatch(agentID, typ string, payload []byte, timeout time.Duration) string {
	e.t.Helper()
	req := &forgev1.DispatchRequest{Type: typ, Payload: payload, Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}
	if timeout > 0 {
		req.Timeout = durationpb.New(timeout)
	}
	res, err := e.Control.Dispatch(e.t.Context(), connect.NewRequest(req))
	if err != nil {
		e.t.Fatalf("Dispatch: %v", err)
	}
	if len(res.Msg.TaskIds) != 1 {
		e.t.Fatalf("Dispatch made %d tasks", len(res.Msg.TaskIds))
	}
	return res.Msg.TaskIds[0]
}

// wait holds until the task is terminal, at most 20 s, and fails the test
// otherwise. It calls t.Fatalf, so only the test's goroutine may call it;
// another goroutine calls untilEnded and hands its answer over.
func (e *env) wait(taskID string) *forgev1.TaskInfo {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.t.Context(), 20*time.Second)
	defer cancel()
	ti, err := untilEnded(ctx, e.Control, taskID)
	if err != nil {
		e.t.Fatalf("task %s did not finish: %v", taskID, err)
	}
	return ti
}

// untilEnded holds until the task is terminal and returns it, or returns why
// not when ctx ends first. It leaves the test alone, so any goroutine may
// call it.
func untilEnded(ctx context.Context, ctl forgev1connect.ControlServiceClient, taskID string) (*forgev1.TaskInfo, error) {
	for {
		res, err := ctl.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: taskID, Wait: durationpb.New(10 * time.Second)}))
		if err != nil {
			return nil, fmt.Errorf("WaitTask: %w", err)
		}
		if s := res.Msg.Task.State; s != forgev1.TaskState_TASK_STATE_PENDING && s != forgev1.TaskState_TASK_STATE_RUNNING {
			return res.Msg.Task, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("still %v: %w", res.Msg.Task.State, err)
		}
	}
}

func wantState(t *testing.T, ti *forgev1.TaskInfo, want forgev1.TaskState) {
	t.Helper()
	if ti.State != want {
		t.Fatalf("task %s: state %v (error %q, output %q), want %v", ti.Id, ti.State, ti.Error, ti.Output, want)
	}
}

func TestDispatchRunsHandlers(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, Labels: map[string]string{"role": "test"}, Version: "v-test"},
			map[string]agent.Handler{
				"echo": agent.EchoHandler(),
				"fail": func(ctx context.Context, t *agent.Task) ([]byte, error) {
					return []byte("partial"), &agent.ExitError{Code: 7, Err: errors.New("it broke")}
				},
				"panic": func(ctx context.Context, t *agent.Task) ([]byte, error) { panic("boom") },
				"exec":  agent.ExecHandler([]string{"sh"}),
			})

		ag, err := e.Control.GetAgent(t.Context(), connect.NewRequest(&forgev1.GetAgentRequest{AgentId: a.ID()}))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(ag.Msg.Agent.TaskTypes, ","); got != "echo,exec,fail,panic" || ag.Msg.Agent.Version != "v-test" || ag.Msg.Agent.Labels["role"] != "test" {
			t.Fatalf("registered as %v", ag.Msg.Agent)
		}

		ti := e.wait(e.dispatch(a.ID(), "echo", []byte("hello forge"), 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if string(ti.Output) != "hello forge" || ti.Attempt != 1 {
			t.Fatalf("output %q attempt %d", ti.Output, ti.Attempt)
		}

		ti = e.wait(e.dispatch(a.ID(), "fail", nil, 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_FAILED)
		if ti.ExitCode != 7 || ti.Error != "it broke" || string(ti.Output) != "partial" {
			t.Fatalf("failed task: %v", ti)
		}

		// A type the agent does not handle is refused at Dispatch; queued anyway,
		// the agent fails it.
		nope := &forgev1.DispatchRequest{Type: "nope", Target: &forgev1.DispatchRequest_AgentId{AgentId: a.ID()}}
		if _, err := e.Control.Dispatch(t.Context(), connect.NewRequest(nope)); connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Fatalf("Dispatch of a type the agent does not handle: %v, want failed_precondition", err)
		}
		nope.Queue = true
		res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(nope))
		if err != nil {
			t.Fatal(err)
		}
		ti = e.wait(res.Msg.TaskIds[0])
		wantState(t, ti, forgev1.TaskState_TASK_STATE_FAILED)
		if ti.Error != "no handler for task type nope" {
			t.Fatalf("unknown type error %q", ti.Error)
		}

		ti = e.wait(e.dispatch(a.ID(), "panic", nil, 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_FAILED)
		if !strings.Contains(ti.Error, "boom") {
			t.Fatalf("panic error %q", ti.Error)
		}

		ti = e.wait(e.dispatch(a.ID(), "exec", []byte(`{"argv":["sh","-c","echo from sh; exit 2"]}`), 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_FAILED)
		if ti.ExitCode != 2 || string(ti.Output) != "from sh\n" {
			t.Fatalf("exec task: %v", ti)
		}
		ti = e.wait(e.dispatch(a.ID(), "exec", []byte(`{"argv":["/bin/sh","-c","echo no"]}`), 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_FAILED)
		if !strings.Contains(ti.Error, "not allowed") {
			t.Fatalf("refused exec: %v", ti)
		}

		if err := a.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

func TestOutputIsCapped(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, MaxOutput: 1000}, map[string]agent.Handler{"echo": agent.EchoHandler()})
		big := []byte(strings.Repeat("x", 5000) + "THE END")
		ti := e.wait(e.dispatch(a.ID(), "echo", big, 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if len(ti.Output) > 1000 || !ti.OutputTruncated || ti.OutputSize != int64(len(big)) || !strings.HasSuffix(string(ti.Output), "THE END") {
			t.Fatalf("len %d truncated %v size %d", len(ti.Output), ti.OutputTruncated, ti.OutputSize)
		}
	})
}

func TestRestartKeepsIdentity(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		dir := filepath.Join(t.TempDir(), "state")
		cfg := agent.Config{Servers: []string{e.URL}, StateDir: dir}
		a := startAgent(t, cfg, map[string]agent.Handler{"echo": agent.EchoHandler()})
		id := a.ID()
		if err := a.stop(t); err != nil {
			t.Fatal(err)
		}
		// Until the server sees the stopped agent's connection close, its Poll is
		// still held there and could lease the next task into that closed
		// connection; the task would come back only when its lease (30 s) ran out.
		waitFor(t, 10*time.Second, "the stopped agent's Poll to end on the server", func() bool { return e.HeldPolls() == 0 })
		fi, err := os.Stat(filepath.Join(dir, "identity.json"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("identity file: %v %v", fi, err)
		}

		// No enrollment token: the saved identity must be used, never a new Register.
		cfg.EnrollToken = "not-a-valid-enrollment-token"
		b := startAgent(t, cfg, map[string]agent.Handler{"echo": agent.EchoHandler()})
		if b.ID() != id {
			t.Fatalf("restarted as %s, want %s", b.ID(), id)
		}
		waitFor(t, 10*time.Second, "the restarted agent's Poll", func() bool { return e.HeldPolls() == 1 })
		ti := e.wait(e.dispatch(id, "echo", []byte("again"), 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)

		res, err := e.Control.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Msg.Agents) != 1 {
			t.Fatalf("%d agents registered, want 1", len(res.Msg.Agents))
		}
	})
}

// blocker is a handler that signals when it starts and holds until released or
// its context ends, remembering why it ended.
type blocker struct {
	started chan string
	release chan struct{}
	mu      sync.Mutex
	causes  map[string]error
}

func newBlocker() *blocker {
	return &blocker{started: make(chan string, 16), release: make(chan struct{}), causes: map[string]error{}}
}

func (b *blocker) handle(ctx context.Context, t *agent.Task) ([]byte, error) {
	b.started <- t.ID
	select {
	case <-b.release:
		return []byte("released"), nil
	case <-ctx.Done():
		b.mu.Lock()
		b.causes[t.ID] = context.Cause(ctx)
		b.mu.Unlock()
		return []byte("stopped"), ctx.Err()
	}
}

func (b *blocker) cause(id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.causes[id]
}

func (b *blocker) waitStarted(t *testing.T) string {
	t.Helper()
	select {
	case id := <-b.started:
		return id
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not start")
		return ""
	}
}

func TestCancelReachesHandler(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		b := newBlocker()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}}, map[string]agent.Handler{"block": b.handle})
		id := e.dispatch(a.ID(), "block", nil, 0)
		b.waitStarted(t)
		if _, err := e.Control.CancelTask(t.Context(), connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: id, Reason: "test"})); err != nil {
			t.Fatal(err)
		}
		ti := e.wait(id)
		wantState(t, ti, forgev1.TaskState_TASK_STATE_CANCELED)
		if c := b.cause(id); c == nil || !strings.Contains(c.Error(), "canceled by the server") {
			t.Fatalf("handler's cause %v", c)
		}
		if string(ti.Output) != "stopped" {
			t.Fatalf("output %q", ti.Output)
		}
	})
}

// TestTimeoutReachesHandler: a task's timeout cancels its handler's context
// with a cause saying so, and the task ends TIMED_OUT.
func TestTimeoutReachesHandler(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		b := newBlocker()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}}, map[string]agent.Handler{"block": b.handle})
		id := e.dispatch(a.ID(), "block", nil, 300*time.Millisecond)
		b.waitStarted(t)
		ti := e.wait(id)
		// The agent stopped it at its timeout: TIMED_OUT, whether or not the
		// server's reaper had found it past its deadline first.
		wantState(t, ti, forgev1.TaskState_TASK_STATE_TIMED_OUT)
		if h := ti.History[len(ti.History)-1]; h.Reason != "timed out after 300ms (reported failed)" {
			t.Fatalf("last history entry %+v", h)
		}
		if c := b.cause(id); c == nil || !strings.Contains(c.Error(), "timed out") || !strings.Contains(ti.Error, "timed out") {
			t.Fatalf("cause %v, error %q", c, ti.Error)
		}
	})
}

func TestDrainReportsRunningTask(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		b := newBlocker()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, DrainGrace: 10 * time.Second}, map[string]agent.Handler{"block": b.handle})
		id := e.dispatch(a.ID(), "block", nil, 0)
		b.waitStarted(t)
		time.AfterFunc(300*time.Millisecond, func() { close(b.release) })
		if err := a.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// Reported before Run returned.
		res, err := e.Control.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
		if err != nil {
			t.Fatal(err)
		}
		wantState(t, res.Msg.Task, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if string(res.Msg.Task.Output) != "released" {
			t.Fatalf("output %q", res.Msg.Task.Output)
		}
	})
}

func TestDrainGraceCancelsHandler(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		b := newBlocker()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, DrainGrace: 300 * time.Millisecond}, map[string]agent.Handler{"block": b.handle})
		id := e.dispatch(a.ID(), "block", nil, 0)
		b.waitStarted(t)
		start := time.Now()
		if err := a.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// Without the grace the handler would block until the test's own timeout.
		d := time.Since(start)
		t.Logf("drain with a 300ms grace took %v", d)
		if d > 10*time.Second {
			t.Fatalf("drain took %v", d)
		}
		res, err := e.Control.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
		if err != nil {
			t.Fatal(err)
		}
		wantState(t, res.Msg.Task, forgev1.TaskState_TASK_STATE_FAILED)
		if !strings.Contains(res.Msg.Task.Error, "drain grace") {
			t.Fatalf("error %q", res.Msg.Task.Error)
		}
	})
}

// TestStopNowCutsDrain: StopNow during a drain cancels the running handler at
// once (the drain grace here is an hour), reports it, and Run returns.
func TestStopNowCutsDrain(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		b := newBlocker()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, DrainGrace: time.Hour}, map[string]agent.Handler{"block": b.handle})
		id := e.dispatch(a.ID(), "block", nil, 0)
		b.waitStarted(t)
		a.cancel()
		select {
		case <-a.done:
			t.Fatalf("Run returned while its handler was running, in a drain of an hour: %v", a.err)
		default:
		}
		a.StopNow()
		if err := a.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		if c := b.cause(id); c == nil || !strings.Contains(c.Error(), "stopped at once") {
			t.Fatalf("handler's cause %v, want stopped at once", c)
		}
		res, err := e.Control.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
		if err != nil {
			t.Fatal(err)
		}
		wantState(t, res.Msg.Task, forgev1.TaskState_TASK_STATE_FAILED)
		if !strings.Contains(res.Msg.Task.Error, "stopped at once") {
			t.Fatalf("error %q", res.Msg.Task.Error)
		}
	})
}

// With Concurrency 2, four blocking tasks run two at a time; as slots free, the
// agent takes the rest without waiting for a poll hold to end.
func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		var running, peak atomic.Int32
		release := make(chan struct{})
		h := func(ctx context.Context, t *agent.Task) ([]byte, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return nil, nil
		}
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, Concurrency: 2}, map[string]agent.Handler{"h": h})
		var ids []string
		for range 4 {
			ids = append(ids, e.dispatch(a.ID(), "h", nil, 0))
		}
		waitFor(t, 10*time.Second, "two handlers running", func() bool { return running.Load() == 2 })
		time.Sleep(200 * time.Millisecond)
		if p := peak.Load(); p != 2 {
			t.Fatalf("peak concurrency %d, want 2", p)
		}
		start := time.Now()
		close(release)
		for _, id := range ids {
			wantState(t, e.wait(id), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		}
		// A freed slot that waited for a poll hold would take 25 s.
		d := time.Since(start)
		t.Logf("the remaining tasks took %v", d)
		if d > 15*time.Second {
			t.Fatalf("remaining tasks took %v: a freed slot waited for a poll hold", d)
		}
		if p := peak.Load(); p != 2 {
			t.Fatalf("peak concurrency %d, want 2", p)
		}
	})
}

// Heartbeats keep the lease of a task that runs longer than the lease.
func TestHeartbeatKeepsLease(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		// Heartbeats every 667 ms keep a 2 s lease; a task of 3 s outlives one lease.
		e := newEnv(t, backend, server.Config{Lease: 2 * time.Second, ReapInterval: 50 * time.Millisecond})
		h := func(ctx context.Context, t *agent.Task) ([]byte, error) {
			select {
			case <-time.After(3 * time.Second):
				return []byte("done"), nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		a := startAgent(t, agent.Config{Servers: []string{e.URL}}, map[string]agent.Handler{"slow": h})
		ti := e.wait(e.dispatch(a.ID(), "slow", nil, 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if ti.Attempt != 1 {
			t.Fatalf("attempt %d: the lease ran out", ti.Attempt)
		}
	})
}

// TestRestartedAgentKeepsShortLease: an agent started again from its state dir
// has not been told the heartbeat interval (only Register tells it); it asks at
// once, so a 1.5 s lease holds for a task of 3 s from its very first task, rather
// than running out before the default 10 s heartbeat.
func TestRestartedAgentKeepsShortLease(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{Lease: 1500 * time.Millisecond, ReapInterval: 50 * time.Millisecond})
		h := func(ctx context.Context, t *agent.Task) ([]byte, error) {
			select {
			case <-time.After(3 * time.Second):
				return []byte("done"), nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		cfg := agent.Config{Servers: []string{e.URL}, StateDir: filepath.Join(t.TempDir(), "state")}
		first := startAgent(t, cfg, map[string]agent.Handler{"slow": h})
		id := first.ID()
		if err := first.stop(t); err != nil {
			t.Fatal(err)
		}
		b := startAgent(t, cfg, map[string]agent.Handler{"slow": h})
		if b.ID() != id {
			t.Fatalf("restarted as %s, want %s", b.ID(), id)
		}
		ti := e.wait(e.dispatch(id, "slow", nil, 0))
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if ti.Attempt != 1 {
			t.Fatalf("attempt %d: the restarted agent let the lease run out", ti.Attempt)
		}
	})
}

func TestRevokedAgentStops(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		dir := t.TempDir()
		a := startAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir}, map[string]agent.Handler{"echo": agent.EchoHandler()})
		if _, err := e.Control.RevokeAgent(t.Context(), connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: a.ID()})); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.done:
			if !errors.Is(a.err, agent.ErrRevoked) {
				t.Fatalf("Run: %v, want ErrRevoked", a.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after revocation")
		}
		// The identity is kept, and the revocation recorded beside it: a revoked
		// agent does not enroll itself again, not even after a restart with a
		// valid enrollment token.
		if _, err := os.Stat(filepath.Join(dir, "identity.json")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "revoked.json")); err != nil {
			t.Fatal(err)
		}
		b := runAgent(t, agent.Config{Servers: []string{e.URL}, StateDir: dir, EnrollToken: enrollToken, Logger: testLogger(t)}, nil)
		select {
		case <-b.done:
			if !errors.Is(b.err, agent.ErrRevoked) {
				t.Fatalf("restarted: Run: %v, want ErrRevoked", b.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a restarted revoked agent did not stop")
		}
		res, err := e.Control.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if err != nil || len(res.Msg.Agents) != 1 {
			t.Fatalf("ListAgents = %v, %v; want the one revoked agent and no other", res, err)
		}
	})
}

func TestBadEnrollTokenFails(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		a, err := agent.New(agent.Config{Servers: []string{e.URL}, EnrollToken: "wrong-0123456789abcdef"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := a.Run(ctx); err == nil || !strings.Contains(err.Error(), "enrollment token") {
			t.Fatalf("Run: %v", err)
		}
	})
}

// flaky serves a handler on a fixed address that can be taken down and brought
// back, as a server restart does.
type flaky struct {
	addr string
	h    http.Handler
	mu   sync.Mutex
	hs   *http.Server
}

func (f *flaky) up(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port may linger briefly after down
		if ln, err = net.Listen("tcp", f.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	hs := &http.Server{Handler: f.h}
	f.mu.Lock()
	f.hs = hs
	f.mu.Unlock()
	go hs.Serve(ln)
}

func (f *flaky) down() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hs != nil {
		f.hs.Close()
		f.hs = nil
	}
}

func TestServerDownAgentRecovers(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		f := &flaky{addr: "127.0.0.1:0", h: e.Server.Server}
		f.up(t)
		t.Cleanup(f.down)
		url := "http://" + f.addr
		a := startAgent(t, agent.Config{Servers: []string{url}}, map[string]agent.Handler{"echo": agent.EchoHandler()})
		wantState(t, e.wait(e.dispatch(a.ID(), "echo", []byte("1"), 0)), forgev1.TaskState_TASK_STATE_SUCCEEDED)

		f.down()
		time.Sleep(1500 * time.Millisecond) // several failed polls and backoffs
		select {
		case <-a.done:
			t.Fatalf("Run returned while the server was down: %v", a.err)
		default:
		}
		// The Poll the agent held through the downed server has ended there too, so
		// it cannot lease the next task into a closed connection.
		waitFor(t, 10*time.Second, "the Poll of the downed server to end", func() bool { return e.HeldPolls() == 0 })
		id := e.dispatch(a.ID(), "echo", []byte("2"), 0) // through the in-process handler
		f.up(t)
		ti := e.wait(id)
		wantState(t, ti, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if string(ti.Output) != "2" {
			t.Fatalf("output %q", ti.Output)
		}
	})
}

// With several servers, an agent whose first server is unreachable moves on.
func TestFailoverToNextServer(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, backend forgetest.Backend) {
		e := newEnv(t, backend, server.Config{})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String()
		ln.Close() // nothing listens there now
		a := startAgent(t, agent.Config{Servers: []string{dead, e.URL}}, map[string]agent.Handler{"echo": agent.EchoHandler()})
		wantState(t, e.wait(e.dispatch(a.ID(), "echo", []byte("x"), 0)), forgev1.TaskState_TASK_STATE_SUCCEEDED)
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []agent.Config{
		{},
		{Servers: []string{"127.0.0.1:8080"}},
		{Servers: []string{"http://x"}, HTTPClient: &http.Client{Timeout: time.Second}},
	} {
		if _, err := agent.New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
