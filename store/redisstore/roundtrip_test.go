package redisstore

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"slices"
	"strconv"
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

// budget is what one hot operation may cost: sequential round trips, commands
// sent (a script call is one), and commands Redis runs (those inside scripts
// counted, as INFO commandstats counts them; on the single node only).
type budget struct{ trips, sent, run int }

// budgets are the budgets TestRoundTrips holds each operation to; it fails if
// one grows (run it with -v to see the commands). Fan-outs reach three agents.
var budgets = map[string]budget{
	"RegisterAgent":       {3, 3, 10},
	"Lease(idle, gen 0)":  {1, 1, 5},
	"Lease(idle, gen n)":  {1, 1, 5},
	"Dispatch(one agent)": {1, 4, 16},
	"GetJob(one task)":    {1, 2, 2},
	"GetTask":             {1, 1, 2},
	"Lease(one task)":     {1, 1, 14},
	"Heartbeat(one task)": {1, 1, 8},
	"Report":              {1, 1, 15},
	"ListTasks(job)":      {1, 1, 2},
	// Claiming the key, the task and job record, then (once the task exists)
	// the record's made mark and the key kept: a mark written beside the task's
	// script would stand although the script failed (dispatchOneTrip).
	"Dispatch(idem key)":                 {3, 7, 19},
	"Dispatch(idem again)":               {4, 5, 5},
	"CancelTask(pending)":                {1, 1, 14},
	"CancelTask(running)":                {1, 1, 8},
	"Dispatch(fan-out, 3 agents)":        {7, 17, 71},
	"Lease(fan-out task)":                {2, 2, 21},
	"CancelJob(fan-out, 3 agents)":       {7, 14, 51},
	"Lease(3 tasks + 1 cancel, 4 slots)": {1, 1, 30},
	"Reap(idle)":                         {1, NumShards + 2, NumShards + 2},
	"Reap(idle, repeated)":               {1, NumShards + 2, NumShards + 2},
}

// commandsRun returns how many commands a single Redis node has run, leaving
// out INFO itself, TIME (the store's clock reads it in the background) and
// connection upkeep (the client's PINGs, a reconnect's HELLO, CLIENT, SELECT),
// which run on their own schedule and are no operation's work.
func commandsRun(t testing.TB, rd *redistest.Server) int {
	t.Helper()
	info, err := rd.Do("INFO", "commandstats")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		switch strings.TrimPrefix(name, "cmdstat_") {
		case "info", "time", "hello", "ping", "client", "select":
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				c, _ := strconv.Atoi(v)
				n += c
			}
		}
	}
	return n
}

// TestRoundTrips counts the Redis round trips and commands of the hot
// operations and checks them against budgets.
func TestRoundTrips(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		t.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(t *testing.T) {
			var url string
			var rd *redistest.Server
			if cluster {
				url = redistest.StartCluster(t, 3).URL()
			} else {
				rd = redistest.Start(t)
				url = rd.URL()
			}
			s, cc := countedStore(t, url)
			ctx := t.Context()
			ran := 0
			if rd != nil {
				ran = commandsRun(t, rd)
			}
			check := func(op string) {
				t.Helper()
				trips, sent, names := cc.take()
				run := -1
				if rd != nil {
					n := commandsRun(t, rd)
					run, ran = n-ran, n
				}
				t.Logf("%-30s %d round trips, %2d commands sent, %3d run: %s", op, trips, sent, run, names)
				b, ok := budgets[op]
				if !ok {
					t.Errorf("%s: no budget", op)
					return
				}
				if trips > b.trips || sent > b.sent || run > b.run {
					t.Errorf("%s: %d round trips, %d commands sent, %d run; budget %d, %d, %d", op, trips, sent, run, b.trips, b.sent, b.run)
				}
			}
			cc.take()
			register := func(name string) (store.Agent, store.Cred) {
				t.Helper()
				a, err := s.RegisterAgent(ctx, store.RegisterParams{Name: name, SecretHash: sum("s")})
				if err != nil {
					t.Fatal(err)
				}
				return a, store.Cred{AgentID: a.ID, SecretHash: sum("s")}
			}
			a, cred := register("n")
			check("RegisterAgent")
			spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: a.ID},
				Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
			// warm ends a task of agent id unmeasured, so its shard's stream of
			// finished tasks exists, as it does on a store that ended a task
			// there within the retention; the end that makes the stream costs
			// two commands more (finished, in scripts.go).
			warm := func(id string) {
				t.Helper()
				w := spec
				w.Target = store.Target{AgentID: id}
				j, err := s.Dispatch(ctx, w)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.CancelTask(ctx, j.TaskIDs[0], ""); err != nil {
					t.Fatal(err)
				}
				cc.take()
				if rd != nil {
					ran = commandsRun(t, rd)
				}
			}
			warm(a.ID)
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
			running := []store.TaskRef{{TaskID: r.Tasks[0].ID, Attempt: 1}}
			if _, err := s.Heartbeat(ctx, store.HeartbeatParams{Cred: cred, Running: running, Lease: time.Minute}); err != nil {
				t.Fatal(err)
			}
			check("Heartbeat(one task)")
			if _, err := s.Report(ctx, store.ReportParams{Cred: cred, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeSucceeded}); err != nil {
				t.Fatal(err)
			}
			check("Report")
			if _, _, err := s.ListTasks(ctx, store.TaskFilter{JobID: job.ID, Page: store.Page{Size: 1000}}); err != nil {
				t.Fatal(err)
			}
			check("ListTasks(job)")
			idem := spec
			idem.IdempotencyKey = "k1"
			if _, err := s.Dispatch(ctx, idem); err != nil {
				t.Fatal(err)
			}
			check("Dispatch(idem key)")
			if j, err := s.Dispatch(ctx, idem); err != nil || !j.Existing {
				t.Fatalf("Dispatch again: %+v %v", j, err)
			}
			check("Dispatch(idem again)")
			pending, err := s.Dispatch(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			cc.take()
			if rd != nil {
				ran = commandsRun(t, rd)
			}
			if _, err := s.CancelTask(ctx, pending.TaskIDs[0], ""); err != nil {
				t.Fatal(err)
			}
			check("CancelTask(pending)")
			// The one left from "idem key" is leased now, then cancelled running.
			r, err = s.Lease(ctx, p)
			if err != nil || len(r.Tasks) != 1 {
				t.Fatalf("Lease: %+v %v", r, err)
			}
			cc.take()
			if rd != nil {
				ran = commandsRun(t, rd)
			}
			if _, err := s.CancelTask(ctx, r.Tasks[0].ID, ""); err != nil {
				t.Fatal(err)
			}
			check("CancelTask(running)")
			b, _ := register("b")
			c, _ := register("c")
			warm(b.ID)
			warm(c.ID)
			fan := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{All: true, IncludeOffline: true},
				Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
			fj, err := s.Dispatch(ctx, fan)
			if err != nil || len(fj.TaskIDs) != 3 {
				t.Fatalf("fan-out: %+v %v (agents %s %s %s)", fj, err, a.ID, b.ID, c.ID)
			}
			check("Dispatch(fan-out, 3 agents)")
			if r, err = s.Lease(ctx, p); err != nil || len(r.Tasks) != 1 {
				t.Fatalf("Lease: %+v %v", r, err)
			}
			check("Lease(fan-out task)")
			if _, err := s.CancelJob(ctx, fj.ID, ""); err != nil {
				t.Fatal(err)
			}
			check("CancelJob(fan-out, 3 agents)")
			for range 3 {
				if _, err := s.Dispatch(ctx, spec); err != nil {
					t.Fatal(err)
				}
			}
			cc.take()
			if rd != nil {
				ran = commandsRun(t, rd)
			}
			// Three tasks for four free slots, and the cancel CancelJob asked
			// for the fan-out task leased above, delivered with them.
			p.Max = 4
			if r, err = s.Lease(ctx, p); err != nil || len(r.Tasks) != 3 {
				t.Fatalf("Lease: %+v %v", r, err)
			}
			check("Lease(3 tasks + 1 cancel, 4 slots)")
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

func TestJobOfTask(t *testing.T) {
	jid := store.NewJobID()
	if got := jobOfTask(jobTaskID(jid, store.NewAgentID())); got != jid {
		t.Errorf("jobOfTask = %q, want %q", got, jid)
	}
	if got := jobOfTask("tbad"); got != "" {
		t.Errorf("jobOfTask(tbad) = %q", got)
	}
}
