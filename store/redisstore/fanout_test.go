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
// changes it, -short makes it 2,000 and the race detector 5,000), then one
// Dispatch to all of them with a 64 KiB payload, while another caller polls
// and reads. Before, the payload was copied into every task (Redis grew by
// gigabytes), the call ran past Redis' write timeout, half done, and the other
// caller stalled for seconds behind it. Now the payload is stored once, the
// job is whole, and the fan-out goes to Redis in bounded round trips with the
// other caller served between every two of them: what it waits for is one
// round trip of the fan-out at most, however big the fleet. That is checked
// by order and count, not by the clock (the time the calls took is only
// logged: it is the machine's).
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

	// The other caller, an agent polling and an operator reading, calls the
	// same Store before each of the fan-out's round trips goes out, the
	// previous one answered: its calls are served in between, or Dispatch
	// never finishes.
	bystander := fleet[0]
	var lat []time.Duration
	between := func() {
		t0 := time.Now()
		if _, err := s.Lease(ctx, store.LeaseParams{Cred: bystander, Max: 0, Lease: time.Minute, Hold: time.Second}); err != nil {
			t.Errorf("the other caller's Lease: %v", err)
		}
		if _, err := s.GetAgent(ctx, bystander.AgentID); err != nil {
			t.Errorf("the other caller's GetAgent: %v", err)
		}
		lat = append(lat, time.Since(t0))
	}
	rt := &roundTrips{between: between}
	redisstore.WrapClient(s, func(c rueidis.Client) rueidis.Client { rt.Client = c; return rt })
	payload := bytes.Repeat([]byte("x"), 64<<10)
	t0 := time.Now()
	job, err := s.Dispatch(context.WithValue(ctx, fanOutCall{}, true), store.JobSpec{Type: "echo", Payload: payload,
		Target: store.Target{All: true}, Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3})
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("Dispatch to %d agents: %v (after %v)", n, err, took)
	}
	grew := usedMemory(t, rc) - before
	slices.Sort(lat)
	t.Logf("dispatch to %d agents, 64 KiB payload: %v in %d round trips (at most %d scripts in one); Redis grew %.1f MB (%.0f bytes a task); "+
		"the other caller's %d calls between them: p50 %v, max %v",
		n, took.Round(time.Millisecond), rt.trips, rt.widest, float64(grew)/(1<<20), float64(grew)/float64(n),
		len(lat), lat[len(lat)/2], lat[len(lat)-1])

	if len(job.TaskIDs) != n || job.Counts.Pending != n {
		t.Fatalf("the job has %d tasks (%d pending), want %d", len(job.TaskIDs), job.Counts.Pending, n)
	}
	// Bounded round trips: the tasks are created, then released, a pipeline of
	// batches at a time, a few round trips outstanding at once, so no round
	// trip holds Redis for a share of the fleet; the other caller was served
	// before every one.
	perTrip := redisstore.DispatchBatch * redisstore.DispatchPipeline
	if min, most := 2*(n/perTrip), redisstore.DispatchInFlight(s); rt.trips < min || rt.widest > redisstore.DispatchPipeline || rt.mostOut > most {
		t.Errorf("the fan-out to %d agents went out in %d round trips of at most %d scripts, %d outstanding at once; want at least %d of at most %d, at most %d at once",
			n, rt.trips, rt.widest, rt.mostOut, min, redisstore.DispatchPipeline, most)
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
}

// fanOutCall marks the context of the Dispatch whose round trips roundTrips
// counts.
type fanOutCall struct{}

// roundTrips counts the round trips (Do, DoMulti) made under a fanOutCall
// context, the scripts in each and how many are outstanding at once, and
// calls between before each goes out (one at a time). The Store's other
// calls, between's own among them, pass through uncounted.
type roundTrips struct {
	rueidis.Client
	between func()
	mu      sync.Mutex
	trips   int
	widest  int // the most scripts in one round trip
	out     int // round trips sent and not yet answered
	mostOut int // the most outstanding at once
}

// trip counts a round trip about to go out; done, to be called when it is
// answered, is nil for one not counted.
func (r *roundTrips) trip(ctx context.Context, cmds ...rueidis.Completed) (done func()) {
	if ctx.Value(fanOutCall{}) == nil {
		return func() {}
	}
	scripts := 0
	for _, c := range cmds {
		if name := strings.ToUpper(c.Commands()[0]); name == "EVALSHA" || name == "EVAL" || name == "FCALL" {
			scripts++
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trips++
	r.widest = max(r.widest, scripts)
	r.between()
	r.out++
	r.mostOut = max(r.mostOut, r.out)
	return func() {
		r.mu.Lock()
		r.out--
		r.mu.Unlock()
	}
}

func (r *roundTrips) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	defer r.trip(ctx, cmd)() // read before the call: rueidis may recycle a command once it is done
	return r.Client.Do(ctx, cmd)
}

func (r *roundTrips) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	defer r.trip(ctx, cmds...)()
	return r.Client.DoMulti(ctx, cmds...)
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
