//go:build linux

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// JobRecord is a job the driver dispatched and the server accepted.
type JobRecord struct {
	ID      string
	Kind    string // single, long, timeout, fanout, rollout
	Target  string
	MC, MF  int32
	Timeout time.Duration
	Spec    TaskSpec
	TaskIDs []string
	At      time.Time
}

// CancelRecord is a cancel the driver asked for.
type CancelRecord struct {
	ID  string // task or job id
	Job bool
	At  time.Time
	OK  bool // accepted (the task or job was live)
	Err string
}

// driver dispatches steadily through the control API: single-agent tasks, long
// ones (more likely to meet a fault), ones that time out, fan-outs with
// max_concurrency and max_failures, and cancels of tasks and jobs. Its choices
// come from its own seeded generator.
type driver struct {
	ctl      *control
	rng      *rand.Rand
	bin      string // the chaosagent binary tasks exec
	agents   []string
	groups   int
	interval time.Duration
	seed     int64
	logf     func(string, ...any)
	total    int // agents there are; after a store wipe, how many to wait for

	mu      sync.Mutex
	stale   bool // the store was wiped: agent ids are to be read again
	wipedAt time.Time
	// reenrolled holds, per store wipe, how long until every agent was online
	// again under a new id.
	reenrolled []time.Duration
	jobs       []JobRecord
	cancels    []CancelRecord
	refused    int // dispatches the server refused or that failed after retries
	sent       int
	failures   []string
}

// run takes a step every interval until ctx ends; a step under way finishes
// (its calls are not cut short, so no dispatch is left half acknowledged).
func (d *driver) run(ctx context.Context) {
	t := time.NewTicker(d.interval)
	defer t.Stop()
	calls := context.WithoutCancel(ctx)
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.step(calls, n)
	}
}

func (d *driver) step(ctx context.Context, n int) {
	d.reloadAgents(ctx)
	r := d.rng.Float64()
	d.mu.Lock()
	agentID := d.agents[d.rng.IntN(len(d.agents))]
	d.mu.Unlock()
	sleep := time.Duration(50+d.rng.IntN(1450)) * time.Millisecond
	switch {
	case r < 0.45:
		spec := TaskSpec{Sleep: sleep}
		if d.rng.IntN(10) == 0 {
			spec.Fail = true
		}
		d.dispatch(ctx, n, "single", &forgev1.DispatchRequest{Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}, spec, 30*time.Second)
	case r < 0.55:
		spec := TaskSpec{Sleep: time.Duration(3000+d.rng.IntN(3000)) * time.Millisecond}
		d.dispatch(ctx, n, "long", &forgev1.DispatchRequest{Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}, spec, 30*time.Second)
	case r < 0.60:
		// Half stop at once when their time is up (the agent's own deadline ends
		// them), half linger past it (the server's reaper finds them first).
		spec := TaskSpec{Sleep: 5 * time.Second}
		if d.rng.IntN(2) == 0 {
			spec.Linger = 2 * time.Second
		}
		d.dispatch(ctx, n, "timeout", &forgev1.DispatchRequest{Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}, spec, time.Second)
	case r < 0.70:
		spec := TaskSpec{Sleep: time.Duration(200+d.rng.IntN(800)) * time.Millisecond, FailMod: 3}
		g := d.rng.IntN(d.groups)
		d.dispatch(ctx, n, "rollout", &forgev1.DispatchRequest{Target: &forgev1.DispatchRequest_Selector{Selector: fmt.Sprintf("group=g%d", g)},
			MaxConcurrency: 2, MaxFailures: 2}, spec, 30*time.Second)
	case r < 0.74:
		spec := TaskSpec{Sleep: time.Duration(100+d.rng.IntN(400)) * time.Millisecond}
		d.dispatch(ctx, n, "fanout", &forgev1.DispatchRequest{Target: &forgev1.DispatchRequest_All{All: true}, MaxConcurrency: 5}, spec, 30*time.Second)
	case r < 0.86:
		if id, ok := d.pickTask(); ok {
			d.cancel(ctx, id, false)
		}
	case r < 0.89:
		if id, ok := d.pickJob(); ok {
			d.cancel(ctx, id, true)
		}
	}
}

func (d *driver) dispatch(ctx context.Context, n int, kind string, req *forgev1.DispatchRequest, spec TaskSpec, timeout time.Duration) {
	payload, _ := json.Marshal(agent.ExecPayload{Argv: spec.Argv(d.bin)})
	req.Type = "exec"
	req.Payload = payload
	req.Timeout = durationpb.New(timeout)
	req.DeliveryTtl = durationpb.New(5 * time.Minute)
	req.MaxAttempts = 3
	req.IdempotencyKey = fmt.Sprintf("chaos-%d-%d", d.seed, n)
	at := time.Now()
	var res *connect.Response[forgev1.DispatchResponse]
	err := d.ctl.call(ctx, 30*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
		var err error
		res, err = c.Dispatch(ctx, connect.NewRequest(req))
		return err
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sent++
	if err != nil {
		d.refused++
		d.failures = append(d.failures, fmt.Sprintf("dispatch %s %s: %v", kind, req.IdempotencyKey, err))
		return
	}
	target := "all"
	switch tg := req.Target.(type) {
	case *forgev1.DispatchRequest_AgentId:
		target = tg.AgentId
	case *forgev1.DispatchRequest_Selector:
		target = tg.Selector
	}
	d.jobs = append(d.jobs, JobRecord{ID: res.Msg.JobId, Kind: kind, Target: target, MC: req.MaxConcurrency, MF: req.MaxFailures,
		Timeout: timeout, Spec: spec, TaskIDs: res.Msg.TaskIds, At: at})
}

// storeWiped tells the driver that the store lost every agent: the ids it
// dispatches to are gone, and the agents enroll again under new ones.
func (d *driver) storeWiped() {
	d.mu.Lock()
	if !d.stale {
		d.wipedAt = time.Now()
	}
	d.stale = true
	d.mu.Unlock()
}

// reloadAgents reads the agent ids again after a store wipe, at each step until
// every agent has enrolled again. Until one has, single-agent tasks go to the
// old ids and are refused (agent unknown), which the run notes, not judges.
func (d *driver) reloadAgents(ctx context.Context) {
	d.mu.Lock()
	stale := d.stale
	d.mu.Unlock()
	if !stale {
		return
	}
	var ids []string
	err := d.ctl.call(ctx, 5*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
		ids = nil
		res, err := c.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{PageSize: 1000}))
		if err != nil {
			return err
		}
		for _, a := range res.Msg.Agents {
			if a.Status == forgev1.AgentStatus_AGENT_STATUS_ONLINE {
				ids = append(ids, a.Id)
			}
		}
		return nil
	})
	if err != nil || len(ids) == 0 {
		return
	}
	slices.Sort(ids)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.agents = ids
	if len(ids) >= d.total {
		d.stale = false
		took := time.Since(d.wipedAt)
		d.reenrolled = append(d.reenrolled, took)
		d.logf("driver: %d agents enrolled again %s after the store wipe", len(ids), took.Round(time.Millisecond))
	}
}

// waitReenrolled waits, up to bound, until every agent has enrolled again after
// the last store wipe, and returns how long each wipe's took.
func (d *driver) waitReenrolled(ctx context.Context, bound time.Duration) []time.Duration {
	deadline := time.Now().Add(bound)
	for {
		d.reloadAgents(ctx)
		d.mu.Lock()
		stale, out := d.stale, slices.Clone(d.reenrolled)
		d.mu.Unlock()
		if !stale || time.Now().After(deadline) || ctx.Err() != nil {
			return out
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pickTask returns a task dispatched in the last few seconds (likely live).
func (d *driver) pickTask() (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var recent []string
	for i := len(d.jobs) - 1; i >= 0 && time.Since(d.jobs[i].At) < 5*time.Second; i-- {
		recent = append(recent, d.jobs[i].TaskIDs...)
	}
	if len(recent) == 0 {
		return "", false
	}
	return recent[d.rng.IntN(len(recent))], true
}

// pickJob returns a fan-out dispatched in the last few seconds.
func (d *driver) pickJob() (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var recent []string
	for i := len(d.jobs) - 1; i >= 0 && time.Since(d.jobs[i].At) < 5*time.Second; i-- {
		if len(d.jobs[i].TaskIDs) > 1 {
			recent = append(recent, d.jobs[i].ID)
		}
	}
	if len(recent) == 0 {
		return "", false
	}
	return recent[d.rng.IntN(len(recent))], true
}

func (d *driver) cancel(ctx context.Context, id string, job bool) {
	at := time.Now()
	err := d.ctl.call(ctx, 30*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
		var err error
		if job {
			_, err = c.CancelJob(ctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: id, Reason: "chaos"}))
		} else {
			_, err = c.CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: id, Reason: "chaos"}))
		}
		return err
	})
	rec := CancelRecord{ID: id, Job: job, At: at, OK: err == nil}
	if err != nil {
		rec.Err = err.Error()
	}
	d.mu.Lock()
	d.cancels = append(d.cancels, rec)
	d.mu.Unlock()
}
