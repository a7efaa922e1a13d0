package main

import (
	"context"
	"os"
	"os/signal"

	"github.com/orange-forge/forge/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	a, err := agent.New(agent.Config{
		Servers:     []string{os.Getenv("FORGE_SERVER")}, // e.g. http://127.0.0.1:8080
		EnrollToken: os.Getenv("FORGE_ENROLL_TOKEN"),
		StateDir:    os.Getenv("FORGE_STATE_DIR"), // keeps its identity across restarts
		Labels:      map[string]string{"app": "billing"},
	})
	if err != nil {
		panic(err)
	}
	a.Handle("greet", func(ctx context.Context, t *agent.Task) ([]byte, error) {
		return append([]byte("hello, "), t.Payload...), nil
	})
	if err := a.Run(ctx); err != nil { // returns after draining on Ctrl-C
		panic(err)
	}
}
