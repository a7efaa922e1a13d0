package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/metrics"
	"time"
)

// debugHandler serves what an operator needs to see why a replica uses the
// memory and CPU it does: net/http/pprof's profiles (heap, goroutine, CPU
// over ?seconds=N, ...) under /debug/pprof/, and every runtime/metrics sample
// as text under /debug/runtime-metrics (memory classes, the GC's goals, the
// goroutine count, the starting stack size). It is served only on
// --debug-listen, a loopback address apart from the API's, never beside the
// API: profiles tell more about a process than callers may know.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /debug/runtime-metrics", runtimeMetrics)
	return mux
}

// runtimeMetrics writes every runtime/metrics sample, one "name value" line
// each (histograms as their count and mean), then a GC'd line when ?gc=1
// asked for a collection first, so the memory classes show live memory only.
func runtimeMetrics(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
	}
	descs := metrics.All()
	samples := make([]metrics.Sample, len(descs))
	for i, d := range descs {
		samples[i].Name = d.Name
	}
	metrics.Read(samples)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, s := range samples {
		switch s.Value.Kind() {
		case metrics.KindUint64:
			fmt.Fprintf(w, "%s %d\n", s.Name, s.Value.Uint64())
		case metrics.KindFloat64:
			fmt.Fprintf(w, "%s %g\n", s.Name, s.Value.Float64())
		case metrics.KindFloat64Histogram:
			h := s.Value.Float64Histogram()
			var n uint64
			var sum float64
			for i, c := range h.Counts {
				n += c
				lo, hi := h.Buckets[i], h.Buckets[i+1]
				if lo < -1e300 || hi > 1e300 { // open-ended buckets: count them at their finite edge
					if lo < -1e300 {
						lo = hi
					} else {
						hi = lo
					}
				}
				sum += float64(c) * (lo + hi) / 2
			}
			mean := 0.0
			if n > 0 {
				mean = sum / float64(n)
			}
			fmt.Fprintf(w, "%s count=%d mean=%g\n", s.Name, n, mean)
		}
	}
}

// serveDebug listens on addr (a loopback address, checked by ParseServer) and
// serves debugHandler there until the returned server is closed.
func serveDebug(addr string, log *slog.Logger) (*http.Server, net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--debug-listen: %w", err)
	}
	hs := &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go hs.Serve(ln)
	return hs, ln, nil
}
