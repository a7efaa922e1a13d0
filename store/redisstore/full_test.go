package redisstore_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

// TestFullRedis fills a Redis with a small maxmemory (noeviction): Dispatch is
// refused KindExhausted saying the store is full, and no job is left half
// made; the agents go on — an attempt held reports, Poll and Heartbeat answer,
// reads answer — and cancels and Reap still end tasks.
func TestFullRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithArgs("--maxmemory", "6mb", "--maxmemory-policy", "noeviction"))
	ctx := t.Context()
	s := open(t, srv.URL(), "full", store.Config{})
	filler, worker := register(t, s, "secret-filler"), register(t, s, "secret-worker")
	if _, err := s.Dispatch(ctx, spec(worker.AgentID)); err != nil {
		t.Fatal(err)
	}
	r, err := s.Lease(ctx, store.LeaseParams{Cred: worker, Max: 1, Lease: time.Minute})
	if err != nil || len(r.Tasks) != 1 {
		t.Fatalf("Lease: %v, %d tasks", err, len(r.Tasks))
	}
	held := r.Tasks[0]

	big := spec(filler.AgentID)
	big.Payload = bytes.Repeat([]byte("x"), 32<<10)
	var refused error
	for i := 0; i < 2000 && refused == nil; i++ {
		_, refused = s.Dispatch(ctx, big)
	}
	if refused == nil {
		t.Fatal("2000 dispatches of 32 KiB fit in a Redis of 6 MB")
	}
	if store.KindOf(refused) != store.KindExhausted {
		t.Fatalf("Dispatch to a full Redis: %v (kind %v); want KindExhausted", refused, store.KindOf(refused))
	}
	t.Logf("Dispatch to a full Redis: %v", refused)
	if !strings.Contains(refused.Error(), "full") {
		t.Errorf("the refusal does not say the store is full: %q", refused)
	}
	for _, sp := range []store.JobSpec{big, {Type: "echo", Payload: big.Payload, Target: store.Target{All: true, IncludeOffline: true},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}} {
		if _, err := s.Dispatch(ctx, sp); store.KindOf(err) != store.KindExhausted {
			t.Errorf("Dispatch to %v of a full Redis: %v; want KindExhausted", sp.Target, err)
		}
	}

	// No job is half made: every job's tasks exist, and a task without its job
	// ended CANCELED, never to run.
	jobs, _, err := s.ListJobs(ctx, store.Page{Size: store.MaxPageSize})
	if err != nil {
		t.Fatalf("ListJobs on a full Redis: %v", err)
	}
	for _, j := range jobs {
		for _, id := range j.TaskIDs {
			if _, err := s.GetTask(ctx, id); err != nil {
				t.Errorf("job %s lists task %s: %v", j.ID, id, err)
			}
		}
	}
	tasks, _, err := s.ListTasks(ctx, store.TaskFilter{Page: store.Page{Size: store.MaxPageSize}})
	if err != nil {
		t.Fatalf("ListTasks on a full Redis: %v", err)
	}
	for _, tk := range tasks {
		if _, err := s.GetJob(ctx, tk.JobID); err != nil && tk.State != store.StateCanceled {
			t.Errorf("task %s (%v) has no job: %v", tk.ID, tk.State, err)
		}
	}

	// The agents go on.
	if _, err := s.Heartbeat(ctx, store.HeartbeatParams{Cred: worker, Running: []store.TaskRef{held.Ref()}, Lease: time.Minute}); err != nil {
		t.Errorf("Heartbeat on a full Redis: %v", err)
	}
	st, err := s.Report(ctx, store.ReportParams{Cred: worker, TaskID: held.ID, Attempt: held.Attempt, Outcome: store.OutcomeSucceeded,
		Output: []byte("done"), Cap: 1 << 20})
	if err != nil || st != store.StateSucceeded {
		t.Fatalf("Report on a full Redis: %v, %v", st, err)
	}
	if got, err := s.GetTask(ctx, held.ID); err != nil || string(got.Output) != "done" {
		t.Errorf("GetTask on a full Redis: %.40q, %v", got.Output, err)
	}
	if _, err := s.ReadOutput(ctx, store.ReadParams{TaskID: held.ID, Max: 1 << 20}); err != nil {
		t.Errorf("ReadOutput on a full Redis: %v", err)
	}
	for i := 0; i < 3; i++ {
		lr, err := s.Lease(ctx, store.LeaseParams{Cred: filler, Max: 8, Lease: time.Minute})
		if err != nil {
			t.Fatalf("Lease on a full Redis: %v", err)
		}
		for _, tk := range lr.Tasks {
			if _, err := s.Report(ctx, store.ReportParams{Cred: filler, TaskID: tk.ID, Attempt: tk.Attempt, Outcome: store.OutcomeFailed, Cap: 1 << 20}); err != nil {
				t.Fatalf("Report on a full Redis: %v", err)
			}
		}
	}
	if err := s.Reap(ctx); err != nil {
		t.Errorf("Reap on a full Redis: %v", err)
	}
	if _, err := s.CancelJob(ctx, jobs[0].ID, "operator"); err != nil {
		t.Errorf("CancelJob on a full Redis: %v", err)
	}
}

// TestEvictionPolicyWarning: a Redis that may evict keys is named in a warning
// when the store opens; one with noeviction is not.
func TestEvictionPolicyWarning(t *testing.T) {
	t.Parallel()
	for _, policy := range []string{"allkeys-lru", "volatile-ttl", "noeviction"} {
		t.Run(policy, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t, redistest.WithArgs("--maxmemory-policy", policy))
			var mu sync.Mutex
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, nil))
			s, err := redisstore.Open(t.Context(), srv.URL(), store.Config{}, redisstore.Options{Prefix: "ev", Logger: log})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			mu.Lock()
			out := buf.String()
			mu.Unlock()
			warned := strings.Contains(out, "maxmemory-policy="+policy) && strings.Contains(out, "level=WARN")
			if warned != (policy != "noeviction") {
				t.Errorf("maxmemory-policy %s: warned %v; log:\n%s", policy, warned, out)
			}
		})
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
