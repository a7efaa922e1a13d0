//go:build unix

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
	"syscall"
	"time"
)

// readDrain bounds the wait for the output pipe to reach EOF once the group is
// gone: only a process that left the group (setsid) can still hold it open.
const readDrain = time.Second

func runCommand(ctx context.Context, p ExecPayload, env []string, cfg execConfig, te *taskEnv) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exec: not started: %v", context.Cause(ctx))
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	cmd := exec.Command(p.Argv[0], p.Argv[1:]...)
	if strings.Contains(p.Argv[0], "/") && !filepath.IsAbs(p.Argv[0]) {
		// Relative to the agent's directory, not to p.Dir (see ExecHandler).
		abs, err := filepath.Abs(p.Argv[0])
		if err != nil {
			pr.Close()
			pw.Close()
			return nil, fmt.Errorf("exec: %w", err)
		}
		cmd.Path = abs
	}
	cmd.Dir = p.Dir
	cmd.Env = env
	// An *os.File is handed to the child as is: no copying goroutine that Wait
	// would wait for while a background child still holds the pipe.
	cmd.Stdout = pw
	cmd.Stderr = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("exec: start %q: %w", p.Argv[0], err)
	}
	pw.Close() // the children hold the write end now; EOF comes when they all exit
	pgid := cmd.Process.Pid
	if te.groups != nil {
		te.groups.addGroup(pgid)
		defer te.groups.removeGroup(pgid)
	}

	out := newCapture(te.maxOutput)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		io.Copy(out, pr)
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	var werr error
	stopped := false
	select {
	case werr = <-waited:
	case <-ctx.Done():
		stopped = true
		stopGroup(pgid, cfg.grace)
		werr = <-waited
	}
	// Children the command left behind (`sleep 60 &`) are part of the attempt.
	gone := stopGroup(pgid, cfg.grace)

	select {
	case <-readDone:
	case <-time.After(readDrain):
	}
	pr.Close() // ends the copy if something outside the group holds the pipe
	<-readDone

	output, truncated, size := out.result()
	te.truncated, te.size = truncated, size
	if !gone {
		return output, fmt.Errorf("exec: a process of group %d survived SIGKILL", pgid)
	}

	code := 0
	var exitErr *exec.ExitError
	var why error
	switch {
	case werr == nil:
	case errors.As(werr, &exitErr):
		ws, _ := exitErr.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			code = 128 + int(ws.Signal())
			why = fmt.Errorf("killed by signal %v", ws.Signal())
		} else {
			code = ws.ExitStatus()
			why = fmt.Errorf("exit status %d", code)
		}
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
