// Package storetest is the conformance suite every store.Store must pass. Call Run
// from the implementation's tests; it drives the store through a Clock it controls.
package storetest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orange-forge/forge/store"
)

// Clock is a store.Clock that only moves when told.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock at a fixed, recent time.
func NewClock() *Clock { return &Clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Opener returns a new, empty store using cfg. It registers its own cleanup.
type Opener func(t *testing.T, cfg store.Config) store.Store

// Run runs the conformance suite against stores made by open.
func Run(t *testing.T, open Opener) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clock := NewClock()
			cfg := store.Config{Clock: clock, OnlineWindow: 50 * time.Second, Retention: 24 * time.Hour, MaxPendingPerAgent: 50}
			h := &harness{T: t, s: open(t, cfg), clock: clock, ctx: t.Context()}
			tc.fn(h)
		})
	}
}

type harness struct {
	*testing.T
	s     store.Store
	clock *Clock
	ctx   context.Context
	n     int
}

type testAgent struct {
	store.Agent
	cred store.Cred
}

func hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func (h *harness) register(labels map[string]string) testAgent {
	h.Helper()
	h.n++
	secret := fmt.Sprintf("secret-%d-%s", h.n, h.Name())
	a, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{
		Name: fmt.Sprintf("agent-%d", h.n), Hostname: "host", Version: "v1",
		Labels: labels, TaskTypes: []string{"echo"}, SecretHash: hash(secret),
	})
	if err != nil {
		h.Fatalf("RegisterAgent: %v", err)
	}
	return testAgent{Agent: a, cred: store.Cred{AgentID: a.ID, SecretHash: hash(secret)}}
}

func (h *harness) spec(target store.Target) store.JobSpec {
	return store.JobSpec{
		Type: "echo", Payload: []byte("hello"), Target: target,
		Timeout: time.Minute, DeliveryTTL: 10 * time.Minute, MaxAttempts: 3,
	}
}

func (h *harness) dispatch(a testAgent) store.Job {
	h.Helper()
	j, err := h.s.Dispatch(h.ctx, h.spec(store.Target{AgentID: a.ID}))
	if err != nil {
		h.Fatalf("Dispatch: %v", err)
	}
	if len(j.TaskIDs) != 1 {
		h.Fatalf("Dispatch to one agent made %d tasks", len(j.TaskIDs))
	}
	return j
}

func (h *harness) lease(a testAgent, max int) store.LeaseResult {
	h.Helper()
	r, err := h.s.Lease(h.ctx, store.LeaseParams{Cred: a.cred, Max: max, Lease: 30 * time.Second, Hold: 25 * time.Second})
	if err != nil {
		h.Fatalf("Lease: %v", err)
	}
	return r
}

func (h *harness) leaseOne(a testAgent) store.Task {
	h.Helper()
	r := h.lease(a, 1)
	if len(r.Tasks) != 1 {
		h.Fatalf("Lease took %d tasks, want 1", len(r.Tasks))
	}
	return r.Tasks[0]
}

func (h *harness) report(a testAgent, ref store.TaskRef, o store.Outcome) (store.TaskState, error) {
	return h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: ref.TaskID, Attempt: ref.Attempt, Outcome: o, Output: []byte("out")})
}

func (h *harness) task(id string) store.Task {
	h.Helper()
	t, err := h.s.GetTask(h.ctx, id)
	if err != nil {
		h.Fatalf("GetTask(%s): %v", id, err)
	}
	return t
}

func (h *harness) wantState(id string, want store.TaskState) store.Task {
	h.Helper()
	t := h.task(id)
	if t.State != want {
		h.Fatalf("task %s is %s, want %s (history %+v)", id, t.State, want, t.History)
	}
	return t
}

func (h *harness) reap() {
	h.Helper()
	if err := h.s.Reap(h.ctx); err != nil {
		h.Fatalf("Reap: %v", err)
	}
}

func wantKind(t testing.TB, err error, kind store.Kind, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got no error, want kind %d", what, kind)
	}
	if got := store.KindOf(err); got != kind {
		t.Fatalf("%s: got error %v (kind %d), want kind %d", what, err, got, kind)
	}
}

// fired waits a little for a watcher; stores with remote notifications need a moment.
func fired(w *store.Watcher) bool {
	select {
	case <-w.C:
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}

func drain(w *store.Watcher) {
	for {
		select {
		case <-w.C:
		case <-time.After(50 * time.Millisecond):
			return
		}
	}
}

var errStop = errors.New("stop")
