//go:build windows

package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sys/windows"
	"golang.org/x/sys/windows/svc"
	"golang.org/x/sys/windows/svc/eventlog"

	"github.com/orange-forge/forge/agent"
	"github.com/orange-forge/forge/internal/service"
)

// inService tells whether the service manager started this process.
func inService() bool {
	ok, err := svc.IsWindowsService()
	return err == nil && ok
}

var procAllocConsole = windows.NewLazySystemDLL("kernel32.dll").NewProc("AllocConsole")

// serveAgentService runs the agent as the Windows service: its log goes to the
// event log, and Stop or Shutdown from the service manager is a drain, told to
// the manager as StopPending until the agent has reported its tasks.
func (m *Main) serveAgentService(ctx context.Context, c AgentConfig) error {
	elog, err := eventlog.Open(service.Name)
	if err != nil {
		return err
	}
	defer elog.Close()
	m.Stderr = eventWriter{elog}
	// A service has no console, and exec stops a command with a console
	// Ctrl-Break, which only reaches processes sharing the sender's console: a
	// console of the agent's own (invisible, in session 0) gives its commands one.
	procAllocConsole.Call()
	// Only the service manager stops the service. A service also receives the
	// console's CTRL_LOGOFF_EVENT whenever a user logs off, which the Go runtime
	// turns into SIGTERM, and so into the end of ctx: ignore it (the runtime
	// still answers the event as handled, so Windows does not end the process).
	h := &agentService{m: m, c: c, ctx: context.WithoutCancel(ctx)}
	if err := svc.Run(service.Name, h); err != nil {
		return err
	}
	return h.err
}

type agentService struct {
	m   *Main
	c   AgentConfig
	ctx context.Context
	err error
}

// Execute runs the agent until the service manager stops it. A revoked agent
// stops with exit code 0, so the manager's recovery does not restart it (the
// systemd unit's RestartPreventExitStatus); any other failure exits 1, which it
// does restart.
func (h *agentService) Execute(_ []string, req <-chan svc.ChangeRequest, status chan<- svc.Status) (bool, uint32) {
	status <- svc.Status{State: svc.StartPending}
	a, err := h.m.BuildAgent(h.c)
	if err != nil {
		h.err = err
		return false, 1
	}
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	accepts := svc.AcceptStop | svc.AcceptShutdown
	status <- svc.Status{State: svc.Running, Accepts: accepts}

	// While draining, tell the manager the stop is progressing, so it waits.
	hint := h.c.DrainGrace + 30*time.Second
	var tick <-chan time.Time
	checkpoint := uint32(0)
	for {
		select {
		case r := <-req:
			switch r.Cmd {
			case svc.Interrogate:
				status <- r.CurrentStatus
			case svc.Stop, svc.Shutdown:
				status <- svc.Status{State: svc.StopPending, WaitHint: uint32(hint / time.Millisecond)}
				cancel()
				t := time.NewTicker(5 * time.Second)
				defer t.Stop()
				tick = t.C
			}
		case <-tick:
			checkpoint++
			status <- svc.Status{State: svc.StopPending, CheckPoint: checkpoint, WaitHint: uint32(hint / time.Millisecond)}
		case err := <-done:
			status <- svc.Status{State: svc.StopPending}
			switch {
			case errors.Is(err, agent.ErrRevoked):
				slog.New(slog.NewTextHandler(h.m.Stderr, nil)).Error("the server refused the agent token for good; the service stays stopped", "err", err)
				return false, 0
			case err != nil:
				h.err = err
				return false, 1
			}
			return false, 0
		}
	}
}

// eventWriter sends each log line to the event log at the line's level.
type eventWriter struct{ l *eventlog.Log }

func (w eventWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch lv := logLevelOf(line); {
	case lv >= slog.LevelError:
		w.l.Error(1, line)
	case lv >= slog.LevelWarn:
		w.l.Warning(1, line)
	default:
		w.l.Info(1, line)
	}
	return len(p), nil
}
