package main_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

func readme(t *testing.T, marker string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- " + marker + ":start -->\n```[a-z]*\n(.*?)```\n<!-- " + marker + ":end -->")
	m := re.FindSubmatch(b)
	if m == nil {
		t.Fatalf("README has no %s block", marker)
	}
	return string(m[1])
}

// TestReadmeWalkthrough runs the README's curl walk-through, as printed, against the
// built binary: a reader runs that binary, so this test does too. Then, on the same
// server, it runs the commands of "Agents and commands" in their order, as a reader
// would next (readmeBinary).
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README walk-through needs %s (apt-get install -y %s)", tool, tool)
		}
	}
	script := readme(t, "walkthrough")
	for _, want := range []string{"ENROLL=" + "enroll-dev-0123456789", "ADMIN=admin-dev-0123456789", "FORGE=http://127.0.0.1:8080"} {
		if !strings.Contains(script, want) {
			t.Fatalf("walk-through no longer sets %q", want)
		}
	}
	u := startProc(t, env{"FORGE_ENROLL_TOKEN": "enroll-dev-0123456789", "FORGE_ADMIN_TOKEN": "admin-dev-0123456789"},
		"forge", "server", "--listen", "127.0.0.1:0").waitURL(t)
	script = strings.ReplaceAll(script, "http://127.0.0.1:8080", u)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walk-through failed: %v\n%s", err, out)
	}
	want := `{
  "state": "TASK_STATE_SUCCEEDED",
  "output": "hello",
  "history": [
    "dispatched",
    "leased (attempt 1)",
    "reported succeeded"
  ]
}`
	if !strings.HasSuffix(strings.TrimSpace(string(out)), want) {
		t.Fatalf("walk-through ended with:\n%s\nwant:\n%s", out, want)
	}
	b, _ := os.ReadFile("../../README.md")
	if !strings.Contains(string(b), "The last command prints:\n\n```json\n"+want+"\n```") {
		t.Fatalf("README does not show the output the walk-through prints")
	}
	readmeBinary(t, u)
}

// readmeBinary runs the commands of the README's "Agents and commands" block
// against the server at url, where the curl walk-through just ran: the built
// forge binary for the build step, its agent in the background (state in a
// temporary dir), then `forge run --selector env=dev -- uptime`, `forge agents`
// and `forge tasks`. The walk-through's agent said it stopped, so the run finds the
// one forge agent and ends at once: it no longer waits out the delivery TTL (1
// minute) for web-1 and ends EXPIRED.
func readmeBinary(t *testing.T, url string) {
	script := strings.ReplaceAll(readme(t, "binary"), "\\\n", " ")
	var cmds [][]string
	for _, line := range strings.Split(script, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			cmds = append(cmds, f)
		}
	}
	if len(cmds) != 5 || strings.Join(cmds[0], " ") != "go build -o forge ./cmd/forge" {
		t.Fatalf("README's binary block is not the build, agent, run, agents, tasks this test runs:\n%s", script)
	}
	state := t.TempDir()
	e := env{"FORGE_SERVER": url}
	args := func(c []string) []string {
		if c[0] != "./forge" {
			t.Fatalf("README runs %q, not ./forge", c)
		}
		var out []string
		for _, a := range c[1:] {
			a = strings.ReplaceAll(a, "http://127.0.0.1:8080", url)
			out = append(out, strings.ReplaceAll(a, "/tmp/forge-agent", state))
		}
		return out
	}
	startProc(t, e, "forge", args(cmds[1])...)
	waitAgents(t, controlAs(url, "admin-dev-0123456789"), "env=dev", 1)
	start := time.Now()
	run := exec.Command(bin(t, "forge"), args(cmds[2])...)
	run.Env = append(os.Environ(), "FORGE_SERVER="+url)
	out, err := run.CombinedOutput()
	took := time.Since(start)
	if err != nil || !strings.Contains(string(out), "load average") || strings.Contains(string(out), "EXPIRED") {
		t.Fatalf("forge run after %v: %v\n%s", took, err, out)
	}
	if took > 45*time.Second { // the delivery TTL it used to wait out is 1 minute
		t.Fatalf("forge run took %v:\n%s", took, out)
	}
	t.Logf("forge run took %v", took)
	for _, c := range cmds[3:] {
		cmd := exec.Command(bin(t, "forge"), args(c)...)
		cmd.Env = append(os.Environ(), "FORGE_SERVER="+url)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
}

// TestEmbedExampleIsReadme keeps examples/embed/main.go and the README's example equal.
func TestEmbedExampleIsReadme(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../../examples/embed/main.go")
	if err != nil {
		t.Fatal(err)
	}
	if got := readme(t, "embed"); got != string(b) {
		t.Fatalf("README's Go example differs from examples/embed/main.go")
	}
}

// TestEmbedExampleRuns runs the README's embedding example as its own program
// against a server.
func TestEmbedExampleRuns(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	ctl := control(url)
	p := startProc(t, env{"FORGE_SERVER": url, "FORGE_ENROLL_TOKEN": enrollToken, "FORGE_STATE_DIR": t.TempDir()}, "embed")
	a := waitAgents(t, ctl, "app=billing", 1)[0]
	res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "greet", Payload: []byte("forge"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}, Wait: durationpb.New(20 * time.Second)}))
	if err != nil || len(res.Msg.Tasks) != 1 || string(res.Msg.Tasks[0].Output) != "hello, forge" {
		t.Fatalf("Dispatch with wait = %v, %v", res, err)
	}
	// Whoever runs it sees that it registered, what it runs, and that it stopped.
	task := res.Msg.Tasks[0].Id
	waitOutput(t, p, `msg="task ended" task=`+task)
	p.signal(os.Interrupt)
	if err := p.wait(t); err != nil {
		t.Fatalf("the example exited with %v on Ctrl-C, want 0:\n%s", err, p.output())
	}
	for _, want := range []string{"msg=registered agent=" + a.Id, `msg="task started" task=` + task, "type=greet", "msg=stopped"} {
		if !strings.Contains(p.output(), want) {
			t.Errorf("the example's output lacks %q:\n%s", want, p.output())
		}
	}

	// Given no server, it says why it cannot start, and exits 1 (no panic).
	p = startProc(t, env{"FORGE_SERVER": "", "FORGE_ENROLL_TOKEN": enrollToken}, "embed")
	var ee *exec.ExitError
	if err := p.wait(t); !errors.As(err, &ee) || ee.ExitCode() != 1 ||
		!strings.Contains(p.output(), "cannot start the agent") || strings.Contains(p.output(), "panic") {
		t.Fatalf("the example without a server exited %v:\n%s", err, p.output())
	}
}

// TestGoExamplesAreReadme keeps the README's server-embedding and control
// client examples equal to examples/embedserver and examples/control.
func TestGoExamplesAreReadme(t *testing.T) {
	t.Parallel()
	for marker, file := range map[string]string{"embedserver": "../../examples/embedserver/main.go", "control": "../../examples/control/main.go"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if got := readme(t, marker); got != string(b) {
			t.Errorf("README's %s example differs from %s", marker, file)
		}
	}
}

// TestEmbedServerExampleRuns runs the README's server-embedding example as its
// own program, in memory and on Redis: the README's agent example registers
// against forge mounted under /forge, the service's own route POST /greet
// dispatches through the Go client and answers with the agent's result, the
// service's other routes keep answering throughout, and SIGTERM stops it at
// once although the agent holds a Poll.
func TestEmbedServerExampleRuns(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"memory", "redis"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			e := env{"LISTEN": "127.0.0.1:0", "FORGE_ENROLL_TOKEN": enrollToken}
			if store == "redis" {
				e["REDIS_URL"] = redistest.Start(t).URL()
			}
			app := startProc(t, e, "embedserver")
			base := app.waitURL(t)

			// The service's own routes, asked all along.
			stopAsking := make(chan struct{})
			asked := make(chan error, 1)
			go func() {
				n := 0
				for {
					select {
					case <-stopAsking:
						if n == 0 {
							asked <- errors.New("never asked")
						}
						asked <- nil
						return
					case <-time.After(20 * time.Millisecond):
					}
					res, err := http.Get(base + "/")
					if err != nil {
						asked <- err
						return
					}
					b, _ := io.ReadAll(res.Body)
					res.Body.Close()
					if res.StatusCode != 200 || string(b) != "billing service\n" {
						asked <- fmt.Errorf("GET / = %d %q", res.StatusCode, b)
						return
					}
					n++
				}
			}()

			startProc(t, env{"FORGE_SERVER": base + "/forge", "FORGE_ENROLL_TOKEN": enrollToken, "FORGE_STATE_DIR": t.TempDir()}, "embed")
			var out string
			waitFor(t, "POST /greet answered by the agent", func() bool {
				res, err := http.PostForm(base+"/greet", url.Values{"name": {"forge"}})
				if err != nil {
					return false
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				out = string(b)
				return res.StatusCode == 200 && out != "" // no agent online yet: an empty job
			})
			if !greeted.MatchString(out) {
				t.Fatalf("POST /greet = %q, want one agent's line %s", out, greeted)
			}
			for path, want := range map[string]string{"/readyz": "ok", "/forge/healthz": "ok",
				"/metrics": `forge_rpc_requests_total{code="ok",procedure="/forge.v1.ControlService/Dispatch"}`} {
				res, err := http.Get(base + path)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != 200 || !strings.Contains(string(b), want) {
					t.Fatalf("GET %s = %d, want %q in:\n%s", path, res.StatusCode, want, b)
				}
			}
			close(stopAsking)
			if err := <-asked; err != nil {
				t.Fatalf("the service's own route failed meanwhile: %v", err)
			}

			// The agent holds a Poll (25 s); SIGTERM answers it and the service stops.
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			app.signal(syscall.SIGTERM)
			if err := app.wait(t); err != nil {
				t.Fatalf("the service exited with %v:\n%s", err, app.output())
			}
			if took := time.Since(start); took > 10*time.Second {
				t.Fatalf("the service took %v to stop; the held Poll was not answered at once", took)
			}
		})
	}
}

// TestControlExampleRuns runs the README's control client example against a
// server with the README's agent example.
func TestControlExampleRuns(t *testing.T) {
	t.Parallel()
	u := startServer(t)
	startProc(t, env{"FORGE_SERVER": u, "FORGE_ENROLL_TOKEN": enrollToken, "FORGE_STATE_DIR": t.TempDir()}, "embed")
	waitAgents(t, control(u), "app=billing", 1)
	p := startProc(t, env{"FORGE_SERVER": u, "FORGE_ADMIN_TOKEN": adminToken}, "control")
	if err := p.wait(t); err != nil {
		t.Fatalf("control example: %v\n%s", err, p.output())
	}
	if !greeted.MatchString(p.output()) {
		t.Fatalf("control example printed %q, want one agent's line %s", p.output(), greeted)
	}
}

// greeted is the answer of one agent of the README's agent example to a greet
// task with the payload "forge", as the Go examples print it.
var greeted = regexp.MustCompile(`^[^\s:]+: TASK_STATE_SUCCEEDED hello, forge\n$`)
