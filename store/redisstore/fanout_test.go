package redisstore_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// TestAttackFanOutLargeFleet repeats the attack of issue 13, finding 4 on a
// Redis of its own: a fleet registered (20,000 agents; FORGE_FANOUT_AGENTS
// changes it, -short makes it 2,000 and the race detector 5,000), then one Dispatch to all of them with a
// 64 KiB payload, while another caller keeps polling and reading. Before, the
// payload was copied into every task (Redis grew by gigabytes), the call ran
// past Redis' write timeout, half done, and the other caller stalled for
// seconds. Now the payload is stored once, the job is whole, and the other
// caller's calls stay quick. It logs what it measured.
func TestAttackFanOutLargeFleet(t *testing.T) {
	t.Parallel()
	n := 20000
	switch {
	case testing.Short():
		n = 2000
	case raceDetector:
		n = 5000
	}
	if v := os.Getenv("FORGE_FANOUT_AGENTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	srv := redistest.Start(t)
	ctx := t.Context()
	s, err := redisstore.Open(ctx, srv.URL(), store.Config{MaxTargets: -1}, redisstore.Options{Prefix: "fan"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	fleet := registerFleet(t, s, n)
	t.Logf("registered %d agents in %v", n, time.Since(start).Round(time.Millisecond))

	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	before := usedMemory(t, rc)

	// The other caller: an agent polling, an operator reading, all along.
	bystander := fleet[0]
	stop := make(chan struct{})
	var lat []time.Duration
	var latMu sync.Mutex
	var calls sync.WaitGroup
	calls.Add(1)
	go func() {
		defer calls.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			if _, err := s.Lease(ctx, store.LeaseParams{Cred: bystander, Max: 0, Lease: time.Minute, Hold: time.Second}); err != nil {
				t.Errorf("the other caller's Lease: %v", err)
				return
			}
			if _, err := s.GetAgent(ctx, bystander.AgentID); err != nil {
				t.Errorf("the other caller's GetAgent: %v", err)
				return
			}
			latMu.Lock()
			lat = append(lat, time.Since(t0))
			latMu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond) // a baseline before the fan-out
	payload := bytes.Repeat([]byte("x"), 64<<10)
	t0 := time.Now()
	job, err := s.Dispatch(ctx, store.JobSpec{Type: "echo", Payload: payload, Target: store.Target{All: true},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3})
	took := time.Since(t0)
	time.Sleep(200 * time.Millisecond)
	close(stop)
	calls.Wait()
	if err != nil {
		t.Fatalf("Dispatch to %d agents: %v (after %v)", n, err, took)
	}
	grew := usedMemory(t, rc) - before
	slices.Sort(lat)
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	t.Logf("dispatch to %d agents, 64 KiB payload: %v; Redis grew %.1f MB (%.0f bytes a task); the other caller's %d calls: p50 %v, p99 %v, max %v",
		n, took.Round(time.Millisecond), float64(grew)/(1<<20), float64(grew)/float64(n), len(lat), p(0.5), p(0.99), lat[len(lat)-1])

	if len(job.TaskIDs) != n || job.Counts.Pending != n {
		t.Fatalf("the job has %d tasks (%d pending), want %d", len(job.TaskIDs), job.Counts.Pending, n)
	}
	// Stored once: a copy per task would be n * 64 KiB.
	if limit := int64(n)*4096 + 4<<20; grew > limit {
		t.Errorf("Redis grew by %d bytes for %d tasks: more than 4 KiB a task, as if the payload were copied", grew, n)
	}
	// Every task released and carrying the payload.
	if ag, err := s.GetAgent(ctx, fleet[n-1].AgentID); err != nil || ag.Pending != 1 {
		t.Errorf("the last agent: %+v, %v; want its task pending in its queue", ag, err)
	}
	got, err := s.Lease(ctx, store.LeaseParams{Cred: fleet[n/2], Max: 1, Lease: time.Minute})
	if err != nil || len(got.Tasks) != 1 || !bytes.Equal(got.Tasks[0].Payload, payload) {
		t.Fatalf("an agent's lease: %d tasks, %v; want the task with its payload", len(got.Tasks), err)
	}
	// Other callers keep their latency: generous bounds (the machine is
	// shared); before, a call waited 6.8 s.
	if p(0.99) > time.Second || lat[len(lat)-1] > 3*time.Second {
		t.Errorf("the other caller waited p99 %v, max %v while the fan-out was written", p(0.99), lat[len(lat)-1])
	}
}

// registerFleet registers n agents, 32 at a time, online now.
func registerFleet(t *testing.T, s store.Store, n int) []store.Cred {
	t.Helper()
	out := make([]store.Cred, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				secret := hash(fmt.Sprint("s", i))
				a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: fmt.Sprint("a", i), SecretHash: secret})
				if err != nil {
					t.Error(err)
					return
				}
				out[i] = store.Cred{AgentID: a.ID, SecretHash: secret}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// usedMemory returns Redis' used_memory.
func usedMemory(t *testing.T, rc rueidis.Client) int64 {
	t.Helper()
	info, err := rc.Do(context.Background(), rc.B().Info().Section("memory").Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatal("no used_memory in INFO")
	return 0
}
