//go:build unix

package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestAgentEnrollTokenFile: an installed agent takes its enrollment token from a
// file named by FORGE_ENROLL_TOKEN_FILE, refuses a file others can read, starts
// without the file once it has an identity, and exits 3 (so its service manager
// does not restart it) when it is revoked.
func TestAgentEnrollTokenFile(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "enroll-token")
	state := filepath.Join(dir, "state")

	if err := os.WriteFile(tokenFile, []byte(enrollToken+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runForge(t, env{"FORGE_ENROLL_TOKEN_FILE": tokenFile}, "agent", "--server", url, "--state-dir", state)
	if code != 1 || !strings.Contains(out, "readable by others") || strings.Contains(out, enrollToken) {
		t.Fatalf("a token file of mode 0644: exit %d, want 1 and a message that says so without the token:\n%s", code, out)
	}
	if err := os.Chmod(tokenFile, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = runForge(t, nil, "agent", "--server", url, "--enroll-token", enrollToken, "--enroll-token-file", tokenFile)
	if code != 2 || !strings.Contains(out, "not both") {
		t.Fatalf("both a token and a token file: exit %d, want 2:\n%s", code, out)
	}

	e := env{"FORGE_ENROLL_TOKEN_FILE": tokenFile, "FORGE_STATE_DIR": state, "FORGE_LABEL": "case=tokenfile"}
	ag := startForge(t, e, "agent", "--server", url)
	id := waitAgents(t, ctl, "case=tokenfile", 1)[0].Id
	// Listed is not yet saved: the agent keeps its identity once Register's
	// answer reaches it, a moment after the server lists it.
	waitFor(t, "the identity is saved", func() bool { _, err := os.Stat(filepath.Join(state, "identity.json")); return err == nil })
	if code := ag.stop(t); code != 0 {
		t.Fatalf("the agent exited %d when stopped:\n%s", code, ag.output())
	}

	// Enrolled: the operator may remove the token file, and the agent still starts.
	if err := os.Remove(tokenFile); err != nil {
		t.Fatal(err)
	}
	ag = startForge(t, e, "agent", "--server", url)
	if got := waitAgents(t, ctl, "case=tokenfile", 1)[0].Id; got != id {
		t.Fatalf("restarted without the token file, the agent is %s, want its saved identity %s", got, id)
	}

	if _, err := ctl.RevokeAgent(t.Context(), connect.NewRequest(&forgev1.RevokeAgentRequest{AgentId: id})); err != nil {
		t.Fatal(err)
	}
	if !eventually(ag.exited) {
		t.Fatalf("the revoked agent did not stop:\n%s", ag.output())
	}
	if code := ag.stop(t); code != 3 || !strings.Contains(ag.output(), "the server revoked this agent") {
		t.Fatalf("the revoked agent exited %d, want 3:\n%s", code, ag.output())
	}
}
