package memstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

// The store operations on the hot paths, without HTTP: what a round trip costs
// in the store itself (forge bench measures the whole path).

func benchAgent(b *testing.B) (*memstore.Store, store.Cred) {
	st := memstore.New(store.Config{})
	cred := store.Cred{SecretHash: []byte("0123456789abcdef0123456789abcdef")}
	a, err := st.RegisterAgent(context.Background(), store.RegisterParams{Name: "bench", SecretHash: cred.SecretHash})
	if err != nil {
		b.Fatal(err)
	}
	cred.AgentID = a.ID
	return st, cred
}

var spec = store.JobSpec{Type: "echo", Payload: []byte("x"), MaxAttempts: 3, Timeout: time.Minute, DeliveryTTL: time.Hour}

// BenchmarkTaskCycle is one task's store work in a round trip: Dispatch, the
// held Poll's Lease, Report, and the WaitTask's GetTask.
func BenchmarkTaskCycle(b *testing.B) {
	st, cred := benchAgent(b)
	ctx := context.Background()
	s := spec
	s.Target.AgentID = cred.AgentID
	for b.Loop() {
		job, err := st.Dispatch(ctx, s)
		if err != nil {
			b.Fatal(err)
		}
		res, err := st.Lease(ctx, store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute, Hold: time.Second})
		if err != nil || len(res.Tasks) != 1 {
			b.Fatal(err)
		}
		if _, err := st.Report(ctx, store.ReportParams{Cred: cred, TaskID: job.TaskIDs[0], Attempt: 1, Outcome: store.OutcomeSucceeded, Output: []byte("x")}); err != nil {
			b.Fatal(err)
		}
		if _, err := st.GetTask(ctx, job.TaskIDs[0]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeaseEmpty is an idle agent's Poll renewal: a Lease that finds nothing.
func BenchmarkLeaseEmpty(b *testing.B) {
	st, cred := benchAgent(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := st.Lease(ctx, store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute, Hold: time.Second}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWatch is the watcher a held Poll registers and drops.
func BenchmarkWatch(b *testing.B) {
	st := memstore.New(store.Config{})
	for b.Loop() {
		st.Watch(store.AgentKey("a0123456789abcde")).Stop()
	}
}
