package redisstore_test

import (
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// TestWaitReplicasUnconfirmedLease: with WaitReplicas, a Poll whose lease the
// replicas do not confirm answers unavailable, so its agent never gets the
// task; the task goes back to its queue with its attempt uncounted. Polls
// retried while no replica confirms (more of them than max_attempts) cannot
// wear the task out: once a replica is back it is leased as attempt 1 and
// succeeds. (Left leased, each failed Poll cost an attempt, and the task ended
// LOST without ever reaching its agent: TestRedisSentinelFailover's lost task.)
func TestWaitReplicasUnconfirmedLease(t *testing.T) {
	t.Parallel()
	set := redistest.StartSentinel(t)
	s, err := redisstore.Open(t.Context(), set.URL(), store.Config{}, redisstore.Options{Prefix: "w",
		WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Reads through scripts wait for the replicas too: look without waiting.
	look, err := redisstore.Open(t.Context(), set.URL(), store.Config{}, redisstore.Options{Prefix: "w"})
	if err != nil {
		t.Fatal(err)
	}
	defer look.Close()
	cred := register(t, s, "secret")
	job, err := s.Dispatch(t.Context(), spec(cred.AgentID))
	if err != nil {
		t.Fatalf("Dispatch with the replica up: %v", err)
	}
	tid := job.TaskIDs[0]

	set.Replica.Kill()
	p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute}
	for i := range 4 {
		_, err := s.Lease(t.Context(), p)
		if store.KindOf(err) != store.KindUnavailable || redisstore.CauseOf(err) != redisstore.CauseFailover {
			t.Fatalf("Poll %d with the replica gone = %v (cause %q), want unavailable, not confirmed", i+1, err, redisstore.CauseOf(err))
		}
		task, err := look.GetTask(t.Context(), tid)
		if err != nil {
			t.Fatal(err)
		}
		last := task.History[len(task.History)-1]
		if task.State != store.StatePending || task.Attempt != 0 || last.Reason != store.ReasonReturned(1) {
			t.Fatalf("after unconfirmed Poll %d the task is %s, attempt %d, last change %q; want PENDING, attempt 0, %q",
				i+1, task.State, task.Attempt, last.Reason, store.ReasonReturned(1))
		}
	}

	set.Replica.Restart() // a replica of the master again
	deadline := time.Now().Add(30 * time.Second)
	for set.Replica.Info("replication", "master_link_status") != "up" {
		if time.Now().After(deadline) {
			t.Fatal("the replica did not synchronise again")
		}
		time.Sleep(20 * time.Millisecond)
	}
	res, err := s.Lease(t.Context(), p)
	if err != nil || len(res.Tasks) != 1 || res.Tasks[0].ID != tid || res.Tasks[0].Attempt != 1 {
		t.Fatalf("Poll with the replica back = %+v, %v; want the task as attempt 1", res.Tasks, err)
	}
	st, err := s.Report(t.Context(), store.ReportParams{Cred: cred, TaskID: tid, Attempt: 1, Outcome: store.OutcomeSucceeded})
	if err != nil || st != store.StateSucceeded {
		t.Fatalf("Report = %s, %v; want SUCCEEDED", st, err)
	}
}
