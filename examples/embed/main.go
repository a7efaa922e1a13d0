package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"

	"github.com/orange-forge/forge/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)) // registered, tasks, why it stops
	a, err := agent.New(agent.Config{
		Servers:     []string{os.Getenv("FORGE_SERVER")}, // e.g. http://127.0.0.1:8080
		EnrollToken: os.Getenv("FORGE_ENROLL_TOKEN"),
		StateDir:    os.Getenv("FORGE_STATE_DIR"), // keeps its identity across restarts
		Labels:      map[string]string{"app": "billing"},
		Logger:      log,
	})
	if err != nil {
		log.Error("cannot start the agent", "err", err)
		os.Exit(1)
	}
	a.Handle("greet", func(ctx context.Context, t *agent.Task) ([]byte, error) {
		return append([]byte("hello, "), t.Payload...), nil
	})
	if err := a.Run(ctx); err != nil { // returns after draining on Ctrl-C
		log.Error("the agent stopped", "err", err)
		os.Exit(1)
	}
}
