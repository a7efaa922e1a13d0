package client

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/jitter"
	"github.com/orange-forge/forge/store"
)

// ProgressInterval is how often Wait looks at a job's counts when it reports
// them (OnProgress): the server tells when a job is done, not when it changes.
const ProgressInterval = time.Second

// cancelGrace bounds the CancelJob that Run sends when its context ends.
const cancelGrace = 5 * time.Second

// Result is a job and its tasks.
type Result struct {
	// Job is the job as last seen: its id, target, per-state counts, and Done
	// once every task is in a final state.
	Job *forgev1.JobInfo
	// Tasks are the job's tasks, one per agent, each with its state, exit code,
	// output and error; all final when the Result comes from Wait or Run
	// without an error. They are ordered by agent name, then agent id.
	Tasks []*forgev1.TaskInfo
	// Names maps the tasks' agent ids to the agents' names, as far as they
	// could be found (see AgentName).
	Names map[string]string
}

// AgentName returns the name of the agent a task ran on, or its id when the
// name is not known (an agent removed since, or names that could not be read).
func (r *Result) AgentName(t *forgev1.TaskInfo) string {
	if n := r.Names[t.AgentId]; n != "" {
		return n
	}
	return t.AgentId
}

// Succeeded tells whether every task succeeded. A job whose target matched no
// agent has no task and succeeds: look at len(r.Tasks) for that.
func (r *Result) Succeeded() bool {
	for _, t := range r.Tasks {
		if t.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			return false
		}
	}
	return r.Job.GetDone()
}

// Failed returns the tasks that did not succeed: failed, timed out, canceled,
// expired (never picked up) or lost.
func (r *Result) Failed() []*forgev1.TaskInfo {
	var out []*forgev1.TaskInfo
	for _, t := range r.Tasks {
		if t.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			out = append(out, t)
		}
	}
	return out
}

// Final tells whether a task state is final: anything but pending or running.
func Final(s forgev1.TaskState) bool {
	return s != forgev1.TaskState_TASK_STATE_PENDING && s != forgev1.TaskState_TASK_STATE_RUNNING &&
		s != forgev1.TaskState_TASK_STATE_UNSPECIFIED
}

// A WaitOption configures Wait and Run.
type WaitOption func(*waitConfig)

type waitConfig struct {
	progress func(*forgev1.JobInfo)
}

// OnProgress makes Wait call f with the job as it starts waiting, each time
// the job's counts change (looked at every ProgressInterval), and once it is
// done: what a live "3 of 10 done, 2 running" line needs.
func OnProgress(f func(job *forgev1.JobInfo)) WaitOption {
	return func(w *waitConfig) { w.progress = f }
}

// Dispatch creates a job and returns its id and its tasks' ids (one per agent
// the target matched; none when it matched no agent) without waiting for
// them. Wait, Follow and CancelJob take the job id. The request is sent with
// its idempotency key, or one of the Client's own, so that retrying after a
// lost answer makes one job.
func (c *Client) Dispatch(ctx context.Context, req *forgev1.DispatchRequest) (*forgev1.DispatchResponse, error) {
	res, err := c.Control().Dispatch(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// Wait waits until every task of the job is final and returns them all. It
// holds server-side (DefaultHold at a time), so it costs a call per hold, not
// a poll loop, however long the job runs; it returns early only when ctx ends
// or a call fails for good, with the job as last seen and the error.
func (c *Client) Wait(ctx context.Context, jobID string, opts ...WaitOption) (*Result, error) {
	var cfg waitConfig
	for _, o := range opts {
		o(&cfg)
	}
	hold := c.opts.hold
	if cfg.progress != nil {
		hold = min(hold, ProgressInterval)
	}
	res := &Result{Job: &forgev1.JobInfo{Id: jobID}}
	var seen *forgev1.JobCounts
	var p pacer
	for {
		start := time.Now()
		w, err := call(ctx, c, connect.NewRequest(&forgev1.WaitJobRequest{JobId: jobID, Wait: durationpb.New(hold), PageSize: 1}),
			forgev1connect.ControlServiceClient.WaitJob)
		if err != nil {
			return res, err
		}
		res.Job = w.Msg.Job
		if cfg.progress != nil && (seen == nil || !proto.Equal(seen, res.Job.Counts) || res.Job.Done) {
			seen = res.Job.Counts
			cfg.progress(res.Job)
		}
		if res.Job.Done {
			break
		}
		if err := p.pace(ctx, c, start, hold); err != nil {
			return res, err
		}
	}
	return c.jobTasks(ctx, res)
}

// jobTasks fills res with every task of its job, page by page.
func (c *Client) jobTasks(ctx context.Context, res *Result) (*Result, error) {
	req := &forgev1.GetJobRequest{JobId: res.Job.Id, PageSize: store.MaxPageSize}
	for {
		g, err := call(ctx, c, connect.NewRequest(req), forgev1connect.ControlServiceClient.GetJob)
		if err != nil {
			return res, err
		}
		res.Job = g.Msg.Job
		res.Tasks = append(res.Tasks, g.Msg.Tasks...)
		if g.Msg.NextPageToken == "" {
			break
		}
		req.PageToken = g.Msg.NextPageToken
	}
	ids := make([]string, len(res.Tasks))
	for i, t := range res.Tasks {
		ids[i] = t.AgentId
	}
	// Names only make the result easier to read: a failure to read them is
	// not the job's, and the ids stand in.
	res.Names, _ = c.AgentNames(ctx, ids...)
	slices.SortStableFunc(res.Tasks, func(a, b *forgev1.TaskInfo) int {
		return cmp.Or(strings.Compare(res.AgentName(a), res.AgentName(b)), strings.Compare(a.AgentId, b.AgentId))
	})
	return res, nil
}

// fewAgents is up to how many agents AgentNames asks for one by one rather
// than listing the fleet.
const fewAgents = 16

// AgentNames returns the names of the agents with these ids (a task id's
// agent is TaskAgent(id)), as a map from id to name. Agents that do not exist
// (any more) are left out.
func (c *Client) AgentNames(ctx context.Context, agentIDs ...string) (map[string]string, error) {
	want := map[string]bool{}
	for _, id := range agentIDs {
		want[id] = true
	}
	names := make(map[string]string, len(want))
	if len(want) == 0 {
		return names, nil
	}
	if len(want) > fewAgents {
		all, err := c.Agents(ctx, nil)
		if err != nil {
			return names, err
		}
		for _, a := range all {
			if want[a.Id] {
				names[a.Id] = a.Name
			}
		}
		return names, nil
	}
	for id := range want {
		g, err := call(ctx, c, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: id}), forgev1connect.ControlServiceClient.GetAgent)
		switch {
		case connect.CodeOf(err) == connect.CodeNotFound || connect.CodeOf(err) == connect.CodeInvalidArgument:
			continue
		case err != nil:
			return names, err
		}
		names[id] = g.Msg.Agent.Name
	}
	return names, nil
}

// TaskAgent returns the id of the agent a task belongs to, which its id names
// (t…-<agent id>), or "" for a string that is not a task id.
func TaskAgent(taskID string) string {
	if !store.ValidTaskID(taskID) {
		return ""
	}
	a, _ := store.AgentOfTask(taskID)
	return a
}

// Run dispatches the job, waits for every task to be final and returns them:
// each agent's state, exit code, output and error. Like exec.CommandContext,
// it owns what it started: when ctx ends before the job is done, Run cancels
// the job (running commands are stopped, tasks not started never run) and
// returns the job as last seen with an error wrapping ctx's. A job that must
// outlive its caller is sent with Dispatch and waited for with Wait.
func (c *Client) Run(ctx context.Context, req *forgev1.DispatchRequest, opts ...WaitOption) (*Result, error) {
	d, err := c.Dispatch(ctx, req)
	if err != nil {
		return nil, err
	}
	res, err := c.Wait(ctx, d.JobId, opts...)
	if err != nil && ctx.Err() != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelGrace)
		defer cancel()
		if _, cerr := c.CancelJob(cctx, d.JobId, "run interrupted: "+context.Cause(ctx).Error()); cerr != nil {
			return res, fmt.Errorf("forge: job %s: %w; cancelling it failed: %v", d.JobId, ctx.Err(), cerr)
		}
		return res, fmt.Errorf("forge: job %s canceled: %w", d.JobId, ctx.Err())
	}
	return res, err
}

// WaitTask waits until a task is final and returns it, as Wait does for a job.
func (c *Client) WaitTask(ctx context.Context, taskID string) (*forgev1.TaskInfo, error) {
	var p pacer
	for {
		start := time.Now()
		w, err := call(ctx, c, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: taskID, Wait: durationpb.New(c.opts.hold)}),
			forgev1connect.ControlServiceClient.WaitTask)
		if err != nil {
			return nil, err
		}
		if Final(w.Msg.Task.State) {
			return w.Msg.Task, nil
		}
		if err := p.pace(ctx, c, start, c.opts.hold); err != nil {
			return nil, err
		}
	}
}

// pacer keeps a loop of held calls from spinning when they come back early
// without what they wait for: a server that is shutting down answers its held
// calls at once, and one whose forge handler was closed while the
// application's HTTP server keeps serving would do so forever.
type pacer struct{ b jitter.Backoff }

// pace pauses before the next held call if the last, started at start and
// asked to hold for hold, came back in under a tenth of it.
func (p *pacer) pace(ctx context.Context, c *Client, start time.Time, hold time.Duration) error {
	if time.Since(start) >= hold/10 {
		p.b.Reset()
		return nil
	}
	if !jitter.Sleep(ctx, p.b.Next(c.opts.backoffMin, c.opts.backoffMax)) {
		return ctx.Err()
	}
	return nil
}

// CancelJob cancels every task of a job that is not final and starts no more:
// pending tasks end CANCELED at once, running ones when their agent has
// stopped the command and reported (or their lease runs out). reason is kept in
// each task's history. Cancelling a finished job changes nothing. It returns
// the job after the cancel.
func (c *Client) CancelJob(ctx context.Context, jobID, reason string) (*forgev1.JobInfo, error) {
	res, err := c.Control().CancelJob(ctx, connect.NewRequest(&forgev1.CancelJobRequest{JobId: jobID, Reason: reason}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Job, nil
}

// CancelTask cancels one task: a pending one ends CANCELED at once, a running
// one once its agent has stopped it. A task already final is refused with
// connect.CodeFailedPrecondition. It returns the task after the cancel.
func (c *Client) CancelTask(ctx context.Context, taskID, reason string) (*forgev1.TaskInfo, error) {
	res, err := c.Control().CancelTask(ctx, connect.NewRequest(&forgev1.CancelTaskRequest{TaskId: taskID, Reason: reason}))
	if err != nil {
		return nil, err
	}
	return res.Msg.Task, nil
}

// Agents lists the agents that filter lets through (its selector, name and
// status; nil lists every agent), all pages of them, ordered by id.
func (c *Client) Agents(ctx context.Context, filter *forgev1.ListAgentsRequest) ([]*forgev1.AgentInfo, error) {
	req := &forgev1.ListAgentsRequest{PageSize: store.MaxPageSize}
	if filter != nil {
		req.Selector, req.Name, req.Status = filter.Selector, filter.Name, filter.Status
	}
	var out []*forgev1.AgentInfo
	for {
		res, err := call(ctx, c, connect.NewRequest(req), forgev1connect.ControlServiceClient.ListAgents)
		if err != nil {
			return nil, err
		}
		out = append(out, res.Msg.Agents...)
		if res.Msg.NextPageToken == "" {
			return out, nil
		}
		req.PageToken = res.Msg.NextPageToken
	}
}

// newIdempotencyKey returns a random key for a Dispatch sent without one.
func newIdempotencyKey() string {
	var b [20]byte
	rand.Read(b[:])
	return "go-client-" + base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:])
}
