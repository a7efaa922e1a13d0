package main

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

func (m *Main) runServer(ctx context.Context, args []string) error {
	f := m.newFlags("server", "forge server: serves the API agents and operators call.")
	listen := f.String("listen", "127.0.0.1:8080", "address to listen on; plain HTTP only on loopback unless --insecure")
	redisURL := f.String("redis", "", "Redis URL (redis://host:port/db) for shared state; empty: in memory")
	enroll := f.List("enroll-token", "token agents register with (repeatable; at least 16 characters)")
	admin := f.List("admin-token", "operator token for the control API (repeatable; at least 16 characters)")
	enrollFile := f.String("enroll-token-file", "", "file with enrollment tokens, one per line")
	adminFile := f.String("admin-token-file", "", "file with operator tokens, one per line")
	certFile := f.String("tls-cert", "", "TLS certificate file (PEM)")
	keyFile := f.String("tls-key", "", "TLS key file (PEM)")
	insecure := f.Bool("insecure", false, "allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy)")
	lease := f.Duration("lease", 30*time.Second, "how long a leased task stays with a silent agent")
	pollHold := f.Duration("poll-hold", 25*time.Second, "default and longest hold of an agent's Poll")
	maxWait := f.Duration("max-wait", 5*time.Minute, "longest hold of WaitTask, WaitJob and Dispatch with wait")
	maxAttempts := f.Int("max-attempts", 3, "default number of times a task may be leased")
	taskTimeout := f.Duration("task-timeout", 10*time.Minute, "default execution timeout of a task")
	deliveryTTL := f.Duration("delivery-ttl", time.Hour, "default time a task may wait to be picked up")
	retention := f.Duration("retention", 7*24*time.Hour, "how long finished tasks are kept")
	maxBody := f.Int("max-body", server.DefaultLimits.MaxBodyBytes, "largest request body in bytes")
	maxPayload := f.Int("max-payload", server.DefaultLimits.MaxPayload, "largest task payload in bytes")
	maxOutput := f.Int("max-output", server.DefaultLimits.MaxOutput, "output kept per attempt in bytes (head and tail)")
	maxPending := f.Int("max-pending", 10000, "most tasks waiting in one agent's queue")
	signing := f.List("signing-key", "ed25519 private key file (PKCS#8 PEM, as from `openssl genpkey -algorithm ed25519`) to sign tasks with; repeat to rotate, newest first")
	rateLimit := f.Float("rate-limit", 0, "calls per second allowed to each token on average (0: no limit)")
	rateBurst := f.Int("rate-burst", 0, "burst size of --rate-limit (default: one second's worth)")
	logFormat := f.String("log-format", "text", "log format: text or json")
	logLevel := f.String("log-level", "info", "log level: debug, info, warn, error")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		fmt.Fprintf(m.Stderr, "forge server: unexpected argument %q\n", f.Arg(0))
		return errUsage
	}
	log, err := m.logger(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	for name, d := range map[string]time.Duration{"lease": *lease, "poll-hold": *pollHold, "max-wait": *maxWait,
		"task-timeout": *taskTimeout, "delivery-ttl": *deliveryTTL, "retention": *retention} {
		if d <= 0 {
			return fmt.Errorf("--%s must be positive, not %s", name, d)
		}
	}
	for name, n := range map[string]int{"max-attempts": *maxAttempts, "max-body": *maxBody, "max-payload": *maxPayload,
		"max-output": *maxOutput, "max-pending": *maxPending} {
		if n <= 0 {
			return fmt.Errorf("--%s must be positive, not %d", name, n)
		}
	}
	tlsOn := *certFile != "" || *keyFile != ""
	if tlsOn && (*certFile == "" || *keyFile == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if !tlsOn && !*insecure && !loopback(*listen) {
		return fmt.Errorf("refusing plain HTTP on %q: it is not a loopback address. Give --tls-cert and --tls-key, or --insecure when a TLS-terminating proxy is in front", *listen)
	}
	enrollTokens, err := readTokens(enroll.vals, *enrollFile)
	if err != nil {
		return err
	}
	adminTokens, err := readTokens(admin.vals, *adminFile)
	if err != nil {
		return err
	}
	var generated []string
	if len(enrollTokens) == 0 {
		t := server.NewEnrollToken()
		enrollTokens = append(enrollTokens, t)
		generated = append(generated, "enrollment token (generated, shown once): "+t)
	}
	if len(adminTokens) == 0 {
		t := server.NewOperatorToken()
		adminTokens = append(adminTokens, t)
		generated = append(generated, "admin token (generated, shown once):      "+t)
	}
	for _, t := range append(append([]string(nil), enrollTokens...), adminTokens...) {
		if len(t) < server.MinTokenLen {
			return fmt.Errorf("tokens must be at least %d characters", server.MinTokenLen)
		}
	}

	var signingKeys []ed25519.PrivateKey
	for _, file := range signing.vals {
		k, err := readSigningKey(file)
		if err != nil {
			return fmt.Errorf("--signing-key %s: %w", file, err)
		}
		signingKeys = append(signingKeys, k)
	}

	scfg := store.Config{OnlineWindow: 2 * *pollHold, Retention: *retention, MaxPendingPerAgent: *maxPending}
	st, storeDesc, err := openStore(ctx, *redisURL, scfg, log)
	if err != nil {
		return err
	}
	defer st.Close()

	srv, err := server.New(server.Config{
		Store: st, EnrollTokens: enrollTokens, AdminTokens: adminTokens, Logger: log,
		Lease: *lease, PollHold: *pollHold, MaxWait: *maxWait, MaxAttempts: int32(*maxAttempts),
		TaskTimeout: *taskTimeout, DeliveryTTL: *deliveryTTL, RateLimit: *rateLimit, RateBurst: *rateBurst,
		SigningKeys: signingKeys,
		Limits:      server.Limits{MaxBodyBytes: *maxBody, MaxPayload: *maxPayload, MaxOutput: *maxOutput},
	})
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		// A held call must be able to answer: the longest hold plus slack.
		WriteTimeout:   max(*pollHold, *maxWait) + 30*time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       nil,
	}
	scheme := "http"
	if tlsOn {
		scheme = "https"
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	} else {
		hs.Protocols = new(http.Protocols)
		hs.Protocols.SetHTTP1(true)
	}
	url := scheme + "://" + ln.Addr().String()
	fmt.Fprintf(m.Stdout, "forge server listening on %s\n", url)
	fmt.Fprintf(m.Stdout, "store: %s\n", storeDesc)
	for _, g := range generated {
		fmt.Fprintln(m.Stdout, g)
	}
	if !tlsOn {
		log.Warn("serving plain HTTP without TLS", "listen", ln.Addr().String())
	}
	log.Info("server started", "url", url, "store", storeDesc, "lease", *lease, "poll_hold", *pollHold)
	if m.Ready != nil {
		m.Ready(url)
	}

	errc := make(chan error, 1)
	go func() {
		if tlsOn {
			errc <- hs.ServeTLS(ln, *certFile, *keyFile)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: answering held calls")
	srv.Close() // answers held polls and waits at once
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	log.Info("server stopped")
	return nil
}

// readSigningKey reads an ed25519 private key from a PKCS#8 PEM file.
func readSigningKey(file string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block in it")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("not an ed25519 key")
	}
	return ek, nil
}

// loopback tells whether a listen address is on a loopback interface only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// readTokens gathers tokens from flags and an optional file (one per line, # comments).
func readTokens(vals []string, file string) ([]string, error) {
	out := append([]string(nil), vals...)
	if file == "" {
		return out, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out, nil
}

func openStore(ctx context.Context, redisURL string, cfg store.Config, log *slog.Logger) (store.Store, string, error) {
	if redisURL == "" {
		return memstore.New(cfg), "in memory (state is lost when the server stops; use --redis for production)", nil
	}
	return openRedis(ctx, redisURL, cfg, log)
}
