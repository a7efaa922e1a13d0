package main_test

import (
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestAgentEndToEnd: `forge agent` registers, runs exec and echo tasks that
// `forge run` and the API dispatch, and keeps its identity across a restart.
func TestAgentEndToEnd(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	state := t.TempDir()
	agentArgs := []string{"--state-dir", state, "--label", "role=e2e", "--name", "e2e-1", "--allow-exec", "/bin/sh"}
	ag := startAgent(t, url, agentArgs...)
	first := waitAgents(t, ctl, "role=e2e", 1)[0]

	// forge run: dispatch exec, print the output, exit 0 when all succeeded,
	// the command's own exit code when it ran on one agent.
	out, code := runForge(t, nil, "run", "--server", url, "--admin-token", adminToken, "--selector", "role=e2e", "--", "/bin/sh", "-c", "echo hello from $0; echo to stderr >&2")
	if code != 0 || !strings.Contains(out, "hello from /bin/sh") || !strings.Contains(out, "to stderr") || !strings.Contains(out, "e2e-1") {
		t.Fatalf("forge run exit %d:\n%s", code, out)
	}
	out, code = runForge(t, nil, "run", "--server", url, "--admin-token", adminToken, "--agent", first.Id, "--", "/bin/sh", "-c", "exit 3")
	if code != 3 || !strings.Contains(out, "FAILED exit 3") {
		t.Fatalf("forge run of a failing command: exit %d:\n%s", code, out)
	}
	out, code = runForge(t, nil, "run", "--server", url, "--admin-token", adminToken, "--agent", first.Id, "--", "/usr/bin/id")
	if code != 1 || !strings.Contains(out, "not allowed") {
		t.Fatalf("forge run of a command not allowed: exit %d:\n%s", code, out)
	}

	// echo through the API: Dispatch, then WaitTask sees the handler's result.
	res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("ping"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: first.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	w, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: res.Msg.TaskIds[0], Wait: durationpb.New(20 * time.Second)}))
	if err != nil || w.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(w.Msg.Task.Output) != "ping" {
		t.Fatalf("WaitTask = %v, %v", w, err)
	}

	// Stopped, it exits 0; restarted with the same state dir, it keeps its id.
	if code := ag.stop(t); code != 0 {
		t.Fatalf("the agent exited %d when stopped:\n%s", code, ag.output())
	}
	startAgent(t, url, agentArgs...)
	again := waitAgents(t, ctl, "role=e2e", 1)[0]
	if again.Id != first.Id {
		t.Fatalf("after a restart the agent is %s, was %s", again.Id, first.Id)
	}
	all, _ := ctl.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
	if len(all.Msg.Agents) != 1 {
		t.Fatalf("%d agents registered, want 1 (a restart must not register again)", len(all.Msg.Agents))
	}
}

// TestLeaseExpiryRequeues: --lease reaches the store: a task whose agent stays
// silent is leased again as the next attempt.
func TestLeaseExpiryRequeues(t *testing.T) {
	t.Parallel()
	url := startServer(t, "--lease", "1s")
	ctl := control(url)
	reg, err := agentClient(url, enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "silent"}))
	if err != nil {
		t.Fatal(err)
	}
	ag := agentClient(url, reg.Msg.AgentToken)
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
		Target: &forgev1.DispatchRequest_AgentId{AgentId: reg.Msg.AgentId}}))
	if err != nil {
		t.Fatal(err)
	}
	p1, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
	if err != nil || len(p1.Msg.Tasks) != 1 || p1.Msg.Tasks[0].Attempt != 1 {
		t.Fatalf("first Poll = %v, %v", p1, err)
	}
	// No heartbeat: the lease runs out and the reaper requeues the task, which
	// wakes this held Poll with attempt 2.
	p2, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)}))
	if err != nil || len(p2.Msg.Tasks) != 1 || p2.Msg.Tasks[0].Id != d.Msg.TaskIds[0] || p2.Msg.Tasks[0].Attempt != 2 {
		t.Fatalf("second Poll = %v, %v; want the task again as attempt 2", p2, err)
	}
	_, err = ag.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: d.Msg.TaskIds[0], Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("report of attempt 1 = %v, want failed_precondition", err)
	}
	if _, err := ag.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: d.Msg.TaskIds[0], Attempt: 2, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})); err != nil {
		t.Fatalf("report of attempt 2: %v", err)
	}
	g, _ := ctl.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: d.Msg.TaskIds[0]}))
	if g.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || g.Msg.Task.Attempt != 2 {
		t.Fatalf("task = %v", g.Msg.Task)
	}
}

// TestAgentFlags: a bad `forge agent` command line ends it before it dials, with
// a message naming what is wrong.
func TestAgentFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	srv := []string{"agent", "--server", "http://127.0.0.1:1", "--enroll-token", enrollToken}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"agent"}, 2, "forge agent: --server (or FORGE_SERVER) is required"},
		{[]string{"agent", "--no-such-flag"}, 2, "flag provided but not defined: --no-such-flag"},
		{append(srv, "--label", "novalue"), 1, `--label "novalue": want k=v`},
		{append(srv, "--label", "=v"), 1, `--label "=v": want k=v`},
		{append(srv, "--log-format", "xml"), 1, `--log-format: want text or json, not "xml"`},
		{append(srv, "--drain-grace", "soon"), 2, `invalid value "soon" for flag --drain-grace`},
		{append(srv, "--ca", missing), 1, "no such file"},
		{append(srv, "--ca", notPEM), 1, "--ca " + notPEM + ": no PEM certificate in it"},
		{append(srv, "--name", "*"), 1, `forge agent: name: "*" must not hold * ? [ ] or \; a name is printable`},
		{append(srv, "--name", "web-?"), 1, `forge agent: name: "web-?" must not hold`},
		{append(srv, "--name", "a0123456789abcde"), 1, `forge agent: name: "a0123456789abcde" would be read as an agent id`},
		{[]string{"agent", "-h"}, 0, "--allow-exec  [FORGE_ALLOW_EXEC]"},
	} {
		out, code := runForge(t, nil, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("forge %s: exit %d, want %d with %q; output:\n%s", strings.Join(c.args, " "), code, c.code, c.want, out)
		}
	}
}

// TestAgentEnvFallbacks: each agent flag reads its FORGE_* variable; the command
// line wins, and a repeated flag replaces the variable's list.
func TestAgentEnvFallbacks(t *testing.T) {
	t.Parallel()
	e := env{
		"FORGE_SERVER": "http://a.example:1/, http://b.example:2", "FORGE_ENROLL_TOKEN": enrollToken,
		"FORGE_NAME": "env-name", "FORGE_LABEL": "env=dev, role=web", "FORGE_STATE_DIR": "/var/lib/forge",
		"FORGE_ALLOW_EXEC": "/bin/sh,/usr/bin/uptime", "FORGE_CONCURRENCY": "2", "FORGE_DRAIN_GRACE": "5s",
	}
	m := &forge.Main{Stdout: io.Discard, Stderr: io.Discard, Getenv: e.get}
	c, err := m.ParseAgent(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Servers, []string{"http://a.example:1", "http://b.example:2"}) || c.EnrollToken != enrollToken ||
		c.Name != "env-name" || !maps.Equal(c.Labels, map[string]string{"env": "dev", "role": "web"}) ||
		c.StateDir != "/var/lib/forge" || !slices.Equal(c.AllowExec, []string{"/bin/sh", "/usr/bin/uptime"}) ||
		c.Concurrency != 2 || c.DrainGrace != 5*time.Second {
		t.Errorf("config from the environment = %+v", c)
	}
	c, err = m.ParseAgent([]string{"--server", "http://c.example:3", "--label", "only=this", "--allow-exec", "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Servers, []string{"http://c.example:3"}) || !maps.Equal(c.Labels, map[string]string{"only": "this"}) ||
		!slices.Equal(c.AllowExec, []string{"/bin/true"}) {
		t.Errorf("config with flags over the environment = %+v", c)
	}
}
