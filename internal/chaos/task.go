//go:build linux

package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"strconv"
	"time"
)

// TaskSpec is what one chaos task does: sleep, then succeed or fail. Every task
// the run dispatches is an `exec` of `chaosagent task` with these as arguments;
// `forge agent` processes run the command, and the embedded agents of
// `chaosagent agents` run the same code in process. Either way the handler's
// start and end go to the history.
type TaskSpec struct {
	// Sleep is how long the attempt works.
	Sleep time.Duration
	// FailMod, when positive, makes the task fail when a hash of its id is a
	// multiple of it, so the tasks of one fan-out (one payload) differ.
	FailMod int
	// Fail makes every attempt fail.
	Fail bool
	// Linger is how long the attempt goes on after it is told to stop (its
	// context ends, or SIGTERM), as a command that cleans up first does.
	Linger time.Duration
}

// Argv returns the exec argv running the task with the helper binary bin.
func (s TaskSpec) Argv(bin string) []string {
	argv := []string{bin, "task", "-sleep", s.Sleep.String()}
	if s.FailMod > 0 {
		argv = append(argv, "-fail-mod", strconv.Itoa(s.FailMod))
	}
	if s.Fail {
		argv = append(argv, "-fail")
	}
	if s.Linger > 0 {
		argv = append(argv, "-linger", s.Linger.String())
	}
	return argv
}

// ParseTaskArgs parses the arguments after "task".
func ParseTaskArgs(args []string) (TaskSpec, error) {
	var s TaskSpec
	f := flag.NewFlagSet("task", flag.ContinueOnError)
	f.SetOutput(io.Discard)
	f.DurationVar(&s.Sleep, "sleep", 0, "how long the attempt works")
	f.IntVar(&s.FailMod, "fail-mod", 0, "fail when a hash of the task id is a multiple of this")
	f.BoolVar(&s.Fail, "fail", false, "fail every attempt")
	f.DurationVar(&s.Linger, "linger", 0, "how long the attempt goes on after it is told to stop")
	if err := f.Parse(args); err != nil {
		return s, err
	}
	return s, nil
}

// fails tells whether the task with this id fails.
func (s TaskSpec) fails(taskID string) bool {
	if s.Fail {
		return true
	}
	if s.FailMod <= 0 {
		return false
	}
	h := fnv.New32a()
	h.Write([]byte(taskID))
	return h.Sum32()%uint32(s.FailMod) == 0
}

// Attempt names the attempt a handler runs.
type Attempt struct {
	Task, Job, Agent string
	Att              int32
}

// errPurpose is the error of a task that fails by design.
var errPurpose = errors.New("chaos: failing on purpose")

// RunTask runs one attempt of a chaos task: it writes the start to w, works for
// spec.Sleep or until ctx ends, writes the end and returns the output, which names
// the handler invocation (run=…) so the checker can tell which attempt's report
// the server kept. It fails with ctx's cause when ctx ends first.
func RunTask(ctx context.Context, w *HistoryWriter, host string, a Attempt, spec TaskSpec) ([]byte, error) {
	run := newRunID()
	ev := Event{Run: run, Task: a.Task, Job: a.Job, Att: a.Att, Agent: a.Agent, Host: host, PID: os.Getpid()}
	start := ev
	start.Ev, start.At = "start", time.Now().UnixMicro()
	if err := w.Write(start); err != nil {
		return nil, err
	}
	out := []byte(fmt.Sprintf("run=%s task=%s att=%d\n", run, a.Task, a.Att))
	t := time.NewTimer(spec.Sleep)
	defer t.Stop()
	end := ev
	end.Ev = "end"
	var err error
	select {
	case <-t.C:
		end.How = "ok"
		if spec.fails(a.Task) {
			end.How, err = "failed", errPurpose
		}
	case <-ctx.Done():
		err = context.Cause(ctx)
		end.How, end.Cause = "canceled", err.Error()
		time.Sleep(spec.Linger)
	}
	end.At = time.Now().UnixMicro()
	if werr := w.Write(end); werr != nil {
		return nil, werr
	}
	return out, err
}

func newRunID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// RunID returns the handler invocation an output names (run=…), or "".
func RunID(output []byte) string {
	var run, task string
	var att int
	if _, err := fmt.Sscanf(string(output), "run=%s task=%s att=%d", &run, &task, &att); err != nil {
		return ""
	}
	return run
}
