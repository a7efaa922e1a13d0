// Package storetest is the conformance suite every store.Store must pass. Call Run
// from the implementation's tests; it drives the store through a Clock it controls.
//
// The suite is split by topic — agents.go, tasks.go, leases.go, reaping.go,
// jobs.go, enrollment.go, retention.go, output.go, stats.go — and compares what users see exactly:
// states and histories (state, reason, attempt and time of every change), reasons
// and errors (kind and message), counts. Expected texts are built from package
// store's rules (store.ReasonLeased, store.ErrTaskNotFound, store.FmtStale ...), so
// a store that drifts from them, or from the other stores, fails here.
package storetest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
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

// testCase is one case of the suite.
type testCase struct {
	name string
	fn   func(h *harness)
	// cfg, when given, changes the store's config for this case.
	cfg func(*store.Config)
}

// topics are the suite's cases by topic; each runs as a subtest named after it.
var topics = []struct {
	name  string
	cases []testCase
}{
	{"Agents", agentCases},
	{"Tasks", taskCases},
	{"Leases", leaseCases},
	{"Reaping", reapingCases},
	{"Jobs", jobCases},
	{"Enrollment", enrollmentCases},
	{"Retention", retentionCases},
	{"Output", outputCases},
	{"Stats", statsCases},
	{"Export", exportCases},
}

// The settings every case runs with.
const (
	onlineWindow = 50 * time.Second
	retention    = 24 * time.Hour
	maxPending   = 50
	maxTargets   = 8
	agentRet     = 10 * 24 * time.Hour
	leaseFor     = 30 * time.Second
	holdFor      = 25 * time.Second
	timeout      = time.Minute
	deliveryTTL  = 10 * time.Minute
)

// Run runs the conformance suite against stores made by open.
func Run(t *testing.T, open Opener) {
	for _, topic := range topics {
		t.Run(topic.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range topic.cases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					clock := NewClock()
					cfg := store.Config{Clock: clock, OnlineWindow: onlineWindow, Retention: retention, MaxPendingPerAgent: maxPending, MaxTargets: maxTargets, AgentRetention: agentRet}
					if tc.cfg != nil {
						tc.cfg(&cfg)
					}
					h := &harness{T: t, s: open(t, cfg), clock: clock, ctx: t.Context()}
					tc.fn(h)
				})
			}
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

func (h *harness) now() time.Time { return h.clock.Now() }

func (h *harness) register(labels map[string]string) testAgent {
	h.Helper()
	return h.registerNamed(fmt.Sprintf("agent-%d", h.n+1), labels)
}

func (h *harness) registerNamed(name string, labels map[string]string) testAgent {
	h.Helper()
	h.n++
	secret := fmt.Sprintf("secret-%d-%s", h.n, h.Name())
	a, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{
		Name: name, Hostname: "host", Version: "v1",
		Labels: labels, TaskTypes: []string{"echo"}, SecretHash: hash(secret),
	})
	if err != nil {
		h.Fatalf("RegisterAgent: %v", err)
	}
	return testAgent{Agent: a, cred: store.Cred{AgentID: a.ID, SecretHash: hash(secret)}}
}

// fleet registers n agents with the same labels.
func (h *harness) fleet(n int, labels map[string]string) []testAgent {
	out := make([]testAgent, n)
	for i := range out {
		out[i] = h.register(labels)
	}
	return out
}

func byAgent(agents []testAgent) map[string]testAgent {
	m := make(map[string]testAgent, len(agents))
	for _, a := range agents {
		m[a.ID] = a
	}
	return m
}

func (h *harness) spec(target store.Target) store.JobSpec {
	return store.JobSpec{
		Type: "echo", Payload: []byte("hello"), Target: target,
		Timeout: timeout, DeliveryTTL: deliveryTTL, MaxAttempts: 3,
	}
}

func (h *harness) dispatchSpec(spec store.JobSpec) store.Job {
	h.Helper()
	j, err := h.s.Dispatch(h.ctx, spec)
	if err != nil {
		h.Fatalf("Dispatch: %v", err)
	}
	return j
}

// dispatch dispatches one task to a and returns its job.
func (h *harness) dispatch(a testAgent) store.Job {
	h.Helper()
	j := h.dispatchSpec(h.spec(store.Target{AgentID: a.ID}))
	if len(j.TaskIDs) != 1 {
		h.Fatalf("Dispatch to one agent made %d tasks", len(j.TaskIDs))
	}
	return j
}

func (h *harness) leaseParams(a testAgent, max int) store.LeaseParams {
	return store.LeaseParams{Cred: a.cred, Max: max, Lease: leaseFor, Hold: holdFor}
}

func (h *harness) lease(a testAgent, max int) store.LeaseResult {
	h.Helper()
	r, err := h.s.Lease(h.ctx, h.leaseParams(a, max))
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

func (h *harness) heartbeat(a testAgent, lease time.Duration, refs ...store.TaskRef) store.HeartbeatResult {
	h.Helper()
	r, err := h.s.Heartbeat(h.ctx, store.HeartbeatParams{Cred: a.cred, Running: refs, Lease: lease})
	if err != nil {
		h.Fatalf("Heartbeat: %v", err)
	}
	return r
}

func (h *harness) returnTasks(a testAgent, refs ...store.TaskRef) []store.TaskRef {
	h.Helper()
	got, err := h.s.ReturnTasks(h.ctx, store.ReturnParams{Cred: a.cred, Tasks: refs})
	if err != nil {
		h.Fatal(err)
	}
	return got
}

func (h *harness) report(a testAgent, ref store.TaskRef, o store.Outcome) (store.TaskState, error) {
	return h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: ref.TaskID, Attempt: ref.Attempt, Outcome: o, Output: []byte("out")})
}

// mustReport reports and checks the state the report ended the task in.
func (h *harness) mustReport(a testAgent, ref store.TaskRef, o store.Outcome, want store.TaskState) {
	h.Helper()
	st, err := h.report(a, ref, o)
	if err != nil || st != want {
		h.Fatalf("Report(%s attempt %d) = %v, %v; want %v", ref.TaskID, ref.Attempt, st, err, want)
	}
}

func (h *harness) task(id string) store.Task {
	h.Helper()
	t, err := h.s.GetTask(h.ctx, id)
	if err != nil {
		h.Fatalf("GetTask(%s): %v", id, err)
	}
	return t
}

func (h *harness) job(id string) store.Job {
	h.Helper()
	j, err := h.s.GetJob(h.ctx, id)
	if err != nil {
		h.Fatalf("GetJob(%s): %v", id, err)
	}
	return j
}

func (h *harness) agent(id string) store.Agent {
	h.Helper()
	a, err := h.s.GetAgent(h.ctx, id)
	if err != nil {
		h.Fatalf("GetAgent(%s): %v", id, err)
	}
	return a
}

func (h *harness) wantState(id string, want store.TaskState) store.Task {
	h.Helper()
	t := h.task(id)
	if t.State != want {
		h.Fatalf("task %s is %s, want %s (history %s)", id, t.State, want, showHistory(t.History))
	}
	return t
}

func (h *harness) reap() {
	h.Helper()
	if err := h.s.Reap(h.ctx); err != nil {
		h.Fatalf("Reap: %v", err)
	}
}

// step is an expected entry of a task's history.
type step struct {
	state   store.TaskState
	reason  string
	attempt int32
	at      time.Time
}

func showHistory(hist []store.StateChange) string {
	s := "["
	for i, c := range hist {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("{%s %q attempt %d at %s}", c.State, c.Reason, c.Attempt, c.At.UTC().Format("15:04:05.000"))
	}
	return s + "]"
}

// wantHistory checks a task's whole history, exactly: state, reason, attempt and
// time of every change, in order. It returns the task.
func (h *harness) wantHistory(id string, want ...step) store.Task {
	h.Helper()
	t := h.task(id)
	ok := len(t.History) == len(want)
	for i := 0; ok && i < len(want); i++ {
		c, w := t.History[i], want[i]
		ok = c.State == w.state && c.Reason == w.reason && c.Attempt == w.attempt && c.At.Equal(w.at)
	}
	if !ok {
		got := make([]store.StateChange, len(want))
		for i, w := range want {
			got[i] = store.StateChange{State: w.state, Reason: w.reason, Attempt: w.attempt, At: w.at}
		}
		h.Fatalf("task %s history\n got %s\nwant %s", id, showHistory(t.History), showHistory(got))
	}
	if last := want[len(want)-1]; t.State != last.state || t.UpdatedAt.Before(last.at) {
		h.Fatalf("task %s is %s updated %v; its history ends %s at %v", id, t.State, t.UpdatedAt, last.state, last.at)
	}
	return t
}

// wantEnded checks a task ended in state st with reason as the last step of its
// history and as its Error (which a task ended other than by its report carries).
func (h *harness) wantEnded(id string, st store.TaskState, reason string) store.Task {
	h.Helper()
	t := h.wantState(id, st)
	if last := t.History[len(t.History)-1]; last.Reason != reason {
		h.Fatalf("task %s ended %s with reason %q, want %q", id, st, last.Reason, reason)
	}
	if t.Error != reason {
		h.Fatalf("task %s ended %s with error %q, want %q", id, st, t.Error, reason)
	}
	if !t.LeaseExpiresAt.IsZero() {
		h.Fatalf("ended task %s keeps a lease until %v", id, t.LeaseExpiresAt)
	}
	return t
}

// wantCounts checks a job's counts exactly.
func (h *harness) wantCounts(jobID string, want store.Counts) store.Job {
	h.Helper()
	j := h.job(jobID)
	if j.Counts != want {
		h.Fatalf("job %s counts %+v, want %+v", jobID, j.Counts, want)
	}
	return j
}

// wantErr checks an error's kind and message exactly against the error the store
// rules make.
func wantErr(t testing.TB, err, want error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %q (kind %d)", what, want, store.KindOf(want))
	}
	if store.KindOf(err) != store.KindOf(want) || err.Error() != want.Error() {
		t.Fatalf("%s: error %q (kind %d), want %q (kind %d)", what, err, store.KindOf(err), want, store.KindOf(want))
	}
}

// errStaleEnded is the error of a report of attempt att of task id, which ended in
// state st at attempt cur.
func errStaleEnded(att int32, id string, st store.TaskState, cur int32) error {
	return store.Errorf(store.KindPrecondition, store.FmtStaleEnded, att, store.Quote(id), st, cur)
}

// errStale is the error of a report of attempt att of task id, which is at
// attempt cur in state st.
func errStale(att int32, id string, cur int32, st store.TaskState) error {
	return store.Errorf(store.KindPrecondition, store.FmtStale, att, store.Quote(id), cur, st)
}

// cause is a cancel reason and what then ended the attempt, as the stores join them.
func cause(cancelReason, what string) string { return fmt.Sprintf(store.FmtCause, cancelReason, what) }

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

// pagedIDs walks every page of a list, two at a time, and returns the ids in order.
func pagedIDs[T any](h *harness, list func(store.Page) ([]T, string, error), id func(T) string) []string {
	h.Helper()
	var got []string
	tok := ""
	for {
		page, next, err := list(store.Page{Size: 2, Token: tok})
		if err != nil {
			h.Fatal(err)
		}
		if len(page) > 2 {
			h.Fatalf("a page of size 2 held %d items", len(page))
		}
		for _, x := range page {
			got = append(got, id(x))
		}
		if next == "" {
			return got
		}
		tok = next
	}
}

func ids[T any](xs []T, id func(T) string) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = id(x)
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
