package redisstore_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// usage is what the Redis nodes hold: used_memory (INFO memory) and keys
// (DBSIZE), summed over the nodes.
func usage(t *testing.T, nodes []*redistest.Server) (bytes, keys int64) {
	t.Helper()
	for _, n := range nodes {
		m, err := strconv.ParseInt(n.Info("memory", "used_memory"), 10, 64)
		if err != nil {
			t.Fatalf("INFO memory: %v", err)
		}
		k, err := strconv.ParseInt(strings.TrimSpace(n.MustDo("DBSIZE")), 10, 64)
		if err != nil {
			t.Fatalf("DBSIZE: %v", err)
		}
		bytes, keys = bytes+m, keys+k
	}
	return bytes, keys
}

// retry calls f until it does not fail KindUnavailable (a loaded machine can
// make a test cluster's node miss its node timeout for a moment), for a minute.
func retry(f func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := f()
		if store.KindOf(err) != store.KindUnavailable || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// finishAll has every agent lease and report (succeeded, output "ok") n tasks.
// Reap runs when an agent finds nothing to lease, so an attempt whose Lease
// answer was lost comes back after its lease.
func finishAll(t *testing.T, s store.Store, creds []store.Cred, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(creds))
	for _, c := range creds {
		wg.Go(func() {
			deadline := time.Now().Add(2 * time.Minute)
			for done := 0; done < n; {
				var r store.LeaseResult
				err := retry(func() (err error) {
					r, err = s.Lease(t.Context(), store.LeaseParams{Cred: c, Max: 64, Lease: 20 * time.Second})
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				if len(r.Tasks) == 0 {
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("agent %s: %d of %d tasks done and none left to lease", c.AgentID, done, n)
						return
					}
					_ = retry(func() error { return s.Reap(t.Context()) })
					time.Sleep(100 * time.Millisecond)
					continue
				}
				for _, tk := range r.Tasks {
					err := retry(func() error {
						_, err := s.Report(t.Context(), store.ReportParams{Cred: c, TaskID: tk.ID, Attempt: tk.Attempt,
							Outcome: store.OutcomeSucceeded, Output: []byte("ok"), Cap: 1 << 20})
						return err
					})
					if store.KindOf(err) == store.KindPrecondition {
						continue // its lease ran out meanwhile (a loaded machine): it comes back
					}
					if err != nil {
						errs <- err
						return
					}
					done++
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// retentionRedis is what the retained-bytes tests measure on: a Store on a
// Redis of its own (one node, or a 3-master cluster), its nodes, and 100
// registered agents.
type retentionRedis struct {
	s     store.Store
	nodes []*redistest.Server
	creds []store.Cred
}

// onSingleAndCluster runs f as two parallel subtests, "single" and "cluster",
// each on a retentionRedis of its own.
func onSingleAndCluster(t *testing.T, f func(t *testing.T, name string, cluster bool, r retentionRedis)) {
	for _, cluster := range []bool{false, true} {
		name := map[bool]string{false: "single", true: "cluster"}[cluster]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var url string
			var r retentionRedis
			if cluster {
				cl := redistest.StartCluster(t, 3)
				url, r.nodes = cl.URL(), cl.Nodes
			} else {
				srv := redistest.Start(t)
				url, r.nodes = srv.URL(), []*redistest.Server{srv}
			}
			r.s = open(t, url, "ret", store.Config{})
			r.creds = make([]store.Cred, 100)
			for i := range r.creds {
				r.creds[i] = register(t, r.s, fmt.Sprint("secret-", i))
			}
			f(t, name, cluster, r)
		})
	}
}

// run dispatches the specs, from a few callers at once, has every agent
// finish perAgent tasks (what the specs give each), and returns the job ids.
func (r retentionRedis) run(t *testing.T, specs []store.JobSpec, perAgent int) []string {
	t.Helper()
	jobs := make([]string, len(specs))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < len(specs); i += 8 {
				var j store.Job
				err := retry(func() (err error) { j, err = r.s.Dispatch(t.Context(), specs[i]); return err })
				if err != nil {
					errs <- err
					return
				}
				jobs[i] = j.ID
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	finishAll(t, r.s, r.creds, perAgent)
	return jobs
}

// fanOuts runs n jobs, each to every agent.
func (r retentionRedis) fanOuts(t *testing.T, n int) {
	t.Helper()
	specs := make([]store.JobSpec, n)
	for i := range specs {
		specs[i] = spec("")
		specs[i].Target = store.Target{All: true}
	}
	r.run(t, specs, n)
}

// singles runs n single-agent jobs (n a multiple of the agents), spread over
// the agents, and returns their ids.
func (r retentionRedis) singles(t *testing.T, n int) []string {
	t.Helper()
	specs := make([]store.JobSpec, n)
	for i := range specs {
		specs[i] = spec(r.creds[i%len(r.creds)].AgentID)
	}
	return r.run(t, specs, n/len(r.creds))
}

// TestRetainedTaskBytes finishes 10,000 small tasks (100 fan-outs to 100
// agents, payload and output two bytes) and measures what Redis holds for each
// finished task: at most 1 KB on one node (issue 16; it was about 3 KB). The
// figures for single-agent dispatches are logged beside it.
func TestRetainedTaskBytes(t *testing.T) {
	t.Parallel()
	onSingleAndCluster(t, func(t *testing.T, name string, cluster bool, r retentionRedis) {
		const jobs = 100
		r.fanOuts(t, 1) // the indexes and scripts exist before the measure
		b0, k0 := usage(t, r.nodes)
		r.fanOuts(t, jobs)
		b1, k1 := usage(t, r.nodes)
		n := len(r.creds) * jobs
		perTask, keysPerTask := float64(b1-b0)/float64(n), float64(k1-k0)/float64(n)
		t.Logf("%s, fan-outs: %d finished tasks: %.0f bytes and %.2f keys per task", name, n, perTask, keysPerTask)
		if !cluster && perTask > 1024 {
			t.Errorf("a finished small task costs %.0f bytes of Redis; want at most 1024", perTask)
		}

		// Single-agent dispatches, each its own job: logged.
		const singles = 2000
		r.singles(t, singles)
		b2, k2 := usage(t, r.nodes)
		t.Logf("%s, single-agent jobs: %d finished tasks: %.0f bytes and %.2f keys per task", name, singles,
			float64(b2-b1)/singles, float64(k2-k1)/singles)
	})
}

// TestRetentionJobsPass: the count of jobs kept (KeepJobs 10) drops at most
// 100 jobs a Reap pass — 150 finished jobs leave 50 after one pass — and two
// replicas reaping at once drop down to the count, never below it: each reads
// the jobs past the count and the count itself at once.
func TestRetentionJobsPass(t *testing.T) {
	t.Parallel()
	url := redistest.Start(t).URL()
	cfg := store.Config{KeepJobs: 10}
	s1, s2 := open(t, url, "keepjobs", cfg), open(t, url, "keepjobs", cfg)
	ctx := t.Context()
	cred := register(t, s1, "secret-keep")
	const n = 150
	var jobs []string
	for range n {
		j, err := s1.Dispatch(ctx, spec(cred.AgentID))
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, j.ID)
	}
	for done := 0; done < n; {
		r, err := s1.Lease(ctx, store.LeaseParams{Cred: cred, Max: 64, Lease: time.Minute})
		if err != nil || len(r.Tasks) == 0 {
			t.Fatalf("Lease after %d of %d: %v, %v", done, n, r, err)
		}
		for _, tk := range r.Tasks {
			if _, err := s1.Report(ctx, store.ReportParams{Cred: cred, TaskID: tk.ID, Attempt: tk.Attempt, Outcome: store.OutcomeSucceeded}); err != nil {
				t.Fatal(err)
			}
			done++
		}
	}
	kept := func() int {
		k := 0
		for _, id := range jobs {
			_, err := s1.GetJob(ctx, id)
			switch {
			case err == nil:
				k++
			case store.KindOf(err) != store.KindNotFound:
				t.Fatal(err)
			}
		}
		return k
	}
	if err := s1.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if k := kept(); k != n-100 {
		t.Fatalf("after one pass %d jobs are kept, want %d (100 dropped)", k, n-100)
	}
	var wg sync.WaitGroup
	for _, s := range []store.Store{s1, s2} {
		wg.Go(func() {
			for range 3 {
				if err := s.Reap(ctx); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if k := kept(); k != 10 {
		t.Fatalf("after replicas reaped at once %d jobs are kept, want 10", k)
	}
	tasks, _, err := s1.ListTasks(ctx, store.TaskFilter{AgentID: cred.AgentID})
	if err != nil || len(tasks) != 10 {
		t.Fatalf("the agent keeps %d tasks (%v), want the 10 of the jobs kept", len(tasks), err)
	}
}

// TestRetentionJobsBoundsRedis: with KeepJobs 100, 1,000 finished single-agent
// jobs leave Redis holding the keys of about 100 (a job record and a task
// record each), not 1,000; the bytes are logged beside the same run without
// the count.
func TestRetentionJobsBoundsRedis(t *testing.T) {
	t.Parallel()
	const n, keep = 1000, 100
	grew := map[int][2]int64{}
	for _, k := range []int{0, keep} {
		srv := redistest.Start(t)
		s := open(t, srv.URL(), "bound", store.Config{KeepJobs: k})
		ctx := t.Context()
		cred := register(t, s, "secret-bound")
		b0, k0 := usage(t, []*redistest.Server{srv})
		for done := 0; done < n; done += 50 {
			for range 50 {
				if _, err := s.Dispatch(ctx, spec(cred.AgentID)); err != nil {
					t.Fatal(err)
				}
			}
			for got := 0; got < 50; {
				r, err := s.Lease(ctx, store.LeaseParams{Cred: cred, Max: 64, Lease: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				for _, tk := range r.Tasks {
					if _, err := s.Report(ctx, store.ReportParams{Cred: cred, TaskID: tk.ID, Attempt: tk.Attempt,
						Outcome: store.OutcomeSucceeded, Output: []byte("ok")}); err != nil {
						t.Fatal(err)
					}
					got++
				}
			}
			if err := s.Reap(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for range n / 100 { // at most 100 jobs a pass
			if err := s.Reap(ctx); err != nil {
				t.Fatal(err)
			}
		}
		b1, k1 := usage(t, []*redistest.Server{srv})
		grew[k] = [2]int64{b1 - b0, k1 - k0}
		t.Logf("KeepJobs %d: %d single-agent jobs finished: Redis grew %d bytes and %d keys", k, n, b1-b0, k1-k0)
	}
	// A finished single-agent job keeps two keys (TestRetainedJobBytes).
	if keys := grew[keep][1]; keys > 2*keep+10 {
		t.Errorf("with KeepJobs %d Redis holds %d more keys, want at most %d (two a job kept, a few indexes)", keep, keys, 2*keep+10)
	}
	if keys := grew[0][1]; keys < 2*n {
		t.Errorf("without a count Redis holds %d more keys, want at least %d: the comparison measures nothing", keys, 2*n)
	}
}

// retainedJobBytes bounds the bytes of Redis a finished small single-agent job
// may cost (TestRetainedJobBytes), on one node and on a 3-master cluster (whose
// per-node indexes cost more): the figure measured (about 1,330 and 1,420)
// and room for what a loaded machine adds — under -race with other tests
// running, leases run out and tasks run a second attempt, whose history the
// record keeps (about 110 bytes more measured on one node).
var retainedJobBytes = map[bool]float64{false: 1500, true: 1600}

// TestRetainedJobBytes finishes 10,000 single-agent jobs — each task its own
// Dispatch, as run-and-wait makes them; payload and output two bytes — and
// measures what Redis holds for each finished job, its task included: two keys
// (the task record and the job record; the job's per-shard counts go when its
// task ends) and, on one node, at most retainedJobBytes.
//
// Issue 16 asks for 1 KB. Measured here (Redis 7.0, a quiet machine): 1,482 B
// and 3 keys (1,550 B on the cluster) before the job's counts were folded and
// its record compacted; 1,282 B and 2 keys (1,348 B) after, and 1,334 B
// (1,421 B) once a finished task kept its stream entry's id for retention by
// count. What is left is
// mostly index entries of about 120–140 B each in sorted sets past their
// compact encoding: the task in its shard's list and its state's list (and its
// agent's, past 128 tasks), the job in the job list and the job retention
// index, besides the task's entry in the stream of finished tasks — about
// 600–720 B together; the two records are about 550 B.
func TestRetainedJobBytes(t *testing.T) {
	t.Parallel()
	onSingleAndCluster(t, func(t *testing.T, name string, cluster bool, r retentionRedis) {
		const perAgent = 100
		r.singles(t, len(r.creds)) // the indexes and scripts exist before the measure
		b0, k0 := usage(t, r.nodes)
		jobs := r.singles(t, len(r.creds)*perAgent)
		b1, k1 := usage(t, r.nodes)
		n := float64(len(jobs))
		perJob, keysPerJob := float64(b1-b0)/n, float64(k1-k0)/n
		t.Logf("%s, single-agent jobs: %d finished: %.0f bytes and %.2f keys per job (its task included)", name, len(jobs), perJob, keysPerJob)
		// Two keys a job: no per-shard counts are left (a loaded machine may
		// add a shard's counters hash when a lease runs out, hence no exact
		// key count).
		for _, n := range r.nodes {
			if jc := n.MustDo("EVAL", "return #redis.call('KEYS', ARGV[1])", "0", "*:jc:*"); strings.TrimSpace(jc) != "0" {
				t.Errorf("%s per-shard job counts left on %s after every job finished; want none", strings.TrimSpace(jc), n.Addr())
			}
		}
		if keysPerJob > 2.05 {
			t.Errorf("a finished single-agent job keeps %.2f keys; want 2 (its task and its record)", keysPerJob)
		}
		if limit := retainedJobBytes[cluster]; perJob > limit {
			t.Errorf("a finished single-agent job costs %.0f bytes of Redis; want at most %.0f", perJob, limit)
		}

		// What a finished job answers is what it answered before it was
		// compacted: one task, counted in its final state.
		for _, id := range []string{jobs[0], jobs[len(jobs)-1]} {
			j, err := r.s.GetJob(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if len(j.TaskIDs) != 1 || j.Counts.Total() != 1 || j.Counts.Succeeded != 1 || string(j.Spec.Payload) != "hi" {
				t.Errorf("GetJob(%s) = %+v; want one task, succeeded, payload hi", id, j)
			}
		}
	})
}
