package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
	"github.com/orange-forge/forge/store"
)

func (m *Main) runCancel(ctx context.Context, args []string) error {
	f := m.newFlags("cancel", "forge cancel: cancel tasks, or every task of a job.\n\n"+
		"A pending task ends CANCELED at once; a running one when its agent has stopped the\n"+
		"command and reported (or its lease runs out). forge cancel waits up to --wait for that,\n"+
		"then says how each task stands.")
	f.usage = "forge cancel [flags] TASK_ID...\nforge cancel [flags] --job JOB_ID"
	f.examples = "forge cancel --job j0kq5c3vd7wx4m2a --reason 'wrong branch'\nforge cancel t0kq5c3vd7wx4m2ab3cd-a1b2c3d4e5f6g7h8"
	cf := f.client()
	job := f.FlagSet.String("job", "", "cancel every task of this job that has not ended, and start no more")
	reason := f.FlagSet.String("reason", "", "why, kept in each task's history")
	wait := f.FlagSet.Duration("wait", 10*time.Second, "how long to wait for running tasks to stop before saying how they stand (0: do not wait)")
	if err := f.parse(args); err != nil {
		return err
	}
	if (*job == "") == (f.NArg() == 0) {
		return f.usageError("give task ids or --job JOB_ID")
	}
	c, err := m.newClient("cancel", cf, nil)
	if err != nil {
		return err
	}
	p := cf.printer()
	if *job != "" {
		return m.cancelJob(ctx, c, cf, *job, *reason, *wait)
	}
	var failed bool
	var out []any
	for _, id := range f.Args() {
		t, err := c.CancelTask(ctx, id, *reason)
		if connect.CodeOf(err) == connect.CodeFailedPrecondition {
			// Already ended: say how, not the server's refusal.
			if g, gerr := c.Control().GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id})); gerr == nil {
				fmt.Fprintf(m.Stderr, "%s had already ended: %s\n", p.Line(id), endText(p, g.Msg.Task))
				failed = true
				continue
			}
		}
		if err != nil {
			hint := ""
			if store.ValidID(id, 'j') {
				hint = fmt.Sprintf(" (it is a job id: forge cancel --job %s)", termsafe.Line(id))
			}
			fmt.Fprintf(m.Stderr, "forge cancel: %s%s\n", termsafe.Line(aboutID(id, errors.New(errText(err))).Error()), hint)
			failed = true
			continue
		}
		if !client.Final(t.State) && *wait > 0 {
			wctx, cancel := context.WithTimeout(ctx, *wait)
			if w, err := c.WaitTask(wctx, id); err == nil {
				t = w
			}
			cancel()
		}
		if *cf.json {
			out = append(out, jsonTask(t, ""))
			continue
		}
		if client.Final(t.State) {
			fmt.Fprintf(m.Stdout, "%s %s\n", p.Line(id), endText(p, t))
		} else {
			fmt.Fprintf(m.Stdout, "%s %s: cancel requested; its agent has been asked to stop it\n", p.Line(id), stateName(t.State))
		}
	}
	if *cf.json {
		if err := m.writeJSON(p, map[string]any{"tasks": out}); err != nil {
			return err
		}
	}
	if failed {
		return exitCode(1)
	}
	return nil
}

func (m *Main) cancelJob(ctx context.Context, c *client.Client, cf clientFlags, id, reason string, wait time.Duration) error {
	p := cf.printer()
	before, err := c.Control().GetJob(ctx, connect.NewRequest(&forgev1.GetJobRequest{JobId: id, PageSize: 1}))
	if err != nil {
		return err
	}
	if before.Msg.Job.Done {
		if *cf.json {
			return m.writeJSON(p, map[string]any{"job": jsonObject(before.Msg.Job)})
		}
		fmt.Fprintf(m.Stdout, "job %s had already ended: %s; nothing to cancel\n", p.Line(id), countsText(before.Msg.Job.Counts))
		return nil
	}
	job, err := c.CancelJob(ctx, id, reason)
	if err != nil {
		return err
	}
	if !job.Done && wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		res, err := c.Wait(wctx, id)
		cancel()
		if res != nil && res.Job.GetCounts() != nil {
			job = res.Job
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return err
		}
	}
	if *cf.json {
		return m.writeJSON(p, map[string]any{"job": jsonObject(job)})
	}
	cnt := job.Counts
	fmt.Fprintf(m.Stdout, "job %s canceled: %s\n", p.Line(id), countsText(cnt))
	if n := cnt.GetRunning(); n > 0 {
		fmt.Fprintf(m.Stdout, "%d still running: their agents have been asked to stop them (forge job %s shows them)\n", n, p.Line(id))
	}
	return nil
}

func (m *Main) runRevoke(ctx context.Context, args []string) error {
	f := m.newFlags("revoke", "forge revoke: revoke agents; their tokens stop working at once and their pending\nand running tasks end CANCELED.")
	f.usage = "forge revoke [flags] AGENT_ID..."
	f.examples = "forge revoke a1b2c3d4e5f6g7h8 --reason 'machine retired'"
	cf := f.client()
	reason := f.FlagSet.String("reason", "", "why, kept in the history of the tasks it cancels")
	if err := f.parse(args); err != nil {
		return err
	}
	if f.NArg() == 0 {
		return f.usageError("give agent ids (forge agents lists them)")
	}
	c, err := m.newClient("revoke", cf, nil)
	if err != nil {
		return err
	}
	for _, id := range f.Args() {
		res, err := c.Control().RevokeAgent(ctx, connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: id, Reason: *reason}))
		if err != nil {
			return aboutID(id, err)
		}
		a := res.Msg.Agent
		fmt.Fprintf(m.Stdout, "%s (%s) %s\n", termsafe.Line(a.Id), termsafe.Line(a.Name), statusName(a.Status))
	}
	return nil
}
