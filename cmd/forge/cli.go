package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

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
	// Terminal, when set, tells whether a stream is a terminal and how many
	// columns it has; nil asks the system (a test's Main sets it to see what
	// forge run draws on a terminal).
	Terminal func(w io.Writer) (width int, ok bool)
	// StopNow, when set, is closed when the user asks a second time to stop (a
	// second Ctrl-C or SIGTERM; the first ends Run's context): `forge agent`
	// then stops its running tasks at once instead of letting them finish.
	StopNow <-chan struct{}
}

// terminal tells whether w is a terminal and its width.
func (m *Main) terminal(w io.Writer) (int, bool) {
	if m.Terminal != nil {
		return m.Terminal(w)
	}
	return terminalWidth(w)
}

// NewMain returns a Main wired to the process's streams and environment.
func NewMain() *Main {
	return &Main{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Exec: execProcess}
}

const usage = `forge sends commands to machines that open no ports.

Usage:
  forge server  [flags]                     run the API server
  forge agent   --server URL [flags]        run an agent on this machine
  forge agent   install|uninstall           make it this machine's service (systemd, launchd, Windows)
  forge run     [flags] TARGET -- CMD ARGS  run a command on agents, print their output live
  forge agents  [flags]                     list agents
  forge jobs    [flags]                     list jobs, their tasks counted by state
  forge job     [flags] JOB_ID              show a job and each of its tasks
  forge tasks   [flags]                     list tasks
  forge task    [flags] TASK_ID             show a task, or follow its output (--follow)
  forge cancel  [flags] TASK_ID... | --job JOB_ID   cancel tasks or a job
  forge revoke  [flags] AGENT_ID...         revoke agents: their tokens stop working at once
  forge tokens  [create|revoke] [flags]     list, create and revoke enrollment tokens
  forge version                             print the version (also forge --version)
  forge bench   [flags]                     measure latency, throughput and fleet scale

Examples:
  forge run --all -- uptime
  forge run --agent 'web-*' --group -- /bin/sh -c 'df -h /'
  forge tasks --state failed
  forge task --follow TASK_ID

TARGET is --agent NAME|ID|GLOB, --selector k=v,... or --all. Flags may come before or
after the other arguments, and before the command's name (forge --json agents); forge
run's command starts at "--" or its first word, and flags after that belong to it.
Flags that say where and how (--server, --admin-token, --ca …) also read a variable:
--admin-token reads FORGE_ADMIN_TOKEN. Flags that say what to do (targets, --json) read none.
Run "forge COMMAND -h" for a command's flags and examples.
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
		"server":  m.runServer,
		"agent":   m.runAgent,
		"run":     m.runRun,
		"agents":  m.runAgents,
		"jobs":    m.runJobs,
		"job":     m.runJob,
		"tasks":   m.runTasks,
		"task":    m.runTask,
		"cancel":  m.runCancel,
		"revoke":  m.runRevoke,
		"tokens":  m.runTokens,
		"version": m.runVersion,
		"bench":   m.runBench,
	}
	if strings.HasPrefix(args[0], "-") {
		// Flags before the command (forge --json agents) are the command's.
		for i, a := range args {
			if a == "--" {
				break
			}
			if _, ok := cmds[a]; ok {
				args = append(append([]string{a}, args[:i]...), args[i+1:]...)
				break
			}
		}
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		switch args[0] {
		case "-h", "--help", "help":
			fmt.Fprint(m.Stdout, usage)
			return 0
		case "--version", "-version", "-v":
			fmt.Fprintln(m.Stdout, versionLine())
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
