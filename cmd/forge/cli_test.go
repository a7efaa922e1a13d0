//go:build unix

package main_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/buildinfo"
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
	// --json: the job and its tasks once all ended, output as text.
	out, errs, code = runSplit(t, e, "run", "--json", "--selector", "cli=group", "--", "/bin/sh", "-c", "echo one")
	var res struct {
		Job struct {
			Counts struct{ Succeeded, Total int }
		}
		Tasks []struct{ AgentName, Output, State string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || res.Job.Counts.Succeeded != 2 ||
		len(res.Tasks) != 2 || res.Tasks[0].AgentName != "g-1" || res.Tasks[0].Output != "one\n" {
		t.Fatalf("run --json: exit %d, %v:\n%s\n%s", code, err, out, errs)
	}
	// --detach: the job id alone on stdout, at once.
	out, errs, code = runSplit(t, e, "run", "--detach", "--selector", "cli=group", "--", "/bin/sh", "-c", "echo later")
	if id := strings.TrimSuffix(out, "\n"); code != 0 || !regexp.MustCompile(`^j[0-9a-z]+$`).MatchString(id) {
		t.Fatalf("run --detach: exit %d:\n%s\n%s", code, out, errs)
	} else {
		waitFor(t, "the detached job to end", func() bool {
			out, _, _ := runSplit(t, e, "job", id)
			return strings.Contains(out, "tasks     2: 2 SUCCEEDED")
		})
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

// TestRunServerUnreachable: forge run says at once that the server cannot be
// reached and gives up after --give-up-after; when the server goes away
// mid-run it says so, and when the server that comes back no longer knows the
// job (in memory), it says the job is gone. Never a silent hang.
func TestRunServerUnreachable(t *testing.T) {
	t.Parallel()
	e := env{"FORGE_ADMIN_TOKEN": adminToken, "FORGE_SERVER": "http://127.0.0.1:1"}
	_, errs, code := runSplit(t, e, "run", "--all", "--give-up-after", "1s", "--", "/bin/true")
	if code != 5 || !strings.Contains(errs, "cannot reach http://127.0.0.1:1") || !strings.Contains(errs, "gave up after") {
		t.Fatalf("unreachable server: exit %d:\n%s", code, errs)
	}

	srv := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0")
	url := srv.waitURL(t)
	ag := startAgent(t, url, "--name", "u-1", "--label", "cli=unreach", "--allow-exec", "/bin/sh")
	waitAgents(t, control(url), "cli=unreach", 1)
	gate := filepath.Join(t.TempDir(), "never")
	e["FORGE_SERVER"] = url
	r := goForge(t, e, append([]string{"run", "--selector", "cli=unreach", "--give-up-after", "2m", "--"}, gated(gate, "none")...)...)
	waitOutput(t, text{&r.stdout}, "first\n")
	job := jobLine.FindStringSubmatch(r.stderr.String())[1]
	srv.stop(t)
	waitOutput(t, text{&r.stderr}, "forge run: cannot reach "+url)
	// The same address, a new in-memory server: it never heard of the job.
	startForge(t, tokensEnv, "server", "--listen", strings.TrimPrefix(url, "http://")).waitURL(t)
	if code := r.wait(t); code != 5 {
		t.Fatalf("exit %d, want 5", code)
	}
	gone := regexp.MustCompile(`(?m)^forge run: the job is gone from the server: .*$`).FindString(r.stderr.String())
	if !strings.Contains(gone, `not_found: job "`+job+`" not found`) || strings.Count(gone, job) != 1 {
		t.Fatalf("no word of the job being gone, or its id named twice in it:\n%s", r.stderr.String())
	}
	// The agent's command ends while the new server is there to hear of it.
	os.WriteFile(gate, nil, 0o600)
	ag.stop(t)
}

// TestCLIConventions: flags after positional arguments; wrong usage told
// precisely; boolean flags and targets never read from the environment;
// several servers; agents by name and glob in listings; --json with text and
// numbers; help with examples, defaults once, valid values, hidden internals;
// the version.
func TestCLIConventions(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "conv", "web-1", "web-2", "db-1")
	out, errs, code := runSplit(t, e, "run", "--agent", "web-*", "--", "/bin/sh", "-c", `printf 'h\351llo'; echo to-stderr >&2; exit 3`)
	if code != 1 || !strings.Contains(errs, "2 tasks: 2 FAILED (web-1, web-2)") || strings.Contains(out+errs, "db-1") {
		t.Fatalf("run --agent 'web-*': exit %d:\n%s%s", code, out, errs)
	}
	job := jobLine.FindStringSubmatch(errs)[1]
	out, errs, code = runSplit(t, e, "run", "--agent", "db-1", "--", "/bin/sh", "-c", "echo hello")
	if code != 0 || out != "hello\n" {
		t.Fatalf("run --agent db-1: exit %d:\n%s%s", code, out, errs)
	}

	// Listings by name and glob; an unknown name is an error, not an empty table.
	out, _, code = runSplit(t, e, "tasks", "--agent", "web-*")
	if code != 0 || strings.Count(out, "\n") != 3 || strings.Contains(out, "db-1") {
		t.Fatalf("tasks --agent 'web-*': exit %d:\n%s", code, out)
	}
	// Command shown, names not ids, an exit code only where there is one,
	// times to the millisecond.
	row := regexp.MustCompile(`(?m)^t\S+\s+web-1\s+/bin/sh -c 'printf.*\s+FAILED\s+3\s+1\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}(\s.*)?$`)
	if !row.MatchString(out) {
		t.Errorf("forge tasks row is not task, name, command, state, exit, attempt, time, error:\n%s", out)
	}
	if !strings.HasPrefix(out, "TASK") || !strings.Contains(strings.SplitN(out, "\n", 2)[0], "ERROR") {
		t.Errorf("forge tasks has no ERROR column (forge job has one):\n%s", out)
	}
	_, errs, code = runSplit(t, e, "tasks", "--agent", "nosuch")
	if code != 1 || !strings.Contains(errs, "no agent has a name that matches") {
		t.Errorf("tasks --agent nosuch: exit %d: %s", code, errs)
	}
	out, _, _ = runSplit(t, e, "agents", "--agent", "web-*")
	if strings.Count(out, "\n") != 3 || !strings.Contains(out, "web-1") || strings.Contains(out, "db-1") {
		t.Errorf("agents --agent 'web-*':\n%s", out)
	}

	// forge job, and flags after the positional argument.
	out, errs, code = runSplit(t, e, "job", job, "--json")
	var j struct {
		Job struct {
			Counts struct{ Failed, Total int }
		}
		Tasks []struct {
			AgentName, OutputBase64, Stderr, State string
			ExitCode                               int
			OutputSize                             int
			Command                                []string
		}
	}
	if err := json.Unmarshal([]byte(out), &j); err != nil || code != 0 {
		t.Fatalf("job --json: exit %d, %v:\n%s%s", code, err, out, errs)
	}
	if j.Job.Counts.Failed != 2 || len(j.Tasks) != 2 || j.Tasks[0].AgentName != "web-1" || j.Tasks[0].ExitCode != 3 ||
		j.Tasks[0].Stderr != "to-stderr\n" || j.Tasks[0].OutputBase64 != "aOlsbG8=" || j.Tasks[0].OutputSize != 15 ||
		j.Tasks[0].State != "TASK_STATE_FAILED" || len(j.Tasks[0].Command) != 3 {
		t.Errorf("job --json = %+v:\n%s", j, out)
	}
	out, _, _ = runSplit(t, e, "job", job)
	if !strings.Contains(out, "command   /bin/sh -c 'printf") || !strings.Contains(out, "tasks     2: 2 FAILED") {
		t.Errorf("forge job:\n%s", out)
	}
	out, _, code = runSplit(t, e, "jobs", "--limit", "1")
	if code != 0 || !strings.Contains(out, "1 SUCCEEDED") || strings.Count(out, "\n") != 2 {
		t.Errorf("forge jobs --limit 1: exit %d:\n%s", code, out)
	}
	res, err := control(e["FORGE_SERVER"]).ListTasks(t.Context(), connect.NewRequest(&forgev1.ListTasksRequest{JobId: job}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.Tasks[0].Id
	out, _, code = runSplit(t, e, "task", id, "--json")
	var one map[string]any
	if err := json.Unmarshal([]byte(out), &one); err != nil || code != 0 || one["exitCode"] != 3.0 || one["stderr"] != "to-stderr\n" {
		t.Errorf("task ID --json: exit %d, %v:\n%s", code, err, out)
	}
	out, _, code = runSplit(t, e, "tasks", id, "--raw")
	if code != 0 || !strings.Contains(out, "exit      3") || !strings.Contains(out, "--- stderr\nto-stderr\n") {
		t.Errorf("tasks ID --raw:\n%s", out)
	}
	out, errs, code = runSplit(t, e, "task", "--follow", id)
	if code != 3 || !strings.Contains(out, `h\xe9llo`) || !strings.Contains(errs, "to-stderr\nFAILED exit 3") {
		t.Errorf("task --follow of an ended task: exit %d:\n%s%s", code, out, errs)
	}

	// Wrong usage, told precisely (exit 2).
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--all"}, "give the command to run after --"},
		{[]string{"run", "--", "true"}, "say where to run it"},
		{[]string{"run", "--all", "--selector", "a=b", "--", "true"}, "give one of --agent, --selector and --all, not --selector and --all"},
		{[]string{"tasks", "--state", "done"}, `want one of pending, running, succeeded, failed, canceled, timed_out, expired, lost`},
		{[]string{"agents", "extra"}, `unexpected argument "extra"`},
		{[]string{"cancel"}, "give task ids or --job JOB_ID"},
		{[]string{"job"}, "give one job id"},
	} {
		_, errs, code := runSplit(t, e, c.args...)
		if code != 2 || !strings.Contains(errs, c.want) || !strings.Contains(errs, "-h\" for help") {
			t.Errorf("forge %s: exit %d, want 2 with %q:\n%s", strings.Join(c.args, " "), code, c.want, errs)
		}
	}
	// A stray export neither targets a run nor changes what is printed.
	stray := env{"FORGE_ALL": "1", "FORGE_JSON": "1", "FORGE_SELECTOR": "cli=conv", "FORGE_AGENT": "web-1"}
	for k, v := range e {
		stray[k] = v
	}
	if _, errs, code := runSplit(t, stray, "run", "--", "/bin/true"); code != 2 || !strings.Contains(errs, "say where to run it") {
		t.Errorf("forge run with FORGE_ALL and FORGE_SELECTOR set: exit %d:\n%s", code, errs)
	}
	if out, _, _ := runSplit(t, stray, "agents"); !strings.HasPrefix(out, "NAME") {
		t.Errorf("forge agents with FORGE_JSON=1 printed:\n%s", out)
	}
	// Several servers: the first is down, the second answers.
	several := env{"FORGE_ADMIN_TOKEN": adminToken, "FORGE_SERVER": "http://127.0.0.1:1," + e["FORGE_SERVER"]}
	out, errs, code = runSplit(t, several, "agents", "--json")
	var agents struct {
		Agents []struct{ Name, Version string }
	}
	if err := json.Unmarshal([]byte(out), &agents); err != nil || code != 0 || len(agents.Agents) != 3 ||
		!strings.Contains(errs, "cannot reach http://127.0.0.1:1") {
		t.Fatalf("agents over two servers: exit %d, %v:\n%s%s", code, err, out, errs)
	}
	// Agents send their version at Register.
	if v := agents.Agents[0].Version; v != buildinfo.Get().Version {
		t.Errorf("agent version %q, want %q", v, buildinfo.Get().Version)
	}
}

// TestCLIHelp: every command's help has its usage and examples, prints each
// default once and none that is a zero value, says what 0 means, lists valid
// values, marks which flags read a variable, and hides internal flags.
func TestCLIHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"run", "agents", "jobs", "job", "tasks", "task", "cancel", "revoke", "tokens", "version", "server", "agent", "bench"} {
		out, _, code := runSplit(t, nil, cmd, "-h")
		if code != 0 {
			t.Errorf("forge %s -h: exit %d", cmd, code)
		}
		if cmd != "server" && cmd != "agent" && cmd != "bench" && (!strings.Contains(out, "\nUsage:\n") ||
			(cmd != "version" && !strings.Contains(out, "\nExamples:\n"))) {
			t.Errorf("forge %s -h has no usage or examples:\n%s", cmd, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.Count(l, "(default") > 1 || strings.Contains(l, "(default 0") || strings.Contains(l, "(default false)") {
				t.Errorf("forge %s -h: %q", cmd, l)
			}
		}
		for _, hidden := range []string{"fleet-child", "task-agents"} {
			if strings.Contains(out, hidden) {
				t.Errorf("forge %s -h shows the internal flag --%s", cmd, hidden)
			}
		}
	}
	out, _, _ := runSplit(t, nil, "run", "-h")
	for _, want := range []string{"--max-concurrency\n      run on at most this many agents at once (0: no limit)\n",
		"--all\n", "--json\n", "--server  [FORGE_SERVER]", "(default 1m0s)", "  3  none failed, but some were CANCELED or EXPIRED"} {
		if !strings.Contains(out, want) {
			t.Errorf("forge run -h lacks %q:\n%s", want, out)
		}
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, _, code := runSplit(t, nil, args...)
		if code != 0 || !strings.HasPrefix(out, "forge "+buildinfo.Get().Version) {
			t.Errorf("forge %s: exit %d: %q", args[0], code, out)
		}
	}
}

// TestRunTerminal: on a terminal, forge run keeps a status line at the bottom
// of stderr — done, running and pending of N by state, the time, the job — and
// clears it before anything else is written, so output never mixes with it.
func TestRunTerminal(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "tty", "t-1", "t-2", "t-3")
	gate := filepath.Join(t.TempDir(), "go")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out buffer // stdout and stderr on one terminal
	m := &forge.Main{Stdout: &out, Stderr: &out, Getenv: e.get, Terminal: func(io.Writer) (int, bool) { return 200, true }}
	done := make(chan int)
	go func() {
		done <- m.Run(ctx, append([]string{"run", "--selector", "cli=tty", "--"}, gated(gate, agentID(t, e, "t-3"))...))
	}()
	waitOutput(t, text{&out}, "0/3 done · 3 running · 0 pending · ")
	for _, n := range []string{"t-1", "t-2", "t-3"} {
		waitOutput(t, text{&out}, n+": first\n")
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 1 {
		t.Fatalf("exit %d:\n%q", code, out.String())
	}
	s := out.String()
	if !regexp.MustCompile(`(\n|\r\x1b\[K)3 tasks: 2 SUCCEEDED, 1 FAILED \(t-3\) in \S+ \(job j\w+\)\n$`).MatchString(s) {
		t.Fatalf("the summary is not the last line:\n%q", s)
	}
	if i := strings.Index(s, "· job j"); i < 0 {
		t.Fatalf("the status line does not name the job:\n%q", s)
	}
	// Every line of output starts a line: after a newline, or after the
	// status line was cleared.
	for _, l := range regexp.MustCompile(`(?s).(t-\d: (first|second|disk full)\n)`).FindAllStringSubmatchIndex(s, -1) {
		if before := s[:l[2]]; !strings.HasSuffix(before, "\n") && !strings.HasSuffix(before, "\r\x1b[K") {
			t.Fatalf("output written after the status line without clearing it: %q", s[max(0, l[2]-80):l[3]])
		}
	}
}

// TestReadmeRunSample runs the README's sample of forge run on three agents,
// one failing (db-1 has no file "ready" in its working directory), and checks
// that it prints the README's lines and no others (agents' lines interleave
// as they come, so the order between agents is not compared; job ids and
// durations are).
func TestReadmeRunSample(t *testing.T) {
	t.Parallel()
	sample := strings.Split(strings.TrimSuffix(readme(t, "runsample"), "\n"), "\n")
	cmd, want := sample[0], sample[1:]
	const prompt = "$ ./forge run --selector env=dev -- /bin/sh -c "
	if !strings.HasPrefix(cmd, prompt) {
		t.Fatalf("the sample's command is not %q…: %q", prompt, cmd)
	}
	script := strings.TrimSuffix(strings.TrimPrefix(cmd, prompt+"'"), "'")
	url := startServer(t)
	for _, n := range []string{"web-1", "web-2", "db-1"} {
		dir := t.TempDir()
		if n != "db-1" {
			if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c := exec.Command(bin(t, "forge"), "agent", "--server", url, "--enroll-token", enrollToken, "--name", n,
			"--label", "env=dev", "--allow-exec", "/bin/sh")
		c.Dir = dir
		startCmd(t, c)
	}
	waitAgents(t, control(url), "env=dev", 3)
	out, code := runForge(t, env{"FORGE_SERVER": url, "FORGE_ADMIN_TOKEN": adminToken}, "run", "--selector", "env=dev", "--", "/bin/sh", "-c", script)
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	norm := func(lines []string) []string {
		re := regexp.MustCompile(`j[0-9a-z]{15}|in [0-9.]+(ms|s)`)
		out := make([]string, len(lines))
		for i, l := range lines {
			out[i] = re.ReplaceAllStringFunc(l, func(s string) string {
				if strings.HasPrefix(s, "in ") {
					return "in T"
				}
				return "JOB"
			})
		}
		slices.Sort(out)
		return out
	}
	got := norm(strings.Split(strings.TrimSuffix(out, "\n"), "\n"))
	if w := norm(want); !slices.Equal(got, w) {
		t.Fatalf("forge run printed (sorted, normalized):\n%s\nthe README shows:\n%s", strings.Join(got, "\n"), strings.Join(w, "\n"))
	}
}

// TestCLITokens: forge tokens creates an enrollment token (printed once, on
// stdout), lists it with its uses, and revokes it (flags after the arguments).
func TestCLITokens(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	e := env{"FORGE_SERVER": url, "FORGE_ADMIN_TOKEN": adminToken}
	out, errs, code := runSplit(t, e, "tokens", "create", "rack 12", "--max-uses", "2", "--ttl", "1h")
	tok := strings.TrimSuffix(out, "\n")
	if code != 0 || !strings.HasPrefix(tok, "fe_") || !strings.Contains(errs, "shown only now") {
		t.Fatalf("tokens create: exit %d:\n%s%s", code, out, errs)
	}
	if _, err := agentClient(url, tok).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "r-1"})); err != nil {
		t.Fatalf("Register with the new token: %v", err)
	}
	id := strings.Split(tok, "_")[1]
	out, _, _ = runSplit(t, e, "tokens")
	if !regexp.MustCompile(`(?m)^` + id + `\s+rack 12\s+1 of 2\s+\d{4}-.*\s+no$`).MatchString(out) {
		t.Fatalf("tokens:\n%s", out)
	}
	if out, errs, code := runSplit(t, e, "tokens", "revoke", id); code != 0 || out != id+" revoked\n" {
		t.Fatalf("tokens revoke: exit %d:\n%s%s", code, out, errs)
	}
	if _, err := agentClient(url, tok).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "r-2"})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("Register with a revoked token: %v", err)
	}
	if _, errs, code := runSplit(t, e, "tokens", "burn"); code != 2 || !strings.Contains(errs, `unknown "burn": want list, create or revoke`) {
		t.Fatalf("tokens burn: exit %d: %s", code, errs)
	}
}

// TestReadmeCLICommands runs the README's list of operator commands, as
// printed, with the built binary, on a job where one agent failed.
func TestReadmeCLICommands(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "readme", "web-1", "db-1")
	_, errs, code := runSplit(t, e, "run", "--selector", "cli=readme", "--", "/bin/sh", "-c", `case "$FORGE_TASK_ID" in *-`+agentID(t, e, "db-1")+`) echo oops >&2; exit 1;; esac; echo fine`)
	if code != 1 {
		t.Fatalf("forge run: exit %d:\n%s", code, errs)
	}
	job := jobLine.FindStringSubmatch(errs)[1]
	// A failure whose reason is the task's error, not its stderr: the
	// recipe for failed tasks shows it too.
	if _, errs, code := runSplit(t, e, "run", "--agent", "web-1", "--", "/bin/nosuch"); code != 1 {
		t.Fatalf("forge run of a command web-1 does not allow: exit %d:\n%s", code, errs)
	}
	res, err := control(e["FORGE_SERVER"]).ListTasks(t.Context(), connect.NewRequest(&forgev1.ListTasksRequest{JobId: job, State: forgev1.TaskState_TASK_STATE_SUCCEEDED}))
	if err != nil || len(res.Msg.Tasks) != 1 {
		t.Fatalf("ListTasks = %v, %v", res, err)
	}
	forgeBin := bin(t, "forge")
	want := map[string]string{"jobs": "1 SUCCEEDED, 1 FAILED", "job": "command   /bin/sh -c", "task": "fine",
		"cancel": "had already ended", "tasks": "db-1: exit status 1; oops\n"}
	var lines []string // the export of the admin token is TestReadmeListings' to check
	for _, l := range strings.Split(strings.TrimSpace(readme(t, "clicmds")), "\n") {
		if !strings.HasPrefix(l, "export ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != len(want) {
		t.Fatalf("the README lists %d commands; this test knows %d", len(lines), len(want))
	}
	for _, l := range lines {
		l = regexp.MustCompile(`\s+#.*$`).ReplaceAllString(l, "")
		cmd := strings.NewReplacer("./forge ", forgeBin+" ", "JOB_ID", job, "TASK_ID", res.Msg.Tasks[0].Id).Replace(l)
		c := exec.Command("bash", "-euo", "pipefail", "-c", cmd)
		c.Env = append(os.Environ(), "FORGE_SERVER="+e["FORGE_SERVER"], "FORGE_ADMIN_TOKEN="+adminToken)
		out, err := c.CombinedOutput()
		verb := strings.Fields(l)[1]
		if verb == "tasks" && !regexp.MustCompile(`(?m)^web-1: \S`).Match(out) {
			t.Errorf("%s shows no reason for web-1's failure:\n%s", l, out)
		}
		if err != nil || !strings.Contains(string(out), want[verb]) {
			t.Errorf("%s: %v, want %q in:\n%s", l, err, want[verb], out)
		}
	}
}

// TestCLIOlderServer: against a server without ReadOutput (a proxy answers it
// 404, as a server from before live output does), forge run prints each
// agent's output when its task ends; and forge agents marks a name two
// agents share.
func TestCLIOlderServer(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "older", "o-1", "o-1")
	target, err := neturl.Parse(e["FORGE_SERVER"])
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/ReadOutput") {
			http.NotFound(w, r)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	old := env{"FORGE_SERVER": proxy.URL, "FORGE_ADMIN_TOKEN": adminToken}
	out, errs, code := runSplit(t, old, "run", "--selector", "cli=older", "--", "/bin/sh", "-c", "echo out; echo err >&2")
	if code != 0 || strings.Count(out, ": out\n") != 2 || strings.Count(errs, ": err\n") != 2 || strings.Contains(errs, "cannot read") {
		t.Fatalf("run through a server without ReadOutput: exit %d:\n%s\n%s", code, out, errs)
	}
	out, errs, _ = runSplit(t, old, "agents")
	if strings.Count(out, "o-1 *") != 2 || !strings.Contains(errs, "2 agents share a name") {
		t.Errorf("forge agents does not mark the shared name:\n%s%s", out, errs)
	}
}

// TestCLIAgentsWait: a script that has just started an agent can wait for it
// with forge agents --wait before it runs a command there (the README's Redis
// block does), and a wait that is not met ends with a message and exit 1.
func TestCLIAgentsWait(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	e := env{"FORGE_SERVER": url, "FORGE_ADMIN_TOKEN": adminToken}
	waiting := goForge(t, e, "agents", "--selector", "cli=wait", "--wait", "1")
	startAgent(t, url, "--name", "late-1", "--label", "cli=wait", "--allow-exec", "/bin/sh")
	if code := waiting.wait(t); code != 0 || !strings.Contains(waiting.stdout.String(), "late-1") {
		t.Fatalf("agents --wait 1: exit %d:\n%s%s", code, waiting.stdout.String(), waiting.stderr.String())
	}
	if out, errs, code := runSplit(t, e, "run", "--selector", "cli=wait", "--", "/bin/sh", "-c", "echo here"); code != 0 || out != "here\n" {
		t.Fatalf("run after agents --wait: exit %d:\n%s%s", code, out, errs)
	}
	_, errs, code := runSplit(t, e, "agents", "--selector", "cli=wait", "--wait", "2", "--give-up-after", "500ms")
	if code != 1 || !strings.Contains(errs, "--wait 2: 1 of the agents listed are online after 500ms") {
		t.Errorf("agents --wait 2 with one agent: exit %d:\n%s", code, errs)
	}
	if _, errs, code := runSplit(t, e, "agents", "--wait", "-1"); code != 2 || !strings.Contains(errs, "--wait -1") {
		t.Errorf("agents --wait -1: exit %d:\n%s", code, errs)
	}
}

// TestCLIMessages: the reviewer's stumbles with the command line, each gone.
func TestCLIMessages(t *testing.T) {
	t.Parallel()
	e := fleet(t, nil, "msg", "msg-1")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--agent", "web-1", "--"}, "forge run --agent web-1 -- uptime"},
		{[]string{"run", "--selector", "env=prod,role in (web)", "--"}, "forge run --selector 'env=prod,role in (web)' -- uptime"},
		{[]string{"run", "uptime", "--all"}, "flags after the command belong to it; put --all before it"},
		{[]string{"run", "--timeout", "-5s", "--all", "--", "uptime"}, "--timeout and --delivery-ttl take a duration of 0 or more"},
		{[]string{"jobs", "--limit", "-1"}, "--limit -1: want a number of jobs, 0 or more"},
		{[]string{"jobs", "--limit", "x"}, `invalid value "x" for flag --limit`},
		{[]string{"tasks", "--nosuch"}, "flag provided but not defined: --nosuch"},
		{[]string{"run", "--selector", "env in (", "--", "/bin/sh", "-c", "true"}, "selector"},
	} {
		_, errs, code := runSplit(t, e, c.args...)
		if code != 2 || !strings.Contains(errs, c.want) || !strings.Contains(errs, "-h\" for help") {
			t.Errorf("forge %s: exit %d, want 2 with %q:\n%s", strings.Join(c.args, " "), code, c.want, errs)
		}
	}
	// Flags before the command are the command's.
	if out, errs, code := runSplit(t, e, "--json", "agents"); code != 0 || !strings.HasPrefix(out, "{") {
		t.Errorf("forge --json agents: exit %d:\n%s%s", code, out, errs)
	}
	// A job id where a task id goes: the message says to use --job.
	_, errs, _ := runSplit(t, e, "run", "--all", "--", "/bin/sh", "-c", "true")
	job := jobLine.FindStringSubmatch(errs)
	if job == nil {
		t.Fatalf("no job line:\n%s", errs)
	}
	if _, errs, code := runSplit(t, e, "cancel", job[1]); code == 0 || !strings.Contains(errs, "forge cancel: task \""+job[1]+"\" not found") ||
		!strings.Contains(errs, "(it is a job id: forge cancel --job "+job[1]+")") || strings.Count(errs, job[1]) != 2 {
		t.Errorf("forge cancel JOB_ID: exit %d:\n%s", code, errs)
	}
}

// TestCLIListingGivesUpSooner: a listing against a server that cannot be
// reached gives up after its own default of 10 s, not a minute, in a few lines.
func TestCLIListingGivesUpSooner(t *testing.T) {
	t.Parallel()
	_, errs, code := runSplit(t, env{"FORGE_SERVER": "http://127.0.0.1:1", "FORGE_ADMIN_TOKEN": adminToken}, "agents")
	if code != 1 || !strings.Contains(errs, "giving up after 10s") || strings.Count(errs, "\n") > 4 {
		t.Errorf("forge agents against no server: exit %d:\n%s", code, errs)
	}
}
