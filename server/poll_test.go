package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
)

type pollResult struct {
	res *forgev1.PollResponse
	err error
	at  time.Time
}

func pollAsync(ctx context.Context, ag forgev1connect.AgentServiceClient, req *forgev1.PollRequest) <-chan pollResult {
	ch := make(chan pollResult, 1)
	go func() {
		res, err := ag.Poll(ctx, connect.NewRequest(req))
		r := pollResult{err: err, at: time.Now()}
		if err == nil {
			r.res = res.Msg
		}
		ch <- r
	}()
	return ch
}

// waitHeld waits until the server holds n Polls.
func waitHeld(t *testing.T, e *forgetest.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if e.HeldPolls() >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%d polls never got held", n)
}

func get(ch <-chan pollResult, t *testing.T) pollResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("poll did not answer")
	}
	return pollResult{}
}

func TestPollWaitZeroAnswersAtOnce(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		_, ag := register(e, "a", nil)
		start := time.Now()
		res, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		took := time.Since(start)
		t.Logf("Poll with wait 0 answered in %v", took)
		// A held Poll would take the default hold, 25 s; anything far below is "at once".
		if err != nil || len(res.Msg.Tasks) != 0 || took > 10*time.Second {
			t.Fatalf("Poll wait 0 = %v, %v after %v", res, err, took)
		}
	})
}

func TestPollHeldUntilDispatch(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", nil)
		ch := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second), MaxTasks: i32(4)})
		waitHeld(t, e, 1)
		tid := e.DispatchTo(id)
		r := get(ch, t)
		if r.err != nil || len(r.res.Tasks) != 1 || r.res.Tasks[0].Id != tid {
			t.Fatalf("held Poll = %+v", r)
		}
	})
}

func TestPollMaxZeroHearsCancel(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", nil)
		tid := e.DispatchTo(id)
		res, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(res.Msg.Tasks) != 1 {
			t.Fatalf("Poll = %v, %v", res, err)
		}
		ch := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second), MaxTasks: i32(0)})
		waitHeld(t, e, 1)
		e.DispatchTo(id) // a new task does not answer a Poll that takes none
		if _, err := e.Control.CancelTask(t.Context(), connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: tid})); err != nil {
			t.Fatal(err)
		}
		r := get(ch, t)
		if r.err != nil || len(r.res.Tasks) != 0 || len(r.res.Cancels) != 1 || r.res.Cancels[0].TaskId != tid || r.res.Cancels[0].Attempt != 1 {
			t.Fatalf("Poll max 0 after cancel = %+v", r)
		}
	})
}

func TestNewPollAnswersOlder(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", nil)
		old := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)})
		waitHeld(t, e, 1)
		cur := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)})
		r := get(old, t)
		if r.err != nil || len(r.res.Tasks) != 0 {
			t.Fatalf("older Poll = %+v, want an empty answer", r)
		}
		waitHeld(t, e, 1)
		tid := e.DispatchTo(id)
		r = get(cur, t)
		if r.err != nil || len(r.res.Tasks) != 1 || r.res.Tasks[0].Id != tid {
			t.Fatalf("newer Poll = %+v", r)
		}
	})
}

func TestPollEndsBeforeCallerDeadline(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		_, ag := register(e, "a", nil)
		// The hold ends 10% (here 500 ms) before the deadline: room for a loaded machine.
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()
		res, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)}))
		t.Logf("Poll with a 5s deadline answered after %v", time.Since(start))
		if err != nil || len(res.Msg.Tasks) != 0 {
			t.Fatalf("Poll with a 5s deadline = %v, %v; want an empty answer, not an error", res, err)
		}
	})
}

func TestCloseAnswersHeldPolls(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		_, ag := register(e, "a", nil)
		ch := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)})
		waitHeld(t, e, 1)
		e.Close()
		if r := get(ch, t); r.err != nil || len(r.res.Tasks) != 0 {
			t.Fatalf("Poll at Close = %+v", r)
		}
	})
}

func TestRevokeAnswersHeldPoll(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", nil)
		ch := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)})
		waitHeld(t, e, 1)
		if _, err := e.Control.RevokeAgent(t.Context(), connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: id})); err != nil {
			t.Fatal(err)
		}
		r := get(ch, t)
		wantCode(t, r.err, connect.CodeUnauthenticated)
		_, err := ag.Heartbeat(t.Context(), connect.NewRequest(&forgev1.HeartbeatRequest{}))
		wantCode(t, err, connect.CodeUnauthenticated)
	})
}

func TestDispatchWithWait(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", map[string]string{"role": "web"})
		go func() {
			res, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(20 * time.Second)}))
			if err != nil || len(res.Msg.Tasks) != 1 {
				t.Errorf("Poll = %v, %v", res, err)
				return
			}
			tk := res.Msg.Tasks[0]
			ag.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: tk.Id, Attempt: tk.Attempt,
				Outcome: forgev1.Outcome_OUTCOME_FAILED, ExitCode: 3, Output: []byte("boom")}))
		}()
		waitHeld(t, e, 1)
		res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_Selector{Selector: "role in (web, api)"}, Wait: durationpb.New(20 * time.Second)}))
		if err != nil {
			t.Fatal(err)
		}
		m := res.Msg
		if len(m.Tasks) != 1 || m.Tasks[0].AgentId != id || m.Tasks[0].State != forgev1.TaskState_TASK_STATE_FAILED ||
			m.Tasks[0].ExitCode != 3 || string(m.Tasks[0].Output) != "boom" || m.Counts.Failed != 1 || m.Counts.Total != 1 {
			t.Fatalf("Dispatch with wait = %v", m)
		}
	})
}

// A WaitTask and a WaitJob held on a running task answer when it ends, with the
// state it ended in.
func TestWaitsHeldUntilDone(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", nil)
		d, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_AgentId{AgentId: id}}))
		if err != nil {
			t.Fatal(err)
		}
		tid := d.Msg.TaskIds[0]
		if p, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)})); err != nil || len(p.Msg.Tasks) != 1 {
			t.Fatalf("Poll = %v, %v", p, err)
		}
		task := make(chan *forgev1.WaitTaskResponse, 1)
		job := make(chan *forgev1.WaitJobResponse, 1)
		go func() {
			res, err := e.Control.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(20 * time.Second)}))
			if err != nil {
				t.Error(err)
				res = connect.NewResponse(&forgev1.WaitTaskResponse{})
			}
			task <- res.Msg
		}()
		go func() {
			res, err := e.Control.WaitJob(t.Context(), connect.NewRequest(&forgev1.WaitJobRequest{JobId: d.Msg.JobId, Wait: durationpb.New(20 * time.Second)}))
			if err != nil {
				t.Error(err)
				res = connect.NewResponse(&forgev1.WaitJobResponse{})
			}
			job <- res.Msg
		}()
		// Both calls are held: neither answers while the task runs.
		select {
		case r := <-task:
			t.Fatalf("WaitTask answered while the task ran: %v", r)
		case r := <-job:
			t.Fatalf("WaitJob answered while the task ran: %v", r)
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := ag.ReportResult(t.Context(), connect.NewRequest(&forgev1.ReportResultRequest{TaskId: tid, Attempt: 1,
			Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED, Output: []byte("done")})); err != nil {
			t.Fatal(err)
		}
		var tr *forgev1.WaitTaskResponse
		var jr *forgev1.WaitJobResponse
		for tr == nil || jr == nil {
			select {
			case tr = <-task:
			case jr = <-job:
			case <-time.After(10 * time.Second):
				t.Fatal("a held wait did not answer when the task ended")
			}
		}
		if tr.Task.GetState() != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(tr.Task.GetOutput()) != "done" {
			t.Fatalf("WaitTask = %v", tr)
		}
		if jr.Job.GetCounts().GetSucceeded() != 1 || len(jr.Tasks) != 1 || jr.Tasks[0].State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("WaitJob = %v", jr)
		}
	})
}

// Close answers held waits at once, with the state they saw.
func TestCloseAnswersHeldWaits(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, _ := e.Register("a", nil)
		tid := e.DispatchTo(id)
		done := make(chan error, 1)
		go func() {
			res, err := e.Control.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(20 * time.Second)}))
			if err == nil && res.Msg.Task.GetState() != forgev1.TaskState_TASK_STATE_PENDING {
				err = fmt.Errorf("state %v, want PENDING", res.Msg.Task.GetState())
			}
			done <- err
		}()
		time.Sleep(100 * time.Millisecond) // most likely held by now; a hold deaf to Close hangs either way
		start := time.Now()
		e.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("WaitTask at Close: %v", err)
			}
			t.Logf("answered %v after Close", time.Since(start))
		case <-time.After(10 * time.Second):
			t.Fatal("Close did not answer a held WaitTask")
		}
	})
}

// HeldPolls and the forge_polls_held gauge count Polls while they wait, and only
// Polls: a WaitTask held beside them is not one.
func TestHeldPollsCounted(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "a", nil)
		gauge := func() string {
			t.Helper()
			res, err := http.Get(e.URL + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			for _, line := range strings.Split(string(body), "\n") {
				if v, ok := strings.CutPrefix(line, "forge_polls_held "); ok {
					return v
				}
			}
			t.Fatalf("no forge_polls_held in /metrics:\n%s", body)
			return ""
		}
		tid := e.DispatchTo(id)
		if _, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)})); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() {
			_, err := e.Control.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(20 * time.Second)}))
			waited <- err
		}()
		if n, g := e.HeldPolls(), gauge(); n != 0 || g != "0" {
			t.Fatalf("with no Poll held: HeldPolls %d, gauge %s", n, g)
		}
		ch := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(20 * time.Second), MaxTasks: i32(0)})
		waitHeld(t, e, 1)
		if n, g := e.HeldPolls(), gauge(); n != 1 || g != "1" {
			t.Fatalf("with one Poll held: HeldPolls %d, gauge %s", n, g)
		}
		if _, err := e.Control.CancelTask(t.Context(), connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: tid})); err != nil {
			t.Fatal(err)
		}
		if r := get(ch, t); r.err != nil || len(r.res.Cancels) != 1 {
			t.Fatalf("held Poll after the cancel = %+v", r)
		}
		if n, g := e.HeldPolls(), gauge(); n != 0 || g != "0" {
			t.Fatalf("after the Poll answered: HeldPolls %d, gauge %s", n, g)
		}
		e.Close()
		if err := <-waited; err != nil {
			t.Fatalf("WaitTask: %v", err)
		}
	})
}
