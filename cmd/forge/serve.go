package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

// shutdownGrace is how long calls in flight may finish once held calls have
// been answered at shutdown.
const shutdownGrace = 15 * time.Second

// Server is a built `forge server`: its store open, its API handler made and its
// address bound. Serve it until its context ends, then Close it.
type Server struct {
	m         *Main
	cfg       ServerConfig
	log       *slog.Logger
	store     store.Store
	storeDesc string
	api       *server.Server
	ln        net.Listener
	hs        *http.Server
	debug     *http.Server // --debug-listen; nil: none
	debugURL  string
	tls       bool
	url       string
	gate      *gate      // the handler: answers by itself until the store is open
	serveOnce sync.Once  // serveHTTP
	served    chan error // the HTTP server's end, once serving
	generated []string   // lines announcing generated tokens, printed once by Serve
	export    server.Sink
}

// BuildServer makes a Server from c: it generates the tokens c lacks, reads the
// signing keys and the TLS certificate, binds the listen address, opens the
// store (waiting for a Redis that cannot be used yet until ctx ends, serving
// meanwhile only /healthz, and /readyz saying why) and makes the API handler.
// It never exits the process; on an error, what it opened is closed.
func (m *Main) BuildServer(ctx context.Context, c ServerConfig) (_ *Server, err error) {
	s := &Server{m: m, cfg: c, log: m.newLogger(c.Log)}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	enroll, admin := c.EnrollTokens, c.AdminTokens
	if len(enroll) == 0 {
		t := server.NewEnrollToken()
		enroll = []string{t}
		s.generated = append(s.generated, "enrollment token (generated, shown once): "+t)
	}
	if len(admin) == 0 {
		t := server.NewOperatorToken()
		admin = []string{t}
		s.generated = append(s.generated, "admin token (generated, shown once):      "+t)
	}
	var keys []ed25519.PrivateKey
	for _, file := range c.SigningKeys {
		k, err := readSigningKey(file)
		if err != nil {
			return nil, fmt.Errorf("--signing-key %s: %w", file, err)
		}
		keys = append(keys, k)
	}
	if c.Export != "" {
		if s.export, err = server.NewSink(c.Export, m.Stdout); err != nil {
			return nil, fmt.Errorf("--export: %w", err)
		}
	}
	var tlsConfig *tls.Config
	if c.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}

	// Bind first: a port in use fails at once, and while the store cannot be
	// opened the gate tells /readyz why.
	if err := s.listen(c, tlsConfig); err != nil {
		return nil, err
	}
	if c.DebugListen != "" {
		var ln net.Listener
		if s.debug, ln, err = serveDebug(c.DebugListen, s.log); err != nil {
			return nil, err
		}
		s.debugURL = "http://" + ln.Addr().String()
	}
	scfg := store.Config{OnlineWindow: 2 * c.PollHold, Retention: c.Retention, KeepPerAgent: c.RetentionPerAgent, KeepJobs: c.RetentionJobs, MaxPendingPerAgent: c.MaxPending,
		MaxTargets: int(noLimit(float64(c.MaxTargets))), AgentRetention: time.Duration(noLimit(float64(c.AgentRetention)))}
	waiting := func(err error) {
		s.gate.waiting(err)
		if s.served == nil {
			s.log.Warn("waiting for the store; meanwhile /healthz answers ok and /readyz why not ready", "url", s.url)
			s.serveHTTP()
		}
	}
	if s.store, s.storeDesc, err = openStore(ctx, c.Redis, scfg, s.log, waiting); err != nil {
		return nil, err
	}
	s.api, err = server.New(server.Config{
		Store: s.store, EnrollTokens: enroll, AdminTokens: admin, Logger: s.log,
		Lease: c.Lease, PollHold: c.PollHold, MaxWait: c.MaxWait, MaxAttempts: int32(c.MaxAttempts),
		TaskTimeout: c.TaskTimeout, DeliveryTTL: c.DeliveryTTL, RateLimit: c.RateLimit, RateBurst: c.RateBurst,
		RegisterRate: noLimit(c.RegisterRate), RegisterRatePerAddr: noLimit(c.RegisterRatePerAddr),
		SigningKeys: keys, Export: s.export, ExportBatch: c.ExportBatch,
		Limits: server.Limits{MaxBodyBytes: c.MaxBody, MaxPayload: c.MaxPayload, MaxOutput: c.MaxOutput},
	})
	if err != nil {
		return nil, err
	}
	s.gate.open(s.api)
	return s, nil
}

// listen binds the listen address and makes the HTTP server, its handler the
// gate (which answers by itself until the store is open).
func (s *Server) listen(c ServerConfig, tlsConfig *tls.Config) (err error) {
	if s.ln, err = net.Listen("tcp", c.Listen); err != nil {
		return err
	}
	s.gate = newGate()
	s.hs = &http.Server{
		Handler:           s.gate,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		// A held call must be able to answer: the longest hold plus slack.
		WriteTimeout:   max(c.PollHold, c.MaxWait) + 30*time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		// HTTP/2 (h2 over TLS, h2c on plain HTTP) carries many calls on one
		// connection: at most this many at once (Go's client opens another
		// connection beyond), so a connection costs no more than 100 HTTP/1.1
		// ones would. Read timeouts, header and body limits apply per call as
		// on HTTP/1.1.
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 100},
		TLSConfig: tlsConfig,
		// The HTTP server's own errors (a failed TLS handshake) go to the log.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.tls = tlsConfig != nil
	scheme := "https"
	if !s.tls {
		scheme = "http"
		s.hs.Protocols = new(http.Protocols)
		s.hs.Protocols.SetHTTP1(true)
		// HTTP/2 with prior knowledge only (no Upgrade: h2c), for gRPC tools
		// (grpcurl -plaintext, buf curl --http2-prior-knowledge): reflection
		// streams both ways. Agents and browsers speak HTTP/1.1 here.
		s.hs.Protocols.SetUnencryptedHTTP2(true)
	}
	s.url = scheme + "://" + s.ln.Addr().String()
	return nil
}

// serveHTTP starts serving, once: early when the store keeps the server
// waiting, else from Serve. Its end is sent on s.served.
func (s *Server) serveHTTP() {
	s.serveOnce.Do(func() {
		s.served = make(chan error, 1)
		go func() {
			if s.tls {
				s.served <- s.hs.ServeTLS(s.ln, "", "") // the certificate is in TLSConfig
			} else {
				s.served <- s.hs.Serve(s.ln)
			}
		}()
	})
}

// URL is the server's base URL, such as http://127.0.0.1:8080.
func (s *Server) URL() string { return s.url }

// Serve prints the start-up lines (the URL, the store, any generated token;
// to stderr when the export writes to stdout), calls Main.Ready, and serves until ctx ends or the listener fails. On ctx's
// end it shuts down: held Polls and waits are answered at once (empty), and the
// calls in flight get shutdownGrace to finish. It returns nil after a shutdown.
func (s *Server) Serve(ctx context.Context) error {
	out := s.m.Stdout
	if s.cfg.Export == "-" { // stdout carries the history: JSON lines only
		out = s.m.Stderr
	}
	fmt.Fprintf(out, "forge server listening on %s\n", s.url)
	if s.debug != nil {
		fmt.Fprintf(out, "debug (profiles, runtime metrics): %s/debug/pprof/ %s/debug/runtime-metrics\n", s.debugURL, s.debugURL)
	}
	fmt.Fprintf(out, "store: %s\n", s.storeDesc)
	fmt.Fprintf(out, "fleet page: %s/ (sign in with an admin token); metrics: %s/metrics\n", s.url, s.url)
	for _, g := range s.generated {
		fmt.Fprintln(out, g)
	}
	if !s.tls {
		s.log.Warn("serving plain HTTP without TLS", "listen", s.ln.Addr().String())
	}
	s.log.Info("server started", "url", s.url, "store", s.storeDesc, "lease", s.cfg.Lease, "poll_hold", s.cfg.PollHold)
	if s.m.Ready != nil {
		s.m.Ready(s.url)
	}

	s.serveHTTP()
	select {
	case err := <-s.served:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down: answering held calls")
	s.api.Close() // answers held polls and waits at once
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := s.hs.Shutdown(sctx); err != nil {
		s.log.Warn("shutdown", "err", err)
	}
	s.log.Info("server stopped")
	return nil
}

// Close ends what BuildServer opened: the API handler (answering any held call),
// the listener and every connection still open, and the store. It returns the
// store's error.
func (s *Server) Close() error {
	if s.api != nil {
		s.api.Close()
	}
	if s.hs != nil {
		s.hs.Close()
	}
	if s.debug != nil {
		s.debug.Close()
	}
	if s.ln != nil {
		s.ln.Close() // when Serve never ran
	}
	if c, ok := s.export.(io.Closer); ok {
		c.Close()
	}
	if s.store != nil {
		return s.store.Close()
	}
	return nil
}

// readSigningKey reads an ed25519 private key from a PKCS#8 PEM file.
func readSigningKey(file string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return server.ParseSigningKey(b)
}

func openStore(ctx context.Context, rc RedisConfig, cfg store.Config, log *slog.Logger, waiting func(error)) (store.Store, string, error) {
	if rc.URL == "" {
		return memstore.New(cfg), "in memory (state is lost when the server stops; use --redis for production)", nil
	}
	return openRedis(ctx, rc, cfg, log, waiting)
}

// noLimit turns a flag's 0 ("no limit") into server.Config's negative.
func noLimit(rate float64) float64 {
	if rate == 0 {
		return -1
	}
	return rate
}
