package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// readDrain bounds the wait for the output pipe to reach EOF once the tree is
// gone: only a process that left it (setsid on Unix) can still hold it open.
const readDrain = time.Second

// killWait bounds the wait after the hard kill (SIGKILL, TerminateJobObject):
// only a process stuck in the kernel outlives it.
const killWait = 10 * time.Second

// processTree is an exec command's process and everything it starts: a process
// group on Unix, a Job Object on Windows. The handler ends the tree as a whole,
// so a cancel or a timeout never leaves a child running.
type processTree interface {
	// id names the tree in errors and in the state dir (the process group id on
	// Unix, the main process id on Windows).
	id() int
	// interrupt asks every process of the tree to stop (SIGTERM to the group, a
	// console Ctrl-Break to the job's process group); false when it could not
	// be sent, so waiting for it would be pointless.
	interrupt() bool
	// kill ends every process of the tree at once (SIGKILL, TerminateJobObject).
	kill()
	// gone tells whether no live process of the tree remains.
	gone() bool
	// release frees what the handler holds of the tree, once it is gone.
	release()
}

// stopTree ends t: interrupt, up to grace for it to exit, then kill. It returns
// once no live process of t remains, or false if one outlived the kill by wait.
func stopTree(t processTree, grace, wait time.Duration) bool {
	if t.gone() {
		return true
	}
	if t.interrupt() && waitTreeGone(t, grace) {
		return true
	}
	return killTree(t, wait)
}

// killTree kills t at once and waits up to wait for it to be gone.
func killTree(t processTree, wait time.Duration) bool {
	t.kill()
	return waitTreeGone(t, wait)
}

// waitTreeGone polls until t is gone or d passes; it reports whether t is gone.
func waitTreeGone(t processTree, d time.Duration) bool {
	end := time.Now().Add(d)
	step := 2 * time.Millisecond
	for {
		if t.gone() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(min(step, time.Until(end)+time.Millisecond))
		step = min(2*step, 100*time.Millisecond)
	}
}

// commandPath returns the program an allowed argv[0] names: a relative path
// with a separator (./deploy.sh) is taken from the agent's working directory,
// never from the payload's dir; anything else is left to exec.Command.
func commandPath(argv0 string) (string, error) {
	if filepath.IsAbs(argv0) || !strings.ContainsAny(argv0, separators) {
		return "", nil
	}
	return filepath.Abs(argv0)
}

// separators are the characters that make argv[0] a path rather than a name to
// look up in PATH.
var separators = func() string {
	if filepath.Separator != '/' {
		return "/" + string(filepath.Separator)
	}
	return "/"
}()

// runCommand runs p in a process tree of its own until it exits or ctx ends;
// then it ends whatever the command left in its tree, and reports the outcome.
// Its stdout and stderr go through pipes of their own to stdout and stderr
// (the task's streams); when both are nil (the handler called outside an agent)
// they go through one pipe into a capture, and the output is returned.
func runCommand(ctx context.Context, p ExecPayload, env []string, cfg execConfig, te *taskEnv, stdout, stderr io.Writer) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exec: not started: %v", context.Cause(ctx))
	}
	var out *capture
	dests := []io.Writer{stdout, stderr}
	if stdout == nil && stderr == nil {
		out = newCapture(te.maxOutput)
		dests = []io.Writer{out}
	}
	var readers, writers []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	for range dests {
		pr, pw, err := os.Pipe()
		if err != nil {
			closeAll(readers)
			closeAll(writers)
			return nil, fmt.Errorf("exec: %w", err)
		}
		readers, writers = append(readers, pr), append(writers, pw)
	}
	cmd := exec.Command(p.Argv[0], p.Argv[1:]...)
	if path, err := commandPath(p.Argv[0]); err != nil {
		closeAll(readers)
		closeAll(writers)
		return nil, fmt.Errorf("exec: %w", err)
	} else if path != "" {
		cmd.Path = path
	}
	cmd.Dir = p.Dir
	cmd.Env = env
	// An *os.File is handed to the child as is: no copying goroutine that Wait
	// would wait for while a background child still holds the pipe.
	cmd.Stdout = writers[0]
	cmd.Stderr = writers[len(writers)-1]
	if err := applyUser(cmd, cfg.user); err != nil {
		closeAll(readers)
		closeAll(writers)
		return nil, fmt.Errorf("exec: %w", err)
	}
	tree, err := startTree(cmd)
	if err != nil {
		closeAll(readers)
		closeAll(writers)
		return nil, fmt.Errorf("exec: start %q: %w", p.Argv[0], err)
	}
	closeAll(writers) // the children hold the write ends now; EOF comes when they all exit
	defer tree.release()
	if te.groups != nil {
		te.groups.addGroup(tree.id())
		defer te.groups.removeGroup(tree.id())
	}

	readDone := make(chan struct{})
	var copies sync.WaitGroup
	for i, pr := range readers {
		to := dests[i]
		if to == nil {
			to = io.Discard
		}
		copies.Add(1)
		go func() {
			defer copies.Done()
			io.Copy(to, pr)
		}()
	}
	go func() {
		copies.Wait()
		close(readDone)
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var werr error
	stopped := false
	select {
	case werr = <-waited:
	case <-ctx.Done():
		stopped = true
		stopTree(tree, cfg.grace, killWait)
		werr = <-waited
	}
	// Children the command left behind (`sleep 60 &`) are part of the attempt.
	gone := stopTree(tree, cfg.grace, killWait)

	select {
	case <-readDone:
	case <-time.After(readDrain):
	}
	closeAll(readers) // ends the copies if something outside the tree holds a pipe
	<-readDone

	var output []byte
	if out != nil {
		var truncated bool
		var size int64
		output, truncated, size = out.result()
		te.truncated, te.size = truncated, size
	}
	if !gone {
		return output, fmt.Errorf("exec: a process of %s survived being killed", treeName(tree))
	}

	code := 0
	var exitErr *exec.ExitError
	var why error
	switch {
	case werr == nil:
	case errors.As(werr, &exitErr):
		code, why = exitStatus(exitErr)
	default:
		return output, fmt.Errorf("exec: %w", werr)
	}
	if stopped {
		msg := fmt.Errorf("exec: stopped (%v)", context.Cause(ctx))
		if why != nil {
			msg = fmt.Errorf("exec: stopped (%v): %v", context.Cause(ctx), why)
		}
		if code != 0 {
			return output, &ExitError{Code: code, Err: msg}
		}
		return output, msg
	}
	if code != 0 || why != nil {
		return output, &ExitError{Code: code, Err: why}
	}
	return output, nil
}
