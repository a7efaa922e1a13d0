package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// held returns how many Polls the measured server holds now.
func (r *runner) held() int {
	if r.main != nil {
		return r.main.srv.HeldPolls()
	}
	v, _ := scrape(r.opHTTP, r.url, "forge_polls_held")
	return int(v)
}

// scrape reads one unlabelled metric from a server's /metrics.
func scrape(hc *http.Client, url, name string) (float64, error) {
	res, err := hc.Get(url + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// child is `forge server` running as a child process, so its memory and CPU
// are its own.
type child struct {
	cmd *exec.Cmd
	url string
	// debugURL is where it serves its profiles, when started with --debug-listen.
	debugURL string
}

func (r *runner) startChild(ctx context.Context, pollHold time.Duration) (*child, error) {
	args := []string{"server", "--listen", "127.0.0.1:0", "--enroll-token", r.enroll, "--admin-token", r.admin,
		"--poll-hold", pollHold.String(), "--log-level", "error", "--register-rate", "0", "--register-rate-per-addr", "0", "--max-targets", "0"}
	if r.cfg.RedisURL != "" {
		args = append(args, "--redis", r.cfg.RedisURL)
		args = append(args, r.cfg.RedisArgs...)
	}
	if r.cfg.IdleProfile != "" {
		args = append(args, "--debug-listen", "127.0.0.1:0")
	}
	return r.startChildArgs(ctx, args)
}

// startChildArgs starts this binary with args (a `forge server` command line)
// and waits until it says where it listens.
// childStart bounds a child server's start: a replica restarted under a fleet
// of 10,000 agents retrying against its address, on a loaded machine, took more
// than 15 s to open its store and listen at 50,000 agents.
const childStart = time.Minute

func (r *runner) startChildArgs(ctx context.Context, args []string) (*child, error) {
	cmd := exec.CommandContext(ctx, r.cfg.ServerExe, args...)
	cmd.Env = childEnv()
	dieWithParent(cmd)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	// Replicas log at level error: what they print (and a panic) is worth
	// seeing next to the table.
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	urls := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		var api string
		for sc.Scan() {
			line := sc.Text()
			if u, ok := strings.CutPrefix(line, "forge server listening on "); ok {
				api = strings.TrimSpace(u)
			}
			// The debug line, when there is one, comes before the first
			// line that is neither (the store's line comes right after).
			d, isDebug := strings.CutPrefix(line, "debug (profiles, runtime metrics): ")
			if api != "" && !strings.HasPrefix(line, "forge server listening on ") {
				var debug string
				if isDebug {
					debug, _, _ = strings.Cut(d, "/debug/")
				}
				urls <- [2]string{api, debug}
				for sc.Scan() {
				}
				return
			}
		}
	}()
	select {
	case u := <-urls:
		return &child{cmd: cmd, url: u[0], debugURL: u[1]}, nil
	case <-time.After(childStart):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("the child server did not start within %s", childStart)
	}
}

func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// rss returns the process's resident set in bytes.
func rss(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// cpuTime returns the user+system CPU time the process used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100), nil // USER_HZ is 100 on Linux
}

// idle measures a server holding the Polls of N idle agents: its memory per
// waiting agent, its CPU while they wait through a poll window (each agent
// renews its Poll once), and with Redis the commands per agent per window.
func (r *runner) idle(ctx context.Context) ([]Result, error) {
	n := r.scale(r.cfg.Agents, min(r.cfg.Agents, 200))
	hold := r.budget(25*time.Second, 2*time.Second)
	name := fmt.Sprintf("%d idle agents long-polling (hold %s)", n, hold)
	if r.external() || r.cfg.ServerExe == "" {
		why := "external server: its memory and CPU cannot be read from here"
		if !r.external() {
			why = "no forge binary to run the server as a child process (ServerExe)"
		}
		return []Result{{Scenario: "idle", Name: name, Summary: "not measured", Target: r.target("idle"), Note: why}}, nil
	}
	c, err := r.startChild(ctx, hold)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	pid := c.cmd.Process.Pid
	time.Sleep(300 * time.Millisecond)
	rss0, err := rss(pid)
	if err != nil {
		return nil, err
	}
	heap0, err := scrape(r.opHTTP, c.url, "go_memstats_heap_inuse_bytes")
	if err != nil {
		return nil, err
	}
	prof := r.idleProfiler(c)
	prof.save("runtime-metrics-before.txt", "/debug/runtime-metrics")
	t0 := time.Now()
	f, err := r.startFleet(ctx, fleetSpec{n: n, servers: []string{c.url}, labels: map[string]string{"bench": "idle"},
		handlers: map[string]agent.Handler{"echo": agent.EchoHandler()}})
	if err != nil {
		return nil, err
	}
	defer f.stop()
	heldN := func() int { v, _ := scrape(r.opHTTP, c.url, "forge_polls_held"); return int(v) }
	if !waitFor(ctx, 2*time.Minute, func() bool { return heldN() >= n }) {
		return nil, fmt.Errorf("only %d of %d agents held a poll after 2 min (open file limit %d)", heldN(), n, fileLimit())
	}
	settle := time.Since(t0)
	time.Sleep(500 * time.Millisecond)
	rss1, _ := rss(pid)
	heap1, _ := scrape(r.opHTTP, c.url, "go_memstats_heap_inuse_bytes")
	prof.save("runtime-metrics-held.txt", "/debug/runtime-metrics")
	prof.save("goroutines-held.txt", "/debug/pprof/goroutine?debug=1")
	prof.save("heap-held.pb.gz", "/debug/pprof/heap")
	cpu0, _ := cpuTime(pid)
	rs0, redisErr := r.redisStats(ctx)
	w0 := time.Now()
	cpuProf := prof.start("cpu-window.pb.gz", fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(hold.Seconds())))
	select {
	case <-time.After(hold):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	window := time.Since(w0)
	cpu1, _ := cpuTime(pid)
	cpuProf()
	prof.save("runtime-metrics-after-window.txt", "/debug/runtime-metrics")
	prof.save("runtime-metrics-after-window-gc.txt", "/debug/runtime-metrics?gc=1")
	prof.save("heap-after-window.pb.gz", "/debug/pprof/heap")
	rs1, _ := r.redisStats(ctx)
	rss2, _ := rss(pid)
	heldEnd := heldN()

	perRSS := (rss1 - rss0) / float64(n)
	perHeap := (heap1 - heap0) / float64(n)
	cpuPct := 100 * (cpu1 - cpu0).Seconds() / window.Seconds()
	vals := map[string]float64{"agents": float64(n), "rss_per_agent_bytes": perRSS, "heap_per_agent_bytes": perHeap,
		"rss_before_bytes": rss0, "rss_held_bytes": rss1, "rss_after_window_bytes": rss2, "idle_cpu_percent": cpuPct,
		"startup_seconds": settle.Seconds(), "held_at_end": float64(heldEnd)}
	summary := fmt.Sprintf("%.1f KB RSS, %.1f KB heap per agent; CPU %.1f%%", perRSS/1024, perHeap/1024, cpuPct)
	ok := perRSS <= 25*1024 && cpuPct <= 3
	note := fmt.Sprintf("server as a child process: RSS %.0f MB → %.0f MB with %d polls held (VmRSS); heap is go_memstats_heap_inuse_bytes, garbage included; CPU over one poll window of %s (every agent renews its Poll once); %d agents registered and polling in %s; each agent holds one TCP connection",
		rss0/(1<<20), rss1/(1<<20), n, window.Round(time.Millisecond), n, settle.Round(100*time.Millisecond))
	if prof.dir != "" {
		note += "; profiles of the server in " + prof.dir
		if prof.err != nil {
			note += " (incomplete: " + prof.err.Error() + ")"
		}
	}
	if r.cfg.RedisURL != "" {
		if redisErr != nil {
			note += "; Redis commands not counted: " + redisErr.Error()
		} else {
			scale := hold.Seconds() / window.Seconds() / float64(n)
			d := rs1.sub(rs0)
			per := float64(d.Cmds) * scale
			calls := float64(d.Scripts) * scale
			cpu := time.Duration(float64(d.CPU) * scale)
			vals["redis_cmds_per_agent_per_window"] = per
			vals["redis_script_calls_per_agent_per_window"] = calls
			vals["redis_cpu_us_per_agent_per_window"] = us(cpu)
			summary += fmt.Sprintf("; per agent and window: %.2f Redis calls, %.2f cmds, Redis CPU %s", calls, per, fmtDur(cpu))
			ok = ok && calls <= 1.05
			note += "; Redis calls are its script round trips (FCALL, or EVALSHA/EVAL), cmds every command INFO commandstats counts, those run inside scripts and by the reaper included; Redis CPU is its process's (INFO cpu)"
		}
	}
	return []Result{{Scenario: "idle", Name: name, Summary: summary, Target: r.target("idle"), Met: met(ok), Note: note, Values: vals}}, nil
}

// storm restarts the server under a fleet, some of whose tasks are running,
// and measures how long until every agent polls again, the failed calls
// meanwhile, and whether every task still ends SUCCEEDED.
func (r *runner) storm(ctx context.Context) ([]Result, error) {
	n := r.scale(r.cfg.Agents, min(r.cfg.Agents, 200))
	if r.external() {
		return []Result{{Scenario: "storm", Name: fmt.Sprintf("server restarted under %d agents", n), Summary: "skipped",
			Target: r.target("storm"), Note: "cannot restart an external server"}}, nil
	}
	// The server here holds a connection per agent, plus one per report in
	// flight; the agents run in a child process when there is a binary for it,
	// else here too, as many as the open file limit allows.
	child := r.cfg.ServerExe != ""
	var capped string
	if !child {
		if fit := int(fileLimit()-1000) / 3; n > fit {
			capped = fmt.Sprintf("; %d agents asked for, %d fit in this process's open file limit (%d)", n, fit, fileLimit())
			n = fit
		}
	}
	withTasks := min(n, r.scale(1000, 50))
	name := fmt.Sprintf("server restarted under %d agents, %d tasks running", n, withTasks)
	in, err := r.startServer(r.st, "127.0.0.1:0", 0)
	if err != nil {
		return nil, err
	}
	addr := strings.TrimPrefix(in.url, "http://")
	defer func() {
		if in != nil {
			in.close(ctx)
		}
	}()
	var stats func() (calls, errs int64)
	if child {
		p, err := r.startFleetChild(ctx, in.url, n, withTasks)
		if err != nil {
			return nil, err
		}
		defer p.stop()
		stats = func() (int64, int64) { c, e, _, _ := p.stats(); return c, e }
	} else {
		f, err := r.startStormFleet(ctx, n, withTasks)
		if err != nil {
			return nil, err
		}
		defer f.stop()
		stats = func() (int64, int64) { return f.rt.calls.Load(), f.rt.errors.Load() }
	}
	if !waitFor(ctx, 2*time.Minute, func() bool { return in.srv.HeldPolls() >= n }) {
		return nil, fmt.Errorf("only %d of %d agents held a poll after 2 min (open file limit %d)", in.srv.HeldPolls(), n, fileLimit())
	}
	ctl := r.control(in.url)
	job, err := ctl.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "slow", Payload: []byte("x"),
		Target: &forgev1.DispatchRequest_Selector{Selector: "bench=storm,task=1"}}))
	if err != nil {
		return nil, err
	}
	time.Sleep(100 * time.Millisecond) // the tasks are leased and running
	calls0, errs0 := stats()
	down := time.Now()
	in.close(ctx)
	in = nil
	r.opHTTP.CloseIdleConnections()
	time.Sleep(time.Second)
	if in, err = r.startServer(r.st, addr, 0); err != nil {
		in = nil
		return nil, fmt.Errorf("restarting on %s: %w", addr, err)
	}
	t0 := time.Now()
	outage := t0.Sub(down)
	ok := waitFor(ctx, time.Minute, func() bool { return in.srv.HeldPolls() >= n })
	back := time.Since(t0)
	calls1, errs1 := stats()
	calls, errs := calls1-calls0, errs1-errs0
	if !ok {
		return nil, fmt.Errorf("only %d of %d agents polled again within 60s", in.srv.HeldPolls(), n)
	}
	var counts *forgev1.JobCounts
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		w, err := ctl.WaitJob(ctx, connect.NewRequest(&forgev1.WaitJobRequest{JobId: job.Msg.JobId, Wait: durationpb.New(10 * time.Second), PageSize: 1}))
		if err != nil {
			return nil, err
		}
		if counts = w.Msg.Job.GetCounts(); w.Msg.Job.GetDone() {
			break
		}
	}
	lost := withTasks - int(counts.GetSucceeded())
	// Full-jitter backoff from 100ms doubling: while the server is down, an
	// agent's poll loop and its report loop each fail at most about
	// log2(outage/100ms)+2 times (one more for the connection the stop cut); a
	// storm (fixed short retries) would fail many times more.
	perLoop := math.Log2(float64(outage)/float64(100*time.Millisecond)) + 2
	bound := perLoop * (1 + float64(withTasks)/float64(n))
	vals := map[string]float64{"agents": float64(n), "tasks": float64(withTasks), "seconds_to_all_polling": back.Seconds(), "calls": float64(calls),
		"failed_calls": float64(errs), "failed_calls_per_agent": float64(errs) / float64(n), "failed_calls_bound_per_agent": bound,
		"tasks_not_succeeded": float64(lost)}
	where := "a child process (one transport)"
	if !child {
		where = "this process (one transport)"
	}
	res := Result{Scenario: "storm", Name: name, Target: r.target("storm"), Values: vals,
		Summary: fmt.Sprintf("all polling %s after restart; %.1f failed calls/agent; %d of %d tasks lost", fmtDur(back), float64(errs)/float64(n), lost, withTasks),
		Met:     met(back <= 30*time.Second && lost == 0 && float64(errs)/float64(n) <= bound),
		Note: fmt.Sprintf("the in-process server stops as on SIGTERM (held polls answered), stays down 1s, and a new one starts on the same port over the same store; agents run in %s and retry with full-jitter backoff (100ms doubling to 10s); %d calls, %d failed, from the stop until every agent polled again; 'no error storm' read as ≤ %.1f failed calls per agent (what that backoff allows over the %.1fs the server was down)%s",
			where, calls, errs, bound, outage.Seconds(), capped)}
	return []Result{res}, nil
}

// idleProfiler saves the idle scenario's child server's profiles, when
// Config.IdleProfile asked for them; without it, it does nothing.
type idleProfiler struct {
	dir, url string
	hc       *http.Client
	err      error // the first failure, reported in the row's note
}

func (r *runner) idleProfiler(c *child) *idleProfiler {
	p := &idleProfiler{dir: r.cfg.IdleProfile, url: c.debugURL, hc: &http.Client{}}
	if p.dir == "" {
		return p
	}
	if c.debugURL == "" {
		p.err = errors.New("the child server printed no debug address")
	} else if err := os.MkdirAll(p.dir, 0o755); err != nil {
		p.err = err
	}
	return p
}

// save writes what the debug endpoint path answers to the file name.
func (p *idleProfiler) save(name, path string) {
	if p.dir == "" || p.err != nil {
		return
	}
	res, err := p.hc.Get(p.url + path)
	if err == nil {
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", path, res.Status)
		}
	}
	var f *os.File
	if err == nil {
		f, err = os.Create(filepath.Join(p.dir, name))
	}
	if err == nil {
		_, err = io.Copy(f, res.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && p.err == nil {
		p.err = err
	}
}

// start saves path to name in the background (a CPU profile over a window);
// the function it returns waits for it.
func (p *idleProfiler) start(name, path string) (wait func()) {
	done := make(chan struct{})
	go func() { defer close(done); p.save(name, path) }()
	return func() { <-done }
}
