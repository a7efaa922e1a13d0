package redisstore_test

import (
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

func benchStore(b *testing.B, cluster bool) store.Store {
	url := ""
	if cluster {
		url = redistest.StartCluster(b, 3).URL()
	} else {
		url = redistest.Start(b).URL()
	}
	s, err := redisstore.Open(b.Context(), url, store.Config{}, redisstore.Options{Prefix: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

func registerB(b *testing.B, s store.Store) store.Cred {
	a, err := s.RegisterAgent(b.Context(), store.RegisterParams{Name: "n", SecretHash: hash("s")})
	if err != nil {
		b.Fatal(err)
	}
	return store.Cred{AgentID: a.ID, SecretHash: hash("s")}
}

// BenchmarkIdleLease is one idle Poll step: credential, last seen, generation,
// empty queue, no cancels.
func BenchmarkIdleLease(b *testing.B) {
	for _, cluster := range []bool{false, true} {
		b.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(b *testing.B) {
			s := benchStore(b, cluster)
			cred := registerB(b, s)
			p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute}
			for b.Loop() {
				if _, err := s.Lease(b.Context(), p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTaskRoundTrip dispatches a task to one agent, leases it and reports it.
func BenchmarkTaskRoundTrip(b *testing.B) {
	for _, cluster := range []bool{false, true} {
		b.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(b *testing.B) {
			s := benchStore(b, cluster)
			cred := registerB(b, s)
			p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute}
			for b.Loop() {
				if _, err := s.Dispatch(b.Context(), spec(cred.AgentID)); err != nil {
					b.Fatal(err)
				}
				r, err := s.Lease(b.Context(), p)
				if err != nil || len(r.Tasks) != 1 {
					b.Fatal(err)
				}
				if _, err := s.Report(b.Context(), store.ReportParams{Cred: cred, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeSucceeded}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIdleLeaseParallel runs idle Leases of many agents at once.
func BenchmarkIdleLeaseParallel(b *testing.B) {
	s := benchStore(b, false)
	creds := make(chan store.Cred, 1000)
	for range 256 {
		creds <- registerB(b, s)
	}
	b.RunParallel(func(pb *testing.PB) {
		cred := <-creds
		p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute}
		for pb.Next() {
			if _, err := s.Lease(b.Context(), p); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkCrossReplicaWake is the time from a Dispatch through one Store to the
// wake of a Watch on another Store of the same Redis (sharded pub/sub): what a
// Poll held on replica A waits after a dispatch through replica B, beyond the
// dispatch itself.
func BenchmarkCrossReplicaWake(b *testing.B) {
	for _, cluster := range []bool{false, true} {
		b.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(b *testing.B) {
			url := ""
			if cluster {
				url = redistest.StartCluster(b, 3).URL()
			} else {
				url = redistest.Start(b).URL()
			}
			var replicas [2]*redisstore.Store
			for i := range replicas {
				s, err := redisstore.Open(b.Context(), url, store.Config{}, redisstore.Options{Prefix: "wake"})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { s.Close() })
				replicas[i] = s
			}
			cred := registerB(b, replicas[0])
			p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute}
			for b.Loop() {
				w := replicas[0].Watch(store.AgentKey(cred.AgentID))
				if _, err := replicas[1].Dispatch(b.Context(), spec(cred.AgentID)); err != nil {
					b.Fatal(err)
				}
				select {
				case <-w.C:
				case <-time.After(5 * time.Second):
					b.Fatal("no wake within 5 s")
				}
				w.Stop()
				b.StopTimer()
				if _, err := replicas[0].Lease(b.Context(), p); err != nil { // keep the queue short
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkStats is one read of the cluster-wide counts (store.Stats) with 200
// agents and 2,000 retained tasks: a fixed number of commands, whatever the
// history holds.
func BenchmarkStats(b *testing.B) {
	for _, cluster := range []bool{false, true} {
		b.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(b *testing.B) {
			s := benchStore(b, cluster)
			for range 200 {
				cred := registerB(b, s)
				for range 10 {
					if _, err := s.Dispatch(b.Context(), spec(cred.AgentID)); err != nil {
						b.Fatal(err)
					}
				}
			}
			for b.Loop() {
				if _, err := s.Stats(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
