package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Main is the forge command, runnable inside a test: give it its own streams and
// environment, call Run with arguments, read its exit code.
type Main struct {
	Stdout io.Writer
	Stderr io.Writer
	// Getenv reads the environment; flags fall back to FORGE_* variables.
	Getenv func(string) string
	// Ready, when set, receives the server's URL once it listens (tests use it).
	Ready func(url string)
}

// NewMain returns a Main wired to the process's streams and environment.
func NewMain() *Main {
	return &Main{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

const usage = `forge sends commands to machines that open no ports.

Usage:
  forge server  [flags]               run the API server
  forge agent   --server URL [flags]  run an agent on this machine
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
	fmt.Fprintf(m.Stderr, "forge %s: %v\n", args[0], err)
	return 1
}

// exitCode ends a command with a code and no message (it printed its own).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// flags is a flag.FlagSet whose flags fall back to FORGE_* environment variables.
type flags struct {
	*flag.FlagSet
	m    *Main
	envs map[string]string // flag name -> variable
}

func (m *Main) newFlags(name, summary string) *flags {
	fs := flag.NewFlagSet("forge "+name, flag.ContinueOnError)
	fs.SetOutput(m.Stderr)
	f := &flags{FlagSet: fs, m: m, envs: map[string]string{}}
	fs.Usage = func() {
		fmt.Fprintf(m.Stderr, "%s\n\nFlags (each also read from the variable shown):\n", summary)
		fs.VisitAll(func(fl *flag.Flag) {
			def := ""
			if fl.DefValue != "" && fl.DefValue != "false" && fl.DefValue != "[]" {
				def = " (default " + fl.DefValue + ")"
			}
			fmt.Fprintf(m.Stderr, "  --%s  [%s]\n      %s%s\n", fl.Name, f.envs[fl.Name], fl.Usage, def)
		})
	}
	return f
}

func envName(flagName string) string {
	return "FORGE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func (f *flags) String(name, def, usage string) *string {
	f.envs[name] = envName(name)
	if v := f.m.Getenv(envName(name)); v != "" {
		def = v
	}
	return f.FlagSet.String(name, def, usage)
}

func (f *flags) Bool(name string, def bool, usage string) *bool {
	f.envs[name] = envName(name)
	if v := f.m.Getenv(envName(name)); v != "" {
		def = v == "1" || strings.EqualFold(v, "true") || strings.EqualFold(v, "yes")
	}
	return f.FlagSet.Bool(name, def, usage)
}

func (f *flags) Int(name string, def int, usage string) *int {
	f.envs[name] = envName(name)
	if v := f.m.Getenv(envName(name)); v != "" {
		fmt.Sscan(v, &def)
	}
	return f.FlagSet.Int(name, def, usage)
}

func (f *flags) Float(name string, def float64, usage string) *float64 {
	f.envs[name] = envName(name)
	if v := f.m.Getenv(envName(name)); v != "" {
		fmt.Sscan(v, &def)
	}
	return f.FlagSet.Float64(name, def, usage)
}

func (f *flags) Duration(name string, def time.Duration, usage string) *time.Duration {
	f.envs[name] = envName(name)
	if v := f.m.Getenv(envName(name)); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			def = d
		}
	}
	return f.FlagSet.Duration(name, def, usage)
}

// List defines a repeatable flag; the variable holds a comma-separated list.
func (f *flags) List(name, usage string) *listFlag {
	f.envs[name] = envName(name)
	l := &listFlag{}
	if v := f.m.Getenv(envName(name)); v != "" {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				l.vals = append(l.vals, s)
			}
		}
		l.fromEnv = true
	}
	f.FlagSet.Var(l, name, usage)
	return l
}

type listFlag struct {
	vals    []string
	fromEnv bool
}

func (l *listFlag) String() string { return strings.Join(l.vals, ",") }

func (l *listFlag) Set(s string) error {
	if l.fromEnv { // the command line replaces the environment's list
		l.vals, l.fromEnv = nil, false
	}
	l.vals = append(l.vals, s)
	return nil
}

func (f *flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

// logger returns the slog.Logger the flags ask for.
func (m *Main) logger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(m.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(m.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, not %q", format)
}
