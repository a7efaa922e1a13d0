package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/redistest"
)

var terminal = map[forgev1.TaskState]bool{
	forgev1.TaskState_TASK_STATE_SUCCEEDED: true, forgev1.TaskState_TASK_STATE_FAILED: true,
	forgev1.TaskState_TASK_STATE_CANCELED: true, forgev1.TaskState_TASK_STATE_TIMED_OUT: true,
	forgev1.TaskState_TASK_STATE_EXPIRED: true, forgev1.TaskState_TASK_STATE_LOST: true,
}

// onBackends runs a fault test on the in-memory store and on a Redis of its own.
func onBackends(t *testing.T, fn func(t *testing.T, backend []string)) {
	t.Parallel()
	t.Run("memory", func(t *testing.T) { t.Parallel(); fn(t, nil) })
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		fn(t, []string{"--redis", redistest.Start(t).URL()})
	})
}

// account checks that every accepted task is in exactly one terminal state and
// returns the count per state.
func account(t *testing.T, ctl forgev1connect.ControlServiceClient, taskIDs []string) map[forgev1.TaskState]int {
	t.Helper()
	counts := map[forgev1.TaskState]int{}
	for _, id := range taskIDs {
		res, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: id, Wait: durationpb.New(60 * time.Second)}))
		if err != nil {
			t.Fatalf("accounting: task %s: %v", id, err)
		}
		if !terminal[res.Msg.Task.State] {
			t.Fatalf("accounting: task %s is %s, not terminal", id, res.Msg.Task.State)
		}
		counts[res.Msg.Task.State]++
	}
	return counts
}

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

// TestFaultAgentKilledMidTask: SIGKILL the agent mid-task; the restarted agent
// (same state dir) gets the task again as attempt 2 and finishes it; a late
// report of attempt 1 is refused.
func TestFaultAgentKilledMidTask(t *testing.T) { onBackends(t, faultAgentKilledMidTask) }

func faultAgentKilledMidTask(t *testing.T, backend []string) {
	url := startServer(t, append(backend, "--lease", "2s")...)
	ctl := control(url)
	state, work := t.TempDir(), t.TempDir()
	args := []string{"agent", "--server", url, "--enroll-token", enrollToken, "--state-dir", state,
		"--label", "fault=kill", "--allow-exec", "/bin/sh"}
	ag := start(t, nil, "forge", args...)
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
	waitFor(t, func() bool { _, err := os.Stat(filepath.Join(work, "started")); return err == nil })
	ag.cmd.Process.Signal(syscall.SIGKILL)
	ag.cmd.Wait()

	start(t, nil, "forge", args...)
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

// TestFaultCancelExecTree: cancelling an exec of a shell that started children
// leaves no process of the tree alive, and the task ends CANCELED.
func TestFaultCancelExecTree(t *testing.T) { onBackends(t, faultCancelExecTree) }

func faultCancelExecTree(t *testing.T, backend []string) {
	url := startServer(t, backend...)
	ctl := control(url)
	start(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "fault=tree", "--allow-exec", "/bin/sh")
	a := waitAgents(t, ctl, "fault=tree", 1)[0]
	marker := fmt.Sprintf("%d", 60000+time.Now().UnixNano()%5000)
	script := fmt.Sprintf("sleep %s1 & sleep %s2 & echo started; sleep %s3", marker, marker, marker)
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", script}})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	tid := d.Msg.TaskIds[0]
	waitFor(t, func() bool { return len(procsWith("sleep "+marker)) >= 3 })
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

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runFleet starts n in-process agents (the real agent package, sharing one
// transport) with the given labels and handler; they stop at test end.
func runFleet(t *testing.T, url string, n int, labels map[string]string, h func(i int) agent.Handler) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4 * n
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range n {
		a, err := agent.New(agent.Config{Servers: []string{url}, EnrollToken: enrollToken, Labels: labels,
			Name: fmt.Sprintf("fleet-%d", i), HTTPClient: hc, Logger: slog.New(slog.DiscardHandler), Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		a.Handle("work", h(i))
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// TestFaultFanOutRollout: one dispatch to 200 agents with max_concurrency 20 and
// max_failures 5, where one agent in ten fails: never more than 20 run at once and
// the counts add up exactly.
func TestFaultFanOutRollout(t *testing.T) { onBackends(t, faultFanOutRollout) }

func faultFanOutRollout(t *testing.T, backend []string) {
	url := startServer(t, backend...)
	ctl := control(url)
	const n, conc, maxFail = 200, 20, 5
	var running, peak atomic.Int32
	runFleet(t, url, n, map[string]string{"fault": "fanout"}, func(i int) agent.Handler {
		return func(ctx context.Context, _ *agent.Task) ([]byte, error) {
			r := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if r <= p || peak.CompareAndSwap(p, r) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
			if i%10 == 7 {
				return nil, errors.New("this one fails")
			}
			return []byte("ok"), nil
		}
	})
	waitAgents(t, ctl, "fault=fanout", n)
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "work",
		Target: &forgev1.DispatchRequest_Selector{Selector: "fault=fanout"}, MaxConcurrency: conc, MaxFailures: maxFail}))
	if err != nil || len(d.Msg.TaskIds) != n {
		t.Fatalf("Dispatch = %v, %v", d, err)
	}
	w, err := ctl.WaitJob(t.Context(), connect.NewRequest(&forgev1.WaitJobRequest{JobId: d.Msg.JobId, Wait: durationpb.New(120 * time.Second)}))
	if err != nil || !w.Msg.Job.Done {
		t.Fatalf("WaitJob = %v, %v", w, err)
	}
	c := w.Msg.Job.Counts
	counts := account(t, ctl, d.Msg.TaskIds)
	if int(c.Succeeded) != counts[forgev1.TaskState_TASK_STATE_SUCCEEDED] || int(c.Failed) != counts[forgev1.TaskState_TASK_STATE_FAILED] ||
		int(c.Canceled) != counts[forgev1.TaskState_TASK_STATE_CANCELED] || c.Total != n ||
		c.Succeeded+c.Failed+c.Canceled != n {
		t.Fatalf("job counts %v disagree with the tasks %v", c, counts)
	}
	if c.Failed < maxFail || c.Failed > maxFail+conc-1 || c.Canceled == 0 || !w.Msg.Job.Canceled {
		t.Fatalf("counts %v: want the job stopped after %d failures", c, maxFail)
	}
	if p := peak.Load(); p > conc {
		t.Fatalf("%d tasks ran at once, max_concurrency is %d", p, conc)
	}
	t.Logf("counts %v, peak concurrency %d", c, peak.Load())
}

// TestAgentDrainOnSIGTERM: SIGTERM to `forge agent` stops taking tasks, lets the
// running one finish, reports it, and exits 0.
func TestAgentDrainOnSIGTERM(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	work := t.TempDir()
	ag := start(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "fault=drain",
		"--allow-exec", "/bin/sh", "--drain-grace", "20s")
	a := waitAgents(t, ctl, "fault=drain", 1)[0]
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", "touch started; sleep 1; echo finished"}, "dir": work})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := os.Stat(filepath.Join(work, "started")); return err == nil })
	ag.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, func() bool { return strings.Contains(ag.output(), "draining") })
	// A task dispatched during the drain must not be taken.
	later, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := ag.cmd.Wait(); err != nil {
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
