package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/termsafe"
)

// execPayload is the payload of the built-in exec task type.
type execPayload struct {
	Argv []string          `json:"argv"`
	Dir  string            `json:"dir,omitempty"`
	Env  map[string]string `json:"env,omitempty"`
}

func (m *Main) runRun(ctx context.Context, args []string) error {
	f := m.newFlags("run", "forge run: run a command on agents and print each one's output as it arrives.\n\nUsage: forge run [flags] (--agent ID | --selector S | --all) -- CMD ARGS...")
	cf := f.client()
	agentID := f.String("agent", "", "run on this agent")
	selector := f.String("selector", "", "run on the online agents whose labels match, such as env=prod,role=web")
	all := f.Bool("all", false, "run on every online agent")
	offline := f.Bool("include-offline", false, "with --selector or --all: also queue for agents offline now")
	timeout := f.Duration("timeout", 0, "execution timeout per agent (default: the server's)")
	ttl := f.Duration("delivery-ttl", time.Minute, "how long an agent may take to pick the command up before its task ends EXPIRED")
	maxConc := f.Int("max-concurrency", 0, "run on at most this many agents at once")
	maxFail := f.Int("max-failures", 0, "start no more once this many failed")
	dir := f.String("dir", "", "working directory on the agent")
	envs := f.List("env", "K=V set in the command's environment (repeatable)")
	if err := f.parse(args); err != nil {
		return err
	}
	argv := f.Args()
	n := 0
	for _, set := range []bool{*agentID != "", *selector != "", *all} {
		if set {
			n++
		}
	}
	if n != 1 || len(argv) == 0 {
		fmt.Fprintln(m.Stderr, "forge run: give exactly one of --agent, --selector or --all, then -- and the command")
		return errUsage
	}
	ctl, err := cf.control()
	if err != nil {
		return err
	}
	p := execPayload{Argv: argv, Dir: *dir}
	for _, kv := range *envs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("--env %q: want K=V", kv)
		}
		if p.Env == nil {
			p.Env = map[string]string{}
		}
		p.Env[k] = v
	}
	payload, _ := json.Marshal(p)
	req := &forgev1.DispatchRequest{Type: "exec", Payload: payload, MaxConcurrency: int32(*maxConc),
		MaxFailures: int32(*maxFail), IncludeOffline: *offline}
	if *timeout > 0 {
		req.Timeout = durationpb.New(*timeout)
	}
	if *ttl > 0 {
		req.DeliveryTtl = durationpb.New(*ttl)
	}
	switch {
	case *agentID != "":
		req.Target = &forgev1.DispatchRequest_AgentId{AgentId: *agentID}
	case *selector != "":
		req.Target = &forgev1.DispatchRequest_Selector{Selector: *selector}
	default:
		req.Target = &forgev1.DispatchRequest_All{All: true}
	}
	res, err := ctl.Dispatch(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	ids := res.Msg.TaskIds
	if len(ids) == 0 {
		fmt.Fprintln(m.Stderr, "forge run: no agent matched")
		return exitCode(1)
	}
	names := m.agentNames(ctx, ctl)
	r := &runPrinter{m: m, total: len(ids), names: names, live: isTerminal(m.Stderr), json: *cf.json, p: cf.printer()}
	stopNag := m.nagWaiting(ctx, ctl, res.Msg.JobId)
	finished := waitTasks(ctx, ctl, ids, r.print)
	stopNag()
	r.clearLive()
	if ctx.Err() != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := ctl.CancelJob(cctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: res.Msg.JobId, Reason: "forge run interrupted"})); err != nil {
			fmt.Fprintf(m.Stderr, "forge run: interrupted; cancelling job %s failed: %v\n", res.Msg.JobId, err)
		} else {
			fmt.Fprintf(m.Stderr, "forge run: interrupted; job %s canceled\n", res.Msg.JobId)
		}
		return exitCode(130)
	}
	fmt.Fprintf(m.Stderr, "%d succeeded, %d failed of %d (job %s)\n", r.ok, finished-r.ok, len(ids), res.Msg.JobId)
	if r.ok != len(ids) {
		return exitCode(1)
	}
	return nil
}

// nagWaiting tells the operator every 15 s what the run is still waiting for, so
// a silent wait never looks like a hang. It returns a func that stops it.
func (m *Main) nagWaiting(ctx context.Context, ctl forgev1connect.ControlServiceClient, jobID string) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			res, err := ctl.GetJob(ctx, connect.NewRequest(&forgev1.GetJobRequest{JobId: jobID, PageSize: 1}))
			if err != nil || res.Msg.Job.Done || ctx.Err() != nil {
				continue
			}
			c := res.Msg.Job.Counts
			fmt.Fprintf(m.Stderr, "forge run: still waiting for %d of %d (%d not picked up yet, %d running; job %s)\n",
				c.Pending+c.Running, c.Total, c.Pending, c.Running, jobID)
		}
	}()
	return func() { cancel(); <-done }
}

// agentNames maps agent ids to names, best effort.
func (m *Main) agentNames(ctx context.Context, ctl forgev1connect.ControlServiceClient) map[string]string {
	names := map[string]string{}
	req := &forgev1.ListAgentsRequest{PageSize: 1000}
	for {
		res, err := ctl.ListAgents(ctx, connect.NewRequest(req))
		if err != nil {
			return names
		}
		for _, a := range res.Msg.Agents {
			names[a.Id] = a.Name
		}
		if res.Msg.NextPageToken == "" {
			return names
		}
		req.PageToken = res.Msg.NextPageToken
	}
}

// waitTasks long-polls the tasks, at most 64 at a time, and hands each to done once
// it is terminal. It returns how many finished.
func waitTasks(ctx context.Context, ctl forgev1connect.ControlServiceClient, ids []string, done func(*forgev1.TaskInfo)) int {
	queue := make(chan string, len(ids))
	for _, id := range ids {
		queue <- id
	}
	var mu sync.Mutex
	left, finished := len(ids), 0
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range min(64, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var id string
				select {
				case id = <-queue:
				case <-stop:
					return
				case <-ctx.Done():
					return
				}
				res, err := ctl.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: id, Wait: durationpb.New(25 * time.Second)}))
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					time.Sleep(500 * time.Millisecond) // the server may be restarting; try again
					queue <- id
					continue
				}
				t := res.Msg.Task
				if t.State == forgev1.TaskState_TASK_STATE_PENDING || t.State == forgev1.TaskState_TASK_STATE_RUNNING {
					queue <- id
					continue
				}
				mu.Lock()
				done(t)
				finished++
				left--
				if left == 0 {
					close(stop)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return finished
}

type runPrinter struct {
	m         *Main
	total, ok int
	n         int
	names     map[string]string
	live      bool
	liveShown bool
	json      bool
	p         termsafe.Printer // escapes what the agents sent
}

func (r *runPrinter) print(t *forgev1.TaskInfo) {
	r.clearLive()
	r.n++
	if t.State == forgev1.TaskState_TASK_STATE_SUCCEEDED {
		r.ok++
	}
	if r.json { // one TaskInfo per line, as each finishes
		b, _ := protojson.Marshal(t)
		fmt.Fprintf(r.m.Stdout, "%s\n", r.p.JSON(b))
		return
	}
	name := r.names[t.AgentId]
	if name == "" {
		name = t.AgentId
	}
	head := fmt.Sprintf("--- %s (%s) %s", r.p.Line(name), r.p.Line(t.AgentId), stateName(t.State))
	if t.ExitCode != 0 || t.State == forgev1.TaskState_TASK_STATE_SUCCEEDED {
		head += fmt.Sprintf(" exit %d", t.ExitCode)
	}
	if t.Error != "" && t.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
		head += ": " + r.p.Line(t.Error)
	}
	fmt.Fprintln(r.m.Stdout, head)
	// The command's stdout to stdout and its stderr to stderr, each as kept.
	for _, o := range []struct {
		w    io.Writer
		text []byte
	}{{r.m.Stdout, t.Output}, {r.m.Stderr, t.Stderr}} {
		if len(o.text) > 0 {
			o.w.Write(r.p.Text(o.text))
			if o.text[len(o.text)-1] != '\n' {
				fmt.Fprintln(o.w)
			}
		}
	}
	if r.live && r.n < r.total {
		fmt.Fprintf(r.m.Stderr, "[%d/%d done]", r.n, r.total)
		r.liveShown = true
	}
}

func (r *runPrinter) clearLive() {
	if r.liveShown {
		fmt.Fprint(r.m.Stderr, "\r\033[K")
		r.liveShown = false
	}
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
