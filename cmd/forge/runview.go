package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
)

// screen is where forge run prints: the commands' output to stdout and stderr,
// forge's own notes to stderr, and, on a terminal, one status line at the
// bottom of stderr that is redrawn in place (and cleared before anything else
// is written, so it never mixes with output). Not on a terminal, the status is
// a plain line every 10 s.
type screen struct {
	out, err io.Writer
	live     bool
	width    int

	mu     sync.Mutex
	shown  bool // the status line is on the terminal
	status func() string
	stopc  chan struct{}
	done   chan struct{}
}

// statusEvery is how often the status line is redrawn on a terminal, and
// plainEvery how often it is printed when stderr is not one.
const (
	statusEvery = 250 * time.Millisecond
	plainEvery  = 10 * time.Second
)

func (s *screen) clearLocked() {
	if s.shown {
		io.WriteString(s.err, "\r\x1b[K")
		s.shown = false
	}
}

func (s *screen) drawLocked() {
	line := s.status()
	if w := s.width - 1; w > 0 && utf8.RuneCountInString(line) > w {
		line = string([]rune(line)[:w])
	}
	io.WriteString(s.err, "\r\x1b[K"+line)
	s.shown = true
}

// note prints a line of forge's own to stderr.
func (s *screen) note(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clearLocked()
	fmt.Fprintln(s.err, line)
}

// locked runs f with the screen to itself (the status line cleared).
func (s *screen) locked(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clearLocked()
	f()
}

// start shows status until stop.
func (s *screen) start(status func() string) {
	s.status, s.stopc, s.done = status, make(chan struct{}), make(chan struct{})
	every := plainEvery
	if s.live {
		every = statusEvery
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
			s.mu.Lock()
			if s.live {
				s.drawLocked()
			} else {
				fmt.Fprintf(s.err, "forge run: %s\n", s.status())
			}
			s.mu.Unlock()
		}
	}()
}

func (s *screen) stop() {
	if s.stopc == nil {
		return
	}
	close(s.stopc)
	<-s.done
	s.mu.Lock()
	s.clearLocked()
	s.mu.Unlock()
}

// screenWriter writes to one of the screen's streams, clearing the status line
// first.
type screenWriter struct {
	s *screen
	w io.Writer
}

func (sw screenWriter) Write(b []byte) (int, error) {
	sw.s.mu.Lock()
	defer sw.s.mu.Unlock()
	sw.s.clearLocked()
	return sw.w.Write(b)
}

// runView is what forge run shows of a job: each task's output, how each
// ended, the live count and the summary.
type runView struct {
	m     *Main
	scr   *screen
	p     termsafe.Printer
	d     *forgev1.DispatchResponse
	start time.Time
	group bool

	out, errs *client.Lines // prefixed lines, when not grouped

	mu     sync.Mutex
	labels map[string]string // task id -> what its lines are prefixed by
	names  map[string]string // agent id -> name
	pad    int
	counts *forgev1.JobCounts
	ended  map[forgev1.TaskState]int32 // tasks seen ending by their output's end
}

func newRunView(m *Main, scr *screen, p termsafe.Printer, d *forgev1.DispatchResponse, start time.Time, group, json bool) *runView {
	return &runView{m: m, scr: scr, p: p, d: d, start: start, group: group,
		out:    client.NewLines(escapeWriter{screenWriter{scr, m.Stdout}, p}),
		errs:   client.NewLines(escapeWriter{screenWriter{scr, m.Stderr}, p}),
		labels: map[string]string{}, names: map[string]string{}, ended: map[forgev1.TaskState]int32{}}
}

// setNames labels each task by its agent's name; by the name and the id when
// two of the job's agents share a name; by the id when the name is unknown.
func (v *runView) setNames(names map[string]string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.names = names
	seen := map[string]int{}
	for _, id := range v.d.TaskIds {
		seen[names[client.TaskAgent(id)]]++
	}
	for _, id := range v.d.TaskIds {
		a := client.TaskAgent(id)
		l := names[a]
		switch {
		case l == "":
			l = a
		case seen[l] > 1:
			l += " (" + a + ")"
		}
		l = v.p.Line(l)
		v.labels[id] = l
		v.pad = max(v.pad, utf8.RuneCountInString(l))
	}
}

func (v *runView) label(taskID string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.labels[taskID]
}

// prefix is what a task's lines start with: nothing when the job has one task.
func (v *runView) prefix(taskID string) string {
	if len(v.d.TaskIds) == 1 {
		return ""
	}
	l := v.label(taskID)
	return l + ":" + strings.Repeat(" ", v.pad-utf8.RuneCountInString(l)+1)
}

func (v *runView) progress(job *forgev1.JobInfo) {
	v.mu.Lock()
	v.counts = job.Counts
	v.mu.Unlock()
}

// status is the live line: "2/3 done: 1 SUCCEEDED, 1 FAILED · 1 running · 0 pending · 4s".
// The job's counts come from Wait at most a second old; a task whose end this
// run has already printed counts as ended even before they say so.
func (v *runView) status() string {
	v.mu.Lock()
	var c *forgev1.JobCounts
	if v.counts != nil {
		c = proto.Clone(v.counts).(*forgev1.JobCounts)
	}
	ended := maps.Clone(v.ended)
	v.mu.Unlock()
	total := int32(len(v.d.TaskIds))
	elapsed := time.Since(v.start).Round(time.Second)
	if c == nil {
		if len(ended) == 0 {
			return fmt.Sprintf("0/%d done · starting · %s · job %s", total, elapsed, v.d.JobId)
		}
		c = &forgev1.JobCounts{Total: total, Pending: total}
	}
	for _, f := range []struct {
		s forgev1.TaskState
		n *int32
	}{{forgev1.TaskState_TASK_STATE_SUCCEEDED, &c.Succeeded}, {forgev1.TaskState_TASK_STATE_FAILED, &c.Failed},
		{forgev1.TaskState_TASK_STATE_TIMED_OUT, &c.TimedOut}, {forgev1.TaskState_TASK_STATE_LOST, &c.Lost},
		{forgev1.TaskState_TASK_STATE_CANCELED, &c.Canceled}, {forgev1.TaskState_TASK_STATE_EXPIRED, &c.Expired}} {
		*f.n = max(*f.n, ended[f.s])
	}
	done := c.Succeeded + c.Failed + c.TimedOut + c.Lost + c.Canceled + c.Expired
	c.Running = max(0, min(c.Running, c.Total-done-c.Pending))
	c.Pending = max(0, c.Total-done-c.Running)
	s := fmt.Sprintf("%d/%d done", done, c.Total)
	if done > 0 {
		c2 := proto.Clone(c).(*forgev1.JobCounts)
		c2.Pending, c2.Running = 0, 0
		s += ": " + countsText(c2)
	}
	return fmt.Sprintf("%s · %d running · %d pending · %s · job %s", s, c.Running, c.Pending, elapsed, v.d.JobId)
}

// followAll prints the output of every task as it comes, following at most
// client.MaxFollow at once (the others' output waits on the server).
func (v *runView) followAll(ctx context.Context, c *client.Client) {
	var wg sync.WaitGroup
	slots := make(chan struct{}, client.MaxFollow)
	for _, id := range v.d.TaskIds {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			v.follow(ctx, c, id)
		}()
	}
	wg.Wait()
}

// follow prints one task's output and then how it ended.
func (v *runView) follow(ctx context.Context, c *client.Client, id string) {
	var bufOut, bufErr bytes.Buffer
	stdout, stderr := io.Writer(&bufOut), io.Writer(&bufErr)
	flush := func() {}
	if !v.group {
		lo, le := v.out.Prefix(v.prefix(id)), v.errs.Prefix(v.prefix(id))
		stdout, stderr = lo, le
		flush = func() { lo.Flush(); le.Flush() }
	}
	_, err := c.Follow(ctx, id, stdout, stderr)
	var g *connect.Response[forgev1.GetTaskResponse]
	switch code := connect.CodeOf(err); {
	case err == nil:
		g, err = c.Control().GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
	case code == connect.CodeUnimplemented:
		// A server without live output: the output comes with the result.
		if _, err = c.WaitTask(ctx, id); err == nil {
			g, err = c.Control().GetTask(ctx, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
		}
		if err == nil {
			stdout.Write(g.Msg.Task.Output)
			stderr.Write(g.Msg.Task.Stderr)
		}
	case ctx.Err() == nil && code != connect.CodeNotFound: // a task gone is a job gone, which the run reports
		v.scr.note(fmt.Sprintf("forge run: %s: cannot read its output: %s", v.label(id), v.m.quote(err)))
	}
	flush() // a last line without its end, before the task's end is told
	if err != nil {
		return // the summary says how it ended
	}
	t := g.Msg.Task
	if client.Final(t.State) {
		v.mu.Lock()
		v.ended[t.State]++
		v.mu.Unlock()
	}
	end := endText(v.p, t)
	switch {
	case v.group:
		v.scr.locked(func() {
			fmt.Fprintf(v.m.Stdout, "=== %s: %s\n", v.label(id), end)
			for _, o := range []struct {
				w io.Writer
				b []byte
			}{{v.m.Stdout, bufOut.Bytes()}, {v.m.Stderr, bufErr.Bytes()}} {
				if len(o.b) > 0 {
					o.w.Write(v.p.Text(o.b))
					if o.b[len(o.b)-1] != '\n' {
						fmt.Fprintln(o.w)
					}
				}
			}
		})
	case len(v.d.TaskIds) == 1:
		// The summary says how it ended.
	case len(v.d.TaskIds) <= 20 || t.State != forgev1.TaskState_TASK_STATE_SUCCEEDED:
		v.scr.note(fmt.Sprintf("--- %s: %s", v.label(id), end))
	}
}

func (v *runView) flush() {
	v.out.Flush()
	v.errs.Flush()
}

// summary says how the job ended, every state by its name.
func (v *runView) summary(res *client.Result, took time.Duration) {
	took = took.Round(time.Millisecond)
	if len(res.Tasks) == 1 {
		t := res.Tasks[0]
		v.scr.note(fmt.Sprintf("%s: %s in %s (job %s)", v.label(t.Id), endText(v.p, t), took, v.d.JobId))
		return
	}
	byState := map[forgev1.TaskState][]string{}
	for _, t := range res.Tasks {
		byState[t.State] = append(byState[t.State], v.label(t.Id))
	}
	v.scr.note(fmt.Sprintf("%d tasks: %s in %s (job %s)", len(res.Tasks), summaryText(res.Job.Counts, byState), took, v.d.JobId))
}
