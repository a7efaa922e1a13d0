//go:build linux

package chaos

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is one process of the run — a forge server replica, a `forge agent`, or a
// `chaosagent agents` — that the fault injector may kill, stop and start again.
// Its output goes to a log file of its own, appended across restarts.
type Proc struct {
	Name string
	bin  string
	args []string
	env  []string
	log  string
	// url is a server's base URL (it listens on a fixed port across restarts).
	url string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	paused  bool
	starts  int
	stopped bool // Shutdown was called: never start again
}

// Start starts the process; for a server it waits until /healthz answers.
func (p *Proc) Start() error {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return errors.New("chaos: process shut down")
	}
	if p.cmd != nil {
		p.mu.Unlock()
		return fmt.Errorf("chaos: %s is already running", p.Name)
	}
	f, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	fmt.Fprintf(f, "==== %s start %d\n", time.Now().Format(time.RFC3339Nano), p.starts+1)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		p.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		f.Close()
		close(done)
	}()
	p.cmd, p.done, p.paused = cmd, done, false
	p.starts++
	p.mu.Unlock()
	if p.url != "" {
		return p.waitHealthy(30 * time.Second)
	}
	return nil
}

func (p *Proc) waitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/healthz", nil)
		res, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !p.Running() {
			return fmt.Errorf("chaos: %s exited at start (see %s)", p.Name, p.log)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("chaos: %s not healthy within %s (see %s)", p.Name, timeout, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Running tells whether the process runs (paused or not).
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

// end sends sig (SIGKILL or SIGTERM; a paused process is resumed to hear a
// SIGTERM) and waits up to wait for the exit, then kills it. It returns once the
// process is gone.
func (p *Proc) end(sig syscall.Signal, wait time.Duration) {
	p.mu.Lock()
	cmd, done, paused := p.cmd, p.done, p.paused
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if paused && sig != syscall.SIGKILL {
		cmd.Process.Signal(sigCont)
	}
	select {
	case <-done:
	case <-time.After(wait):
		cmd.Process.Kill()
		<-done
	}
	p.mu.Lock()
	p.cmd, p.paused = nil, false
	p.mu.Unlock()
}

// Kill ends the process with SIGKILL, as a crash would.
func (p *Proc) Kill() { p.end(syscall.SIGKILL, 10*time.Second) }

// Term asks the process to stop (SIGTERM) and waits up to wait.
func (p *Proc) Term(wait time.Duration) { p.end(syscall.SIGTERM, wait) }

// Pause freezes the process (SIGSTOP); Resume thaws it.
func (p *Proc) Pause() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("chaos: %s is not running", p.Name)
	}
	p.paused = true
	return p.cmd.Process.Signal(sigStop)
}

// Resume thaws a paused process (SIGCONT).
func (p *Proc) Resume() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return fmt.Errorf("chaos: %s is not running", p.Name)
	}
	p.paused = false
	return p.cmd.Process.Signal(sigCont)
}

// Shutdown stops the process for good: SIGTERM, SIGKILL after wait.
func (p *Proc) Shutdown(wait time.Duration) {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.Term(wait)
}
