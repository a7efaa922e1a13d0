// Package server serves forge's API: the Connect handlers of AgentService,
// ControlService and PingService, the bearer-token gate in front of them, the
// long-poll holds, and /healthz, /readyz and /metrics.
//
// A Server is an http.Handler, so an application mounts it in the router it
// already has, at the root or under a prefix with http.StripPrefix (agents and
// clients then use the prefix in their base URL, http://host/forge), on its
// own http.Server. The application chooses the store (memstore.New, or
// redisstore.Open / redisstore.OpenClient with a rueidis client it already
// has), the logger (Config.Logger) and the Prometheus registry
// (Config.Metrics). Held calls extend their own connection's deadlines, so the
// application's ReadTimeout and WriteTimeout may be shorter than a hold. To
// shut down, call Close before or as http.Server.Shutdown starts
// (RegisterOnShutdown): it answers held Polls and waits at once, so Shutdown
// does not wait out a 25 s hold. Ready reports what /readyz does;
// NewOperatorToken and NewEnrollToken make tokens as `forge server` does when
// given none. The README's examples/embedserver shows all of it.
package server

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/gzipcap"
	"github.com/orange-forge/forge/internal/outputcap"
	"github.com/orange-forge/forge/store"
)

// Config configures a Server. Zero values get the defaults noted.
type Config struct {
	// Store holds the state; required. The Server does not close it.
	Store store.Store
	// EnrollTokens let agents register (stored as hashes; at least 16 characters).
	EnrollTokens []string
	// AdminTokens guard ControlService (stored as hashes; at least 16 characters).
	AdminTokens []string
	// Logger receives the server's log and audit lines; nil discards them.
	Logger *slog.Logger
	// Metrics is where the server registers its Prometheus collectors (forge_*).
	// Nil: a registry of its own, with the Go and process collectors too. Given
	// (an application's registry), only forge's own; its /metrics then serves
	// it when it is also a prometheus.Gatherer (a *prometheus.Registry is),
	// else answers 404 and the application serves its registry itself. New
	// fails if a collector is already registered there (another Server's).
	Metrics prometheus.Registerer
	// StatsMaxAge is how long the cluster-wide gauges of /metrics (forge_agents,
	// forge_tasks, forge_oldest_pending_task_age_seconds,
	// forge_leases_expired_total) are kept before a scrape reads them from the
	// store again; 5 s.
	StatsMaxAge time.Duration

	// Lease is how long a leased task stays with its agent without a heartbeat; 30 s.
	Lease time.Duration
	// PollHold is the default and the longest hold of a Poll; 25 s. An agent
	// counts as online for the store's OnlineWindow after its last call: give
	// the store two poll holds (store.Config.OnlineWindow, 50 s by default) when
	// changing it, as `forge server` does.
	PollHold time.Duration
	// MaxWait caps the hold of WaitTask, WaitJob and Dispatch with wait; 5 min.
	MaxWait time.Duration
	// MaxAttempts is the default for a dispatch that gives none; 3.
	MaxAttempts int32
	// TaskTimeout is the default execution timeout; 10 min.
	TaskTimeout time.Duration
	// DeliveryTTL is the default delivery TTL; 1 h.
	DeliveryTTL time.Duration
	// ReapInterval is how often this replica runs the store's time-driven work; 1 s.
	ReapInterval time.Duration
	// Limits bound what callers may send; zero fields get DefaultLimits().
	Limits Limits
	// AgentCacheTTL is how long a verified agent token skips the store in the
	// gate in front of the decoder (the store re-checks it on every call); 5 min.
	AgentCacheTTL time.Duration
	// DisableReaper turns off the reaper goroutine (tests drive Reap themselves).
	DisableReaper bool
	// RateLimit, when positive, allows each token (each agent, each operator or
	// enrollment token) this many calls per second on average, with bursts of
	// RateBurst (default: one second's worth); beyond it calls get resource_exhausted.
	RateLimit float64
	// RateBurst is the bucket size of RateLimit.
	RateBurst int
	// RegisterRate is how many Registers each enrollment token may make per
	// second on average, with bursts of ten seconds' worth; beyond it Register
	// gets resource_exhausted. Zero means 20; negative means no limit.
	RegisterRate float64
	// RegisterRatePerAddr is the same limit per source address; zero means 5,
	// negative no limit.
	RegisterRatePerAddr float64
	// Clock tells the rate limits (RateLimit, RegisterRate,
	// RegisterRatePerAddr) the time; nil means the system clock. A test that
	// stops it sees exactly the bursts pass, however long its calls take.
	Clock store.Clock
	// SigningKeys, when given, make the server sign every task it leases with
	// the first key; Register hands all their public keys to agents, which then
	// refuse unsigned or altered tasks. Give old keys after the new one to rotate.
	SigningKeys []ed25519.PrivateKey
	// Export, when given, receives every finished task (NewSink): the store
	// must be a store.Exporter, and one replica of those given a sink exports
	// at a time, from the position kept in the store.
	Export Sink
	// ExportBatch is the most tasks an export batch reads (of each shard on
	// Redis); 100.
	ExportBatch int
	// ExportInterval is how often a replica looks for finished tasks to export
	// (at once again after a batch that had some); 1 s.
	ExportInterval time.Duration
}

// Limits bound what callers may send. Exceeding one gives resource_exhausted or
// invalid_argument naming the limit.
type Limits struct {
	MaxBodyBytes  int // request body; 4 MiB
	MaxPayload    int // Dispatch payload; 1 MiB
	MaxOutput     int // output kept per attempt, stdout and stderr together; 1 MiB
	MaxChunk      int // AppendOutput data per call; 1 MiB
	MaxLabels     int // labels per agent; 64
	MaxLabelKey   int // 63
	MaxLabelValue int // 255
	MaxName       int // names, hostnames, versions, types; 255
	MaxTasks      int // per Poll; 64
}

// DefaultLimits returns the limits of the design, which a zero Limits field gets.
func DefaultLimits() Limits {
	return Limits{
		MaxBodyBytes: 4 << 20, MaxPayload: 1 << 20, MaxOutput: outputcap.Default, MaxChunk: 1 << 20,
		MaxLabels: 64, MaxLabelKey: 63, MaxLabelValue: 255, MaxName: 255, MaxTasks: 64,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	set := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&l.MaxBodyBytes, d.MaxBodyBytes)
	set(&l.MaxPayload, d.MaxPayload)
	set(&l.MaxOutput, d.MaxOutput)
	set(&l.MaxChunk, d.MaxChunk)
	set(&l.MaxLabels, d.MaxLabels)
	set(&l.MaxLabelKey, d.MaxLabelKey)
	set(&l.MaxLabelValue, d.MaxLabelValue)
	set(&l.MaxName, d.MaxName)
	set(&l.MaxTasks, d.MaxTasks)
	return l
}

func (c Config) withDefaults() Config {
	dur := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	dur(&c.Lease, 30*time.Second)
	dur(&c.PollHold, store.DefaultPollHold)
	dur(&c.MaxWait, 5*time.Minute)
	dur(&c.TaskTimeout, 10*time.Minute)
	dur(&c.DeliveryTTL, time.Hour)
	dur(&c.ReapInterval, time.Second)
	dur(&c.StatsMaxAge, 5*time.Second)
	dur(&c.ExportInterval, time.Second)
	if c.ExportBatch <= 0 {
		c.ExportBatch = 100
	}
	// Longer than a poll hold, so an idle agent's renewed Poll costs no store call
	// beyond its Lease; safe because every store operation re-checks the token.
	dur(&c.AgentCacheTTL, 5*time.Minute)
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.RegisterRate == 0 {
		c.RegisterRate = DefaultRegisterRate
	}
	if c.RegisterRatePerAddr == 0 {
		c.RegisterRatePerAddr = DefaultRegisterRatePerAddr
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = store.SystemClock{}
	}
	c.Limits = c.Limits.withDefaults()
	return c
}

// Server is forge's API server. Create it with New; it is an http.Handler.
type Server struct {
	cfg       Config
	store     timedStore // concrete, so its timing wrappers can be inlined into their callers
	log       *slog.Logger
	mux       *http.ServeMux
	handler   http.Handler
	operators staticTokens
	enrollers staticTokens
	agents    *agentCache
	unknown   refusalLog
	limiter   *rateLimiter
	regToken  *rateLimiter // Registers per enrollment token
	regAddr   *rateLimiter // Registers per source address
	metrics   *metrics
	errw      *connect.ErrorWriter

	held atomic.Int64

	closing   chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New returns a Server over cfg.Store. It starts the reaper, which runs until Close.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("server: Config.Store is required")
	}
	for _, t := range append(append([]string(nil), cfg.EnrollTokens...), cfg.AdminTokens...) {
		if len(t) < MinTokenLen {
			return nil, errors.New("server: tokens must be at least 16 characters")
		}
	}
	cfg = cfg.withDefaults()
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		store:     timedStore{Store: cfg.Store, m: m},
		log:       cfg.Logger,
		mux:       http.NewServeMux(),
		operators: hashTokens(cfg.AdminTokens),
		enrollers: hashTokens(cfg.EnrollTokens),
		limiter:   newRateLimiter(cfg.RateLimit, cfg.RateBurst),
		regToken:  newRateLimiter(cfg.RegisterRate, int(10*cfg.RegisterRate)),
		regAddr:   newRateLimiter(cfg.RegisterRatePerAddr, int(10*cfg.RegisterRatePerAddr)),
		agents:    &agentCache{ttl: cfg.AgentCacheTTL, m: make(map[string]cacheEntry)},
		metrics:   m,
		errw:      connect.NewErrorWriter(),
		closing:   make(chan struct{}),
	}
	err = m.watchStore(lifetime{s.closing}, s.store, cfg.StatsMaxAge, func(err error) {
		s.log.Warn("metrics: reading the store's counts failed; serving the last ones", causeArgs(err)...)
	})
	if err != nil {
		return nil, err
	}
	opts := []connect.HandlerOption{
		connect.WithReadMaxBytes(cfg.Limits.MaxBodyBytes),
		gzipcap.Handler(cfg.Limits.MaxBodyBytes),
		// Resetting a gzip writer costs more than sending a small message as is.
		connect.WithCompressMinBytes(4096),
		connect.WithInterceptors(s.interceptor()),
	}
	s.mux.Handle(forgev1connect.NewAgentServiceHandler(&agentService{s}, opts...))
	s.mux.Handle(forgev1connect.NewControlServiceHandler(&controlService{s}, opts...))
	s.mux.Handle(forgev1connect.NewPingServiceHandler(pingService{}, connect.WithCompressMinBytes(4096), connect.WithReadMaxBytes(1024), gzipcap.Handler(1024)))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", s.metrics.handler())
	s.mountIntrospection()
	s.mountPage()
	s.handler = s.authenticate(describeRefusals(s.mux))

	if !cfg.DisableReaper {
		s.wg.Add(1)
		go s.reap(lifetime{s.closing})
	}
	if cfg.Export != nil {
		x, ok := cfg.Store.(store.Exporter)
		if !ok {
			return nil, fmt.Errorf("server: Config.Export needs a store that keeps history for export (%T does not)", cfg.Store)
		}
		s.wg.Add(1)
		go s.export(lifetime{s.closing}, x)
	}
	return s, nil
}

// interceptor counts every RPC and its time (forge_rpc_*), and turns a
// handler's panic into an internal error and a log line, so one bad request
// never drops the connection of others. One interceptor does both, as
// connect.WithRecover would add a second frame to the stack every held Poll
// keeps while it waits (see agentService.Poll).
func (s *Server) interceptor() connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (_ connect.AnyResponse, err error) {
			defer s.endCall(ctx, req, time.Now(), &err)
			return next(ctx, req)
		}
	}
}

// endCall, deferred by interceptor, recovers a handler's panic into the call's
// error and counts the call.
func (s *Server) endCall(ctx context.Context, req connect.AnyRequest, start time.Time, err *error) {
	if p := recover(); p != nil {
		// net/http aborts a response with this panic on purpose; it must go on.
		if p == http.ErrAbortHandler {
			panic(p)
		}
		s.log.Error("handler panicked", "procedure", req.Spec().Procedure, "panic", p)
		*err = connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	s.metrics.called(req.Spec().Procedure, *err, start)
}

// ServeHTTP serves the API and the health and metrics endpoints.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Close answers every held Poll and wait at once (empty) and stops the reaper. It
// does not close the Store. Call it before http.Server.Shutdown, or register it
// with http.Server.RegisterOnShutdown, so held calls end at once; after it,
// Ready answers ErrClosed and held calls answer at once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { close(s.closing) })
	s.wg.Wait()
	return nil
}

// lifetime is the context of the server's own work, such as the reaper's store
// calls: it ends when Close is called. New has no caller's context to derive
// it from (the embedding API is New, ServeHTTP, Close), and a request's context
// ends with its request, so the server makes it from its closing channel.
type lifetime struct{ closing <-chan struct{} }

func (l lifetime) Deadline() (time.Time, bool) { return time.Time{}, false }
func (l lifetime) Done() <-chan struct{}       { return l.closing }
func (l lifetime) Value(any) any               { return nil }

func (l lifetime) Err() error {
	select {
	case <-l.closing:
		return context.Canceled
	default:
		return nil
	}
}

// ErrClosed is what Ready answers once Close has been called.
var ErrClosed = errors.New("shutting down")

// Ready tells whether the server can serve calls now: nil when its store
// answers (within ctx, and 2 s at most) and Close has not been called. Its
// error says why not in words safe to show anyone (the store's message names
// the cause — TLS, credentials, a missing permission — and holds no secret);
// it is what /readyz answers with a 503. An application that mounts the
// Server under its own readiness check calls it there.
func (s *Server) Ready(ctx context.Context) error {
	if s.isClosing() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		s.log.Warn("readyz: store unavailable", causeArgs(err)...)
		return fmt.Errorf("store unavailable: %w", err)
	}
	return nil
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.Ready(r.Context()); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// reap runs the store's time-driven work every ReapInterval, with jitter so that
// replicas started together do not reap in lockstep.
func (s *Server) reap(ctx context.Context) {
	defer s.wg.Done()
	var failing bool
	for {
		d := s.cfg.ReapInterval
		d += time.Duration(rand.Int64N(int64(d)/5 + 1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		err := s.store.Reap(ctx)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			s.log.Error("reaper: store call failed; retrying", causeArgs(err)...)
			failing = true
		case err == nil && failing:
			s.log.Info("reaper: store reachable again")
			failing = false
		}
	}
}

type pingService struct{}

func (pingService) Ping(context.Context, *connect.Request[forgev1.PingRequest]) (*connect.Response[forgev1.PingResponse], error) {
	return connect.NewResponse(&forgev1.PingResponse{}), nil
}

// HeldPolls returns how many Polls this server holds now.
func (s *Server) HeldPolls() int { return int(s.held.Load()) }
