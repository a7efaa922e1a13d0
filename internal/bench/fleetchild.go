package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/orange-forge/forge/agent"
)

// FleetChildConfig configures RunFleetChild.
type FleetChildConfig struct {
	Server      string
	EnrollToken string
	// Agents is how many agents to run; the first TaskAgents of them also carry
	// the label task=1.
	Agents, TaskAgents int
	Logger             *slog.Logger
}

// RunFleetChild runs a fleet of agents for a parent `forge bench` in another
// process, so that the fleet's connections and the server's are counted against
// two open-file limits, not one. It prints "ready" once every agent is
// registered, answers each "stats" line on in with "stats CALLS ERRORS
// STOPPED", and stops its agents when in is closed.
func RunFleetChild(ctx context.Context, cfg FleetChildConfig, in io.Reader, out io.Writer) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	raiseFileLimit(log)
	r := &runner{log: log, enroll: cfg.EnrollToken, url: strings.TrimRight(cfg.Server, "/")}
	f, err := r.startStormFleet(ctx, cfg.Agents, cfg.TaskAgents)
	if err != nil {
		return err
	}
	defer f.stop()
	if _, err := f.ids(ctx, 10*time.Minute); err != nil {
		return fmt.Errorf("%w (%d agents stopped; %d of %d calls failed)", err, f.failed.Load(), f.rt.errors.Load(), f.rt.calls.Load())
	}
	fmt.Fprintln(out, "ready")
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if sc.Text() == "stats" {
			fmt.Fprintf(out, "stats %d %d %d\n", f.rt.calls.Load(), f.rt.errors.Load(), f.failed.Load())
		}
	}
	return nil
}

// startStormFleet starts n agents labelled bench=storm whose "slow" handler
// takes half a second; the first withTasks also carry task=1.
func (r *runner) startStormFleet(ctx context.Context, n, withTasks int) (*fleet, error) {
	slow := func(ctx context.Context, t *agent.Task) ([]byte, error) {
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return t.Payload, nil
	}
	return r.startFleet(ctx, fleetSpec{n: n, handlers: map[string]agent.Handler{"slow": slow, "echo": agent.EchoHandler()},
		// A connection per agent for its held Poll, and a few spare for
		// reports: a fan-out's reports must not leave the server holding
		// two idle connections per agent against its open-file limit.
		idle: n/4 + 64,
		// Several fleet processes register at once (the scale scenario): more
		// Registers in flight than a loaded server answers within the agent's
		// call timeout make it time out and retry, and registration collapses.
		registering: 16,
		labelsFor: func(i int) map[string]string {
			if i < withTasks {
				return map[string]string{"bench": "storm", "task": "1"}
			}
			return map[string]string{"bench": "storm"}
		}})
}

// fleetProc is a fleet running in a child process (RunFleetChild).
type fleetProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func (r *runner) startFleetChild(ctx context.Context, url string, n, withTasks int) (*fleetProc, error) {
	cmd := exec.CommandContext(ctx, r.cfg.ServerExe, "bench", "--fleet-child", url, "--agents", fmt.Sprint(n),
		"--task-agents", fmt.Sprint(withTasks), "--enroll-token", r.enroll)
	cmd.Env = childEnv()
	dieWithParent(cmd)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &fleetProc{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	ready := make(chan bool, 1)
	go func() { ready <- p.out.Scan() && p.out.Text() == "ready" }()
	select {
	case ok := <-ready:
		if ok {
			return p, nil
		}
	case <-time.After(11 * time.Minute):
	}
	p.stop()
	return nil, errors.New("the fleet child process did not get ready")
}

func (p *fleetProc) stats() (calls, errs, stopped int64, err error) {
	if _, err := io.WriteString(p.in, "stats\n"); err != nil {
		return 0, 0, 0, err
	}
	if !p.out.Scan() {
		return 0, 0, 0, errors.New("the fleet child process stopped answering")
	}
	_, err = fmt.Sscanf(p.out.Text(), "stats %d %d %d", &calls, &errs, &stopped)
	return
}

func (p *fleetProc) stop() {
	p.in.Close()
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}
