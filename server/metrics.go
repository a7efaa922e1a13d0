package server

import (
	"context"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the server's Prometheus metrics, in a registry of its own so several
// servers can live in one process (tests, embedding).
type metrics struct {
	reg          *prometheus.Registry
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures *prometheus.CounterVec
	heldPolls    prometheus.Gauge
	dispatched   prometheus.Counter
	results      *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
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
	}
	m.reg.MustRegister(m.requests, m.duration, m.authFailures, m.heldPolls, m.dispatched, m.results,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
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
