//go:build unix

package main_test

import (
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestBenchInterrupted: SIGINT during the scale scenario ends the run as an
// interrupted one — the rows measured so far, "interrupted", exit 130 — not
// as a scenario that failed with "context canceled".
func TestBenchInterrupted(t *testing.T) {
	t.Parallel()
	p := startProc(t, env{}, "forge", "bench", "--quick", "--scenario", "scale", "--log-level", "info")
	waitFor(t, "the scale scenario to start", func() bool { return strings.Contains(p.output(), "name=scale") || p.exited() })
	p.signal(syscall.SIGINT)
	err := p.wait(t)
	out := p.output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit %v, want 130:\n%s", err, out)
	}
	if !strings.Contains(out, "forge bench: interrupted") || !strings.Contains(out, "bare Connect call") {
		t.Errorf("no ping rows and \"interrupted\":\n%s", out)
	}
	if strings.Contains(out, "ERROR") || strings.Contains(out, "context canceled") {
		t.Errorf("the interruption is reported as a failed scenario:\n%s", out)
	}
}
