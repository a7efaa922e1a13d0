package server_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/buildinfo"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// movingClock is a store clock that starts an hour before the test and moves
// only when told, so the oldest pending task is an hour old and leases run out
// when the test says.
type movingClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *movingClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *movingClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestMetricsOperators checks the metrics operators ask for, with exact values,
// on memory, one Redis and a Redis Cluster: agents by status and tasks by state
// (the same on every replica, cached for StatsMaxAge), the oldest pending task's
// age, pickup and dispatch-to-result histograms, expired leases and
// redeliveries (a hand-back is neither), store call times and errors, and the build.
func TestMetricsOperators(t *testing.T) {
	t.Parallel()
	for _, b := range []forgetest.Backend{forgetest.Memory, forgetest.Redis, forgetest.Cluster} {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			testMetricsOperators(t, b)
		})
	}
}

func testMetricsOperators(t *testing.T, b forgetest.Backend) {
	ctx := t.Context()
	began := time.Now()
	clock := &movingClock{t: began.Add(-time.Hour)}
	e := forgetest.Start(t, forgetest.Options{Backend: b, Store: store.Config{Clock: clock},
		Server: server.Config{StatsMaxAge: time.Nanosecond, DisableReaper: true}})
	cached := e.Replica(server.Config{StatsMaxAge: time.Hour, DisableReaper: true})
	want := func(s *forgetest.Server, sample string, v float64) {
		t.Helper()
		if got := s.Metric(sample); got != v {
			t.Errorf("%s = %v, want %v", sample, got, v)
		}
	}
	agents := func(s *forgetest.Server, on, off, rev float64) {
		t.Helper()
		want(s, `forge_agents{status="online"}`, on)
		want(s, `forge_agents{status="offline"}`, off)
		want(s, `forge_agents{status="revoked"}`, rev)
	}
	tasks := func(s *forgetest.Server, counts map[string]float64) {
		t.Helper()
		for _, st := range store.TaskStates() {
			want(s, fmt.Sprintf(`forge_tasks{state=%q}`, st), counts[st.String()])
		}
	}

	info := buildinfo.Get()
	want(e, fmt.Sprintf(`forge_build_info{goversion=%q,revision=%q,version=%q}`, info.GoVersion, info.Revision, info.Version), 1)
	agents(e, 0, 0, 0)
	tasks(e, nil)
	want(e, "forge_oldest_pending_task_age_seconds", 0)

	idA, tokA := e.Register("a", nil)
	e.Register("b", nil)
	idC, _ := e.Register("c", nil)
	if _, err := e.Control.RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: idC})); err != nil {
		t.Fatal(err)
	}
	first, second := e.DispatchTo(idA), e.DispatchTo(idA)
	agents(e, 2, 0, 1)
	tasks(e, map[string]float64{"PENDING": 2})
	tasks(cached, map[string]float64{"PENDING": 2})
	// Dispatched by the store's clock an hour ago; read a moment later: an
	// hour plus at most the real time the test has taken since (which a
	// loaded machine can stretch), never less than the hour.
	if age, most := e.Metric("forge_oldest_pending_task_age_seconds"), 3600+time.Since(began).Seconds()+1; age < 3600 || age > most {
		t.Errorf("forge_oldest_pending_task_age_seconds = %v, want an hour (at most %.0f s)", age, most)
	}

	ag := e.Agent(tokA)
	poll := func() *forgev1.Task {
		t.Helper()
		res, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
		if err != nil || len(res.Msg.Tasks) != 1 {
			t.Fatalf("Poll: %v, %v; want one task", res, err)
		}
		return res.Msg.Tasks[0]
	}
	report := func(task *forgev1.Task) error {
		_, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: task.Attempt,
			Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}))
		return err
	}
	if task := poll(); task.Id != first {
		t.Fatalf("leased %s, want %s", task.Id, first)
	} else if err := report(task); err != nil {
		t.Fatal(err)
	}
	want(e, "forge_task_pickup_seconds_count", 1)
	want(e, `forge_task_dispatch_to_result_seconds_count{state="SUCCEEDED"}`, 1)
	tasks(e, map[string]float64{"PENDING": 1, "SUCCEEDED": 1})
	tasks(cached, map[string]float64{"PENDING": 2}) // kept for an hour

	// The second task's lease runs out; it is leased again as attempt 2.
	lost := poll()
	clock.Advance(31 * time.Second)
	if err := e.Store.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	want(e, "forge_leases_expired_total", 1)
	tasks(e, map[string]float64{"PENDING": 1, "SUCCEEDED": 1})
	again := poll()
	if again.Id != second || again.Attempt != 2 {
		t.Fatalf("leased %s attempt %d, want %s attempt 2", again.Id, again.Attempt, second)
	}
	want(e, "forge_task_redeliveries_total", 1)
	want(e, "forge_task_pickup_seconds_count", 2)
	// Handed back unstarted and leased again: neither a pickup nor a redelivery.
	if _, err := ag.ReturnTasks(ctx, connect.NewRequest(&forgev1.ReturnTasksRequest{
		Tasks: []*forgev1.TaskRef{{TaskId: again.Id, Attempt: again.Attempt}}})); err != nil {
		t.Fatal(err)
	}
	if back := poll(); back.Id != second || back.Attempt != 2 {
		t.Fatalf("leased %s attempt %d after the hand-back, want %s attempt 2", back.Id, back.Attempt, second)
	}
	want(e, "forge_task_redeliveries_total", 1)
	want(e, "forge_task_pickup_seconds_count", 2)
	if err := report(lost); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Fatalf("report of the stale attempt: %v, want failed_precondition", err)
	}
	want(e, `forge_store_errors_total{kind="precondition",op="Report"}`, 1)
	if n := e.Metric(`forge_store_call_duration_seconds_count{op="Lease"}`); n != 4 {
		t.Errorf("Lease store calls = %v, want 4", n)
	}
	if n := e.Metric(`forge_store_call_duration_seconds_count{op="Report"}`); n != 2 {
		t.Errorf("Report store calls = %v, want 2", n)
	}

	// Past the online window (50 s) b is offline; a polled 20 s ago.
	clock.Advance(20 * time.Second)
	agents(e, 1, 1, 1)
	tasks(e, map[string]float64{"RUNNING": 1, "SUCCEEDED": 1})
	want(e, "forge_oldest_pending_task_age_seconds", 0)
}

// TestMetricsStoreDown: while the store cannot be reached, /metrics still
// answers, with the cluster-wide values last read, and the failed reads are
// counted and logged; once it is back, the values are read again.
func TestMetricsStoreDown(t *testing.T) {
	t.Parallel()
	e := forgetest.Start(t, forgetest.Options{Backend: forgetest.Redis, OwnRedis: true,
		Server: server.Config{StatsMaxAge: time.Nanosecond, DisableReaper: true}})
	id, _ := e.Register("a", nil)
	e.DispatchTo(id)
	if n := e.Metric(`forge_tasks{state="PENDING"}`); n != 1 {
		t.Fatalf(`forge_tasks{state="PENDING"} = %v, want 1`, n)
	}
	nodes, _ := e.Redis()
	nodes[0].Kill()
	if n := e.Metric(`forge_tasks{state="PENDING"}`); n != 1 {
		t.Errorf(`with the store down, forge_tasks{state="PENDING"} = %v, want the last value, 1`, n)
	}
	if n := e.Metric(`forge_store_errors_total{kind="unavailable",op="Stats"}`); n < 1 {
		t.Errorf(`forge_store_errors_total{kind="unavailable",op="Stats"} = %v, want at least 1`, n)
	}
	if !strings.Contains(e.Log.String(), "metrics: reading the store's counts failed") {
		t.Errorf("the failed read was not logged")
	}
}
