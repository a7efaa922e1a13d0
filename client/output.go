package client

import (
	"bytes"
	"context"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/store"
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
	var lines wholeLines
	for {
		start := time.Now()
		r, err := call(ctx, c, connect.NewRequest(&forgev1.ReadOutputRequest{TaskId: taskID, Offset: offset, Wait: durationpb.New(c.opts.hold)}),
			forgev1connect.ControlServiceClient.ReadOutput)
		if err != nil {
			return forgev1.TaskState_TASK_STATE_UNSPECIFIED, err
		}
		for _, ch := range r.Msg.Chunks {
			if err := lines.write(ch, stdout, stderr); err != nil {
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

// wholeLines writes a followed task's chunks so that a note never splices two
// partial lines of a stream: a stream left mid-line before a note gets a
// newline, and after a cut (whose first bytes are the rest of a line whose
// start was cut) each stream's next chunk resumes after its first newline.
type wholeLines struct {
	mid  [2]bool // the stream's last byte written did not end a line
	skip [2]bool // drop the stream's bytes up to its next newline
}

func (l *wholeLines) write(ch *forgev1.OutputChunk, stdout, stderr io.Writer) error {
	ws := [2]io.Writer{stdout, stderr}
	data := ch.Data
	switch ch.Stream {
	case forgev1.Stream_STREAM_STDOUT, forgev1.Stream_STREAM_STDERR:
		i := 0
		if ch.Stream == forgev1.Stream_STREAM_STDERR {
			i = 1
		}
		if l.skip[i] {
			// Only within the chunk after the note, and only when a line
			// follows: one long line's end is kept (as outputcap.Join does).
			if n := bytes.IndexByte(data, '\n'); n >= 0 && n+1 < len(data) {
				data = data[n+1:]
			}
			l.skip[i] = false
		}
		if ws[i] == nil || len(data) == 0 {
			return nil
		}
		l.mid[i] = data[len(data)-1] != '\n'
		_, err := ws[i].Write(data)
		return err
	}
	if l.mid[0] && stdout != nil {
		if _, err := stdout.Write([]byte{'\n'}); err != nil {
			return err
		}
	}
	if !l.mid[1] { // the note's own leading newline ends stderr's line
		data = bytes.TrimPrefix(data, []byte{'\n'})
	}
	l.mid = [2]bool{}
	if store.IsNoteCut(ch.Data) {
		l.skip = [2]bool{true, true}
	}
	if stderr == nil {
		return nil
	}
	_, err := stderr.Write(data)
	return err
}
