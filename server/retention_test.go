package server_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// gateSink is an export sink that refuses every batch until opened, then
// keeps the lines it is given.
type gateSink struct {
	mu    sync.Mutex
	open  bool
	lines []string
}

func (g *gateSink) Write(_ context.Context, lines [][]byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.open {
		return errors.New("the sink is down")
	}
	for _, l := range lines {
		g.lines = append(g.lines, string(l))
	}
	return nil
}

func (g *gateSink) setOpen() {
	g.mu.Lock()
	g.open = true
	g.mu.Unlock()
}

// holds tells whether a line the sink kept names task id.
func (g *gateSink) holds(id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.lines {
		if strings.Contains(l, fmt.Sprintf("%q", id)) {
			return true
		}
	}
	return false
}

// TestRetentionJobsWithExport is the count of jobs kept (store KeepJobs, the
// server's --retention-jobs) on a real server over memory and Redis, with an
// export whose sink is down at first: three single-agent jobs finish through
// Poll and ReportResult; while the export has written none of them, Reap drops
// nothing; once the sink takes them, Reap drops the job that finished first
// with its task, and GetJob and GetTask say why, while the sink holds its line.
func TestRetentionJobsWithExport(t *testing.T) {
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		sink := &gateSink{}
		e := forgetest.Start(t, forgetest.Options{Backend: b, Store: store.Config{KeepJobs: 2},
			Server: server.Config{DisableReaper: true, Export: sink, ExportInterval: 10 * time.Millisecond}})
		// The export claims the feed (nothing has finished yet, so its first
		// batch is empty); from here on it holds retention back.
		waitFor(t, "the export to claim the feed", func() bool {
			return strings.Contains(e.Log.String(), "export: this replica exports now")
		})
		id, token := e.Register("web-1", nil)
		agent := e.Agent(token)
		var jobs, tasks []string
		for range 3 {
			res, err := e.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
				Target: &forgev1.DispatchRequest_AgentId{AgentId: id}, Payload: []byte("hi")}))
			if err != nil {
				t.Fatal(err)
			}
			poll, err := agent.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
			if err != nil || len(poll.Msg.Tasks) != 1 {
				t.Fatalf("Poll = %v, %v; want one task", poll, err)
			}
			task := poll.Msg.Tasks[0]
			if _, err := agent.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id,
				Attempt: task.Attempt, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED, Output: []byte("hi")})); err != nil {
				t.Fatal(err)
			}
			jobs, tasks = append(jobs, res.Msg.JobId), append(tasks, task.Id)
		}
		reap := func() {
			t.Helper()
			if err := e.Store.Reap(ctx); err != nil {
				t.Fatal(err)
			}
		}
		getJob := func(id string) error {
			_, err := e.Control.GetJob(ctx, connect.NewRequest(&forgev1.GetJobRequest{JobId: id}))
			return err
		}
		getTask := func(id string) error {
			_, err := e.Control.GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
			return err
		}
		// The sink refuses every batch: the export has written nothing, and all
		// three stay.
		reap()
		for i := range jobs {
			if err := getJob(jobs[i]); err != nil {
				t.Fatalf("GetJob of a job the export has not written: %v", err)
			}
			if err := getTask(tasks[i]); err != nil {
				t.Fatalf("GetTask of a task the export has not written: %v", err)
			}
		}
		sink.setOpen()
		waitFor(t, "the first job to go once exported", func() bool {
			reap()
			return connect.CodeOf(getJob(jobs[0])) == connect.CodeNotFound
		})
		for _, err := range []error{getJob(jobs[0]), getTask(tasks[0])} {
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound ||
				!strings.Contains(ce.Message(), "only the newest 2 finished jobs are kept (--retention-jobs)") {
				t.Fatalf("a dropped job or task: %v; want not_found naming --retention-jobs", err)
			}
		}
		for i := 1; i < 3; i++ {
			if err := getJob(jobs[i]); err != nil {
				t.Fatalf("GetJob of one of the two newest jobs: %v", err)
			}
			if err := getTask(tasks[i]); err != nil {
				t.Fatalf("GetTask of a task of one of the two newest jobs: %v", err)
			}
		}
		if !sink.holds(tasks[0]) {
			t.Fatalf("the sink has no line of the dropped task %s", tasks[0])
		}
	})
}

// waitFor polls cond until it holds, failing the test after a generous bound
// (a bound on waiting for something to happen, not a measure of its speed).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
