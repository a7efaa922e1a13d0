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
)

// metrics are the server's Prometheus metrics, in a registry of its own so several
// servers can live in one process (tests, embedding), or in the application's
// (Config.Metrics).
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
}

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
	}
	cs := []prometheus.Collector{m.requests, m.duration, m.authFailures, m.heldPolls, m.dispatched, m.results, m.agentRefused, m.reenrolled}
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

// handler serves the gathered metrics, or 404 when the server registers into
// an application's Registerer that it cannot gather.
func (m *metrics) handler() http.Handler {
	if m.gather == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.gather, promhttp.HandlerOpts{})
}

func (m *metrics) interceptor() connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			start := time.Now()
			res, err := next(ctx, req)
			proc := req.Spec().Procedure
			code := "ok"
			if err != nil {
				code = connect.CodeOf(err).String()
			}
			m.requests.WithLabelValues(proc, code).Inc()
			m.duration.WithLabelValues(proc).Observe(time.Since(start).Seconds())
			return res, err
		}
	}
}
