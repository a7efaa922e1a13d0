package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/orange-forge/forge/internal/bench"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
)

func (m *Main) runBench(ctx context.Context, args []string) error {
	f := m.newFlags("bench", "forge bench: measures forge's performance scenarios beside a bare Connect call, and prints\n"+
		"a table. It reads no FORGE_* variable: what it measures is said on its command line only.\n\n"+
		"By default it starts servers in this process (in memory, or --redis) on loopback ports; the\n"+
		"idle scenario runs `forge server` as a child process so its memory and CPU are its own.\n"+
		"Scenarios: "+strings.Join(bench.Scenarios[:8], ", ")+",\n"+strings.Join(bench.Scenarios[8:], ", ")+
		"; all but scale and soak run by default.\n"+
		"scale (--scenario scale) runs --scale-agents agents in child processes over --scale-replicas\n"+
		"`forge server` child processes and a 3-master Redis Cluster it starts (redis-server on PATH)\n"+
		"unless --redis is given. soak (--scenario soak) runs --soak-duration of mixed load against\n"+
		"`forge server` as a child process and samples its RSS and Redis' memory.\n\n"+
		"Exit status: 0 when every scenario ran (targets met or not), 1 when a row is ERROR or the\n"+
		"servers cannot be measured, 2 on a usage error, 130 when interrupted.")
	// The bench's target comes from its flags only: a shell set up by the
	// README's Redis walk-through (FORGE_REDIS=…) must not aim a load test at
	// production.
	f.noEnv = true
	serverURL := f.String("server", "", "measure running servers instead (comma-separated; crossreplica uses the first two)")
	adminToken := f.String("admin-token", "", "operator token of --server")
	enrollToken := f.String("enroll-token", "", "enrollment token of --server")
	var rc RedisConfig
	f.redisFlags(&rc, "run the in-process servers on Redis (a URL as for forge server); the bench leaves its agents and tasks there")
	scenarios := f.List("scenario", "scenario to run (repeatable or comma-separated); default: all but scale and soak")
	agents := f.Int("agents", 10000, "agents in the idle and storm scenarios")
	quick := f.Bool("quick", false, "a smoke test: every scenario at a tiny scale, no target judged")
	scaleAgents := f.Int("scale-agents", 0, "agents in the scale scenario (default 50,000; 400 with --quick)")
	scaleReplicas := f.Int("scale-replicas", 0, "server replicas in the scale scenario (default 5; 2 with --quick)")
	soakDuration := f.Duration("soak-duration", 0, "how long the soak scenario's load runs (default 5m; 5s with --quick)")
	jsonOut := f.Bool("json", false, "print JSON instead of the table")
	plot := f.String("plot", "", "write an SVG of the latency distributions to this file")
	childServer := f.Bool("child-server", true, "run the idle scenario's server as a child process (this binary) to read its own memory and CPU")
	idleProfile := f.String("idle-profile", "", "write the idle scenario's server profiles (heap and goroutines while the polls are held, CPU over the poll window, runtime metrics) to this directory")
	cpuProfile := f.String("cpuprofile", "", "write a CPU profile of the whole run (servers and agents in this process) to this file")
	fleetChild := f.String("fleet-child", "", "internal: run --agents agents against this URL for a parent bench (it talks on stdin/stdout)")
	taskAgents := f.Int("task-agents", 0, "internal: with --fleet-child, how many agents take the storm's tasks")
	f.hide("fleet-child", "task-agents")
	logLevel := f.String("log-level", "warn", "progress log level on stderr: debug, info, warn, error")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		fmt.Fprintf(m.Stderr, "forge bench: unexpected argument %q\n", f.Arg(0))
		return errUsage
	}
	// Zero or less would quietly mean the default (a 50,000-agent run).
	for name, v := range map[string]int{"agents": *agents, "scale-agents": *scaleAgents, "scale-replicas": *scaleReplicas} {
		if f.set(name) && v <= 0 {
			return f.usageError("--%s %d: want 1 or more", name, v)
		}
	}
	if f.set("soak-duration") && *soakDuration <= 0 {
		return f.usageError("--soak-duration %s: want more than 0", *soakDuration)
	}
	if err := rc.check(); err != nil {
		return err
	}
	log, err := m.logger("text", *logLevel)
	if err != nil {
		return err
	}
	if *fleetChild != "" {
		return bench.RunFleetChild(ctx, bench.FleetChildConfig{Server: *fleetChild, EnrollToken: *enrollToken,
			Agents: *agents, TaskAgents: *taskAgents, Logger: log}, os.Stdin, m.Stdout)
	}
	cfg := bench.Config{AdminToken: *adminToken, EnrollToken: *enrollToken, RedisURL: rc.URL,
		Agents: *agents, Quick: *quick, IdleProfile: *idleProfile, ScaleAgents: *scaleAgents, ScaleReplicas: *scaleReplicas, SoakDuration: *soakDuration, Logger: log}
	for _, s := range strings.Split(*serverURL, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Servers = append(cfg.Servers, s)
		}
	}
	for _, v := range *scenarios {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				cfg.Scenarios = append(cfg.Scenarios, s)
			}
		}
	}
	if rc.URL != "" {
		opts, err := rc.options(log)
		if err != nil {
			return err
		}
		cfg.OpenRedis = func(ctx context.Context, url string, c store.Config) (store.Store, error) {
			return redisstore.Open(ctx, url, c, opts)
		}
		cfg.RedisArgs = rc.args()
	}
	if *childServer {
		if exe, err := os.Executable(); err == nil {
			cfg.ServerExe = exe
		}
	}
	// The plot's file is made before the run, so that a path it cannot be
	// written to fails now, not after the run with its table lost.
	var plotFile *os.File
	if *plot != "" {
		if plotFile, err = os.Create(*plot); err != nil {
			return err
		}
		defer func() {
			if plotFile.Close() == nil { // not closed by writeBench: no plot was written
				os.Remove(*plot)
			}
		}()
	}
	if *cpuProfile != "" {
		pf, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(ctx, cfg)
	if ctx.Err() != nil {
		// Interrupted: the rows measured so far, then say so.
		if rep != nil && len(rep.Results) > 0 {
			if werr := m.writeBench(rep, *jsonOut, nil); werr != nil {
				return werr
			}
		}
		fmt.Fprintln(m.Stderr, "forge bench: interrupted")
		return exitCode(130)
	}
	if err != nil {
		return err
	}
	if err := m.writeBench(rep, *jsonOut, plotFile); err != nil {
		return err
	}
	if n := rep.Errors(); n > 0 {
		fmt.Fprintf(m.Stderr, "forge bench: %d %s ERROR (see the notes)\n", n, plural(n, "row is", "rows are"))
		return exitCode(1)
	}
	return nil
}

// writeBench writes the report's plot (when pf is not nil), then its table or
// JSON.
func (m *Main) writeBench(rep *bench.Report, jsonOut bool, pf *os.File) error {
	if pf != nil {
		if err := rep.WritePlot(pf); err != nil {
			return err
		}
		if err := pf.Close(); err != nil {
			return err
		}
	}
	if jsonOut {
		return rep.WriteJSON(m.Stdout)
	}
	return rep.WriteTable(m.Stdout)
}
