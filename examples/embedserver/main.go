package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/client"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
	"github.com/orange-forge/forge/store/redisstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)) // the service's own logger
	metrics := prometheus.NewRegistry()                  // and its own metrics

	// forge keeps its state in memory, or in the Redis the service already uses.
	var st store.Store = memstore.New(store.Config{})
	if url := os.Getenv("REDIS_URL"); url != "" {
		opt, err := rueidis.ParseURL(url)
		if err != nil {
			panic(err)
		}
		opt.DisableCache = true
		rdb, err := rueidis.NewClient(opt)
		if err != nil {
			panic(err)
		}
		defer rdb.Close()
		if st, err = redisstore.OpenClient(ctx, rdb, store.Config{}, redisstore.Options{Logger: log}); err != nil {
			panic(err)
		}
	}
	defer st.Close()

	enroll := os.Getenv("FORGE_ENROLL_TOKEN") // what agents register with
	if enroll == "" {
		enroll = server.NewEnrollToken()
		fmt.Println("enrollment token (generated, shown once):", enroll)
	}
	admin := server.NewOperatorToken() // the service's own: only it dispatches
	forge, err := server.New(server.Config{Store: st, EnrollTokens: []string{enroll}, AdminTokens: []string{admin},
		Logger: log, Metrics: metrics})
	if err != nil {
		panic(err)
	}

	ln, err := net.Listen("tcp", cmp.Or(os.Getenv("LISTEN"), "127.0.0.1:8080"))
	if err != nil {
		panic(err)
	}
	base := "http://" + ln.Addr().String()
	fleet, err := client.New(base+"/forge", admin) // agents use the same URL
	if err != nil {
		panic(err)
	}

	mux := http.NewServeMux()
	mux.Handle("/forge/", http.StripPrefix("/forge", forge))
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "billing service")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := forge.Ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	// The service's own route sends work to its agents and answers with theirs.
	// If the caller goes away, Run cancels the job.
	mux.HandleFunc("POST /greet", func(w http.ResponseWriter, r *http.Request) {
		job := client.NewDispatch("greet", []byte(r.FormValue("name")), client.Selector("app=billing"))
		res, err := fleet.Run(r.Context(), job)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		for _, t := range res.Tasks {
			fmt.Fprintf(w, "%s: %s %s\n", res.AgentName(t), t.State, t.Output)
		}
	})

	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	hs.RegisterOnShutdown(func() { forge.Close() }) // answers held polls at once
	go func() {
		if err := hs.Serve(ln); err != http.ErrServerClosed {
			log.Error("serving", "err", err)
			stop()
		}
	}()
	fmt.Println("listening on", base)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	hs.Shutdown(sctx)
}
