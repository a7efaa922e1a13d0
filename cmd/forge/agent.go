package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/orange-forge/forge/agent"
)

// version is the forge version agents report at Register.
var version = "dev"

func (m *Main) runAgent(ctx context.Context, args []string) error {
	f := m.newFlags("agent", "forge agent: run tasks from a forge server on this machine. It dials out; it opens no port.")
	servers := f.String("server", "", "server URL; several, comma-separated, to fail over between")
	enroll := f.String("enroll-token", "", "enrollment token, used only when --state-dir holds no identity yet")
	ca := f.String("ca", "", "PEM file of the CA that signed the server's certificate (replaces the system roots)")
	name := f.String("name", "", "agent name (default: the hostname)")
	labels := f.List("label", "label k=v for selectors (repeatable)")
	stateDir := f.String("state-dir", "", "directory keeping the agent's identity and running commands across restarts")
	allow := f.List("allow-exec", "command the exec task type may run, matched exactly against argv[0] (repeatable)")
	concurrency := f.Int("concurrency", 4, "most tasks run at once")
	grace := f.Duration("drain-grace", 30*time.Second, "on SIGTERM, how long running tasks may finish before they are stopped")
	logFormat := f.String("log-format", "text", "log format: text or json")
	logLevel := f.String("log-level", "info", "log level: debug, info, warn, error")
	if err := f.parse(args); err != nil {
		return err
	}
	if *servers == "" {
		fmt.Fprintln(m.Stderr, "forge agent: --server (or FORGE_SERVER) is required")
		return errUsage
	}
	log, err := m.logger(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	lbls := map[string]string{}
	for _, kv := range labels.vals {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("--label %q: want k=v", kv)
		}
		lbls[k] = v
	}
	cfg := agent.Config{
		EnrollToken: *enroll, Name: *name, Labels: lbls, StateDir: *stateDir,
		Concurrency: *concurrency, DrainGrace: *grace, Logger: log, Version: version,
	}
	for _, s := range strings.Split(*servers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Servers = append(cfg.Servers, strings.TrimRight(s, "/"))
		}
	}
	if *ca != "" {
		pem, err := os.ReadFile(*ca)
		if err != nil {
			return err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no PEM certificate in it", *ca)
		}
		cfg.TLSConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	a.Handle("echo", agent.EchoHandler())
	a.Handle("exec", agent.ExecHandler(allow.vals))
	if len(allow.vals) == 0 {
		log.Info("exec tasks will be refused: no --allow-exec given")
	}
	return a.Run(ctx)
}
