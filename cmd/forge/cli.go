package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/orange-forge/forge/internal/termsafe"
)

// Main is the forge command, runnable inside a test: give it its own streams and
// environment, call Run with arguments, read its exit code. The long-running
// commands are also open step by step: ParseServer, BuildServer and Server.Serve
// for `forge server`; ParseAgent, BuildAgent and agent.Agent.Run for `forge agent`.
type Main struct {
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment; flags fall back to FORGE_* variables. Nil
	// reads nothing, so a test's Main sees only what the test gives it.
	Getenv func(string) string
	// Ready, when set, receives the server's URL once it listens and has printed
	// its start-up lines: from then on it answers calls.
	Ready func(url string)
	// Exec, when set, replaces the running program (syscall.Exec): `forge agent`
	// given its enrollment token on the command line or in the environment
	// starts itself again without it there (see secrets.go), and then closes its
	// memory to other processes. NewMain sets it where the system allows; a
	// test's Main leaves it nil, so the test process is never replaced.
	Exec func(argv0 string, argv, envv []string) error
}

// NewMain returns a Main wired to the process's streams and environment.
func NewMain() *Main {
	return &Main{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Exec: execProcess}
}

const usage = `forge sends commands to machines that open no ports.

Usage:
  forge server  [flags]               run the API server
  forge agent   --server URL [flags]  run an agent on this machine
  forge agent   install|uninstall     make it this machine's service (systemd, launchd, Windows)
  forge run     [flags] -- CMD ARGS   run a command on agents and print what each prints
  forge agents  [flags]               list agents
  forge tasks   [flags] [TASK_ID]     list tasks, or show one
  forge cancel  [flags] TASK_ID...    cancel tasks (or --job JOB_ID)
  forge revoke  [flags] AGENT_ID      revoke an agent: its token stops working at once
  forge bench   [flags]               measure latency, throughput and fleet scale

Every flag also reads an environment variable: --admin-token reads FORGE_ADMIN_TOKEN.
Run "forge COMMAND -h" for a command's flags.
`

// errUsage is returned for bad command lines; Run exits 2 on it.
var errUsage = errors.New("usage")

// Run runs the command line args and returns the exit code.
func (m *Main) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return 2
	}
	cmds := map[string]func(context.Context, []string) error{
		"server": m.runServer,
		"agent":  m.runAgent,
		"run":    m.runRun,
		"agents": m.runAgents,
		"tasks":  m.runTasks,
		"cancel": m.runCancel,
		"revoke": m.runRevoke,
		"bench":  m.runBench,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			fmt.Fprint(m.Stdout, usage)
			return 0
		}
		fmt.Fprintf(m.Stderr, "forge: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	err := cmd(ctx, args[1:])
	var ec exitCode
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.As(err, &ec):
		return int(ec)
	}
	// An error may quote what an agent or a caller sent.
	fmt.Fprintf(m.Stderr, "forge %s: %s\n", args[0], termsafe.Line(err.Error()))
	return 1
}

func (m *Main) getenv(name string) string {
	if m.Getenv == nil {
		return ""
	}
	return m.Getenv(name)
}

// exitCode ends a command with a code and no message (it printed its own).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }
