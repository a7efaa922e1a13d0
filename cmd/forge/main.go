// Command forge is forge's single binary: the server, the agent, and the
// operator's commands (run, agents, tasks, cancel).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// The first SIGINT or SIGTERM ends the command's context (the agent drains,
	// the server answers held calls); a second says not to wait (the agent
	// stops its running tasks at once).
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	again := make(chan struct{})
	go func() {
		<-sig
		stop()
		<-sig
		close(again)
	}()
	m := NewMain()
	m.StopNow = again
	os.Exit(m.Run(ctx, os.Args[1:]))
}
