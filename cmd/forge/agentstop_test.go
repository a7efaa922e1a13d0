package main_test

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestAgentMessagesOnePrefix: the lines `forge agent` prints when it stops on an
// error carry one prefix ("forge agent: …"), not the agent package's too
// ("forge agent: agent: …"), run as the built binary prints them.
func TestAgentMessagesOnePrefix(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)

	// No identity and no token: the agent cannot start.
	p := startProc(t, nil, "forge", "agent", "--server", url, "--state-dir", t.TempDir())
	var ee *exec.ExitError
	if err := p.wait(t); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("agent without identity or token exited %v, want 1:\n%s", err, p.output())
	}
	assertOnePrefix(t, p.output(), "forge agent: no saved identity and no enrollment token")

	// Revoked: the agent stops for good with exit code 3.
	p = startProc(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken,
		"--label", "prefix=revoked", "--state-dir", t.TempDir())
	a := waitAgents(t, ctl, "prefix=revoked", 1)[0]
	if _, err := ctl.RevokeAgent(t.Context(), connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: a.Id})); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("revoked agent exited %v, want 3:\n%s", err, p.output())
	}
	assertOnePrefix(t, p.output(), "forge agent: the server revoked this agent")
}

func assertOnePrefix(t *testing.T, out, want string) {
	t.Helper()
	if !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
	if strings.Contains(out, "agent: agent:") {
		t.Errorf("output has a doubled prefix:\n%s", out)
	}
}
