package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

const (
	stdout = forgev1.Stream_STREAM_STDOUT
	stderr = forgev1.Stream_STREAM_STDERR
)

// leased registers an agent, dispatches a task to it and leases it; it returns
// the agent's client and token, and the task.
func leased(t *testing.T, e *forgetest.Server) (forgev1connect.AgentServiceClient, string, *forgev1.Task) {
	t.Helper()
	id, tok := e.Register("out", nil)
	ag := e.Agent(tok)
	e.DispatchTo(id)
	p, err := ag.Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(5 * time.Second)}))
	if err != nil || len(p.Msg.Tasks) != 1 {
		t.Fatalf("Poll = %v, %v", p, err)
	}
	return ag, tok, p.Msg.Tasks[0]
}

func appendOut(ctx context.Context, ag forgev1connect.AgentServiceClient, task *forgev1.Task, s forgev1.Stream, off int64, data string) (int64, error) {
	res, err := ag.AppendOutput(ctx, connect.NewRequest(&forgev1.AppendOutputRequest{TaskId: task.Id, Attempt: task.Attempt,
		Stream: s, Offset: off, Data: []byte(data)}))
	if err != nil {
		return 0, err
	}
	return res.Msg.NextOffset, nil
}

func readOut(ctx context.Context, e *forgetest.Server, id string, off int64, wait time.Duration) (*forgev1.ReadOutputResponse, error) {
	res, err := e.Control.ReadOutput(ctx, connect.NewRequest(&forgev1.ReadOutputRequest{TaskId: id, Offset: off, Wait: durationpb.New(wait)}))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// text shows a read's chunks as "stream:data" joined by "|".
func text(r *forgev1.ReadOutputResponse) string {
	var parts []string
	for _, c := range r.Chunks {
		parts = append(parts, strings.TrimPrefix(c.Stream.String(), "STREAM_")+":"+string(c.Data))
	}
	return strings.Join(parts, "|")
}

func TestOutputAPI(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		ctx := t.Context()
		ag, _, task := leased(t, e)
		if n, err := appendOut(ctx, ag, task, stdout, 0, "hello\n"); err != nil || n != 6 {
			t.Fatalf("AppendOutput = %d, %v", n, err)
		}
		if n, err := appendOut(ctx, ag, task, stderr, 0, "warn\n"); err != nil || n != 5 {
			t.Fatalf("AppendOutput stderr = %d, %v", n, err)
		}
		// Sent again (a retry after a lost answer): acknowledged, stored once.
		if n, err := appendOut(ctx, ag, task, stdout, 0, "hello\n"); err != nil || n != 6 {
			t.Fatalf("AppendOutput again = %d, %v", n, err)
		}
		r, err := readOut(ctx, e, task.Id, 0, 0)
		if err != nil || text(r) != "STDOUT:hello\n|STDERR:warn\n" || r.NextOffset != 11 || r.Finished || r.State != forgev1.TaskState_TASK_STATE_RUNNING {
			t.Fatalf("ReadOutput = %v, %v", r, err)
		}
		info := e.Task(task.Id)
		if string(info.Output) != "hello\n" || string(info.Stderr) != "warn\n" || info.OutputSize != 11 {
			t.Fatalf("GetTask output %q stderr %q size %d", info.Output, info.Stderr, info.OutputSize)
		}
		// The report need not carry what was streamed; what it carries follows.
		if _, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: 1,
			Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED, Output: []byte("done")})); err != nil {
			t.Fatal(err)
		}
		r, err = readOut(ctx, e, task.Id, 11, 5*time.Second)
		if err != nil || text(r) != "STDOUT:done" || r.NextOffset != 15 || !r.Finished || r.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("ReadOutput after the report = %v, %v", r, err)
		}
		// A finished task's reader is answered at once, whatever its wait.
		start := time.Now()
		if r, err := readOut(ctx, e, task.Id, 15, time.Minute); err != nil || len(r.Chunks) != 0 || !r.Finished || r.NextOffset != 15 {
			t.Fatalf("ReadOutput at the end = %v, %v", r, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("a finished task's read was held %v", d)
		}
	})
}

func TestOutputBadInput(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{Limits: server.Limits{MaxChunk: 1000}}})
		ag, agentTok, task := leased(t, e)
		_, tokB := e.Register("b", nil)
		ctx := t.Context()
		if _, err := appendOut(ctx, ag, task, stdout, 0, "abc"); err != nil {
			t.Fatal(err)
		}
		const js = "application/json"
		const (
			appendPath = "/forge.v1.AgentService/AppendOutput"
			readPath   = "/forge.v1.ControlService/ReadOutput"
		)
		tid := task.Id
		chunk := func(extra string) string { return `{"taskId":"` + tid + `","attempt":1` + extra + `}` }
		cases := []struct {
			name, path, token, body string
			wantCode, wantIn        string
		}{
			{"no stream", appendPath, agentTok, chunk(`,"data":"eA=="`), "invalid_argument", "stream: must be STREAM_STDOUT or STREAM_STDERR"},
			{"unknown stream", appendPath, agentTok, chunk(`,"stream":9,"data":"eA=="`), "invalid_argument", "stream"},
			{"negative offset", appendPath, agentTok, chunk(`,"stream":"STREAM_STDOUT","offset":"-1"`), "invalid_argument", "offset: must not be negative"},
			{"absurd offset", appendPath, agentTok, chunk(`,"stream":"STREAM_STDOUT","offset":"9223372036854775807"`), "invalid_argument", "offset"},
			{"no attempt", appendPath, agentTok, `{"taskId":"` + tid + `","stream":"STREAM_STDOUT"}`, "invalid_argument", "attempt"},
			{"bad task id", appendPath, agentTok, `{"taskId":"../x","attempt":1,"stream":"STREAM_STDOUT"}`, "invalid_argument", "task_id"},
			{"huge chunk", appendPath, agentTok, chunk(`,"stream":"STREAM_STDOUT","offset":"3","data":"` + strings.Repeat("QUFB", 400) + `"`),
				"resource_exhausted", "data: 1200 bytes is over the limit of 1000 bytes per chunk"},
			{"gap", appendPath, agentTok, chunk(`,"stream":"STREAM_STDOUT","offset":"5","data":"eA=="`), "failed_precondition", "expected offset 3"},
			{"stale attempt", appendPath, agentTok, `{"taskId":"` + tid + `","attempt":2,"stream":"STREAM_STDOUT","data":"eA=="}`, "failed_precondition", "stale"},
			{"another agent's task", appendPath, tokB, chunk(`,"stream":"STREAM_STDOUT","offset":"3","data":"eA=="`), "not_found", "not found"},
			{"operator token on AppendOutput", appendPath, adminToken, chunk(`,"stream":"STREAM_STDOUT"`), "permission_denied", "agent token"},
			{"agent token on ReadOutput", readPath, agentTok, `{"taskId":"` + tid + `"}`, "permission_denied", "operator token"},
			{"read with a negative offset", readPath, adminToken, `{"taskId":"` + tid + `","offset":"-2"}`, "invalid_argument", "offset: must not be negative"},
			{"read past the end", readPath, adminToken, `{"taskId":"` + tid + `","offset":"4"}`, "invalid_argument", "offset 4 is past the end of the output"},
			{"read of an unknown task", readPath, adminToken, `{"taskId":"t0000000000000000-a000000000000000"}`, "not_found", "not found"},
			{"read with a negative wait", readPath, adminToken, `{"taskId":"` + tid + `","wait":"-1s"}`, "invalid_argument", "wait"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				_, code, msg := e.Post(ctx, c.path, c.token, js, strings.NewReader(c.body))
				if code != c.wantCode || !strings.Contains(msg, c.wantIn) {
					t.Errorf("got %q %q, want %q containing %q", code, msg, c.wantCode, c.wantIn)
				}
			})
		}
		// None of it changed what is kept.
		if r, err := readOut(ctx, e, tid, 0, 0); err != nil || text(r) != "STDOUT:abc" {
			t.Fatalf("ReadOutput after the bad input = %v, %v", r, err)
		}
	})
}

// A held ReadOutput answers as soon as output comes, on the replica that holds
// it whichever replica took the chunk; and answers empty when its wait ends.
func TestReadOutputHeld(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		reader := e
		if b != forgetest.Memory {
			reader = e.Replica(server.Config{}) // the chunk goes through e, the read through another replica
		}
		ctx := t.Context()
		ag, _, task := leased(t, e)
		start := time.Now()
		r, err := readOut(ctx, reader, task.Id, 0, 300*time.Millisecond)
		if err != nil || len(r.Chunks) != 0 || r.NextOffset != 0 || r.Finished {
			t.Fatalf("an empty hold = %v, %v", r, err)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Fatalf("the hold answered after %v, before its wait", d)
		}
		type result struct {
			r   *forgev1.ReadOutputResponse
			err error
			at  time.Time
		}
		held := func(off int64) <-chan result {
			ch := make(chan result, 1)
			go func() {
				r, err := readOut(ctx, reader, task.Id, off, 20*time.Second)
				ch <- result{r, err, time.Now()}
			}()
			return ch
		}
		for i, line := range []string{"one\n", "two\n", "three\n"} {
			off := int64(len(strings.Join([]string{"one\n", "two\n", "three\n"}[:i], "")))
			ch := held(off)
			time.Sleep(100 * time.Millisecond) // let the read be held
			sent := time.Now()
			if _, err := appendOut(ctx, ag, task, stdout, off, line); err != nil {
				t.Fatal(err)
			}
			select {
			case res := <-ch:
				if res.err != nil || text(res.r) != "STDOUT:"+line || res.r.NextOffset != off+int64(len(line)) {
					t.Fatalf("held read %d = %v, %v", i, res.r, res.err)
				}
				t.Logf("line %d: appended to held read answered in %v", i, res.at.Sub(sent))
			case <-time.After(15 * time.Second):
				t.Fatalf("the held read was not woken by the chunk")
			}
		}
		ch := held(14)
		time.Sleep(100 * time.Millisecond)
		if _, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: 1,
			Outcome: forgev1.Outcome_OUTCOME_FAILED, ExitCode: 3})); err != nil {
			t.Fatal(err)
		}
		select {
		case res := <-ch:
			if res.err != nil || len(res.r.Chunks) != 0 || !res.r.Finished || res.r.State != forgev1.TaskState_TASK_STATE_FAILED || res.r.NextOffset != 14 {
				t.Fatalf("held read at the end = %v, %v", res.r, res.err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("the held read was not woken by the report")
		}
	})
}

// The cap is the server's --max-output; a cursor in what was cut gets a note.
func TestOutputCapOnServer(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{Limits: server.Limits{MaxOutput: 100}}})
		ctx := t.Context()
		ag, _, task := leased(t, e)
		data := strings.Repeat("0123456789", 30)
		if n, err := appendOut(ctx, ag, task, stdout, 0, data); err != nil || n != 300 {
			t.Fatalf("AppendOutput = %d, %v", n, err)
		}
		r, err := readOut(ctx, e, task.Id, 0, 0)
		want := "STDOUT:" + data[:50] + "|UNSPECIFIED:" + store.NoteCut(200) + "|STDOUT:" + data[250:]
		if err != nil || text(r) != want || r.NextOffset != 300 {
			t.Fatalf("ReadOutput = %q, %v; want %q", text(r), err, want)
		}
		info := e.Task(task.Id)
		if !info.OutputTruncated || info.OutputSize != 300 || string(info.Output) != data[:50]+store.NoteCut(200)+data[250:] {
			t.Fatalf("GetTask: truncated %v size %d output %q", info.OutputTruncated, info.OutputSize, info.Output)
		}
	})
}
