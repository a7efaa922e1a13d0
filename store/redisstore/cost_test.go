package redisstore

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// redisWork is what a Redis node says of the work it has done: its process's
// CPU time (INFO cpu: used_cpu_user + used_cpu_sys, commands, scripts and
// networking alike — not inflated by other processes' load) and, per command,
// calls and the microseconds spent inside it (INFO commandstats: wall time,
// which a loaded machine inflates; commands run inside scripts are counted
// both on their own line and within the script's).
type redisWork struct {
	cpu  time.Duration
	cmds map[string]cmdWork
}

type cmdWork struct{ calls, usec int64 }

// readWork reads a node's redisWork. The reading itself (a connection and an
// INFO) costs Redis some CPU, which phases of hundreds of tasks make small.
func readWork(tb testing.TB, rd *redistest.Server) redisWork {
	tb.Helper()
	info, err := rd.Do("INFO", "cpu", "commandstats")
	if err != nil {
		tb.Fatal(err)
	}
	w := redisWork{cmds: map[string]cmdWork{}}
	var cpu float64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		if name == "used_cpu_user" || name == "used_cpu_sys" {
			v, _ := strconv.ParseFloat(rest, 64)
			cpu += v
			continue
		}
		cmd, ok := strings.CutPrefix(name, "cmdstat_")
		if !ok {
			continue
		}
		switch cmd {
		case "info", "time", "hello", "ping", "client", "select":
			continue // the reading itself and connection upkeep
		}
		var c cmdWork
		for _, kv := range strings.Split(rest, ",") {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(v, 10, 64)
			switch k {
			case "calls":
				c.calls = n
			case "usec":
				c.usec = n
			}
		}
		w.cmds[cmd] = c
	}
	w.cpu = time.Duration(cpu * float64(time.Second))
	return w
}

func (a redisWork) sub(b redisWork) redisWork {
	d := redisWork{cpu: a.cpu - b.cpu, cmds: map[string]cmdWork{}}
	for k, v := range a.cmds {
		o := b.cmds[k]
		if v.calls != o.calls {
			d.cmds[k] = cmdWork{v.calls - o.calls, v.usec - o.usec}
		}
	}
	return d
}

func (a redisWork) add(b redisWork) redisWork {
	d := redisWork{cpu: a.cpu + b.cpu, cmds: map[string]cmdWork{}}
	for k, v := range a.cmds {
		d.cmds[k] = v
	}
	for k, v := range b.cmds {
		o := d.cmds[k]
		d.cmds[k] = cmdWork{o.calls + v.calls, o.usec + v.usec}
	}
	return d
}

// scriptCmds are the commands that are script calls: each a round trip.
var scriptCmds = []string{"evalsha", "eval", "fcall", "evalsha_ro", "eval_ro", "fcall_ro"}

// totals returns every command run (those inside scripts included), the script
// calls among them, and the microseconds spent inside script calls and inside
// commands sent on their own.
func (a redisWork) totals() (cmds, scripts, scriptUsec, plainUsec int64) {
	for k, v := range a.cmds {
		cmds += v.calls
		if slices.Contains(scriptCmds, k) {
			scripts += v.calls
			scriptUsec += v.usec
		}
	}
	// Commands a script runs are counted within its usec too; what was sent on
	// its own is not known apart from them, so plainUsec is left at zero when
	// scripts ran (see costTable).
	if scripts == 0 {
		for _, v := range a.cmds {
			plainUsec += v.usec
		}
	}
	return cmds, scripts, scriptUsec, plainUsec
}

// costPhase is one step of a task's life, measured over many tasks.
type costPhase struct {
	name string
	work redisWork
}

// costTable logs, per task, what each phase cost Redis: its CPU, the commands
// it ran and the script calls among them, and every command's calls and usec.
func costTable(tb testing.TB, title string, tasks int, phases []costPhase) redisWork {
	tb.Helper()
	var all redisWork
	var b strings.Builder
	fmt.Fprintf(&b, "%s, per task over %d tasks (CPU: INFO cpu of the Redis process; cmds: every command run, those inside scripts included; usec: INFO commandstats, inside Redis, wall time):\n", title, tasks)
	fmt.Fprintf(&b, "  %-8s %9s %7s %8s %12s   %s\n", "phase", "CPU µs", "cmds", "scripts", "script usec", "commands (calls/task, usec/task)")
	n := float64(tasks)
	for _, p := range phases {
		all = all.add(p.work)
		cmds, scripts, su, _ := p.work.totals()
		names := make([]string, 0, len(p.work.cmds))
		for k := range p.work.cmds {
			names = append(names, k)
		}
		slices.SortFunc(names, func(x, y string) int { return int(p.work.cmds[y].calls - p.work.cmds[x].calls) })
		var parts []string
		for _, k := range names {
			c := p.work.cmds[k]
			parts = append(parts, fmt.Sprintf("%s %.2g/%.1f", k, float64(c.calls)/n, float64(c.usec)/n))
		}
		fmt.Fprintf(&b, "  %-8s %9.1f %7.1f %8.2f %12.1f   %s\n", p.name, us(p.work.cpu)/n, float64(cmds)/n,
			float64(scripts)/n, float64(su)/n, strings.Join(parts, " "))
	}
	cmds, scripts, su, _ := all.totals()
	fmt.Fprintf(&b, "  %-8s %9.1f %7.1f %8.2f %12.1f\n", "total", us(all.cpu)/n, float64(cmds)/n, float64(scripts)/n, float64(su)/n)
	tb.Log(b.String())
	return all
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// costStore opens a Store on a Redis of its own, so nothing else's work is
// counted in its figures.
func costStore(tb testing.TB) (*Store, *redistest.Server) {
	rd := redistest.Start(tb)
	s, err := Open(tb.Context(), rd.URL(), store.Config{}, Options{Prefix: "cost"})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s, rd
}

// BenchmarkRedisCost measures what a task costs Redis, phase by phase, on a
// Redis of its own: its process's CPU (INFO cpu), the commands run and script
// calls made (INFO commandstats), per task. "single" runs single-agent tasks
// one after another (Dispatch, the agent's Lease, its Report, the GetTask of
// a waiter on the same replica), in phases of up to 250 tasks spread over 50
// agents; "fanout"
// dispatches to 200 agents at once, leases and reports every task, and reads
// the job once (a WaitJob's read). -v prints each phase's commands.
//
//	go test -run - -bench RedisCost -benchtime 2000x -v ./store/redisstore/
//
// The figures are per task (b.N tasks in all), reported as metrics:
// redis-cpu-µs/task (the target is ≤ 100 single, ≤ 30 fan-out), cmds/task and
// scripts/task. ns/op is wall time on the client and means little here.
func BenchmarkRedisCost(b *testing.B) {
	b.Run("single", func(b *testing.B) {
		c := newCostBench(b, 50, nil)
		ctx := b.Context()
		b.ResetTimer()
		for done := 0; done < b.N; {
			n := min(250, b.N-done)
			jobs := make([]store.Job, n)
			c.measure(b, 0, func() {
				for i := range jobs {
					j, err := c.s.Dispatch(ctx, store.JobSpec{Type: "echo", Payload: []byte("hi"),
						Target: store.Target{AgentID: c.creds[i%len(c.creds)].AgentID}, Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3})
					if err != nil {
						b.Fatal(err)
					}
					jobs[i] = j
				}
			})
			leased := c.leaseEach(b, n)
			// Each task has its waiter on this replica, as a WaitTask or a
			// Dispatch with wait would (see handover.go).
			waiters := make([]*store.Watcher, n)
			for i, t := range leased {
				waiters[i] = c.s.Watch(store.TaskKey(t.ID))
			}
			c.reportEach(b, leased)
			c.measure(b, 3, func() {
				for i, j := range jobs {
					if t, err := c.s.GetTask(ctx, j.TaskIDs[0]); err != nil || t.State != store.StateSucceeded {
						b.Fatalf("GetTask: %+v %v", t, err)
					}
					waiters[i].Stop()
				}
			})
			done += n
		}
		b.StopTimer()
		c.report(b, "single-agent tasks", b.N)
	})
	b.Run("fanout", func(b *testing.B) {
		const agents = 200
		c := newCostBench(b, agents, map[string]string{"fan": "1"})
		ctx := b.Context()
		rounds := max(1, b.N/agents)
		b.ResetTimer()
		for range rounds {
			var job store.Job
			c.measure(b, 0, func() {
				var err error
				job, err = c.s.Dispatch(ctx, store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{Selector: "fan=1", IncludeOffline: true},
					Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3})
				if err != nil || len(job.TaskIDs) != agents {
					b.Fatalf("Dispatch: %d tasks, %v", len(job.TaskIDs), err)
				}
			})
			c.reportEach(b, c.leaseEach(b, agents))
			c.measure(b, 3, func() {
				if j, err := c.s.GetJob(ctx, job.ID); err != nil || j.Counts.Succeeded != agents {
					b.Fatalf("GetJob: %+v %v", j.Counts, err)
				}
			})
		}
		b.StopTimer()
		c.report(b, fmt.Sprintf("fan-out tasks (%d agents a job)", agents), rounds*agents)
	})
}

// costBench is what BenchmarkRedisCost measures on: a Store on a Redis of its
// own, agents each holding a Poll, and the phases of a task's
// life with what each has cost so far.
type costBench struct {
	s      *Store
	rd     *redistest.Server
	creds  []store.Cred
	gens   []int64 // each agent's held Poll (see holdPolls)
	phases []costPhase
}

// newCostBench registers the agents, with the labels, and starts their Polls.
func newCostBench(b *testing.B, agents int, labels map[string]string) *costBench {
	c := &costBench{phases: []costPhase{{name: "create"}, {name: "lease"}, {name: "report"}, {name: "read"}}}
	c.s, c.rd = costStore(b)
	c.creds = make([]store.Cred, agents)
	for i := range c.creds {
		a, err := c.s.RegisterAgent(b.Context(), store.RegisterParams{Name: "n", Labels: labels, SecretHash: sum("s")})
		if err != nil {
			b.Fatal(err)
		}
		c.creds[i] = store.Cred{AgentID: a.ID, SecretHash: sum("s")}
	}
	c.gens = holdPolls(b, c.s, c.creds)
	return c
}

// measure runs f and adds what Redis did meanwhile to phase i.
func (c *costBench) measure(b *testing.B, i int, f func()) {
	w0 := readWork(b, c.rd)
	f()
	c.phases[i].work = c.phases[i].work.add(readWork(b, c.rd).sub(w0))
}

// leaseEach leases n tasks, the i-th by agent i (modulo the agents), as the
// held Poll's re-check would: the "lease" phase.
func (c *costBench) leaseEach(b *testing.B, n int) []store.Task {
	leased := make([]store.Task, n)
	c.measure(b, 1, func() {
		for i := range leased {
			k := i % len(c.creds)
			r, err := c.s.Lease(b.Context(), store.LeaseParams{Cred: c.creds[k], Max: 1, Lease: time.Minute, Hold: 25 * time.Second, Gen: c.gens[k]})
			if err != nil || len(r.Tasks) != 1 {
				b.Fatalf("Lease: %+v %v", r, err)
			}
			leased[i] = r.Tasks[0]
		}
	})
	return leased
}

// reportEach reports every task leaseEach returned as succeeded: the "report"
// phase.
func (c *costBench) reportEach(b *testing.B, leased []store.Task) {
	c.measure(b, 2, func() {
		for i, t := range leased {
			if _, err := c.s.Report(b.Context(), store.ReportParams{Cred: c.creds[i%len(c.creds)], TaskID: t.ID, Attempt: t.Attempt,
				Outcome: store.OutcomeSucceeded, Output: []byte("hi")}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// report logs the phases' table and reports the per-task figures as metrics.
func (c *costBench) report(b *testing.B, title string, tasks int) {
	all := costTable(b, title, tasks, c.phases)
	reportCost(b, all, tasks, c.phases)
}

// holdPolls starts a Poll of each agent (a Lease of generation 0) and returns
// their generations: the tasks are then leased as a held Poll's re-check
// leases them when a dispatch wakes it.
func holdPolls(b *testing.B, s *Store, creds []store.Cred) []int64 {
	gens := make([]int64, len(creds))
	for i, c := range creds {
		r, err := s.Lease(b.Context(), store.LeaseParams{Cred: c, Max: 1, Lease: time.Minute, Hold: 25 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		gens[i] = r.Gen
	}
	return gens
}

// reportCost reports a run's per-task figures as benchmark metrics.
func reportCost(b *testing.B, all redisWork, tasks int, phases []costPhase) {
	n := float64(tasks)
	cmds, scripts, _, _ := all.totals()
	b.ReportMetric(us(all.cpu)/n, "redis-cpu-µs/task")
	b.ReportMetric(float64(cmds)/n, "cmds/task")
	b.ReportMetric(float64(scripts)/n, "scripts/task")
	for _, p := range phases {
		b.ReportMetric(us(p.work.cpu)/n, p.name+"-cpu-µs/task")
	}
}

// BenchmarkScriptCallCost measures the fixed cost of one script call on a Redis
// of its own: an empty script (EVALSHA of "return 1"), an empty script after
// the prelude and shardLib (what every shard script pays before its first
// line: Redis runs the whole text on each call, so every local function and
// table of the prelude is made again), and an empty function of a library
// holding the same prelude (FUNCTION LOAD once, FCALL each time: Redis 7
// Functions). redis-cpu-µs/call is the Redis process's CPU (INFO cpu), usec/call
// the time inside the command (INFO commandstats).
//
//	go test -run - -bench ScriptCallCost -benchtime 5000x ./store/redisstore/
func BenchmarkScriptCallCost(b *testing.B) {
	s, rd := costStore(b)
	ctx := b.Context()
	lib := "#!lua name=forgecost\n" + prelude + "\nredis.register_function('empty', function(keys, args) return 1 end)\n"
	if err := s.client.Do(ctx, s.client.B().FunctionLoad().Replace().FunctionCode(lib).Build()).Error(); err != nil {
		b.Fatal(err)
	}
	tag := s.k.shard[0]
	args := s.shardArgs(tag, s.nowMS(), "x")
	withPrelude := shardScript("", `return {'OK'}`)
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"evalsha-empty", func() error { return emptyScript.Exec(ctx, s.client, nil, nil).Error() }},
		{"evalsha-prelude", func() error {
			return withPrelude.lua.Exec(ctx, s.client, withPrelude.keys([]string{tag + ":x"}, args), args).Error()
		}},
		{"fcall-prelude", func() error {
			return s.client.Do(ctx, s.client.B().Fcall().Function("empty").Numkeys(1).Key(tag+":x").Arg(args...).Build()).Error()
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			if err := c.call(); err != nil { // loads the script
				b.Fatal(err)
			}
			w0 := readWork(b, rd)
			for b.Loop() {
				if err := c.call(); err != nil {
					b.Fatal(err)
				}
			}
			w := readWork(b, rd).sub(w0)
			_, calls, usec, _ := w.totals()
			b.ReportMetric(us(w.cpu)/float64(b.N), "redis-cpu-µs/call")
			b.ReportMetric(float64(usec)/float64(max(calls, 1)), "usec/call")
		})
	}
}
