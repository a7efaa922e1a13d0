package main_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// The tests in this file need a real process: a signal sent to the binary, an
// agent killed with SIGKILL, a process tree started by an agent. Their servers
// run in the test process unless the server is what gets signalled.

// TestServerDrainsOnSIGTERM: SIGTERM to `forge server` answers a held Poll at once
// (empty, no error), and the process exits 0.
func TestServerDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	p := startProc(t, tokensEnv, "forge", "server", "--listen", "127.0.0.1:0", "--poll-hold", "2m")
	url := p.waitURL(t)
	reg, err := agentClient(url, enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "poller"}))
	if err != nil {
		t.Fatal(err)
	}
	polled := make(chan error, 1)
	go func() {
		res, err := agentClient(url, reg.Msg.AgentToken).Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(time.Minute)}))
		if err == nil && len(res.Msg.Tasks) != 0 {
			err = fmt.Errorf("%d tasks", len(res.Msg.Tasks))
		}
		polled <- err
	}()
	waitFor(t, "the Poll is held", func() bool { return metric(t, url, "forge_polls_held") == "1" })
	p.signal(syscall.SIGTERM)
	select {
	case err := <-polled:
		if err != nil {
			t.Errorf("the held Poll answered SIGTERM with %v, want an empty answer", err)
		}
	case <-time.After(30 * time.Second): // its own wait is a minute
		t.Fatalf("the held Poll was not answered on SIGTERM:\n%s", p.output())
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("the server exited with %v after SIGTERM, want 0:\n%s", err, p.output())
	}
	if !strings.Contains(p.output(), "server stopped") {
		t.Errorf("no \"server stopped\" in:\n%s", p.output())
	}
}

// TestAgentDrainOnSIGTERM: SIGTERM to `forge agent` stops taking tasks, lets the
// running one finish, reports it, and exits 0.
func TestAgentDrainOnSIGTERM(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	work := t.TempDir()
	ag := startProc(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "fault=drain",
		"--allow-exec", "/bin/sh", "--drain-grace", "20s")
	a := waitAgents(t, ctl, "fault=drain", 1)[0]
	// The task runs until the test lets it finish, so it is still running when
	// the drain begins, however slow the machine.
	script := "touch started; while [ ! -f finish ]; do sleep 0.05; done; echo finished"
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", script}, "dir": work})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the task started", func() bool { _, err := os.Stat(filepath.Join(work, "started")); return err == nil })
	ag.signal(syscall.SIGTERM)
	waitOutput(t, ag, "draining")
	// A task dispatched during the drain must not be taken.
	later, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	if ag.exited() {
		t.Fatalf("the agent exited before its running task finished:\n%s", ag.output())
	}
	if err := os.WriteFile(filepath.Join(work, "finish"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ag.wait(t); err != nil {
		t.Fatalf("agent exited with %v after SIGTERM, want 0", err)
	}
	g, _ := ctl.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: d.Msg.TaskIds[0]}))
	if g.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || !strings.Contains(string(g.Msg.Task.Output), "finished") {
		t.Fatalf("running task after the drain = %s %q", g.Msg.Task.State, g.Msg.Task.Output)
	}
	g, _ = ctl.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: later.Msg.TaskIds[0]}))
	if g.Msg.Task.State != forgev1.TaskState_TASK_STATE_PENDING {
		t.Fatalf("a task dispatched during the drain is %s, want PENDING (not taken)", g.Msg.Task.State)
	}
}

// TestFaultAgentKilledMidTask: SIGKILL the agent process mid-task; the restarted
// agent (same state dir) gets the task again as attempt 2 and finishes it; a late
// report of attempt 1 is refused.
func TestFaultAgentKilledMidTask(t *testing.T) { onBackends(t, faultAgentKilledMidTask) }

func faultAgentKilledMidTask(t *testing.T, backend []string) {
	url := startServer(t, append(backend, "--lease", "2s")...)
	ctl := control(url)
	state, work := t.TempDir(), t.TempDir()
	args := []string{"agent", "--server", url, "--enroll-token", enrollToken, "--state-dir", state,
		"--label", "fault=kill", "--allow-exec", "/bin/sh"}
	ag := startProc(t, nil, "forge", args...)
	a := waitAgents(t, ctl, "fault=kill", 1)[0]
	// First attempt: leaves a marker and hangs. Second attempt: sees it and succeeds.
	script := `if [ -f started ]; then echo second attempt; else touch started; exec sleep 600; fi`
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", script}, "dir": work})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	tid := d.Msg.TaskIds[0]
	waitFor(t, "the first attempt started", func() bool { _, err := os.Stat(filepath.Join(work, "started")); return err == nil })
	ag.kill(t)

	// The agent that comes back (in this process: the restart needs no real one)
	// ends the killed agent's leftover group before it takes the task again.
	startForge(t, nil, args...)
	res, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(60 * time.Second)}))
	if err != nil {
		t.Fatal(err)
	}
	task := res.Msg.Task
	if task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || task.Attempt != 2 || !strings.Contains(string(task.Output), "second attempt") {
		t.Fatalf("task after the agent was killed = %s attempt %d output %q", task.State, task.Attempt, task.Output)
	}
	id, tok := readIdentity(t, state)
	if id != a.Id {
		t.Fatalf("restarted agent is %s, was %s", id, a.Id)
	}
	_, err = agentClient(url, tok).ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{
		TaskId: tid, Attempt: 1, Outcome: forgev1.Outcome_OUTCOME_FAILED}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("late report of attempt 1 = %v, want failed_precondition", err)
	}
	account(t, ctl, []string{tid})
}

// readIdentity reads the agent id and token an agent keeps in its state dir.
func readIdentity(t *testing.T, dir string) (id, token string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		AgentID    string `json:"agent_id"`
		AgentToken string `json:"agent_token"`
	}
	json.Unmarshal(b, &v)
	return v.AgentID, v.AgentToken
}

// TestFaultCancelExecTree: cancelling an exec of a shell that started children
// leaves no process of the tree alive, and the task ends CANCELED. The agent is
// its own process, so the tree is the agent's, not the test's.
func TestFaultCancelExecTree(t *testing.T) { onBackends(t, faultCancelExecTree) }

func faultCancelExecTree(t *testing.T, backend []string) {
	url := startServer(t, backend...)
	ctl := control(url)
	startProc(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "fault=tree", "--allow-exec", "/bin/sh")
	a := waitAgents(t, ctl, "fault=tree", 1)[0]
	marker := fmt.Sprint(600000 + rand.IntN(300000)) // sleeps of about a week: nothing else runs them
	script := fmt.Sprintf("sleep %s1 & sleep %s2 & echo started; sleep %s3", marker, marker, marker)
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", script}})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	tid := d.Msg.TaskIds[0]
	waitFor(t, "the tree is up", func() bool { return len(procsWith("sleep "+marker)) >= 3 })
	if _, err := ctl.CancelTask(t.Context(), connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: tid})); err != nil {
		t.Fatal(err)
	}
	res, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(30 * time.Second)}))
	if err != nil || res.Msg.Task.State != forgev1.TaskState_TASK_STATE_CANCELED {
		t.Fatalf("cancelled task = %v, %v", res, err)
	}
	// The agent reports only once the group is gone, so nothing may be left now.
	if left := procsWith("sleep " + marker); len(left) > 0 {
		t.Fatalf("processes survived the cancel: %v", left)
	}
}

// procsWith lists live (non-zombie) processes whose command line contains s.
func procsWith(s string) []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		cmd, err := os.ReadFile(d + "/cmdline")
		if err != nil || !strings.Contains(strings.ReplaceAll(string(cmd), "\x00", " "), s) {
			continue
		}
		stat, _ := os.ReadFile(d + "/stat")
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue
		}
		out = append(out, filepath.Base(d)+":"+strings.ReplaceAll(string(cmd), "\x00", " "))
	}
	return out
}

// TestRedisReplicaKilledUnderLoad: SIGKILL one of two replicas while tasks flow;
// agents fail over to the other, and every dispatched task completes. The killed
// replica is a process of its own; the other replica and the agents run here.
func TestRedisReplicaKilledUnderLoad(t *testing.T) {
	t.Parallel()
	redisURL := redistest.Start(t).URL()
	procA := startProc(t, tokensEnv, "forge", "server", "--listen", "127.0.0.1:0", "--redis", redisURL, "--lease", "2s")
	a := procA.waitURL(t)
	b := startServer(t, "--redis", redisURL, "--lease", "2s")
	for range 3 {
		startAgent(t, a+","+b, "--label", "fault=replica")
	}
	ctl := control(b)
	waitAgents(t, ctl, "fault=replica", 3)
	var ids []string
	for i := range 60 {
		if i == 30 {
			procA.kill(t)
		}
		d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_Selector{Selector: "fault=replica"}, IncludeOffline: true}))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Msg.TaskIds...)
		time.Sleep(20 * time.Millisecond) // a steady flow, so tasks are in flight at the kill
	}
	counts := account(t, ctl, ids)
	if counts[forgev1.TaskState_TASK_STATE_SUCCEEDED] != len(ids) {
		t.Fatalf("of %d tasks: %v; want all succeeded", len(ids), counts)
	}
	t.Logf("%d tasks, all succeeded across the replica kill", len(ids))
}
