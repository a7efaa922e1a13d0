package main_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/client"
	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// TestReadmeRedis runs the README's "Production state" block as a reader runs
// it, one command after another, each through bash with the block's exports:
// the build, a Redis, two replicas on it, an agent given both, and `forge run`
// through the second replica. Only what must be free on a shared machine is
// swapped: the Redis is a redis-server started by redistest on a free port (the
// README's own line asks for any free port and no saving), the replicas listen
// on free ports (their URLs replace 8081 and 8082 in the later commands), the
// state dir is a temporary one, and ./forge is the binary the build step makes,
// built once for all the tests. Where a reader waits for a command to come up,
// the test waits for the same: the replica's "listening" line, the agent online.
func TestReadmeRedis(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("the README's Redis block runs in bash")
	}
	block := strings.ReplaceAll(readme(t, "redis"), "\\\n", " ")
	var cmds []string
	for _, line := range strings.Split(block, "\n") {
		line = strings.TrimSpace(regexp.MustCompile(`(^|\s+)#\s.*$`).ReplaceAllString(line, ""))
		if line != "" {
			cmds = append(cmds, line)
		}
	}
	if len(cmds) == 0 || cmds[0] != "go build -o forge ./cmd/forge" {
		t.Fatalf("the README's Redis block does not start with the build this test stands in for:\n%s", block)
	}
	dir := t.TempDir()
	if err := os.Symlink(bin(t, "forge"), filepath.Join(dir, "forge")); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	var exports strings.Builder
	replace := []string{"/tmp/forge-agent-staging", state}
	bash := func(cmd string) *exec.Cmd {
		c := exec.Command("bash", "-euo", "pipefail", "-c", exports.String()+"exec "+cmd)
		c.Dir = dir
		return c
	}
	ran := map[string]bool{}
	for _, cmd := range cmds[1:] {
		for i := 0; i < len(replace); i += 2 {
			cmd = strings.ReplaceAll(cmd, replace[i], replace[i+1])
		}
		background := strings.HasSuffix(cmd, " &")
		cmd = strings.TrimSuffix(cmd, " &")
		switch {
		case strings.HasPrefix(cmd, "export "):
			exports.WriteString(cmd + "\n")
		case cmd == "redis-server --port 6390 --save ''" && background:
			r := redistest.Start(t)
			replace = append(replace, "127.0.0.1:6390", r.Addr())
			ran["redis"] = true
		case strings.HasPrefix(cmd, "./forge server --listen 127.0.0.1:") && background:
			addr := strings.Fields(cmd)[3]
			c := bash(strings.Replace(cmd, addr, "127.0.0.1:0", 1))
			u := startCmd(t, c).waitURL(t)
			replace = append(replace, "http://"+addr, u)
			ran["server"+addr] = true
		case strings.HasPrefix(cmd, "./forge agent ") && background:
			// No wait of the test's own: the block's next line must be what
			// lets the run find the agent.
			startCmd(t, bash(cmd))
			ran["agent"] = true
		case strings.HasPrefix(cmd, "./forge agents ") && strings.Contains(cmd, " --wait ") && !background:
			if out, err := bash(cmd).CombinedOutput(); err != nil || !strings.Contains(string(out), "env=staging") {
				t.Fatalf("%s: %v\n%s", cmd, err, out)
			}
			ran["wait"] = true
		case strings.HasPrefix(cmd, "./forge run ") && !background:
			start := time.Now()
			out, err := bash(cmd).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "load average") {
				t.Fatalf("%s: %v after %v\n%s", cmd, err, time.Since(start), out)
			}
			t.Logf("%s printed:\n%s", cmd, out)
			ran["run"] = true
		default:
			t.Fatalf("the README's Redis block has a command this test does not know how to run: %q", cmd)
		}
	}
	if len(ran) != 6 {
		t.Fatalf("the README's Redis block no longer starts a Redis, two replicas, an agent, waits for it and runs (ran %v):\n%s", ran, block)
	}
}

// TestReadmeSetUp checks the README's set-up block: two commands, the server
// on the embedded default (memory, http://127.0.0.1:8080, as its comment says;
// the default address is taken on a shared machine, so the test reads the
// defaults rather than serving there) and the test script; and that the curl
// walk-through's server is started with the tokens the walk-through uses.
func TestReadmeSetUp(t *testing.T) {
	t.Parallel()
	var cmds []string
	for _, line := range strings.Split(readme(t, "setup"), "\n") {
		if cmd, _, _ := strings.Cut(line, "#"); strings.TrimSpace(cmd) != "" {
			cmds = append(cmds, strings.TrimSpace(cmd))
		}
	}
	if strings.Join(cmds, "\n") != "go run ./cmd/forge server\n./scripts/test" {
		t.Fatalf("the README's set-up is no longer the server and ./scripts/test: %q", cmds)
	}
	if !strings.Contains(readme(t, "setup"), "in memory, on http://127.0.0.1:8080") {
		t.Fatal("the README's set-up no longer says where the server listens")
	}
	c, err := (&forge.Main{Getenv: env{}.get}).ParseServer(nil)
	if err != nil || c.Listen != "127.0.0.1:8080" || c.Redis.URL != "" {
		t.Fatalf("forge server with no flags: listen %q, redis %q, %v; the README says memory on 127.0.0.1:8080", c.Listen, c.Redis.URL, err)
	}
	if fi, err := os.Stat("../../scripts/test"); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("./scripts/test is not an executable: %v", err)
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const curlServer = "```sh\nFORGE_ENROLL_TOKEN=enroll-dev-0123456789 FORGE_ADMIN_TOKEN=admin-dev-0123456789 go run ./cmd/forge server\n```"
	if !strings.Contains(string(b), curlServer) {
		t.Fatalf("the README no longer starts the walk-through's server as TestReadmeWalkthrough does:\n%s", curlServer)
	}
}

// TestReadmeExamplesAllRun checks that every code block of the README is one a
// test runs or compares: those between markers are read by the tests named
// here, and the two others are the walk-through's server line
// (TestReadmeSetUp) and what the walk-through prints (TestReadmeWalkthrough).
// A new example needs a marker and a test before it can land.
func TestReadmeExamplesAllRun(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	tested := map[string]string{
		"setup": "TestReadmeSetUp", "walkthrough": "TestReadmeWalkthrough", "binary": "TestReadmeWalkthrough",
		"redis": "TestReadmeRedis", "embed": "TestEmbedExampleIsReadme", "embedserver": "TestGoExamplesAreReadme",
		"control": "TestGoExamplesAreReadme", "runsample": "TestReadmeRunSample", "clicmds": "TestReadmeCLICommands, TestReadmeListings",
	}
	marker := regexp.MustCompile(`<!-- ([a-z]+):start -->\n$`)
	for _, f := range fenceRE.FindAllStringSubmatchIndex(doc, -1) {
		block := doc[f[4]:f[5]]
		if m := marker.FindStringSubmatch(doc[:f[0]]); m != nil {
			if tested[m[1]] == "" {
				t.Errorf("the README's %q block is run by no test this one knows of", m[1])
			}
			continue
		}
		switch {
		case block == "FORGE_ENROLL_TOKEN=enroll-dev-0123456789 FORGE_ADMIN_TOKEN=admin-dev-0123456789 go run ./cmd/forge server\n":
		case strings.HasSuffix(doc[:f[0]], "The last command prints:\n\n"):
		default:
			t.Errorf("the README's block at byte %d is checked by no test:\n%s", f[0], block)
		}
	}
}

// TestReadmeListings runs the README's commands that follow forge run (the
// jobs, a job, a task followed, a cancel from another shell, the failed tasks
// through jq) with the built binary, one line at a time through bash after the
// block's export, as a reader types them. The reader's server is at the
// default address; the test's is on a free port, named by FORGE_SERVER. Two
// agents have run a command that failed on db-1; JOB_ID is a job still running
// (what a cancel is for) and TASK_ID db-1's failed task.
func TestReadmeListings(t *testing.T) {
	t.Parallel()
	const enroll, admin = "enroll-dev-0123456789", "admin-dev-0123456789"
	block := readme(t, "clicmds")
	u := startProc(t, env{"FORGE_ENROLL_TOKEN": enroll, "FORGE_ADMIN_TOKEN": admin}, "forge", "server", "--listen", "127.0.0.1:0").waitURL(t)
	for _, n := range []string{"web-1", "db-1"} {
		dir := t.TempDir()
		if n == "web-1" {
			if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c := exec.Command(bin(t, "forge"), "agent", "--server", u, "--enroll-token", enroll, "--name", n,
			"--label", "env=dev", "--state-dir", t.TempDir(), "--allow-exec", "/bin/sh")
		c.Dir = dir
		startCmd(t, c)
	}
	ctl := controlAs(u, admin)
	waitAgents(t, ctl, "env=dev", 2)
	job := client.Exec(client.Selector("env=dev"), "/bin/sh", "-c", `test -e ready || { echo "not ready" >&2; exit 2; }; echo ready`)
	job.Wait = durationpb.New(time.Minute)
	done, err := ctl.Dispatch(t.Context(), connect.NewRequest(job))
	if err != nil {
		t.Fatal(err)
	}
	var failed string
	for _, task := range done.Msg.Tasks {
		if task.State == forgev1.TaskState_TASK_STATE_FAILED {
			failed = task.Id
		}
	}
	if len(done.Msg.Tasks) != 2 || failed == "" {
		t.Fatalf("the job on web-1 and db-1 ended %v, want one task FAILED", done.Msg.Tasks)
	}
	running, err := ctl.Dispatch(t.Context(), connect.NewRequest(client.Exec(client.Agent("web-1"), "/bin/sh", "-c", "sleep 120")))
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.Symlink(bin(t, "forge"), filepath.Join(dir, "forge")); err != nil {
		t.Fatal(err)
	}
	var exports string
	var lines []string
	for _, line := range strings.Split(block, "\n") {
		line = strings.TrimSpace(regexp.MustCompile(`\s+#\s.*$`).ReplaceAllString(line, ""))
		switch {
		case line == "":
		case strings.HasPrefix(line, "export "):
			exports += line + "\n"
		default:
			lines = append(lines, line)
		}
	}
	if !strings.Contains(exports, "FORGE_ADMIN_TOKEN="+admin) {
		t.Fatalf("the README's listings do not export the walk-through's admin token:\n%s", block)
	}
	var environ []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FORGE_") {
			environ = append(environ, kv)
		}
	}
	want := map[string]struct {
		code int
		out  string
	}{
		"./forge jobs":                  {0, running.Msg.JobId},
		"./forge job JOB_ID":            {0, "sleep 120"},
		"./forge task --follow TASK_ID": {2, "not ready"}, // the command's own exit code
		"./forge cancel --job JOB_ID":   {0, ""},
		`./forge tasks --state failed --json | jq -r '.tasks[] | .agentName + ": " + ([.error, .stderr] | map(select(. > "")) | join("; "))'`: {0, "db-1: exit status 2; not ready\n"},
	}
	for _, line := range lines {
		w, ok := want[line]
		if !ok {
			t.Fatalf("the README's listings have a command this test does not know: %q", line)
		}
		delete(want, line)
		cmdline := strings.NewReplacer("JOB_ID", running.Msg.JobId, "TASK_ID", failed).Replace(line)
		c := exec.Command("bash", "-o", "pipefail", "-c", exports+cmdline)
		c.Dir = dir
		c.Env = append(environ, "FORGE_SERVER="+u)
		out, err := c.CombinedOutput()
		code := 0
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != w.code || !strings.Contains(string(out), w.out) {
			t.Errorf("%s: exit %d, want %d with %q in:\n%s", cmdline, code, w.code, w.out, out)
		}
	}
	if len(want) != 0 {
		t.Errorf("the README's listings no longer run %v", want)
	}
	waitFor(t, "the running job canceled", func() bool {
		res, err := ctl.GetJob(t.Context(), connect.NewRequest(&forgev1.GetJobRequest{JobId: running.Msg.JobId}))
		return err == nil && res.Msg.Job.Done && res.Msg.Job.Counts.Canceled == 1
	})
}
