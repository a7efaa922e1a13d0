package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
)

// scale picks the default or the --quick figure.
func (r *runner) scale(def, quick int) int {
	if r.cfg.Quick {
		return quick
	}
	return def
}

func (r *runner) budget(def, quick time.Duration) time.Duration {
	if r.cfg.Quick {
		return quick
	}
	return def
}

func (r *runner) run(ctx context.Context, name string) []Result {
	var res []Result
	var err error
	switch name {
	case "ping":
		res, err = r.ping(ctx)
	case "roundtrip":
		res, err = r.roundTrip(ctx)
	case "runwait":
		res, err = r.runWait(ctx)
	case "crossreplica":
		res, err = r.crossReplica(ctx)
	case "cancel":
		res, err = r.cancelLatency(ctx)
	case "throughput":
		res, err = r.throughput(ctx)
	case "dispatchstart":
		res, err = r.dispatchStart(ctx)
	case "fanout":
		res, err = r.fanOut(ctx)
	case "idle":
		r.stopFleets()
		res, err = r.idle(ctx)
	case "storm":
		r.stopFleets()
		res, err = r.storm(ctx)
	case "scale":
		r.stopFleets()
		res, err = r.scaleOut(ctx)
	case "soak":
		r.stopFleets()
		res, err = r.soak(ctx)
	}
	if err != nil {
		res = append(res, Result{Scenario: name, Name: "failed", Summary: "error", Target: r.target(name), Note: err.Error(), failed: true})
	}
	return res
}

// onRedis tells whether the measured servers use Redis (in-process ones).
func (r *runner) onRedis() bool { return r.cfg.RedisURL != "" }

// Targets of the scenarios, as printed; the judging code beside each scenario
// uses the same figures.
func (r *runner) target(name string) string {
	switch name {
	case "roundtrip":
		return fmt.Sprintf("p50 ≤ %.1f× floor; p99 ≤ 10ms", r.floorLimit())
	case "runwait":
		return fmt.Sprintf("p50 ≤ %.1f× floor", r.floorLimit())
	case "crossreplica":
		return "p99 ≤ 2ms"
	case "cancel":
		return "p99 ≤ 100ms"
	case "throughput":
		if r.onRedis() {
			return "≥ 3,000 tasks/s; Redis CPU ≤ 100µs/task"
		}
		return "≥ 3,000 tasks/s"
	case "dispatchstart":
		return "p99 ≤ 5ms"
	case "fanout":
		if r.onRedis() {
			return "all results ≤ 1s; Redis CPU ≤ 30µs/task"
		}
		return "all results ≤ 1s"
	case "idle":
		if r.onRedis() {
			return "≤ 25 KB RSS/agent; CPU ≤ 3%; ≤ 1 Redis call/agent/window"
		}
		return "≤ 25 KB RSS/agent; CPU ≤ 3%"
	case "storm":
		return "all polling ≤ 30s; no error storm; none lost"
	case "scale":
		return "fan-out ≤ 15s; none lost"
	case "soak":
		return "no errors; RSS and Redis flat but for retained tasks"
	}
	return ""
}

// floorLimit is how far above its floor a round trip may be: 1.5× on memory,
// 2.0× on Redis.
func (r *runner) floorLimit() float64 {
	if r.onRedis() {
		return 2.0
	}
	return 1.5
}

// floorOf is the floor of a path of calls bare Connect calls (F) and trips
// Redis round trips it cannot avoid (R, counted on Redis only), with its label.
func (r *runner) floorOf(calls, trips int) (time.Duration, string) {
	d := time.Duration(calls) * r.floor
	label := fmt.Sprintf("%dF", calls)
	if r.rfloor > 0 && trips > 0 {
		d += time.Duration(trips) * r.rfloor
		label += fmt.Sprintf("+%dR", trips)
	}
	return d, label
}

// withFloor sets a latency row's floor and its p50 against it, and returns
// that ratio.
func (r *runner) withFloor(row *Result, calls, trips int) float64 {
	fl, label := r.floorOf(calls, trips)
	if fl <= 0 {
		return 0
	}
	p50 := time.Duration(row.Values["p50_us"] * 1e3)
	x := ratio(p50, fl)
	row.Floor = label + " " + fmtDur(fl)
	row.VsFloor = fmt.Sprintf("%.2f×", x)
	row.Values["floor_us"] = us(fl)
	row.Values["p50_vs_floor"] = x
	return x
}

// sample calls f up to n times or until the budget is spent, and returns the
// latencies it measured.
func sample(ctx context.Context, n int, budget time.Duration, f func(i int) (time.Duration, error)) ([]time.Duration, error) {
	end := time.Now().Add(budget)
	out := make([]time.Duration, 0, n)
	for i := 0; i < n && (i < 10 || time.Now().Before(end)); i++ {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		d, err := f(i)
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
	return out, nil
}

// latencyRow makes a row of a latency distribution.
func (r *runner) latencyRow(scenario, name string, lat []time.Duration) Result {
	d := newDist(lat)
	return Result{Scenario: scenario, Name: fmt.Sprintf("%s (n=%d)", name, len(d)), Target: r.target(scenario),
		Summary: fmt.Sprintf("p50 %s · p99 %s", fmtDur(d.p50()), fmtDur(d.p99())),
		Values:  map[string]float64{"n": float64(len(d)), "p50_us": us(d.p50()), "p90_us": us(d.q(.9)), "p99_us": us(d.p99()), "max_us": us(d.max())},
		Samples: lat}
}

// ---- the floor ----

// floorRow measures one floor: op warmed up, then timed sequentially; it
// returns the row, named floor, and the median.
func (r *runner) floorRow(ctx context.Context, desc, floor string, op func() error) (Result, time.Duration, error) {
	call := func(int) (time.Duration, error) {
		t0 := time.Now()
		err := op()
		return time.Since(t0), err
	}
	if _, err := sample(ctx, 300, time.Second, call); err != nil {
		return Result{}, 0, err
	}
	lat, err := sample(ctx, r.scale(5000, 200), r.budget(3*time.Second, 300*time.Millisecond), call)
	if err != nil {
		return Result{}, 0, err
	}
	row := r.latencyRow("ping", desc, lat)
	row.Target, row.Floor = "the floor", floor
	return row, newDist(lat).p50(), nil
}

func (r *runner) ping(ctx context.Context) ([]Result, error) {
	c := forgev1connect.NewPingServiceClient(r.opHTTP, r.url)
	row, p50, err := r.floorRow(ctx, "bare Connect call, sequential", "F", func() error {
		_, err := c.Ping(ctx, connect.NewRequest(&forgev1.PingRequest{}))
		return err
	})
	if err != nil {
		return nil, err
	}
	r.floor = p50
	rows := []Result{row}
	if rt, ok := r.st.(scriptRoundTripper); ok && r.onRedis() {
		// R: an empty script through the store's own Redis client, as the
		// store's calls go.
		rrow, p50, err := r.floorRow(ctx, "bare Redis script round trip (EVALSHA), sequential", "R", func() error {
			return rt.ScriptRoundTrip(ctx)
		})
		if err != nil {
			return nil, err
		}
		r.rfloor = p50
		rows = append(rows, rrow)
	}

	// Calls/s with as many callers as the throughput scenario's dispatchers.
	const callers = 64
	var n atomic.Int64
	var wg sync.WaitGroup
	span := r.budget(2*time.Second, 300*time.Millisecond)
	end := time.Now().Add(span)
	t0 := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				if _, err := c.Ping(ctx, connect.NewRequest(&forgev1.PingRequest{})); err == nil {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	r.floorRate = float64(n.Load()) / time.Since(t0).Seconds()
	rate := Result{Scenario: "ping", Name: fmt.Sprintf("bare Connect calls/s, %d callers", callers),
		Summary: fmt.Sprintf("%.0f calls/s", r.floorRate), Target: "the floor",
		Values: map[string]float64{"calls_per_s": r.floorRate}}
	return append(rows, rate), nil
}

// ---- one idle agent: round trip, run-and-wait, cancel ----

// single is one agent in its own fleet, with an echo handler and a handler that
// blocks until its context ends (for cancel).
type single struct {
	f       *fleet
	id      string
	started chan struct{}
	done    chan time.Time
}

func (r *runner) singleAgent(ctx context.Context) (*single, error) {
	if r.one != nil {
		return r.one, nil
	}
	s := &single{started: make(chan struct{}, 1), done: make(chan time.Time, 1)}
	base := r.held()
	f, err := r.startFleet(ctx, fleetSpec{n: 1, labels: map[string]string{"bench": "one"}, handlers: map[string]agent.Handler{
		"echo": agent.EchoHandler(),
		"block": func(ctx context.Context, t *agent.Task) ([]byte, error) {
			s.started <- struct{}{}
			<-ctx.Done()
			s.done <- time.Now()
			return nil, context.Cause(ctx)
		},
	}})
	if err != nil {
		return nil, err
	}
	s.f = f
	ids, err := f.ids(ctx, 10*time.Second)
	if err != nil {
		f.stop()
		return nil, err
	}
	s.id = ids[0]
	if !waitFor(ctx, 10*time.Second, func() bool { return r.held() >= base+1 }) {
		f.stop()
		return nil, errors.New("the agent never held a poll")
	}
	r.one = s
	return s, nil
}

func (r *runner) dispatchOne(ctx context.Context, id, typ string, wait time.Duration) (*forgev1.DispatchResponse, error) {
	req := &forgev1.DispatchRequest{Type: typ, Payload: []byte("x"), Target: &forgev1.DispatchRequest_AgentId{AgentId: id}}
	if wait > 0 {
		req.Wait = durationpb.New(wait)
	}
	res, err := r.ctl.Dispatch(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

func (r *runner) roundTrip(ctx context.Context) ([]Result, error) {
	s, err := r.singleAgent(ctx)
	if err != nil {
		return nil, err
	}
	call := func(int) (time.Duration, error) {
		t0 := time.Now()
		d, err := r.dispatchOne(ctx, s.id, "echo", 0)
		if err != nil {
			return 0, err
		}
		w, err := r.ctl.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: d.TaskIds[0], Wait: durationpb.New(10 * time.Second)}))
		if err != nil {
			return 0, err
		}
		if st := w.Msg.Task.GetState(); st != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			return 0, fmt.Errorf("task ended %s", st)
		}
		return time.Since(t0), nil
	}
	if _, err := sample(ctx, 100, time.Second, call); err != nil {
		return nil, err
	}
	b0, k0, _ := r.redisUsage(ctx)
	lat, err := sample(ctx, r.scale(3000, 50), r.budget(4*time.Second, 300*time.Millisecond), call)
	if err != nil {
		return nil, err
	}
	row := r.latencyRow("roundtrip", "Dispatch → handler → WaitTask, 1 agent", lat)
	r.retainedNote(ctx, &row, b0, k0, len(lat), "single-agent job, its task included")
	// The critical path: three calls (Dispatch; the Poll's answer and the
	// agent's report; WaitTask) and three Redis round trips (create, lease,
	// report).
	x := r.withFloor(&row, 3, 3)
	if !r.external() {
		row.Met = met(x <= r.floorLimit() && newDist(lat).p99() <= 10*time.Millisecond)
	}
	return []Result{row}, nil
}

func (r *runner) runWait(ctx context.Context) ([]Result, error) {
	s, err := r.singleAgent(ctx)
	if err != nil {
		return nil, err
	}
	call := func(int) (time.Duration, error) {
		t0 := time.Now()
		d, err := r.dispatchOne(ctx, s.id, "echo", 10*time.Second)
		if err != nil {
			return 0, err
		}
		if len(d.Tasks) != 1 || d.Tasks[0].State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			return 0, fmt.Errorf("run-and-wait answered without the finished task: %v", d.Tasks)
		}
		return time.Since(t0), nil
	}
	if _, err := sample(ctx, 100, time.Second, call); err != nil {
		return nil, err
	}
	lat, err := sample(ctx, r.scale(3000, 50), r.budget(4*time.Second, 300*time.Millisecond), call)
	if err != nil {
		return nil, err
	}
	row := r.latencyRow("runwait", "Dispatch with wait, 1 agent", lat)
	// Two calls (Dispatch with wait; the Poll's answer and the agent's report)
	// and the same three Redis round trips.
	x := r.withFloor(&row, 2, 3)
	if !r.external() {
		row.Met = met(x <= r.floorLimit())
	}
	return []Result{row}, nil
}

func (r *runner) cancelLatency(ctx context.Context) ([]Result, error) {
	s, err := r.singleAgent(ctx)
	if err != nil {
		return nil, err
	}
	call := func(int) (time.Duration, error) {
		d, err := r.dispatchOne(ctx, s.id, "block", 0)
		if err != nil {
			return 0, err
		}
		select {
		case <-s.started:
		case <-time.After(5 * time.Second):
			return 0, errors.New("the blocking handler did not start within 5s")
		}
		t0 := time.Now()
		if _, err := r.ctl.CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: d.TaskIds[0]})); err != nil {
			return 0, err
		}
		var lat time.Duration
		select {
		case t := <-s.done:
			lat = t.Sub(t0)
		case <-time.After(5 * time.Second):
			return 0, errors.New("the handler's context was not cancelled within 5s")
		}
		// Let the report land before the next task, untimed.
		w, err := r.ctl.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: d.TaskIds[0], Wait: durationpb.New(5 * time.Second)}))
		if err != nil {
			return 0, err
		}
		if st := w.Msg.Task.GetState(); st != forgev1.TaskState_TASK_STATE_CANCELED {
			return 0, fmt.Errorf("cancelled task ended %s", st)
		}
		return lat, nil
	}
	lat, err := sample(ctx, r.scale(500, 10), r.budget(3*time.Second, 300*time.Millisecond), call)
	if err != nil {
		return nil, err
	}
	row := r.latencyRow("cancel", "CancelTask → handler ctx done", lat)
	r.withFloor(&row, 1, 2) // CancelTask's request and the held Poll's answer; cancel, lease
	row.Met = met(newDist(lat).p99() <= 100*time.Millisecond)
	return []Result{row}, nil
}

// ---- two replicas ----

func (r *runner) crossReplica(ctx context.Context) ([]Result, error) {
	var urlA, urlB string
	held := func() int { return 0 }
	switch {
	case r.external() && len(r.cfg.Servers) < 2:
		return []Result{{Scenario: "crossreplica", Name: "Poll on A, Dispatch on B", Summary: "skipped", Target: r.target("crossreplica"),
			Note: "needs two replicas: --server A,B"}}, nil
	case r.external():
		urlA, urlB = r.cfg.Servers[0], r.cfg.Servers[1]
	default:
		// Memory: two servers over one memstore share its hub, as two replicas
		// share Redis. Redis: two servers over two redisstore clients.
		stB := r.st
		if r.cfg.RedisURL != "" {
			var err error
			if stB, err = r.openStore(ctx); err != nil {
				return nil, err
			}
			defer stB.Close()
		}
		a, err := r.startServer(r.st, "127.0.0.1:0", 0)
		if err != nil {
			return nil, err
		}
		defer a.close(ctx)
		b, err := r.startServer(stB, "127.0.0.1:0", 0)
		if err != nil {
			return nil, err
		}
		defer b.close(ctx)
		urlA, urlB, held = a.url, b.url, a.srv.HeldPolls
	}
	tr := newTransport(8)
	hc := &http.Client{Transport: agent.SingleWrite(tr)}
	defer tr.CloseIdleConnections()
	ag := forgev1connect.NewAgentServiceClient(hc, urlA)
	reg := connect.NewRequest(&forgev1.RegisterRequest{Name: "bench-xr", Labels: map[string]string{"bench": "xr"}, TaskTypes: []string{"echo"}})
	bearer.Set(reg.Header(), r.enroll)
	rr, err := ag.Register(ctx, reg)
	if err != nil {
		return nil, err
	}
	id, tok := rr.Msg.AgentId, rr.Msg.AgentToken
	authed := func(req connect.AnyRequest) { bearer.Set(req.Header(), tok) }
	ctlB := r.control(urlB)
	var early int
	call := func(int) (time.Duration, error) {
		type answer struct {
			at  time.Time
			res *forgev1.PollResponse
			err error
		}
		ch := make(chan answer, 1)
		go func() {
			req := connect.NewRequest(&forgev1.PollRequest{MaxTasks: proto.Int32(1), Wait: durationpb.New(10 * time.Second)})
			authed(req)
			res, err := ag.Poll(ctx, req)
			a := answer{at: time.Now(), err: err}
			if err == nil {
				a.res = res.Msg
			}
			ch <- a
		}()
		if r.external() {
			time.Sleep(5 * time.Millisecond)
		} else if !waitFor(ctx, 5*time.Second, func() bool { return held() >= 1 }) {
			return 0, errors.New("the poll was never held on replica A")
		}
		if _, err := ctlB.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"),
			Target: &forgev1.DispatchRequest_AgentId{AgentId: id}})); err != nil {
			return 0, err
		}
		answered := time.Now()
		a := <-ch
		if a.err != nil {
			return 0, a.err
		}
		if len(a.res.Tasks) != 1 {
			return 0, errors.New("the held poll answered without the task")
		}
		t := a.res.Tasks[0]
		rep := connect.NewRequest(&forgev1.ReportResultRequest{TaskId: t.Id, Attempt: t.Attempt, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED})
		authed(rep)
		if _, err := ag.ReportResult(ctx, rep); err != nil {
			return 0, err
		}
		d := a.at.Sub(answered)
		if d < 0 { // the poll answered before the dispatch did
			early++
			d = 0
		}
		return d, nil
	}
	lat, err := sample(ctx, r.scale(1000, 10), r.budget(3*time.Second, 300*time.Millisecond), call)
	if err != nil {
		return nil, err
	}
	row := r.latencyRow("crossreplica", "Dispatch answer (B) → Poll answer (A)", lat)
	row.Met = met(newDist(lat).p99() <= 2*time.Millisecond)
	row.Note = fmt.Sprintf("%d of %d polls answered before the dispatch did (counted as 0)", early, len(lat))
	return []Result{row}, nil
}

// ---- fleets ----

// redisCPUNote says which Redis figure of a row is which.
const redisCPUNote = "Redis CPU is the Redis process's own CPU time (INFO cpu, user+sys: commands, scripts and networking), " +
	"which other load on the machine does not inflate; scripts' time is the time inside script calls (INFO commandstats usec " +
	"of FCALL/EVALSHA, the commands they run included), wall time that grows when Redis waits for a core"

func (r *runner) throughput(ctx context.Context) ([]Result, error) {
	const n = 100
	base := r.held()
	f, err := r.startFleet(ctx, fleetSpec{n: n, labels: map[string]string{"bench": "tp"},
		handlers: map[string]agent.Handler{"echo": agent.EchoHandler()}})
	if err != nil {
		return nil, err
	}
	defer f.stop()
	ids, err := f.ids(ctx, 30*time.Second)
	if err != nil {
		return nil, err
	}
	if !waitFor(ctx, 30*time.Second, func() bool { return r.held() >= base+n }) {
		return nil, fmt.Errorf("only %d of %d agents held a poll", r.held()-base, n)
	}
	span := r.budget(4*time.Second, 300*time.Millisecond)
	type outcome struct {
		rate   float64
		failed int64
		tasks  int64
		redis  redisStat
		rerr   error
	}
	run := func(callers int, req func(i int) *forgev1.DispatchRequest) (outcome, error) {
		var done, failed atomic.Int64
		var wg sync.WaitGroup
		end := time.Now().Add(span)
		t0 := time.Now()
		var firstErr atomic.Value
		rs0, rerr := r.redisStats(ctx)
		for g := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; time.Now().Before(end) && ctx.Err() == nil; i += callers {
					res, err := r.ctl.Dispatch(ctx, connect.NewRequest(req(i)))
					if err != nil {
						firstErr.CompareAndSwap(nil, err)
						failed.Add(1)
						time.Sleep(10 * time.Millisecond)
						continue
					}
					done.Add(int64(res.Msg.Counts.GetSucceeded()))
					failed.Add(int64(len(res.Msg.TaskIds)) - int64(res.Msg.Counts.GetSucceeded()))
				}
			}()
		}
		wg.Wait()
		o := outcome{rate: float64(done.Load()) / time.Since(t0).Seconds(), failed: failed.Load(), tasks: done.Load() + failed.Load(), rerr: rerr}
		if rerr == nil {
			var rs1 redisStat
			rs1, o.rerr = r.redisStats(ctx)
			o.redis = rs1.sub(rs0)
		}
		if e, ok := firstErr.Load().(error); ok && done.Load() == 0 {
			return o, e
		}
		return o, nil
	}
	wait := durationpb.New(10 * time.Second)
	single, err := run(64, func(i int) *forgev1.DispatchRequest {
		return &forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"), Wait: wait,
			Target: &forgev1.DispatchRequest_AgentId{AgentId: ids[i%n]}}
	})
	if err != nil {
		return nil, err
	}
	batch, err := run(4, func(int) *forgev1.DispatchRequest {
		return &forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"), Wait: wait,
			Target: &forgev1.DispatchRequest_Selector{Selector: "bench=tp"}}
	})
	if err != nil {
		return nil, err
	}
	row := func(name string, o outcome, cpuLimit time.Duration) Result {
		res := Result{Scenario: "throughput", Name: name, Summary: fmt.Sprintf("%.0f tasks/s", o.rate),
			Target: r.target("throughput"), Values: map[string]float64{"tasks_per_s": o.rate, "not_succeeded": float64(o.failed)}}
		ok := o.failed == 0 && o.rate >= 3000
		if r.floorRate > 0 {
			// Each task costs at least three calls: Dispatch, the Poll that
			// carries it, the report.
			fl := r.floorRate / 3
			res.Floor = fmt.Sprintf("F/s÷3 %.0f/s", fl)
			res.VsFloor = fmt.Sprintf("%.0f%%", 100*o.rate/fl)
			res.Values["floor_tasks_per_s"] = fl
		}
		var notes []string
		if r.onRedis() {
			if o.rerr != nil {
				notes = append(notes, "Redis not read: "+o.rerr.Error())
			} else if o.tasks > 0 {
				perCPU := o.redis.CPU / time.Duration(o.tasks)
				res.Summary += fmt.Sprintf("; per task: Redis CPU %s (scripts' time %s), %.1f cmds (%.1f script calls)", fmtDur(perCPU),
					fmtDur(o.redis.ScriptTime/time.Duration(o.tasks)), float64(o.redis.Cmds)/float64(o.tasks), float64(o.redis.Scripts)/float64(o.tasks))
				notes = append(notes, redisCPUNote)
				res.Values["redis_cpu_us_per_task"] = us(perCPU)
				res.Values["redis_script_time_us_per_task"] = us(o.redis.ScriptTime / time.Duration(o.tasks))
				res.Values["redis_cmds_per_task"] = float64(o.redis.Cmds) / float64(o.tasks)
				res.Values["redis_script_calls_per_task"] = float64(o.redis.Scripts) / float64(o.tasks)
				ok = ok && perCPU <= cpuLimit
			}
		}
		res.Met = met(ok)
		if o.failed > 0 {
			notes = append(notes, fmt.Sprintf("%d tasks did not succeed", o.failed))
		}
		res.Note = strings.Join(notes, "; ")
		return res
	}
	return []Result{
		row(fmt.Sprintf("%d agents, 1 task per Dispatch (wait), 64 callers", n), single, 100*time.Microsecond),
		row(fmt.Sprintf("%d agents, 1 Dispatch (wait) to all, 4 callers", n), batch, 30*time.Microsecond),
	}, nil
}

// fleetK is the 1,000-agent fleet dispatchstart and fanout share; its "start"
// handler tells when it started.
func (r *runner) fleetK(ctx context.Context) (*fleet, []string, error) {
	if r.kf != nil {
		return r.kf, r.kids, nil
	}
	n := r.scale(1000, 20)
	base := r.held()
	r.kstart = make(chan time.Time, 1)
	f, err := r.startFleet(ctx, fleetSpec{n: n, labels: map[string]string{"bench": "k"}, handlers: map[string]agent.Handler{
		"echo": agent.EchoHandler(),
		"start": func(ctx context.Context, t *agent.Task) ([]byte, error) {
			r.kstart <- time.Now()
			return nil, nil
		},
	}})
	if err != nil {
		return nil, nil, err
	}
	ids, err := f.ids(ctx, time.Minute)
	if err != nil {
		f.stop()
		return nil, nil, err
	}
	if !waitFor(ctx, time.Minute, func() bool { return r.held() >= base+n }) {
		f.stop()
		return nil, nil, fmt.Errorf("only %d of %d agents held a poll", r.held()-base, n)
	}
	r.kf, r.kids = f, ids
	return f, ids, nil
}

func (r *runner) stopFleets() {
	if r.kf != nil {
		r.kf.stop()
		r.kf = nil
	}
	if r.one != nil {
		r.one.f.stop()
		r.one = nil
	}
}

func (r *runner) dispatchStart(ctx context.Context) ([]Result, error) {
	_, ids, err := r.fleetK(ctx)
	if err != nil {
		return nil, err
	}
	order := rand.Perm(len(ids))
	call := func(i int) (time.Duration, error) {
		t0 := time.Now()
		if _, err := r.dispatchOne(ctx, ids[order[i%len(ids)]], "start", 0); err != nil {
			return 0, err
		}
		select {
		case t := <-r.kstart:
			return t.Sub(t0), nil
		case <-time.After(5 * time.Second):
			return 0, errors.New("the handler did not start within 5s")
		}
	}
	lat, err := sample(ctx, r.scale(1000, 20), r.budget(3*time.Second, 300*time.Millisecond), call)
	if err != nil {
		return nil, err
	}
	row := r.latencyRow("dispatchstart", fmt.Sprintf("Dispatch → handler start, %d agents holding polls", len(ids)), lat)
	r.withFloor(&row, 1, 2) // Dispatch's request and the Poll's answer; create, lease
	row.Met = met(newDist(lat).p99() <= 5*time.Millisecond)
	return []Result{row}, nil
}

func (r *runner) fanOut(ctx context.Context) ([]Result, error) {
	_, ids, err := r.fleetK(ctx)
	if err != nil {
		return nil, err
	}
	call := func(int) (time.Duration, error) {
		t0 := time.Now()
		res, err := r.ctl.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"),
			Target: &forgev1.DispatchRequest_Selector{Selector: "bench=k"}, Wait: durationpb.New(30 * time.Second)}))
		if err != nil {
			return 0, err
		}
		if got := int(res.Msg.Counts.GetSucceeded()); got != len(ids) {
			return 0, fmt.Errorf("%d of %d tasks succeeded (counts %v)", got, len(ids), res.Msg.Counts)
		}
		return time.Since(t0), nil
	}
	rs0, rerr := r.redisStats(ctx)
	b0, k0, _ := r.redisUsage(ctx)
	lat, err := sample(ctx, r.scale(5, 1), r.budget(10*time.Second, time.Second), call)
	if err != nil {
		return nil, err
	}
	var rs redisStat
	if rerr == nil {
		var rs1 redisStat
		rs1, rerr = r.redisStats(ctx)
		rs = rs1.sub(rs0)
	}
	d := newDist(lat)
	row := r.latencyRow("fanout", fmt.Sprintf("1 Dispatch (wait) → %d agents, all results", len(ids)), lat)
	r.retainedNote(ctx, &row, b0, k0, len(lat)*len(ids), "fan-out task")
	row.Summary = fmt.Sprintf("p50 %s · max %s", fmtDur(d.p50()), fmtDur(d.max()))
	ok := d.max() <= time.Second
	if r.onRedis() {
		if rerr != nil {
			row.Note = "Redis not read: " + rerr.Error()
		} else {
			tasks := int64(len(lat) * len(ids))
			perCPU := rs.CPU / time.Duration(tasks)
			row.Summary += fmt.Sprintf("; per task: Redis CPU %s (scripts' time %s), %.1f cmds (%.2f script calls)", fmtDur(perCPU),
				fmtDur(rs.ScriptTime/time.Duration(tasks)), float64(rs.Cmds)/float64(tasks), float64(rs.Scripts)/float64(tasks))
			row.Note = strings.TrimPrefix(row.Note+"; "+redisCPUNote, "; ")
			row.Values["redis_cpu_us_per_task"] = us(perCPU)
			row.Values["redis_script_time_us_per_task"] = us(rs.ScriptTime / time.Duration(tasks))
			row.Values["redis_cmds_per_task"] = float64(rs.Cmds) / float64(tasks)
			row.Values["redis_script_calls_per_task"] = float64(rs.Scripts) / float64(tasks)
			ok = ok && perCPU <= 30*time.Microsecond
		}
	}
	row.Met = met(ok)
	return []Result{row}, nil
}
