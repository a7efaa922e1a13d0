//go:build unix

package main_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// The operator's commands as issue 11 found them wanting: each test names the
// stumble it shows gone.

// cmdRun is a forge command running in this process with stdout and stderr
// apart.
type cmdRun struct {
	stdout, stderr buffer
	cancel         context.CancelFunc
	done           chan struct{}
	code           int
}

// goForge starts a forge command in this process; it is stopped when the test ends.
func goForge(t *testing.T, e env, args ...string) *cmdRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &cmdRun{cancel: cancel, done: make(chan struct{})}
	m := &forge.Main{Stdout: &r.stdout, Stderr: &r.stderr, Getenv: e.get}
	go func() {
		defer close(r.done)
		r.code = m.Run(ctx, args)
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
		if t.Failed() {
			t.Logf("forge %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.stdout.String(), r.stderr.String())
		}
	})
	return r
}

// wait waits for the command to return and gives its exit code.
func (r *cmdRun) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("the command did not return:\nstdout:\n%s\nstderr:\n%s", r.stdout.String(), r.stderr.String())
	}
	return r.code
}

// runSplit runs a forge command to its end: stdout, stderr, exit code.
func runSplit(t *testing.T, e env, args ...string) (string, string, int) {
	t.Helper()
	r := goForge(t, e, args...)
	code := r.wait(t)
	return r.stdout.String(), r.stderr.String(), code
}

// fleet starts a server (on the backend's store) and agents with these names,
// each allowed /bin/sh, labelled cli=NAME-PREFIX; it returns the operator's
// environment for the server.
func fleet(t *testing.T, backend []string, label string, names ...string) env {
	t.Helper()
	url := startServer(t, backend...)
	for _, n := range names {
		startAgent(t, url, "--name", n, "--label", "cli="+label, "--allow-exec", "/bin/sh")
	}
	waitAgents(t, control(url), "cli="+label, len(names))
	return env{"FORGE_SERVER": url, "FORGE_ADMIN_TOKEN": adminToken}
}

var jobLine = regexp.MustCompile(`^job (j[0-9a-z]+): (\d+) tasks?\n`)

// text adapts a buffer to waitOutput.
type text struct{ b *buffer }

func (x text) output() string { return x.b.String() }

// agentID returns the id of the online agent named name.
func agentID(t *testing.T, e env, name string) string {
	t.Helper()
	res, err := control(e["FORGE_SERVER"]).ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{Name: name}))
	if err != nil || len(res.Msg.Agents) != 1 {
		t.Fatalf("agent %s: %v, %v", name, res, err)
	}
	return res.Msg.Agents[0].Id
}

// gated is a command that prints "first", waits until the file gate exists,
// prints "second" and ends; on the agent failing (an id) it prints to stderr
// and exits 7.
func gated(gate, failing string) []string {
	return []string{"/bin/sh", "-c", `echo first; while [ ! -e ` + gate + ` ]; do sleep 0.05; done; echo second; ` +
		`case "$FORGE_TASK_ID" in *-` + failing + `) echo "disk full" >&2; exit 7;; esac`}
}

// TestRunLive: forge run on three agents, one failing, on memory and Redis.
// The job id is the first thing printed (on stderr: stdout is the commands'
// output alone); each agent's lines arrive prefixed by its name while the
// command still runs; its stderr stays on stderr; the summary names every
// state; the exit code says some task failed.
func TestRunLive(t *testing.T) { onBackends(t, runLive) }

func runLive(t *testing.T, backend []string) {
	e := fleet(t, backend, "live", "web-1", "web-2", "db-1")
	gate := filepath.Join(t.TempDir(), "go")
	r := goForge(t, e, append([]string{"run", "--selector", "cli=live", "--"}, gated(gate, agentID(t, e, "db-1"))...)...)
	waitOutput(t, text{&r.stderr}, "tasks\n")
	if m := jobLine.FindStringSubmatch(r.stderr.String()); m == nil || m[2] != "3" {
		t.Fatalf("stderr does not start with the job line:\n%s", r.stderr.String())
	}
	// Live: every agent's first line arrives while its command still waits.
	for _, p := range []string{"web-1: ", "web-2: ", "db-1:  "} { // names padded to one width
		waitOutput(t, text{&r.stdout}, p+"first\n")
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := r.wait(t); code != 1 {
		t.Fatalf("exit %d, want 1 (some task failed)", code)
	}
	out, errs := r.stdout.String(), r.stderr.String()
	for _, want := range []string{"web-1: second\n", "web-2: second\n", "db-1:  second\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "disk full") || strings.Contains(out, "job ") {
		t.Errorf("stdout holds more than the commands' stdout:\n%s", out)
	}
	for _, want := range []string{"db-1:  disk full\n", "--- db-1: FAILED exit 7", "--- web-1: SUCCEEDED exit 0",
		"3 tasks: 2 SUCCEEDED, 1 FAILED (db-1) in "} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
	// Piped (not a terminal): no redrawn line.
	if strings.Contains(errs, "\r") || strings.Contains(errs, "\x1b[") {
		t.Errorf("stderr has terminal control sequences although it is not a terminal:\n%q", errs)
	}
}

// TestRunGroup: --group prints each agent's output as one block, headed by how
// it ended, and a single agent's exit code is forge run's.
func TestRunGroup(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "group", "g-1", "g-2")
	out, errs, code := runSplit(t, e, "run", "--group", "--selector", "cli=group", "--", "/bin/sh", "-c", "echo one; echo two")
	if code != 0 {
		t.Fatalf("exit %d:\n%s\n%s", code, out, errs)
	}
	for _, n := range []string{"g-1", "g-2"} {
		if !strings.Contains(out, "=== "+n+": SUCCEEDED exit 0\none\ntwo\n") {
			t.Errorf("no block for %s:\n%s", n, out)
		}
	}
	// One agent: no prefix, and its exit code.
	out, errs, code = runSplit(t, e, "run", "--agent", "g-1", "--", "/bin/sh", "-c", "echo alone; exit 42")
	if code != 42 || out != "alone\n" || !strings.Contains(errs, "g-1: FAILED exit 42") {
		t.Fatalf("one agent: exit %d, stdout %q, stderr:\n%s", code, out, errs)
	}
}

// TestRunStatesNotLumped: two tasks canceled from another shell end CANCELED,
// and say so (not "0 succeeded, 2 failed"); forge cancel --job says what it did;
// a task never picked up is EXPIRED; a target matching nothing says so. Each
// with its own exit code.
func TestRunStatesNotLumped(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "cancel", "c-1", "c-2")
	gate := filepath.Join(t.TempDir(), "never")
	r := goForge(t, e, append([]string{"run", "--selector", "cli=cancel", "--"}, gated(gate, "none")...)...)
	waitOutput(t, text{&r.stdout}, "c-1: first")
	waitOutput(t, text{&r.stdout}, "c-2: first")
	job := jobLine.FindStringSubmatch(r.stderr.String())[1]
	// Flags after the positional argument, too.
	out, errs, code := runSplit(t, e, "cancel", "--job", job, "--reason", "wrong branch")
	if code != 0 || !strings.Contains(out, "job "+job+" canceled: 2 CANCELED\n") {
		t.Fatalf("forge cancel --job: exit %d:\n%s%s", code, out, errs)
	}
	if code := r.wait(t); code != 3 {
		t.Fatalf("forge run of a canceled job: exit %d, want 3", code)
	}
	if errs := r.stderr.String(); !strings.Contains(errs, "2 tasks: 2 CANCELED (c-1, c-2) in ") || strings.Contains(errs, "FAILED") {
		t.Fatalf("summary lumps states:\n%s", errs)
	}
	out, _, _ = runSplit(t, e, "cancel", "--job", job)
	if !strings.Contains(out, "had already ended: 2 CANCELED; nothing to cancel") {
		t.Errorf("cancel of an ended job:\n%s", out)
	}

	// An agent that is gone: its task is never picked up and ends EXPIRED.
	url := e["FORGE_SERVER"]
	reg, err := agentClient(url, enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "ghost", TaskTypes: []string{"exec"}}))
	if err != nil {
		t.Fatal(err)
	}
	out, errs, code = runSplit(t, e, "run", "--agent", reg.Msg.AgentId, "--delivery-ttl", "1s", "--", "/bin/true")
	if code != 3 || !strings.Contains(errs, "ghost: EXPIRED") || out != "" {
		t.Fatalf("a task never picked up: exit %d:\n%s%s", code, out, errs)
	}
	out, errs, code = runSplit(t, e, "run", "--selector", "cli=nothing", "--", "/bin/true")
	if code != 4 || !strings.Contains(errs, "no online agent matched --selector cli=nothing") {
		t.Fatalf("a target matching nothing: exit %d:\n%s%s", code, out, errs)
	}
}
