package main_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
)

const (
	enrollToken = "enroll-test-0123456789"
	adminToken  = "admin-test-0123456789"
)

var binDir string

// TestMain builds the real binaries once; the tests run them as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "forge-e2e-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	for pkg, name := range map[string]string{".": "forge", "../../examples/embed": "embed"} {
		cmd := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, name), pkg)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running forge process whose output the test can read.
type proc struct {
	cmd *exec.Cmd
	mu  sync.Mutex
	out strings.Builder
	url chan string
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

var listenRE = regexp.MustCompile(`listening on (\S+)`)

func start(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	p := &proc{cmd: cmd, url: make(chan string, 1)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.out.WriteString(line + "\n")
			p.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case p.url <- m[1]:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		p.stop()
		w.Close()
		if t.Failed() {
			t.Logf("%s %v output:\n%s", name, args, p.output())
		}
	})
	return p
}

// stop sends SIGTERM and waits (then SIGKILL after 10 s).
func (p *proc) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}

func startServer(t *testing.T, args ...string) string {
	t.Helper()
	p := start(t, []string{"FORGE_ENROLL_TOKEN=" + enrollToken, "FORGE_ADMIN_TOKEN=" + adminToken},
		"forge", append([]string{"server", "--listen", "127.0.0.1:0"}, args...)...)
	select {
	case u := <-p.url:
		return u
	case <-time.After(30 * time.Second):
		t.Fatalf("server did not start:\n%s", p.output())
	}
	return ""
}

func control(url string) forgev1connect.ControlServiceClient {
	return forgev1connect.NewControlServiceClient(http.DefaultClient, url, connect.WithInterceptors(bearer.Interceptor(adminToken)))
}

func agentClient(url, tok string) forgev1connect.AgentServiceClient {
	return forgev1connect.NewAgentServiceClient(http.DefaultClient, url, connect.WithInterceptors(bearer.Interceptor(tok)))
}

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
// real binary.
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
	url := start(t, []string{"FORGE_ENROLL_TOKEN=enroll-dev-0123456789", "FORGE_ADMIN_TOKEN=admin-dev-0123456789"},
		"forge", "server", "--listen", "127.0.0.1:0")
	var u string
	select {
	case u = <-url.url:
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
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

func TestServerRefusesPlainHTTPOffLoopback(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{":0", "0.0.0.0:0"} {
		cmd := exec.Command(filepath.Join(binDir, "forge"), "server", "--listen", addr)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--insecure") {
			t.Fatalf("server on %s: err %v, output:\n%s", addr, err, out)
		}
	}
}

func TestServerGeneratesTokens(t *testing.T) {
	t.Parallel()
	p := start(t, nil, "forge", "server", "--listen", "127.0.0.1:0")
	select {
	case <-p.url:
	case <-time.After(30 * time.Second):
		t.Fatal("server did not start")
	}
	time.Sleep(100 * time.Millisecond)
	out := p.output()
	m := regexp.MustCompile(`admin token \(generated, shown once\):\s+(fo_\w+)`).FindStringSubmatch(out)
	if m == nil || !regexp.MustCompile(`enrollment token \(generated, shown once\):\s+fe_\w+`).MatchString(out) {
		t.Fatalf("no generated tokens in:\n%s", out)
	}
	if strings.Count(out, m[1]) != 1 {
		t.Fatalf("the admin token appears more than once (in a log line?):\n%s", out)
	}
}
