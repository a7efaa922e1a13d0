//go:build linux

// Command chaosagent is the chaos run's helper binary. `chaosagent task` is the
// command every chaos task execs: it records its start and end in the history
// file named by CHAOS_HISTORY and works for a while. `chaosagent agents` runs
// several embedded agents (the agent package) in one process, each with its own
// state dir, running the same task in process, so a run can have many agents
// without a process each.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orange-forge/forge/agent"
	"github.com/orange-forge/forge/internal/chaos"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: chaosagent task|agents ...")
		os.Exit(2)
	}
	var err error
	code := 0
	switch os.Args[1] {
	case "task":
		code, err = task(os.Args[2:])
	case "agents":
		err = agents(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
		code = 2
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaosagent:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// task runs one attempt as an exec'd command: the agent passes the task's
// identity in FORGE_TASK_ID, FORGE_JOB_ID and FORGE_TASK_ATTEMPT; the agent
// process's environment names the history file and the host label.
func task(args []string) (int, error) {
	spec, err := chaos.ParseTaskArgs(args)
	if err != nil {
		return 2, err
	}
	w, err := chaos.OpenHistory(os.Getenv("CHAOS_HISTORY"))
	if err != nil {
		return 2, err
	}
	defer w.Close()
	att, _ := strconv.Atoi(os.Getenv("FORGE_TASK_ATTEMPT"))
	id := os.Getenv("FORGE_TASK_ID")
	a := chaos.Attempt{Task: id, Job: os.Getenv("FORGE_JOB_ID"), Att: int32(att), Agent: agentOf(id)}
	ctx, cancel := context.WithCancelCause(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		cancel(fmt.Errorf("signal %v", s))
	}()
	out, err := chaos.RunTask(ctx, w, os.Getenv("CHAOS_HOST"), a, spec)
	os.Stdout.Write(out)
	switch {
	case err == nil:
		return 0, nil
	case ctx.Err() != nil:
		return 143, nil
	}
	return 1, nil
}

func agentOf(taskID string) string {
	if i := strings.LastIndexByte(taskID, '-'); i >= 0 {
		return taskID[i+1:]
	}
	return ""
}

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// agents runs n embedded agents until SIGTERM, then drains them.
func agents(args []string) error {
	f := flag.NewFlagSet("agents", flag.ContinueOnError)
	servers := f.String("server", "", "server URLs, comma-separated")
	enroll := f.String("enroll-token", "", "enrollment token")
	stateDir := f.String("state-dir", "", "directory holding one state dir per agent")
	n := f.Int("n", 8, "how many agents")
	host := f.String("host", "", "this process's label in histories and the fault log")
	history := f.String("history", "", "history file")
	groups := f.Int("groups", 4, "agent i gets the label group=g<(group-base+i) mod groups>")
	groupBase := f.Int("group-base", 0, "see -groups")
	concurrency := f.Int("concurrency", 2, "tasks each agent runs at once")
	var labels list
	f.Var(&labels, "label", "k=v label of every agent (repeatable)")
	if err := f.Parse(args); err != nil {
		return err
	}
	w, err := chaos.OpenHistory(*history)
	if err != nil {
		return err
	}
	defer w.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, *n)
	for i := range *n {
		lbls := map[string]string{"group": fmt.Sprintf("g%d", (*groupBase+i)%*groups)}
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			lbls[k] = v
		}
		name := fmt.Sprintf("%s-%d", *host, i)
		a, err := agent.New(agent.Config{
			Servers: strings.Split(*servers, ","), EnrollToken: *enroll, Name: name, Labels: lbls,
			StateDir: filepath.Join(*stateDir, strconv.Itoa(i)), Concurrency: *concurrency,
			DrainGrace: 5 * time.Second, Logger: log.With("agent_name", name),
		})
		if err != nil {
			return err
		}
		a.Handle("exec", func(ctx context.Context, t *agent.Task) ([]byte, error) {
			var p agent.ExecPayload
			if err := json.Unmarshal(t.Payload, &p); err != nil {
				return nil, err
			}
			if len(p.Argv) < 2 || p.Argv[1] != "task" {
				return nil, fmt.Errorf("chaosagent runs only chaos tasks, not %q", p.Argv)
			}
			spec, err := chaos.ParseTaskArgs(p.Argv[2:])
			if err != nil {
				return nil, err
			}
			out, err := chaos.RunTask(ctx, w, *host, chaos.Attempt{Task: t.ID, Job: t.JobID, Agent: a.ID(), Att: t.Attempt}, spec)
			if err != nil && ctx.Err() == nil {
				err = &agent.ExitError{Code: 1, Err: err}
			}
			return out, err
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}
