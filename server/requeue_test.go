package server_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// TestRequeuedTaskNotPickedUpAgain is a task whose agent was killed while it ran,
// on a real server over memory and Redis: the attempt was leased, no heartbeat
// or report came, the lease ran out and the task was requeued with a new
// delivery TTL; no agent picked it up again within it, so it ends LOST with a
// reason that says so — not EXPIRED, "not picked up", which it was.
func TestRequeuedTaskNotPickedUpAgain(t *testing.T) {
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		ctx := t.Context()
		const lease, ttl = 30 * time.Second, time.Minute
		clock := &movingClock{t: time.Now().Add(-time.Hour)}
		e := forgetest.Start(t, forgetest.Options{Backend: b, Store: store.Config{Clock: clock},
			Server: server.Config{Lease: lease, DisableReaper: true}})
		id, token := e.Register("web-2", nil)
		res, err := e.Control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_AgentId{AgentId: id}, DeliveryTtl: durationpb.New(ttl)}))
		if err != nil {
			t.Fatal(err)
		}
		task := res.Msg.TaskIds[0]
		poll, err := e.Agent(token).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(poll.Msg.Tasks) != 1 || poll.Msg.Tasks[0].Attempt != 1 {
			t.Fatalf("Poll = %v, %v; want attempt 1 of %s", poll, err, task)
		}
		reap := func() {
			t.Helper()
			if err := e.Store.Reap(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// The agent is gone: its lease runs out and the task is requeued.
		clock.Advance(lease)
		reap()
		if got := e.Task(task); got.State != forgev1.TaskState_TASK_STATE_PENDING || got.Attempt != 1 {
			t.Fatalf("after the lease ran out: %s attempt %d, want PENDING attempt 1", got.State, got.Attempt)
		}
		// Not picked up again within the delivery TTL, counted from the requeue.
		clock.Advance(ttl - time.Millisecond)
		reap()
		if got := e.Task(task); got.State != forgev1.TaskState_TASK_STATE_PENDING {
			t.Fatalf("before the requeued task's delivery TTL: %s, want PENDING", got.State)
		}
		clock.Advance(time.Millisecond)
		reap()
		const why = "its agent stopped answering and it was not picked up again within its delivery TTL (1m0s)"
		got := e.Task(task)
		if got.State != forgev1.TaskState_TASK_STATE_LOST || got.Error != why || got.Attempt != 1 {
			t.Fatalf("task = %s attempt %d error %q; want LOST attempt 1 %q", got.State, got.Attempt, got.Error, why)
		}
		if last := got.History[len(got.History)-1]; last.State != forgev1.TaskState_TASK_STATE_LOST || last.Reason != why {
			t.Fatalf("last history step = %s %q", last.State, last.Reason)
		}
		job, err := e.Control.GetJob(ctx, connect.NewRequest(&forgev1.GetJobRequest{JobId: res.Msg.JobId}))
		if err != nil {
			t.Fatal(err)
		}
		if c := job.Msg.Job.Counts; c.Lost != 1 || c.Expired != 0 {
			t.Fatalf("job counts = %v; want 1 LOST, none EXPIRED", c)
		}
	})
}
