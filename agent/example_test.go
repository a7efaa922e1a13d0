package agent_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/orange-forge/forge/agent"
)

// ExampleNew embeds an agent in a program: it registers once (keeping its identity
// in the state dir), runs `upper` tasks and allowed commands, and drains on SIGTERM.
func ExampleNew() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	a, err := agent.New(agent.Config{
		Servers:     []string{"http://127.0.0.1:8080"},
		EnrollToken: os.Getenv("FORGE_ENROLL_TOKEN"),
		StateDir:    "/var/lib/forge-agent",
		Labels:      map[string]string{"env": "prod", "role": "web"},
		Logger:      slog.Default(),
	})
	if err != nil {
		slog.Error("agent config", "err", err)
		return
	}
	a.Handle("upper", func(ctx context.Context, t *agent.Task) ([]byte, error) {
		return []byte(strings.ToUpper(string(t.Payload))), nil
	})
	a.Handle("exec", agent.ExecHandler([]string{"/usr/bin/uptime"}))
	if err := a.Run(ctx); err != nil {
		slog.Error("agent stopped", "err", err)
	}
}
