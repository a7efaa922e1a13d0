package agent

import (
	"context"
	"fmt"
	"io"
	"time"
)

// Task is one leased attempt of a task, as a Handler receives it.
type Task struct {
	// ID is the task's id.
	ID string
	// JobID is the job the task belongs to.
	JobID string
	// Type is the task type the handler was registered for.
	Type string
	// Attempt is the attempt number, starting at 1.
	Attempt int32
	// Payload is the handler's input, as given at dispatch.
	Payload []byte
	// Timeout is the execution timeout, counted from when the agent received the
	// task; zero when the server sent none.
	Timeout time.Duration
	// Deadline is when Timeout ends by the agent's own clock (receipt + Timeout), or
	// the server's deadline when no Timeout was sent; zero when neither is known.
	// The handler's context is cancelled at the same moment.
	Deadline time.Time
	// Stdout and Stderr send what the handler writes to them to the server as
	// the attempt's output while it runs, where operators can read it live
	// (ReadOutput): a batch leaves about 250 ms after its first byte, or at 64
	// KiB. Writes never block on the network and never fail; each writer is
	// safe for concurrent use. Both are nil when the handler is called outside
	// an Agent.
	Stdout io.Writer
	Stderr io.Writer
}

// Handler runs one task. The context is cancelled when the task is cancelled by an
// operator, times out, is abandoned (its lease went to another attempt), or the
// agent's drain grace ends; context.Cause tells which. The output it returns is
// reported with the result and follows what it wrote to Task.Stdout on the
// task's stdout (capped, see Config.MaxOutput): short results can simply be
// returned, long or live output is better written as it comes. A nil error reports
// OUTCOME_SUCCEEDED; any other error reports OUTCOME_FAILED with err.Error() as the
// task's error, and the exit code of an *ExitError found with errors.As.
type Handler func(ctx context.Context, t *Task) (output []byte, err error)

// ExitError is returned by a Handler to report a command's non-zero exit code. The
// task's outcome is OUTCOME_FAILED.
type ExitError struct {
	// Code is the exit code reported. For a command ended by a signal it is
	// 128 + the signal number, as shells report it; on Windows it is the 32-bit
	// exit code as a signed number, as cmd.exe reports it (a job the agent
	// terminated exits 137, like SIGKILL).
	Code int
	// Err describes the failure; nil gives "exit status <Code>".
	Err error
}

// Error returns Err's message, or "exit status <Code>".
func (e *ExitError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// Unwrap returns Err.
func (e *ExitError) Unwrap() error { return e.Err }

// EchoHandler returns a Handler that answers with the task's payload: the built-in
// `echo` task type, for checks and benchmarks.
func EchoHandler() Handler {
	return func(_ context.Context, t *Task) ([]byte, error) {
		return append([]byte(nil), t.Payload...), nil
	}
}

// taskEnv travels in a handler's context from the agent to the built-in handlers:
// the output cap to apply while capturing, where to record process groups, and
// where to tell the agent that output was already cut.
type taskEnv struct {
	maxOutput int
	groups    groupRecorder // nil when no state dir
	truncated bool          // set by the handler: output already cut to maxOutput
	size      int64         // set by the handler with truncated: the full size
}

type taskEnvKey struct{}

func withTaskEnv(ctx context.Context, env *taskEnv) context.Context {
	return context.WithValue(ctx, taskEnvKey{}, env)
}

// taskEnvFrom returns the agent's taskEnv, or a default one when the handler is
// called outside an agent (as in tests).
func taskEnvFrom(ctx context.Context) *taskEnv {
	if env, ok := ctx.Value(taskEnvKey{}).(*taskEnv); ok && env != nil {
		return env
	}
	return &taskEnv{maxOutput: defaultMaxOutput}
}

// groupRecorder remembers the process groups an exec task runs, so that a later
// start of the agent can end them if this one is killed.
type groupRecorder interface {
	addGroup(pgid int)
	removeGroup(pgid int)
}
