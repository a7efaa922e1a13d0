package client

import (
	"context"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// MaxFollow is how many tasks FollowJob reads at once; the others wait their
// turn (their output is kept by the server, so nothing is lost, only later).
const MaxFollow = 64

// Follow writes a task's output to stdout and stderr as its agent sends it,
// from the start, until the task has ended and all of its output has been
// read; then it returns the task's final state. A nil writer discards its
// stream. Notes from forge itself (where output was cut to the server's cap,
// where a new attempt's output starts) go to stderr. Each read is a held call
// (DefaultHold at most), resumed from where the last one ended, so Follow
// survives retries and a move to another server without losing or repeating a
// byte. A write error ends it.
func (c *Client) Follow(ctx context.Context, taskID string, stdout, stderr io.Writer) (forgev1.TaskState, error) {
	var offset int64
	var p pacer
	for {
		start := time.Now()
		r, err := call(ctx, c, connect.NewRequest(&forgev1.ReadOutputRequest{TaskId: taskID, Offset: offset, Wait: durationpb.New(c.opts.hold)}),
			forgev1connect.ControlServiceClient.ReadOutput)
		if err != nil {
			return forgev1.TaskState_TASK_STATE_UNSPECIFIED, err
		}
		for _, ch := range r.Msg.Chunks {
			w := stderr
			if ch.Stream == forgev1.Stream_STREAM_STDOUT {
				w = stdout
			}
			if w == nil {
				continue
			}
			if _, err := w.Write(ch.Data); err != nil {
				return r.Msg.State, err
			}
		}
		offset = r.Msg.NextOffset
		if r.Msg.Finished {
			return r.Msg.State, nil
		}
		if len(r.Msg.Chunks) == 0 {
			if err := p.pace(ctx, c, start, c.opts.hold); err != nil {
				return r.Msg.State, err
			}
		}
	}
}

// FollowJob follows the output of every task of a job at once, as Follow does
// for one, reading at most MaxFollow tasks at a time. Before reading a task it
// calls streams with the task and its agent's name (or id, when the name
// cannot be read) for the writers of that task's stdout and stderr; each
// task's writers are written from one goroutine, different tasks' from
// different ones (Lines serializes them onto one writer). It returns once
// every task's output is finished, or the first error (the others stop then).
// Wait tells how the tasks ended.
func (c *Client) FollowJob(ctx context.Context, jobID string, streams func(task *forgev1.TaskInfo, agentName string) (stdout, stderr io.Writer)) error {
	res, err := c.jobTasks(ctx, &Result{Job: &forgev1.JobInfo{Id: jobID}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		slots = make(chan struct{}, MaxFollow)
	)
	for _, t := range res.Tasks {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		stdout, stderr := streams(t, res.AgentName(t))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			if _, err := c.Follow(ctx, t.Id, stdout, stderr); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	return first
}
