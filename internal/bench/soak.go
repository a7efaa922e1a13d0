package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// soakAgents is the soak's fleet; soakCallers dispatch at once.
const soakAgents, soakCallers = 10, 4

// soakSample is one reading of the soak: the server child's RSS and what
// Redis holds, with the tasks dispatched by then.
type soakSample struct {
	at          time.Duration
	rss         float64
	redis, keys int64
	tasks       int64
}

// soak runs a mixed load for Config.SoakDuration against `forge server` as a
// child process (on Redis when --redis is given) and samples the server's RSS
// and Redis' memory and keys as it goes: whether either grows beyond what the
// retained tasks explain. Of every 20 dispatches, 14 are single-agent
// run-and-wait jobs, 5 fan-outs to every agent (waited for) and 1 a rollout
// to every agent (max_concurrency 1) canceled at once. Not in the default run.
func (r *runner) soak(ctx context.Context) ([]Result, error) {
	if r.external() || r.cfg.ServerExe == "" {
		return nil, fmt.Errorf("the soak runs `forge server` as a child process: it needs this binary (ServerExe) and no --server")
	}
	dur := r.cfg.SoakDuration
	if dur <= 0 {
		dur = r.budget(5*time.Minute, 5*time.Second)
	}
	c, err := r.startChild(ctx, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	pid := c.cmd.Process.Pid
	f, err := r.startFleet(ctx, fleetSpec{n: soakAgents, servers: []string{c.url}, labels: map[string]string{"bench": "soak"},
		handlers: map[string]agent.Handler{"echo": agent.EchoHandler()}})
	if err != nil {
		return nil, err
	}
	defer f.stop()
	ids, err := f.ids(ctx, time.Minute)
	if err != nil {
		return nil, err
	}
	ctl := r.control(c.url)

	var tasks, errs atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
	}
	wait := durationpb.New(30 * time.Second)
	var n atomic.Int64
	one := func() {
		i := n.Add(1)
		switch k := i % 20; {
		case k < 14:
			res, err := ctl.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
				Target: &forgev1.DispatchRequest_AgentId{AgentId: ids[int(i)%len(ids)]}, Wait: wait}))
			if err != nil {
				fail(err)
				return
			}
			tasks.Add(1)
			if got := res.Msg.GetCounts().GetSucceeded(); got != 1 {
				fail(fmt.Errorf("a run-and-wait job ended with counts %v", res.Msg.GetCounts()))
			}
		case k < 19:
			res, err := ctl.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
				Target: &forgev1.DispatchRequest_Selector{Selector: "bench=soak"}, Wait: wait}))
			if err != nil {
				fail(err)
				return
			}
			tasks.Add(int64(len(res.Msg.GetTaskIds())))
			if got := int(res.Msg.GetCounts().GetSucceeded()); got != len(ids) {
				fail(fmt.Errorf("a fan-out ended with counts %v", res.Msg.GetCounts()))
			}
		default:
			res, err := ctl.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
				Target: &forgev1.DispatchRequest_Selector{Selector: "bench=soak"}, MaxConcurrency: 1}))
			if err != nil {
				fail(err)
				return
			}
			tasks.Add(int64(len(res.Msg.GetTaskIds())))
			if _, err := ctl.CancelJob(ctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: res.Msg.GetJobId(), Reason: "soak"})); err != nil {
				fail(err)
			}
		}
	}

	t0 := time.Now()
	sample := func() soakSample {
		s := soakSample{at: time.Since(t0).Round(time.Second), tasks: tasks.Load()}
		s.rss, _ = rss(pid)
		s.redis, s.keys, _ = r.redisUsage(ctx)
		return s
	}
	samples := []soakSample{sample()}
	lctx, stop := context.WithTimeout(ctx, dur)
	defer stop()
	var wg sync.WaitGroup
	for range soakCallers {
		wg.Go(func() {
			for lctx.Err() == nil {
				one()
			}
		})
	}
	every := max(dur/10, time.Second)
	tick := time.NewTicker(every)
	for done := false; !done; {
		select {
		case <-tick.C:
			samples = append(samples, sample())
		case <-lctx.Done():
			done = true
		}
	}
	tick.Stop()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	last := sample()
	samples = append(samples, last)
	first := samples[0]
	peak := first.rss
	for _, s := range samples {
		peak = max(peak, s.rss)
	}
	nt := last.tasks
	vals := map[string]float64{"seconds": dur.Seconds(), "tasks": float64(nt), "errors": float64(errs.Load()),
		"rss_start_bytes": first.rss, "rss_peak_bytes": peak, "rss_end_bytes": last.rss}
	summary := fmt.Sprintf("%d tasks, %d errors; RSS %.1f → %.1f MB (peak %.1f)", nt, errs.Load(), first.rss/(1<<20), last.rss/(1<<20), peak/(1<<20))
	note := fmt.Sprintf("%s of load from %d callers (of 20 dispatches: 14 run-and-wait to one agent, 5 fan-outs to %d agents waited for, 1 rollout canceled at once); server as a child process (VmRSS)",
		dur, soakCallers, len(ids))
	if r.onRedis() && first.redis > 0 && nt > 0 {
		per, keys := float64(last.redis-first.redis)/float64(nt), float64(last.keys-first.keys)/float64(nt)
		vals["redis_start_bytes"], vals["redis_end_bytes"] = float64(first.redis), float64(last.redis)
		vals["redis_bytes_per_task"], vals["redis_keys_per_task"] = per, keys
		summary += fmt.Sprintf("; Redis %.1f → %.1f MB, %.0f B and %.2f keys per task", float64(first.redis)/(1<<20), float64(last.redis)/(1<<20), per, keys)
	}
	var b strings.Builder
	for i, s := range samples {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d tasks, RSS %.1f MB", s.at, s.tasks, s.rss/(1<<20))
		if s.redis > 0 {
			fmt.Fprintf(&b, ", Redis %.1f MB", float64(s.redis)/(1<<20))
		}
	}
	note += "; samples " + b.String()
	if e, ok := firstErr.Load().(string); ok {
		note += "; first error: " + e
	}
	row := Result{Scenario: "soak", Name: fmt.Sprintf("%s mixed load, %d agents", dur, len(ids)), Summary: summary,
		Target: r.target("soak"), Note: note, Values: vals}
	row.Met = met(errs.Load() == 0)
	return []Result{row}, nil
}
