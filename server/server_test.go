package server_test

import (
	"context"
	"slices"
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
	"github.com/orange-forge/forge/store/memstore"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, ag := register(e, "web-1", map[string]string{"env": "prod"})
		ctx := t.Context()

		polled := pollAsync(ctx, ag, &forgev1.PollRequest{Wait: durationpb.New(10 * time.Second)})
		waitHeld(t, e, 1) // the dispatch must wake a held Poll, not meet a new one
		d, err := e.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
			Target: &forgev1.DispatchRequest_AgentId{AgentId: id}}))
		if err != nil {
			t.Fatal(err)
		}
		r := get(polled, t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		p := r.res
		if len(p.Tasks) != 1 || p.Tasks[0].Id != d.Msg.TaskIds[0] || p.Tasks[0].Attempt != 1 || string(p.Tasks[0].Payload) != "hi" {
			t.Fatalf("Poll = %v", p)
		}
		task := p.Tasks[0]
		if _, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: 1,
			Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED, Output: []byte("hi")})); err != nil {
			t.Fatal(err)
		}
		w, err := e.Control.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: task.Id}))
		if err != nil || w.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(w.Msg.Task.Output) != "hi" {
			t.Fatalf("WaitTask = %v, %v", w, err)
		}
	})
}

func TestAuth(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		_, ag := register(e, "a", nil)
		ctx := t.Context()
		_, err := e.Agent("").Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
		wantCode(t, err, connect.CodeUnauthenticated)
		_, err = e.Agent("fa_a0000000000000000_0123456789abcdef0123").Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
		wantCode(t, err, connect.CodeUnauthenticated)
		_, err = e.Agent(adminToken).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
		wantCode(t, err, connect.CodePermissionDenied)
		_, err = e.Agent(enrollToken).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
		wantCode(t, err, connect.CodePermissionDenied)
		_, err = e.ControlAs(enrollToken).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
		wantCode(t, err, connect.CodePermissionDenied)
		if _, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{MaxTasks: i32(0), Wait: durationpb.New(0)})); err != nil {
			t.Fatal(err)
		}
	})
}

// blockingReap is a store whose Reap holds until its context ends.
type blockingReap struct {
	store.Store
	started chan struct{}
	once    sync.Once
}

func (b *blockingReap) Reap(ctx context.Context) error {
	b.once.Do(func() { close(b.started) })
	<-ctx.Done()
	return ctx.Err()
}

// Close ends the context of the server's own work: a reaper pass in progress
// stops, and Close returns.
func TestCloseStopsTheReaper(t *testing.T) {
	t.Parallel()
	st := &blockingReap{Store: memstore.New(store.Config{}), started: make(chan struct{})}
	defer st.Close()
	srv, err := server.New(server.Config{Store: st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken},
		ReapInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-st.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the reaper never ran")
	}
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the reaper's store call")
	}
}

// TestDispatchByAgentName: agents are reached by name or by a glob over names,
// through JSON as curl sends it, and listed the same way.
func TestDispatchByAgentName(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		web1, _ := e.Register("web-1", nil)
		web2, _ := e.Register("web-2", nil)
		e.Register("db-1", nil)
		ctx := t.Context()
		status, code, msg := e.Post(ctx, "/forge.v1.ControlService/Dispatch", forgetest.AdminToken, "application/json",
			strings.NewReader(`{"type":"echo","agentName":"web-*"}`))
		if status != 200 {
			t.Fatalf("Dispatch by agentName: %d %s %s", status, code, msg)
		}
		jobs, err := e.Control.ListJobs(ctx, connect.NewRequest(&forgev1.ListJobsRequest{}))
		if err != nil || len(jobs.Msg.Jobs) != 1 || jobs.Msg.Jobs[0].Target != "agents named web-*" || jobs.Msg.Jobs[0].Counts.Total != 2 {
			t.Fatalf("ListJobs = %v, %v", jobs, err)
		}
		j, err := e.Control.GetJob(ctx, connect.NewRequest(&forgev1.GetJobRequest{JobId: jobs.Msg.Jobs[0].Id}))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, task := range j.Msg.Tasks {
			got = append(got, task.AgentId)
		}
		slices.Sort(got)
		want := []string{web1, web2}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("tasks went to %v, want %v", got, want)
		}
		one, err := e.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_AgentName{AgentName: "web-1"}}))
		if err != nil || len(one.Msg.TaskIds) != 1 || !strings.HasSuffix(one.Msg.TaskIds[0], web1) {
			t.Fatalf("Dispatch to web-1 = %v, %v", one, err)
		}
		none, err := e.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_AgentName{AgentName: "nobody"}}))
		if err != nil || len(none.Msg.TaskIds) != 0 || none.Msg.Counts.GetTotal() != 0 {
			t.Fatalf("Dispatch to nobody = %v, %v; want an empty job", none, err)
		}
		list, err := e.Control.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{Name: "web-?"}))
		if err != nil || len(list.Msg.Agents) != 2 {
			t.Fatalf("ListAgents name web-? = %v, %v", list, err)
		}
	})
}
