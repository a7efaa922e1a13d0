//go:build unix

package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/client"
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

// TestAgentInterrupt: Ctrl-C (SIGINT) stops an idle `forge agent` at once,
// however long its drain grace; with a task running it drains, and a second
// Ctrl-C stops the task now, reports it and exits 0.
func TestAgentInterrupt(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)

	// Idle, with a drain grace of ten minutes: it stops at once (p.wait
	// allows a minute).
	idle := startProc(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "sigint=idle",
		"--state-dir", t.TempDir(), "--drain-grace", "10m")
	waitAgents(t, ctl, "sigint=idle", 1)
	idle.signal(syscall.SIGINT)
	if err := idle.wait(t); err != nil {
		t.Fatalf("idle agent exited %v on Ctrl-C, want 0:\n%s", err, idle.output())
	}
	if strings.Contains(idle.output(), "draining") || !strings.Contains(idle.output(), "msg=stopped") {
		t.Fatalf("idle agent on Ctrl-C:\n%s", idle.output())
	}

	// Busy: the first Ctrl-C drains, the second stops the task now.
	work := t.TempDir()
	busy := startProc(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "sigint=busy",
		"--state-dir", t.TempDir(), "--drain-grace", "10m", "--allow-exec", "/bin/sh")
	a := waitAgents(t, ctl, "sigint=busy", 1)[0]
	payload, _ := json.Marshal(map[string]any{"argv": []string{"/bin/sh", "-c", "touch started; exec sleep 600"}, "dir": work})
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the task started", func() bool { _, err := os.Stat(filepath.Join(work, "started")); return err == nil })
	busy.signal(syscall.SIGINT)
	waitOutput(t, busy, "draining")
	if busy.exited() {
		t.Fatalf("the agent exited on the first Ctrl-C with a task running:\n%s", busy.output())
	}
	busy.signal(syscall.SIGINT)
	if err := busy.wait(t); err != nil {
		t.Fatalf("agent exited %v on a second Ctrl-C, want 0:\n%s", err, busy.output())
	}
	g, err := ctl.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: d.Msg.TaskIds[0]}))
	if err != nil {
		t.Fatal(err)
	}
	if g.Msg.Task.State != forgev1.TaskState_TASK_STATE_FAILED || !strings.Contains(g.Msg.Task.Error, "stopped at once") {
		t.Fatalf("the task stopped by a second Ctrl-C is %s %q, want FAILED, stopped at once", g.Msg.Task.State, g.Msg.Task.Error)
	}
}

// TestAgentInterruptedWhileStarting: an agent interrupted before it starts
// itself again without its token in view (Main.Exec) does not start again: the
// new process would not know it was interrupted.
func TestAgentInterruptedWhileStarting(t *testing.T) {
	t.Parallel()
	var out buffer
	m := newMain(nil, &out)
	execed := false
	m.Exec = func(string, []string, []string) error { execed = true; return errors.New("exec refused by the test") }
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	code := m.Run(ctx, []string{"agent", "--server", "http://127.0.0.1:1", "--enroll-token", enrollToken, "--state-dir", t.TempDir()})
	if code != 0 || execed {
		t.Fatalf("interrupted agent: exit %d, started again %v, want 0 and no restart:\n%s", code, execed, out.String())
	}
}

// TestCLIAnswerCapped: a server (broken or hostile) that answers a listing with
// more than the client takes (client.DefaultMaxAnswer) makes the command fail
// with resource_exhausted saying so, not allocate what the server sends.
func TestCLIAnswerCapped(t *testing.T) {
	t.Parallel()
	const size = client.DefaultMaxAnswer + 32<<20
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/proto")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		chunk := bytes.Repeat([]byte{0x0a}, 1<<20)
		for sent := 0; sent < size && r.Context().Err() == nil; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	out, code := runForge(t, nil, "agents", "--server", srv.URL, "--admin-token", adminToken)
	if code == 0 || !strings.Contains(out, "resource_exhausted") || !strings.Contains(out, "larger than the client takes") {
		t.Fatalf("forge agents from a server answering %d bytes: exit %d:\n%s", size, code, out)
	}
}

// TestRunOutputLines: what `forge run` shows of a command's output: CR LF line
// ends (Windows commands) show as line ends, not as a literal \r; a lone CR
// still shows escaped; a last line without a newline is ended with one, with
// one agent (no prefix) and with two (prefixed), so the next line starts on
// its own.
func TestRunOutputLines(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "crlf", "crlf-1", "crlf-2")
	script := `printf 'one\r\ntwo\r\n50%%\r100%%\r\nabc'`
	stdout, stderr, code := runSplit(t, e, "run", "--agent", "crlf-1", "--", "/bin/sh", "-c", script)
	if code != 0 || stdout != "one\ntwo\n50%\\r100%\nabc\n" {
		t.Fatalf("one agent: exit %d, stdout %q, want %q; stderr:\n%s", code, stdout, "one\ntwo\n50%\\r100%\nabc\n", stderr)
	}
	stdout, stderr, code = runSplit(t, e, "run", "--selector", "cli=crlf", "--", "/bin/sh", "-c", script)
	for _, name := range []string{"crlf-1", "crlf-2"} {
		for _, line := range []string{"one", "two", `50%\r100%`, "abc"} {
			if !strings.Contains(stdout, name+": "+line+"\n") {
				t.Fatalf("two agents: exit %d, stdout lacks %q:\n%s\nstderr:\n%s", code, name+": "+line, stdout, stderr)
			}
		}
	}
}
