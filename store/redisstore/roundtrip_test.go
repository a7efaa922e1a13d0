package redisstore

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// countingClient counts what a Store sends: each Do or DoMulti is one
// sequential round trip (a DoMulti reaching several cluster nodes sends to them
// at once), and commands are counted one by one.
type countingClient struct {
	rueidis.Client
	mu    sync.Mutex
	trips int
	cmds  int
	names []string
}

func (c *countingClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.note(cmd)
	return c.Client.Do(ctx, cmd)
}

func (c *countingClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	c.note(cmds...)
	return c.Client.DoMulti(ctx, cmds...)
}

func (c *countingClient) note(cmds ...rueidis.Completed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.trips++
	c.cmds += len(cmds)
	var n []string
	for _, cmd := range cmds {
		n = append(n, cmd.Commands()[0])
	}
	c.names = append(c.names, strings.Join(n, "+"))
}

func (c *countingClient) take() (int, int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, n, names := c.trips, c.cmds, strings.Join(c.names, " → ")
	c.trips, c.cmds, c.names = 0, 0, nil
	return t, n, names
}

func countedStore(t testing.TB, url string) (*Store, *countingClient) {
	s, err := Open(t.Context(), url, store.Config{}, Options{Prefix: fmt.Sprintf("rt%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cc := &countingClient{Client: s.client}
	s.client = cc
	return s, cc
}

func sum(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// roundTripBudget is the most sequential Redis round trips each hot operation may
// cost; TestRoundTrips fails if one grows.
var roundTripBudget = map[string]int{
	"RegisterAgent":        3,
	"Dispatch(one agent)":  2,
	"Dispatch(idem key)":   3,
	"Lease(idle, gen 0)":   1,
	"Lease(idle, gen n)":   1,
	"Lease(one task)":      1,
	"Report":               1,
	"GetTask":              1,
	"GetJob(one task)":     1,
	"ListTasks(job)":       2,
	"Reap(idle)":           1,
	"Reap(idle, repeated)": 1,
}

// TestRoundTrips counts the Redis round trips of the hot operations and checks
// them against roundTripBudget (run with -v to see the commands).
func TestRoundTrips(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(t *testing.T) {
			url := ""
			if cluster {
				url = redistest.StartCluster(t, 3).URL()
			} else {
				url = redistest.Start(t).URL()
			}
			s, cc := countedStore(t, url)
			ctx := t.Context()
			check := func(op string) {
				t.Helper()
				trips, cmds, names := cc.take()
				t.Logf("%-22s %d round trips, %d commands: %s", op, trips, cmds, names)
				if b, ok := roundTripBudget[op]; ok && trips > b {
					t.Errorf("%s: %d round trips, budget %d", op, trips, b)
				}
			}
			cc.take()
			a, err := s.RegisterAgent(ctx, store.RegisterParams{Name: "n", SecretHash: sum("s")})
			if err != nil {
				t.Fatal(err)
			}
			check("RegisterAgent")
			cred := store.Cred{AgentID: a.ID, SecretHash: sum("s")}
			spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: a.ID},
				Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
			p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute, Hold: 25 * time.Second}
			r, err := s.Lease(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			check("Lease(idle, gen 0)")
			p.Gen = r.Gen
			if _, err := s.Lease(ctx, p); err != nil {
				t.Fatal(err)
			}
			check("Lease(idle, gen n)")
			job, err := s.Dispatch(ctx, spec)
			if err != nil || len(job.TaskIDs) != 1 || job.Counts.Pending != 1 {
				t.Fatalf("Dispatch: %+v %v", job, err)
			}
			check("Dispatch(one agent)")
			if _, err := s.GetJob(ctx, job.ID); err != nil {
				t.Fatal(err)
			}
			check("GetJob(one task)")
			if _, err := s.GetTask(ctx, job.TaskIDs[0]); err != nil {
				t.Fatal(err)
			}
			check("GetTask")
			r, err = s.Lease(ctx, p)
			if err != nil || len(r.Tasks) != 1 {
				t.Fatalf("Lease: %+v %v", r, err)
			}
			check("Lease(one task)")
			if _, err := s.Report(ctx, store.ReportParams{Cred: cred, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeSucceeded}); err != nil {
				t.Fatal(err)
			}
			check("Report")
			if _, _, err := s.ListTasks(ctx, store.TaskFilter{JobID: job.ID, Page: store.Page{Size: 1000}}); err != nil {
				t.Fatal(err)
			}
			check("ListTasks(job)")
			spec.IdempotencyKey = "k1"
			if _, err := s.Dispatch(ctx, spec); err != nil {
				t.Fatal(err)
			}
			check("Dispatch(idem key)")
			if j, err := s.Dispatch(ctx, spec); err != nil || !j.Existing {
				t.Fatalf("Dispatch again: %+v %v", j, err)
			}
			check("Dispatch(idem again)")
			if err := s.Reap(ctx); err != nil {
				t.Fatal(err)
			}
			check("Reap(idle)")
			if err := s.Reap(ctx); err != nil {
				t.Fatal(err)
			}
			check("Reap(idle, repeated)")
		})
	}
}

// BenchmarkHotPath times each step of a task's round trip on its own, sequentially
// (Dispatch, the agent's Lease, Report, GetTask, GetJob), and reports each step's
// median. FORGE_BENCH_REDIS names a Redis to use instead of a private one.
func BenchmarkHotPath(b *testing.B) {
	url := os.Getenv("FORGE_BENCH_REDIS")
	if url == "" {
		url = redistest.Start(b).URL()
	}
	s, _ := countedStore(b, url)
	ctx := b.Context()
	a, err := s.RegisterAgent(ctx, store.RegisterParams{Name: "n", SecretHash: sum("s")})
	if err != nil {
		b.Fatal(err)
	}
	cred := store.Cred{AgentID: a.ID, SecretHash: sum("s")}
	spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: a.ID},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
	p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute, Hold: 25 * time.Second}
	steps := []string{"dispatch", "lease", "report", "gettask", "getjob", "idlelease"}
	d := make(map[string][]time.Duration)
	timed := func(name string, f func() error) {
		t0 := time.Now()
		if err := f(); err != nil {
			b.Fatal(name, err)
		}
		d[name] = append(d[name], time.Since(t0))
	}
	for b.Loop() {
		var job store.Job
		var r store.LeaseResult
		timed("dispatch", func() (err error) { job, err = s.Dispatch(ctx, spec); return })
		timed("lease", func() (err error) { r, err = s.Lease(ctx, p); return })
		timed("report", func() error {
			_, err := s.Report(ctx, store.ReportParams{Cred: cred, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeSucceeded})
			return err
		})
		timed("gettask", func() error { _, err := s.GetTask(ctx, job.TaskIDs[0]); return err })
		timed("getjob", func() error { _, err := s.GetJob(ctx, job.ID); return err })
		timed("idlelease", func() error { _, err := s.Lease(ctx, p); return err })
	}
	for _, st := range steps {
		x := d[st]
		slices.Sort(x)
		b.ReportMetric(float64(x[len(x)/2].Microseconds()), st+"-p50-µs")
	}
}
