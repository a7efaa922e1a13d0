//go:build linux

package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/redistest"
)

// Config configures a chaos run. Zero values get the defaults noted.
type Config struct {
	// Seed chooses the driver's dispatches and the injector's faults.
	Seed int64
	// Duration is how long faults are injected while the driver dispatches; 60 s.
	Duration time.Duration
	// Dir receives the run's logs, histories and agents' state dirs; required.
	Dir string
	// ForgeBin and AgentBin are the forge and chaosagent binaries; required.
	ForgeBin, AgentBin string
	// Replicas is how many `forge server` replicas share the cluster; 3.
	Replicas int
	// ForgeAgents is how many `forge agent` processes run (one agent each); 4.
	ForgeAgents int
	// EmbeddedProcs is how many `chaosagent agents` processes run; 2.
	EmbeddedProcs int
	// PerProc is how many agents each of those hosts; 8.
	PerProc int
	// Lease is the servers' --lease; 3 s (heartbeats every second).
	Lease time.Duration
	// PollHold is the servers' --poll-hold; 10 s.
	PollHold time.Duration
	// FaultGap bounds the pause between two faults; 1 s to 3 s.
	FaultGap [2]time.Duration
	// Faults are the kinds to inject; every kind of AllFaults.
	Faults []string
	// DispatchEvery is the driver's pace; 150 ms.
	DispatchEvery time.Duration
	// Settle bounds how long, after the faults, every task may take to end; 2 min.
	Settle time.Duration
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

func (c *Config) defaults() error {
	if c.Dir == "" || c.ForgeBin == "" || c.AgentBin == "" {
		return errors.New("chaos: Dir, ForgeBin and AgentBin are required")
	}
	set := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	dur(&c.Duration, time.Minute)
	set(&c.Replicas, 3)
	set(&c.ForgeAgents, 4)
	set(&c.EmbeddedProcs, 2)
	set(&c.PerProc, 8)
	dur(&c.Lease, 3*time.Second)
	dur(&c.PollHold, 10*time.Second)
	dur(&c.FaultGap[0], time.Second)
	dur(&c.FaultGap[1], 3*time.Second)
	dur(&c.DispatchEvery, 150*time.Millisecond)
	dur(&c.Settle, 2*time.Minute)
	if len(c.Faults) == 0 {
		c.Faults = AllFaults
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return nil
}

const (
	enrollToken = "chaos-enroll-0123456789"
	adminToken  = "chaos-admin-0123456789"
	groups      = 4
)

// Run starts a Redis Cluster of 3 masters with a replica each, the server
// replicas and the agent processes; dispatches and injects faults for
// cfg.Duration; heals everything; waits for every task to end; and checks the
// agents' histories against the servers' records. The Report says what happened
// and what broke (Report.Violations). Everything it started is stopped when it
// returns or when the test ends.
func Run(t testing.TB, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	logf := cfg.Logf
	for _, d := range []string{"logs", "history", "state"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	logf("seed %d: starting a 3+3 Redis Cluster", cfg.Seed)
	cluster := redistest.StartReplicated(t, 3, 1)

	var servers, agents []*Proc
	var urls []string
	for i := 1; i <= cfg.Replicas; i++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("server-%d", i)
		p := &Proc{Name: name, bin: cfg.ForgeBin, log: filepath.Join(cfg.Dir, "logs", name+".log"),
			url: "http://127.0.0.1:" + strconv.Itoa(port),
			args: []string{"server", "--listen", "127.0.0.1:" + strconv.Itoa(port),
				"--redis", cluster.URL() + "&client_name=forge-" + name,
				"--lease", cfg.Lease.String(), "--poll-hold", cfg.PollHold.String()},
			env: []string{"FORGE_ENROLL_TOKEN=" + enrollToken, "FORGE_ADMIN_TOKEN=" + adminToken}}
		servers = append(servers, p)
		urls = append(urls, p.url)
	}
	stopAll := func() {
		var wg sync.WaitGroup
		for _, p := range append(append([]*Proc(nil), agents...), servers...) {
			wg.Add(1)
			go func() { defer wg.Done(); p.Shutdown(15 * time.Second) }()
		}
		wg.Wait()
	}
	t.Cleanup(stopAll)
	for _, p := range servers {
		if err := p.Start(); err != nil {
			return nil, err
		}
	}
	// Each agent process lists the replicas from a different one on.
	rotated := func(i int) string {
		var r []string
		for j := range urls {
			r = append(r, urls[(i+j)%len(urls)])
		}
		return strings.Join(r, ",")
	}
	for i := 1; i <= cfg.ForgeAgents; i++ {
		name := fmt.Sprintf("fa-%d", i)
		agents = append(agents, &Proc{Name: name, bin: cfg.ForgeBin, log: filepath.Join(cfg.Dir, "logs", name+".log"),
			args: []string{"agent", "--server", rotated(i), "--enroll-token", enrollToken,
				"--state-dir", filepath.Join(cfg.Dir, "state", name), "--name", name,
				"--label", fmt.Sprintf("group=g%d", i%groups), "--label", "kind=forge",
				"--allow-exec", cfg.AgentBin, "--concurrency", "2", "--drain-grace", "5s"},
			env: []string{"CHAOS_HISTORY=" + filepath.Join(cfg.Dir, "history", name+".jsonl"), "CHAOS_HOST=" + name}})
	}
	for i := 1; i <= cfg.EmbeddedProcs; i++ {
		name := fmt.Sprintf("emb-%d", i)
		agents = append(agents, &Proc{Name: name, bin: cfg.AgentBin, log: filepath.Join(cfg.Dir, "logs", name+".log"),
			args: []string{"agents", "--server", rotated(i), "--enroll-token", enrollToken,
				"--state-dir", filepath.Join(cfg.Dir, "state", name), "--n", strconv.Itoa(cfg.PerProc),
				"--host", name, "--history", filepath.Join(cfg.Dir, "history", name+".jsonl"),
				"--groups", strconv.Itoa(groups), "--group-base", strconv.Itoa(i), "--label", "kind=embedded"}})
	}
	for _, p := range agents {
		if err := p.Start(); err != nil {
			return nil, err
		}
	}
	ctl := newControl(urls, adminToken)
	total := cfg.ForgeAgents + cfg.EmbeddedProcs*cfg.PerProc
	hosts, err := waitAgents(t.Context(), ctl, total)
	if err != nil {
		return nil, err
	}
	logf("seed %d: %d agents online on %d replicas; dispatching and injecting %v for %s", cfg.Seed, len(hosts), len(servers), cfg.Faults, cfg.Duration)

	var ids, shards []string
	seenShard := map[string]bool{}
	for id := range hosts {
		ids = append(ids, id)
		if tag := shardTag(id); !seenShard[tag] {
			seenShard[tag] = true
			shards = append(shards, tag)
		}
	}
	sort.Strings(ids)
	sort.Strings(shards)
	shards = append(shards, "{forge}") // the agent and job lists, enrollment tokens
	d := &driver{ctl: ctl, rng: rand.New(rand.NewPCG(uint64(cfg.Seed), 1)), bin: cfg.AgentBin, agents: ids, groups: groups,
		interval: cfg.DispatchEvery, seed: cfg.Seed, logf: logf, total: total}
	in := &injector{rng: rand.New(rand.NewPCG(uint64(cfg.Seed), 2)), kinds: cfg.Faults, gap: cfg.FaultGap, lease: cfg.Lease,
		cluster: cluster, servers: servers, agents: agents, shards: shards, logf: logf, wiped: d.storeWiped}

	// The driver dispatches for as long as the injector injects: cfg.Duration,
	// or longer until every kind of fault has happened once.
	start := time.Now()
	faultCtx, stopFaults := context.WithTimeout(t.Context(), cfg.Duration)
	driverCtx, stopDriver := context.WithCancel(t.Context())
	driverDone := make(chan struct{})
	go func() { defer close(driverDone); d.run(driverCtx) }()
	in.run(faultCtx)
	stopFaults()
	stopDriver()
	<-driverDone
	faultsEnd := time.Now()
	logf("seed %d: faults over after %s; healing", cfg.Seed, faultsEnd.Sub(start).Round(time.Second))
	if err := in.heal(); err != nil {
		return nil, fmt.Errorf("chaos: healing after the faults: %w", err)
	}
	healed := time.Now()
	reenrolled := d.waitReenrolled(t.Context(), time.Minute)

	d.mu.Lock()
	jobs := append([]JobRecord(nil), d.jobs...)
	cancels := append([]CancelRecord(nil), d.cancels...)
	sent, refused, failures := d.sent, d.refused, append([]string(nil), d.failures...)
	d.mu.Unlock()
	logf("seed %d: waiting for %d jobs to end", cfg.Seed, len(jobs))
	unfinished := settle(t.Context(), ctl, jobs, lastWipe(in.log()), cfg.Settle)
	settled := time.Now()
	// Abandoned handlers write their end a moment after their context ends.
	time.Sleep(3 * time.Second)
	var awg sync.WaitGroup
	for _, p := range agents {
		awg.Add(1)
		go func() { defer awg.Done(); p.Shutdown(15 * time.Second) }()
	}
	awg.Wait()

	events, err := ReadHistories(filepath.Join(cfg.Dir, "history"))
	if err != nil {
		return nil, err
	}
	ev := Evidence{Seed: cfg.Seed, Kinds: cfg.Faults, Jobs: jobs, Cancels: cancels, Faults: in.log(), Events: events, Hosts: hosts,
		Lease: cfg.Lease, Start: start, FaultsEnd: faultsEnd, Healed: healed, Settled: settled,
		Reenrolled: reenrolled, Sent: sent, Refused: refused, DispatchFailures: failures, Unfinished: unfinished, ControlRetries: ctl.retries,
		Tasks: map[string]*forgev1.TaskInfo{}, JobInfo: map[string]*forgev1.JobInfo{}}
	if err := fetch(t.Context(), ctl, &ev); err != nil {
		return nil, err
	}
	if b, err := json.MarshalIndent(ev, "", " "); err == nil {
		os.WriteFile(filepath.Join(cfg.Dir, "evidence.json"), b, 0o644)
	}
	return Check(ev), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitAgents waits until n agents are online and returns each one's host
// (the process that runs it: fa-3, or emb-1 for emb-1-5).
func waitAgents(ctx context.Context, ctl *control, n int) (map[string]string, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		hosts := map[string]string{}
		online := 0
		err := ctl.call(ctx, 10*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
			res, err := c.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{PageSize: 1000}))
			if err != nil {
				return err
			}
			for _, a := range res.Msg.Agents {
				host := a.Name
				if strings.HasPrefix(host, "emb-") {
					host = host[:strings.LastIndexByte(host, '-')]
				}
				hosts[a.Id] = host
				if a.Status == forgev1.AgentStatus_AGENT_STATUS_ONLINE {
					online++
				}
			}
			return nil
		})
		if err == nil && len(hosts) == n && online == n {
			return hosts, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("chaos: %d of %d agents registered, %d online, after 60s (err %v)", len(hosts), n, online, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lastWipe returns when the last store wipe was over (zero without one).
func lastWipe(faults []Fault) time.Time {
	var at time.Time
	for _, f := range faults {
		if f.Kind == FaultStoreWipe && f.Back.After(at) {
			at = f.Back
		}
	}
	return at
}

// settle waits until every job is done or the bound passes, and returns the
// jobs that are not. A job the store lost is done; one dispatched before the
// last store wipe ended (wiped) may have been kept in part, its record without
// some of its tasks, and never end as a whole: it is done when each of its tasks
// is terminal or gone.
func settle(ctx context.Context, ctl *control, jobs []JobRecord, wiped time.Time, bound time.Duration) []string {
	deadline := time.Now().Add(bound)
	var left []string
	byID := map[string]*JobRecord{}
	for i, j := range jobs {
		left = append(left, j.ID)
		byID[j.ID] = &jobs[i]
	}
	for len(left) > 0 && time.Now().Before(deadline) {
		var still []string
		for _, id := range left {
			done := false
			old := byID[id].At.Before(wiped)
			ctl.call(ctx, 10*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
				wait := max(min(time.Until(deadline), 10*time.Second), 0)
				if old {
					wait = 0
				}
				res, err := c.WaitJob(ctx, connect.NewRequest(&forgev1.WaitJobRequest{JobId: id, Wait: durationpb.New(wait), PageSize: 1}))
				switch {
				case err == nil:
					done = res.Msg.Job.Done
				case connect.CodeOf(err) == connect.CodeNotFound && old:
					done, err = true, nil
				}
				return err
			})
			if !done && old {
				done = tasksOver(ctx, ctl, byID[id].TaskIDs)
			}
			if !done && old {
				time.Sleep(100 * time.Millisecond) // not held by WaitJob: do not spin
			}
			if !done {
				still = append(still, id)
			}
		}
		left = still
	}
	return left
}

// tasksOver tells whether every one of the tasks is terminal or gone.
func tasksOver(ctx context.Context, ctl *control, ids []string) bool {
	for _, id := range ids {
		over := false
		ctl.call(ctx, 10*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
			res, err := c.GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
			switch {
			case err == nil:
				over = terminal(res.Msg.Task.State)
			case connect.CodeOf(err) == connect.CodeNotFound:
				over, err = true, nil
			}
			return err
		})
		if !over {
			return false
		}
	}
	return true
}

// fetch reads the final record of every task the driver was given or the agents
// ran, and every job's counts.
func fetch(ctx context.Context, ctl *control, ev *Evidence) error {
	ids := map[string]bool{}
	for _, j := range ev.Jobs {
		for _, id := range j.TaskIDs {
			ids[id] = true
		}
		err := ctl.call(ctx, 30*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
			res, err := c.GetJob(ctx, connect.NewRequest(&forgev1.GetJobRequest{JobId: j.ID, PageSize: 1}))
			if err == nil {
				ev.JobInfo[j.ID] = res.Msg.Job
			}
			return err
		})
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound { // lost with the store: Check judges
			return fmt.Errorf("chaos: reading job %s: %w", j.ID, err)
		}
	}
	for _, e := range ev.Events {
		ids[e.Task] = true
	}
	for id := range ids {
		err := ctl.call(ctx, 30*time.Second, func(ctx context.Context, c forgev1connect.ControlServiceClient) error {
			res, err := c.GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
			if err == nil {
				ev.Tasks[id] = res.Msg.Task
			}
			return err
		})
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			return fmt.Errorf("chaos: reading task %s: %w", id, err)
		}
	}
	return nil
}
