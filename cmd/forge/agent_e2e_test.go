package main_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// waitAgents waits until n agents matching selector are online and returns them.
func waitAgents(t *testing.T, ctl forgev1connect.ControlServiceClient, selector string, n int) []*forgev1.AgentInfo {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		res, err := ctl.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{Selector: selector, Status: forgev1.AgentStatus_AGENT_STATUS_ONLINE, PageSize: 1000}))
		if err == nil && len(res.Msg.Agents) == n {
			return res.Msg.Agents
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%d agents matching %q never came online", n, selector)
	return nil
}

func forge(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "forge"), args...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

func TestAgentEndToEnd(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	state := t.TempDir()
	agentArgs := []string{"agent", "--server", url, "--enroll-token", enrollToken, "--state-dir", state,
		"--label", "role=e2e", "--name", "e2e-1", "--allow-exec", "/bin/sh"}
	ag := start(t, nil, "forge", agentArgs...)
	first := waitAgents(t, ctl, "role=e2e", 1)[0]

	// forge run: dispatch exec, print the output, exit 0 when all succeeded.
	out, code := forge(t, "run", "--server", url, "--admin-token", adminToken, "--selector", "role=e2e", "--", "/bin/sh", "-c", "echo hello from $0; echo to stderr >&2")
	if code != 0 || !strings.Contains(out, "hello from /bin/sh") || !strings.Contains(out, "to stderr") || !strings.Contains(out, "e2e-1") {
		t.Fatalf("forge run exit %d:\n%s", code, out)
	}
	out, code = forge(t, "run", "--server", url, "--admin-token", adminToken, "--agent", first.Id, "--", "/bin/sh", "-c", "exit 3")
	if code != 1 || !strings.Contains(out, "FAILED exit 3") {
		t.Fatalf("forge run of a failing command: exit %d:\n%s", code, out)
	}
	out, code = forge(t, "run", "--server", url, "--admin-token", adminToken, "--agent", first.Id, "--", "/usr/bin/id")
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

	// Restarted with the same state dir, the agent keeps its id.
	ag.stop()
	start(t, nil, "forge", agentArgs...)
	again := waitAgents(t, ctl, "role=e2e", 1)[0]
	if again.Id != first.Id {
		t.Fatalf("after a restart the agent is %s, was %s", again.Id, first.Id)
	}
	all, _ := ctl.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
	if len(all.Msg.Agents) != 1 {
		t.Fatalf("%d agents registered, want 1 (a restart must not register again)", len(all.Msg.Agents))
	}
}

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

// TestEmbedExampleRuns runs the README's embedding example as a program.
func TestEmbedExampleRuns(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	start(t, []string{"FORGE_SERVER=" + url, "FORGE_ENROLL_TOKEN=" + enrollToken, "FORGE_STATE_DIR=" + t.TempDir()}, "embed")
	a := waitAgents(t, ctl, "app=billing", 1)[0]
	res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "greet", Payload: []byte("forge"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}, Wait: durationpb.New(20 * time.Second)}))
	if err != nil || len(res.Msg.Tasks) != 1 || string(res.Msg.Tasks[0].Output) != "hello, forge" {
		t.Fatalf("Dispatch with wait = %v, %v", res, err)
	}
}
