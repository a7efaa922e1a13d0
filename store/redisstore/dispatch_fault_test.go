package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// faultyClient fails one call (a Do or a DoMulti) of those a Store makes: the
// failAt-th, counting from 1. With sent, the call reaches Redis and only its
// answer is lost — a connection cut, a replica killed — so its writes happen.
type faultyClient struct {
	rueidis.Client
	mu     sync.Mutex
	calls  int
	failAt int
	sent   bool
}

var errInjected = errors.New("injected: connection lost")

func (c *faultyClient) fail() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	return c.calls == c.failAt
}

func (c *faultyClient) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	if c.fail() {
		if c.sent {
			c.Client.Do(ctx, cmd)
		}
		return rueidis.NewErrorResult(errInjected)
	}
	return c.Client.Do(ctx, cmd)
}

func (c *faultyClient) DoMulti(ctx context.Context, cmds ...rueidis.Completed) []rueidis.RedisResult {
	if c.fail() {
		if c.sent {
			c.Client.DoMulti(ctx, cmds...)
		}
		res := make([]rueidis.RedisResult, len(cmds))
		for i := range res {
			res[i] = rueidis.NewErrorResult(errInjected)
		}
		return res
	}
	return c.Client.DoMulti(ctx, cmds...)
}

// TestDispatchRetriedAfterAnyFailure fails one Redis call of a Dispatch with an
// idempotency key — each call in turn, before it is sent and after (its answer
// lost) — and retries it: the retry answers one job, every task it lists exists,
// and the agents hold no other task. Single-agent jobs and rollouts (held tasks,
// the advancer) alike.
func TestDispatchRetriedAfterAnyFailure(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]func() string{
		"single":  func() string { return redistest.Start(t).URL() },
		"cluster": func() string { return redistest.StartCluster(t, 3).URL() },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url := url()
			for _, mode := range []string{"single", "fanout", "rollout"} {
				for _, sent := range []bool{false, true} {
					for failAt := 1; ; failAt++ {
						done := dispatchWithFault(t, url, mode, sent, failAt)
						if done {
							break
						}
					}
				}
			}
		})
	}
}

// dispatchWithFault runs one case and tells whether the Dispatch made fewer
// calls than failAt (so no later call is left to fail).
func dispatchWithFault(t *testing.T, url string, mode string, sent bool, failAt int) bool {
	t.Helper()
	rollout := mode == "rollout"
	what := fmt.Sprintf("%s sent=%v call %d", mode, sent, failAt)
	clock := &fakeClock{t: time.Now()}
	s, err := Open(t.Context(), url, store.Config{Clock: clock}, Options{Prefix: fmt.Sprintf("df%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var agents []string
	for i := range 3 {
		a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: fmt.Sprint(i), SecretHash: sum("s")})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a.ID)
	}
	spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: agents[0]},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3, IdempotencyKey: "key"}
	if mode != "single" {
		spec.Target = store.Target{All: true}
	}
	if rollout {
		spec.MaxConcurrency, spec.MaxFailures = 1, 1
	}
	real := s.client
	fc := &faultyClient{Client: real, failAt: failAt, sent: sent}
	s.client = fc
	_, ferr := s.Dispatch(t.Context(), spec)
	s.client = real
	if ferr == nil && fc.calls < failAt {
		return true
	}
	job, err := s.Dispatch(t.Context(), spec)
	if err != nil {
		t.Fatalf("%s: retry: %v (the failed attempt: %v)", what, err, ferr)
	}
	if again, err := s.Dispatch(t.Context(), spec); err != nil || again.ID != job.ID || !again.Existing {
		t.Fatalf("%s: a third Dispatch = %s existing %v, %v; want %s", what, again.ID, again.Existing, err, job.ID)
	}
	want := 3
	if mode == "single" {
		want = 1
	}
	if len(job.TaskIDs) != want {
		t.Fatalf("%s: the job lists %d tasks, want %d", what, len(job.TaskIDs), want)
	}
	listed := map[string]bool{}
	for _, id := range job.TaskIDs {
		listed[id] = true
		if _, err := s.GetTask(t.Context(), id); err != nil {
			t.Fatalf("%s: listed task %s: %v", what, id, err)
		}
	}
	for _, a := range agents {
		tasks, _, err := s.ListTasks(t.Context(), store.TaskFilter{AgentID: a})
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			if !listed[task.ID] {
				t.Fatalf("%s: agent %s holds task %s of job %s, not of the job answered (%s)", what, a, task.ID, task.JobID, job.ID)
			}
		}
	}
	if rollout {
		// The advancer released exactly one task (max_concurrency 1), whichever
		// call did it; a failed advance is the reaper's to redo.
		if err := s.Reap(t.Context()); err != nil {
			t.Fatal(err)
		}
		s.advanceAll(t.Context(), []string{job.ID})
		held := 0
		for _, id := range job.TaskIDs {
			task, _ := s.GetTask(t.Context(), id)
			if task.Held {
				held++
			}
		}
		if held != 2 {
			t.Fatalf("%s: %d of 3 tasks held, want 2 (max_concurrency 1)", what, held)
		}
	}
	if mode == "fanout" {
		// Every task released, whichever call did it (the reaper finishes a
		// release the Dispatch did not).
		clock.advance(advanceEvery + time.Second)
		if err := s.Reap(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, id := range job.TaskIDs {
			if task, _ := s.GetTask(t.Context(), id); task.Held || task.State != store.StatePending {
				t.Fatalf("%s: task %s is %s held %v after the reaper's pass, want released", what, id, task.State, task.Held)
			}
		}
	}
	return false
}

// TestAttackFanOutHalfDone fails one Redis call of a fan-out Dispatch without
// an idempotency key — each call in turn, before it is sent and after — as the
// 5 s write timeout did under a 20,000-agent fan-out (issue 13, finding 4):
// the error says what became of it, and what it says holds. "None of its
// tasks will run": no task is ever released, and the reaper ends them all
// CANCELED ("dispatch did not complete"). Success, or "may yet run": the job
// is whole, every task released.
func TestAttackFanOutHalfDone(t *testing.T) {
	t.Parallel()
	url := redistest.Start(t).URL()
	for _, sent := range []bool{false, true} {
		for failAt := 1; ; failAt++ {
			if keylessWithFault(t, url, sent, failAt) {
				break
			}
		}
	}
}

func keylessWithFault(t *testing.T, url string, sent bool, failAt int) bool {
	t.Helper()
	what := fmt.Sprintf("keyless sent=%v call %d", sent, failAt)
	clock := &fakeClock{t: time.Now()}
	s, err := Open(t.Context(), url, store.Config{Clock: clock}, Options{Prefix: fmt.Sprintf("kf%d", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var agents []string
	for i := range 3 {
		a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: fmt.Sprint(i), SecretHash: sum("s")})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a.ID)
	}
	spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{All: true},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
	real := s.client
	fc := &faultyClient{Client: real, failAt: failAt, sent: sent}
	s.client = fc
	job, ferr := s.Dispatch(t.Context(), spec)
	s.client = real
	if ferr == nil && fc.calls < failAt {
		return true
	}
	released := func() (n int) {
		for _, a := range agents {
			ag, err := s.GetAgent(t.Context(), a)
			if err != nil {
				t.Fatal(err)
			}
			n += ag.Pending
		}
		return n
	}
	noneRuns := ferr != nil && ferr.Error() == store.MsgDispatchNotAccepted
	switch {
	case ferr == nil:
	case !store.IsDispatchIncomplete(ferr):
		t.Fatalf("%s: Dispatch = %v, want an error saying what became of the dispatch", what, ferr)
	case noneRuns:
		if n := released(); n != 0 {
			t.Fatalf("%s: %q, yet %d tasks were released", what, ferr, n)
		}
	case !strings.HasPrefix(ferr.Error(), "the dispatch of job ") || !strings.Contains(ferr.Error(), "may yet run"):
		t.Fatalf("%s: Dispatch = %v", what, ferr)
	}
	// The reaper, past the time an uncommitted dispatch is abandoned by.
	clock.advance(abandonKeyless + time.Minute)
	if err := s.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	jobs, _, err := s.ListJobs(t.Context(), store.Page{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		tasks, _, err := s.ListTasks(t.Context(), store.TaskFilter{AgentID: a})
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			switch {
			case noneRuns && (task.State != store.StateCanceled || task.Error != store.ReasonDispatchIncomplete):
				t.Fatalf("%s: %q, yet task %s is %s (%s) after the reaper", what, ferr, task.ID, task.State, task.Error)
			case !noneRuns && (task.State != store.StatePending || task.Held):
				// Accepted (or maybe): then whole and released — unless the reaper
				// abandoned a "maybe" that had not committed.
				if !(ferr != nil && task.State == store.StateCanceled && task.Error == store.ReasonDispatchIncomplete) {
					t.Fatalf("%s: task %s is %s held %v", what, task.ID, task.State, task.Held)
				}
			}
		}
	}
	if ferr == nil && (len(jobs) != 1 || jobs[0].ID != job.ID || len(job.TaskIDs) != 3) {
		t.Fatalf("%s: succeeded with job %s of %d tasks; jobs listed %v", what, job.ID, len(job.TaskIDs), jobs)
	}
	if released() > 3 {
		t.Fatalf("%s: more tasks released than agents", what)
	}
	return false
}

// fakeClock is a store.Clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
