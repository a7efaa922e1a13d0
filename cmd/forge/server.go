package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// runServer is `forge server`: parse, build, serve, close.
func (m *Main) runServer(ctx context.Context, args []string) error {
	c, err := m.ParseServer(args)
	if err != nil {
		return err
	}
	s, err := m.BuildServer(ctx, c)
	if err != nil {
		return err
	}
	err = s.Serve(ctx)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// ServerConfig is what `forge server` was told: its flags, each falling back to
// its FORGE_* variable, with token files read. ParseServer fills and checks it;
// BuildServer makes a listening Server from it.
type ServerConfig struct {
	Listen string // host:port; plain HTTP only on loopback unless Insecure
	// DebugListen, when set, is a loopback host:port serving net/http/pprof and
	// runtime/metrics (debugHandler); empty: none.
	DebugListen string
	Redis       RedisConfig // Redis URL and its TLS and password files; no URL: the in-memory store
	// EnrollTokens and AdminTokens are those given by flag, variable or file.
	// When one list is empty, BuildServer generates a token for it and Serve
	// prints it once.
	EnrollTokens []string
	AdminTokens  []string
	TLSCert      string // PEM files; both or neither
	TLSKey       string
	Insecure     bool     // plain HTTP on a non-loopback address
	SigningKeys  []string // ed25519 PKCS#8 PEM files, newest first

	Lease       time.Duration
	PollHold    time.Duration
	MaxWait     time.Duration
	TaskTimeout time.Duration
	DeliveryTTL time.Duration
	Retention   time.Duration
	// RetentionPerAgent bounds the tasks kept per agent (store.Config.KeepPerAgent); 0: none.
	RetentionPerAgent int
	// RetentionJobs bounds the finished jobs kept (store.Config.KeepJobs); 0: none.
	RetentionJobs int
	// AgentRetention is how long an agent may go unseen before it is removed; 0: never.
	AgentRetention time.Duration
	MaxAttempts    int
	MaxBody        int
	MaxPayload     int
	MaxOutput      int
	MaxPending     int
	MaxTargets     int // agents one Dispatch may reach; 0: no limit
	RateLimit      float64
	RateBurst      int
	// RegisterRate and RegisterRatePerAddr limit Registers per enrollment token
	// and per source address (per second; 0: no limit).
	RegisterRate        float64
	RegisterRatePerAddr float64

	// Export names where finished tasks are exported (server.NewSink): a
	// file, "-" for stdout, or an http(s) URL; empty: no export.
	Export string
	// ExportBatch is the most tasks an export batch reads (of each shard on Redis).
	ExportBatch int

	Log logConfig
}

// The bounds of --retention and --export-batch past the checks every flag of
// their kind gets (positive): a shorter retention drops finished tasks before
// a caller waiting on them reads them, and a larger batch is held in memory at
// once, 64 times over on Redis.
const (
	minRetention   = time.Minute
	maxExportBatch = 10000
)

// ParseServer parses the command line of `forge server` (after the word
// "server") and the FORGE_* variables into a config, and checks it. It reads
// the token files; it opens nothing else.
func (m *Main) ParseServer(args []string) (ServerConfig, error) {
	var c ServerConfig
	var enrollFile, adminFile, logFormat, logLevel string
	f := m.newFlags("server", "forge server: serves the API agents and operators call.")
	f.StringVar(&c.Listen, "listen", "127.0.0.1:8080", "address to listen on; plain HTTP only on loopback unless --insecure")
	f.StringVar(&c.DebugListen, "debug-listen", "", "loopback address serving /debug/pprof/ and /debug/runtime-metrics (profiles of this process); empty: none")
	f.redisFlags(&c.Redis, "Redis URL for shared state: redis[s]://[user@]host:port/db, a cluster with ?addr=…, Sentinel with ?master_set=… (docs/operations.md); empty: in memory")
	f.ListVar(&c.EnrollTokens, "enroll-token", "token agents register with (repeatable; at least 16 characters)")
	f.ListVar(&c.AdminTokens, "admin-token", "operator token for the control API (repeatable; at least 16 characters)")
	f.StringVar(&enrollFile, "enroll-token-file", "", "file with enrollment tokens, one per line")
	f.StringVar(&adminFile, "admin-token-file", "", "file with operator tokens, one per line")
	f.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate file (PEM)")
	f.StringVar(&c.TLSKey, "tls-key", "", "TLS key file (PEM)")
	f.BoolEnvVar(&c.Insecure, "insecure", false, "allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy)")
	f.DurationVar(&c.Lease, "lease", 30*time.Second, "how long a leased task stays with a silent agent")
	f.DurationVar(&c.PollHold, "poll-hold", store.DefaultPollHold, "default and longest hold of an agent's Poll")
	f.DurationVar(&c.MaxWait, "max-wait", 5*time.Minute, "longest hold of WaitTask, WaitJob and Dispatch with wait")
	f.IntVar(&c.MaxAttempts, "max-attempts", 3, "default number of times a task may be leased")
	f.DurationVar(&c.TaskTimeout, "task-timeout", 10*time.Minute, "default execution timeout of a task")
	f.DurationVar(&c.DeliveryTTL, "delivery-ttl", time.Hour, "default time a task may wait to be picked up")
	f.DurationVar(&c.Retention, "retention", 7*24*time.Hour, "how long finished tasks are kept (at least 1m)")
	f.IntVar(&c.RetentionPerAgent, "retention-per-agent", 0, "most tasks kept per agent: past it, its oldest finished tasks go before --retention (with --export, once written; 0: no limit; not negative)")
	f.IntVar(&c.RetentionJobs, "retention-jobs", 0, "most finished jobs kept: past it, the jobs that finished first go with their tasks before --retention; a live job never (with --export, once written; 0: no limit; not negative)")
	f.StringVar(&c.Export, "export", "", "write every finished task, as a JSON line, to this file (appended), - (stdout) or http(s):// URL (POSTed in batches), before retention drops it; replicas given it take turns from the position kept in the store")
	f.IntVar(&c.ExportBatch, "export-batch", 100, "most finished tasks one export batch reads (of each of the 64 shards on Redis), 1 to 10000; a replica killed while exporting costs at most one batch again")
	f.DurationVar(&c.AgentRetention, "agent-retention", store.DefaultAgentRetention, "how long an agent may go unseen before it is removed with its token (0: never)")
	f.IntVar(&c.MaxBody, "max-body", server.DefaultLimits().MaxBodyBytes, "largest request body in bytes")
	f.IntVar(&c.MaxPayload, "max-payload", server.DefaultLimits().MaxPayload, "largest task payload in bytes")
	f.IntVar(&c.MaxOutput, "max-output", server.DefaultLimits().MaxOutput, "output kept per attempt in bytes (head and tail)")
	f.IntVar(&c.MaxPending, "max-pending", 10000, "most tasks waiting in one agent's queue")
	f.IntVar(&c.MaxTargets, "max-targets", store.DefaultMaxTargets, "most agents one dispatch may reach; beyond, it is refused with resource_exhausted (0: no limit)")
	f.ListVar(&c.SigningKeys, "signing-key", "ed25519 private key file (PKCS#8 PEM, as from `openssl genpkey -algorithm ed25519`) to sign tasks with; repeat to rotate, newest first")
	f.FloatVar(&c.RateLimit, "rate-limit", 0, "calls per second allowed to each token on average (0: no limit)")
	f.IntVar(&c.RateBurst, "rate-burst", 0, "burst size of --rate-limit (default: one second's worth)")
	f.FloatVar(&c.RegisterRate, "register-rate", server.DefaultRegisterRate, "registrations per second allowed to each enrollment token, in bursts of ten seconds' worth (0: no limit)")
	f.FloatVar(&c.RegisterRatePerAddr, "register-rate-per-addr", server.DefaultRegisterRatePerAddr, "registrations per second allowed from each source address, in bursts of ten seconds' worth (0: no limit)")
	f.logFlags(&logFormat, &logLevel)
	if err := f.parse(args); err != nil {
		return c, err
	}
	if err := f.noArgs(); err != nil {
		return c, err
	}
	var err error
	if c.Log, err = parseLog(logFormat, logLevel); err != nil {
		return c, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"lease", c.Lease}, {"poll-hold", c.PollHold}, {"max-wait", c.MaxWait},
		{"task-timeout", c.TaskTimeout}, {"delivery-ttl", c.DeliveryTTL}, {"retention", c.Retention}} {
		if d.v <= 0 {
			return c, fmt.Errorf("--%s must be positive, not %s", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max-attempts", c.MaxAttempts}, {"max-body", c.MaxBody}, {"max-payload", c.MaxPayload},
		{"max-output", c.MaxOutput}, {"max-pending", c.MaxPending}, {"export-batch", c.ExportBatch}} {
		if n.v <= 0 {
			return c, fmt.Errorf("--%s must be positive, not %d", n.name, n.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"retention-per-agent", c.RetentionPerAgent}, {"retention-jobs", c.RetentionJobs}} {
		if n.v < 0 {
			return c, fmt.Errorf("--%s must not be negative, not %d", n.name, n.v)
		}
	}
	if c.Retention < minRetention {
		return c, fmt.Errorf("--retention must be at least %s, not %s: finished tasks would be dropped before anyone could read them", minRetention, c.Retention)
	}
	if c.ExportBatch > maxExportBatch {
		return c, fmt.Errorf("--export-batch must be at most %d, not %d: one batch is read into memory at once (on Redis, of each of the 64 shards)", maxExportBatch, c.ExportBatch)
	}
	if err := c.Redis.check(); err != nil {
		return c, err
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return c, errors.New("--tls-cert and --tls-key go together")
	}
	if c.TLSCert == "" && !c.Insecure && !loopback(c.Listen) {
		return c, fmt.Errorf("refusing plain HTTP on %q: it is not a loopback address. Give --tls-cert and --tls-key, or --insecure when a TLS-terminating proxy is in front", c.Listen)
	}
	if c.DebugListen != "" && !loopback(c.DebugListen) {
		return c, fmt.Errorf("--debug-listen %q: profiles are served only on a loopback address (127.0.0.1:6060, [::1]:6060, localhost:6060)", c.DebugListen)
	}
	if c.EnrollTokens, err = readTokens(c.EnrollTokens, enrollFile); err != nil {
		return c, err
	}
	if c.AdminTokens, err = readTokens(c.AdminTokens, adminFile); err != nil {
		return c, err
	}
	for _, t := range append(append([]string(nil), c.EnrollTokens...), c.AdminTokens...) {
		if len(t) < server.MinTokenLen {
			return c, fmt.Errorf("tokens must be at least %d characters", server.MinTokenLen)
		}
	}
	return c, nil
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
