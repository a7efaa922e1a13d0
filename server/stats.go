package server

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/orange-forge/forge/store"
)

// statsCollector serves the cluster-wide gauges from store.Stats, read when
// /metrics is scraped and kept for maxAge: scrapes by several Prometheus
// servers, or of several replicas, cost the store one read per replica per
// maxAge at most, and nothing when nobody scrapes. When a read fails the last
// values are served (the failure is logged and counted in
// forge_store_errors_total{op="Stats"}); before any read succeeds, none are.
type statsCollector struct {
	life   context.Context // the server's lifetime: reads end with it
	st     store.Store
	maxAge time.Duration
	log    func(error)

	mu   sync.Mutex
	last store.Stats
	at   time.Time // when last was read; zero: never
	ok   bool

	agents, tasks, oldest, expired *prometheus.Desc
}

func newStatsCollector(life context.Context, st store.Store, maxAge time.Duration, log func(error)) *statsCollector {
	return &statsCollector{
		life: life, st: st, maxAge: maxAge, log: log,
		agents: prometheus.NewDesc("forge_agents",
			"Agents by status (online, offline, revoked), across the cluster (the same on every replica).", []string{"status"}, nil),
		tasks: prometheus.NewDesc("forge_tasks",
			"Retained tasks by state, across the cluster (the same on every replica).", []string{"state"}, nil),
		oldest: prometheus.NewDesc("forge_oldest_pending_task_age_seconds",
			"Age of the oldest PENDING task (since its Dispatch; a rollout's held tasks count), 0 when none; across the cluster.", nil, nil),
		expired: prometheus.NewDesc("forge_leases_expired_total",
			"Leases that ran out before their agent reported, across the cluster (kept by the store; the same on every replica).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.agents
	ch <- c.tasks
	ch <- c.oldest
	ch <- c.expired
}

// Collect implements prometheus.Collector.
func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	st, ok := c.read()
	if !ok {
		return
	}
	for _, s := range []store.AgentStatus{store.AgentOnline, store.AgentOffline, store.AgentRevoked} {
		ch <- prometheus.MustNewConstMetric(c.agents, prometheus.GaugeValue, float64(st.Agents[s]), statusName(s))
	}
	for _, s := range store.TaskStates() {
		ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(st.Tasks[s]), s.String())
	}
	age := 0.0
	if !st.OldestPending.IsZero() {
		age = max(time.Since(st.OldestPending).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.expired, prometheus.CounterValue, float64(st.LeasesExpired))
}

// read returns the stats, read again when older than maxAge.
func (c *statsCollector) read() (store.Stats, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ok && time.Since(c.at) < c.maxAge {
		return c.last, true
	}
	// A scrape has no context of its own; Prometheus's own timeout is 10 s.
	ctx, cancel := context.WithTimeout(c.life, 5*time.Second)
	defer cancel()
	st, err := c.st.Stats(ctx)
	if err != nil {
		c.log(err)
		return c.last, c.ok
	}
	c.last, c.at, c.ok = st, time.Now(), true
	return st, true
}

// statusName is an agent status as the forge_agents label shows it.
func statusName(s store.AgentStatus) string {
	switch s {
	case store.AgentOnline:
		return "online"
	case store.AgentOffline:
		return "offline"
	case store.AgentRevoked:
		return "revoked"
	}
	return "unspecified"
}
