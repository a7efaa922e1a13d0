package server

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/orange-forge/forge/internal/buildinfo"
	"github.com/orange-forge/forge/store"
)

// metrics are the server's Prometheus metrics, in a registry of its own so several
// servers can live in one process (tests, embedding), or in the application's
// (Config.Metrics).
//
// Two kinds: what this replica did (RPCs, held polls, pickups, results, store
// calls), which sum across replicas; and what the whole cluster holds (agents by
// status, tasks by state, the oldest pending task, expired leases), read from
// the store's own counters (store.Stats) at most every Config.StatsMaxAge, so
// every replica reports the same values and dashboards take max(), not sum().
type metrics struct {
	gather       prometheus.Gatherer // what /metrics serves; nil: nothing
	reg          prometheus.Registerer
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	heldPolls    prometheus.Gauge
	dispatched   prometheus.Counter
	results      *prometheus.CounterVec
	agentRefused *prometheus.CounterVec
	reenrolled   prometheus.Counter
	pickup       prometheus.Histogram
	toResult     *prometheus.HistogramVec
	redelivered  prometheus.Counter
	storeCalls   *prometheus.HistogramVec
	storeErrors  *prometheus.CounterVec
	stats        *statsCollector
	exported     prometheus.Counter
}

// latencyBuckets span a task's waits: a pickup by a polling agent takes
// milliseconds, one by an agent that was busy or away takes minutes.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

// newMetrics registers the server's collectors with reg, or with a registry of
// its own (with the Go and process collectors) when reg is nil.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_rpc_requests_total", Help: "RPCs served, by procedure and Connect code.",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "forge_rpc_duration_seconds", Help: "RPC handling time (long-polls include their hold).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5, 30},
		}, []string{"procedure"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_auth_failures_total", Help: "Requests refused by the token gate, by code.",
		}, []string{"code"}),
		heldPolls: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "forge_polls_held", Help: "Polls held by this replica now.",
		}),
		dispatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forge_tasks_dispatched_total", Help: "Tasks created by Dispatch on this replica.",
		}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_task_results_total", Help: "Results reported through this replica, by final state.",
		}, []string{"state"}),
		agentRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_agent_tokens_refused_total",
			Help: "Agent tokens refused, by reason: unknown (never registered, or the store lost its state) or revoked.",
		}, []string{"reason"}),
		reenrolled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forge_agents_reenrolled_total",
			Help: "Registrations of agents enrolling again because the server no longer knew them (state lost).",
		}),
		pickup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "forge_task_pickup_seconds",
			Help:    "From a task's Dispatch to its first lease by its agent, for tasks leased through this replica (a rollout's held tasks include their wait).",
			Buckets: latencyBuckets,
		}),
		toResult: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "forge_task_dispatch_to_result_seconds",
			Help:    "From a task's Dispatch to the result that ended it, for results reported through this replica, by final state.",
			Buckets: latencyBuckets,
		}, []string{"state"}),
		redelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forge_task_redeliveries_total",
			Help: "Tasks leased through this replica again, as a later attempt, after an earlier attempt's lease ran out.",
		}),
		storeCalls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "forge_store_call_duration_seconds",
			Help:    "Time of this replica's store calls, by operation (Lease, Report, Dispatch ...).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1, 5},
		}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forge_store_errors_total",
			Help: "Store calls of this replica that failed, by operation and kind: unavailable and internal are the store failing; the others are answers (not_found, precondition, exhausted ...).",
		}, []string{"op", "kind"}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "forge_tasks_exported_total", Help: "Finished tasks this replica wrote to the export sink (--export).",
		}),
	}
	info := buildinfo.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "forge_build_info", Help: "Always 1; its labels say which forge this replica runs.",
		ConstLabels: prometheus.Labels{"version": info.Version, "revision": info.Revision, "goversion": info.GoVersion},
	})
	build.Set(1)
	cs := []prometheus.Collector{m.requests, m.duration, m.authFailures, m.heldPolls, m.dispatched, m.results,
		m.agentRefused, m.reenrolled, m.pickup, m.toResult, m.redelivered, m.storeCalls, m.storeErrors, m.exported, build}
	if reg == nil {
		own := prometheus.NewRegistry()
		reg = own
		m.gather = own
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		m.gather = g
	}
	m.reg = reg
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("server: registering metrics: %w (one registry can hold one server's metrics)", err)
		}
	}
	return m, nil
}

// watchStore adds the cluster-wide gauges, read from st.
func (m *metrics) watchStore(life context.Context, st store.Store, maxAge time.Duration, log func(error)) error {
	m.stats = newStatsCollector(life, st, maxAge, log)
	if err := m.reg.Register(m.stats); err != nil {
		return fmt.Errorf("server: registering metrics: %w (one registry can hold one server's metrics)", err)
	}
	return nil
}

// handler serves the gathered metrics, or 404 when the server registers into
// an application's Registerer that it cannot gather.
func (m *metrics) handler() http.Handler {
	if m.gather == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.gather, promhttp.HandlerOpts{})
}

// called counts one RPC and its time.
func (m *metrics) called(procedure string, err error, start time.Time) {
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
	}
	m.requests.WithLabelValues(procedure, code).Inc()
	m.duration.WithLabelValues(procedure).Observe(time.Since(start).Seconds())
}

// leased observes the tasks a Poll leased: the pickup time of a task's first
// lease, and redeliveries (a lease after an earlier attempt's ran out). A task
// its agent handed back unstarted and leased again counts as neither: its
// history says so.
func (m *metrics) leased(tasks []store.Task) {
	now := time.Now()
	for _, t := range tasks {
		first, redelivered := leaseKind(t)
		if redelivered {
			m.redelivered.Inc()
		}
		if !first {
			continue
		}
		if at, ok := store.TaskIDTime(t.ID); ok {
			m.pickup.Observe(max(now.Sub(at), 0).Seconds())
		}
	}
}

// leaseKind tells whether a task just leased is on its first lease, or leased
// again after a lease ran out, from its history (the newest entry is this
// lease); without one, from its attempt number.
func leaseKind(t store.Task) (first, redelivered bool) {
	h := t.History
	if len(h) < 2 {
		return t.Attempt <= 1, t.Attempt > 1
	}
	runs := 0
	for _, c := range h {
		if c.State == store.StateRunning {
			runs++
		}
	}
	return runs <= 1, h[len(h)-2].Reason == fmt.Sprintf(store.FmtRequeued, t.Attempt-1)
}

// reported observes a result that ended a task.
func (m *metrics) reported(taskID string, st store.TaskState) {
	if at, ok := store.TaskIDTime(taskID); ok && st.Terminal() {
		m.toResult.WithLabelValues(st.String()).Observe(max(time.Since(at), 0).Seconds())
	}
}
