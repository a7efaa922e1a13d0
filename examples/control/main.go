package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/orange-forge/forge/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c, err := client.New(os.Getenv("FORGE_SERVER"), os.Getenv("FORGE_ADMIN_TOKEN"))
	if err != nil {
		panic(err)
	}
	// Every agent labelled app=billing greets; Ctrl-C cancels the job.
	job := client.NewDispatch("greet", []byte("forge"), client.Selector("app=billing"))
	res, err := c.Run(ctx, job)
	if err != nil {
		panic(err)
	}
	for _, t := range res.Tasks {
		fmt.Printf("%s: %s %s\n", res.AgentName(t), t.State, t.Output)
	}
	// A command instead (allowed on the agents with --allow-exec uptime):
	// c.Run(ctx, client.Exec(client.Agent("web-*"), "uptime"))
}
