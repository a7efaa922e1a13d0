package main_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
)

// Most tests here run the forge command inside the test process through
// forge.Main: fast, parallel, and each with its own streams and environment.
// Those that need a real process (signals, SIGKILL, process trees, the README
// run against the built binary) use the helpers of proc_test.go.

const (
	enrollToken = "enroll-test-0123456789"
	adminToken  = "admin-test-0123456789"
)

// tokensEnv gives a server the tests' tokens through its variables.
var tokensEnv = env{"FORGE_ENROLL_TOKEN": enrollToken, "FORGE_ADMIN_TOKEN": adminToken}

// env is a command's environment; nothing else is read.
type env map[string]string

func (e env) get(name string) string { return e[name] }

// buffer is an io.Writer safe for a command writing while the test reads.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// newMain returns a Main writing stdout and stderr to out and reading only e.
func newMain(e env, out *buffer) *forge.Main {
	return &forge.Main{Stdout: out, Stderr: out, Getenv: e.get}
}

// runForge runs one forge command in this process to its end and returns what
// it printed (stdout and stderr together) and its exit code.
func runForge(t *testing.T, e env, args ...string) (string, int) {
	t.Helper()
	var out buffer
	code := newMain(e, &out).Run(t.Context(), args)
	return out.String(), code
}

// inproc is a forge command running in this process until stopped.
type inproc struct {
	out    buffer
	url    chan string // the server's URL, once it listens
	cancel context.CancelFunc
	done   chan struct{}
	code   int
}

// output is what the command printed so far.
func (p *inproc) output() string { return p.out.String() }

// exited tells whether the command has returned.
func (p *inproc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the command as SIGTERM ends the binary (its context is cancelled)
// and returns its exit code.
func (p *inproc) stop(t *testing.T) int {
	t.Helper()
	p.cancel()
	select {
	case <-p.done:
	case <-time.After(time.Minute):
		t.Fatalf("the command did not return within a minute of its context's end:\n%s", p.output())
	}
	return p.code
}

// startForge starts a long-running forge command in this process; it is
// stopped when the test ends.
func startForge(t *testing.T, e env, args ...string) *inproc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inproc{url: make(chan string, 1), cancel: cancel, done: make(chan struct{})}
	m := newMain(e, &p.out)
	m.Ready = func(url string) { p.url <- url }
	go func() {
		defer close(p.done)
		p.code = m.Run(ctx, args)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("forge %s output:\n%s", strings.Join(args, " "), p.output())
		}
	})
	return p
}

// waitURL waits until the server listens and returns its URL.
func (p *inproc) waitURL(t *testing.T) string {
	t.Helper()
	select {
	case u := <-p.url:
		p.url <- u // for the next caller
		return u
	case <-p.done:
		t.Fatalf("the server exited with %d:\n%s", p.code, p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("the server did not start:\n%s", p.output())
	}
	return ""
}

// startServer starts `forge server` on a free loopback port in this process,
// with the tests' tokens, and returns its URL once it answers.
func startServer(t *testing.T, args ...string) string {
	t.Helper()
	return startForge(t, tokensEnv, append([]string{"server", "--listen", "127.0.0.1:0"}, args...)...).waitURL(t)
}

// startAgent starts `forge agent` with the tests' enrollment token in this process.
func startAgent(t *testing.T, url string, args ...string) *inproc {
	t.Helper()
	return startForge(t, nil, append([]string{"agent", "--server", url, "--enroll-token", enrollToken}, args...)...)
}

// control is an operator client of the server at url, with the tests' admin token.
func control(url string) forgev1connect.ControlServiceClient { return controlAs(url, adminToken) }

func controlAs(url, tok string) forgev1connect.ControlServiceClient {
	return forgev1connect.NewControlServiceClient(http.DefaultClient, url, connect.WithInterceptors(bearer.Interceptor(tok)))
}

func agentClient(url, tok string) forgev1connect.AgentServiceClient {
	return forgev1connect.NewAgentServiceClient(http.DefaultClient, url, connect.WithInterceptors(bearer.Interceptor(tok)))
}

// waitAgents waits until n agents matching selector are online and returns them.
func waitAgents(t *testing.T, ctl forgev1connect.ControlServiceClient, selector string, n int) []*forgev1.AgentInfo {
	t.Helper()
	var got []*forgev1.AgentInfo
	ok := eventually(func() bool {
		res, err := ctl.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{Selector: selector,
			Status: forgev1.AgentStatus_AGENT_STATUS_ONLINE, PageSize: 1000}))
		if err != nil {
			return false
		}
		got = res.Msg.Agents
		return len(got) == n
	})
	if !ok {
		t.Fatalf("%d agents matching %q never came online (%d did)", n, selector, len(got))
	}
	return got
}

// waitFor waits until cond holds; it fails the test after a minute, a bound
// only a broken build reaches.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !eventually(cond) {
		t.Fatalf("%s: not within a minute", what)
	}
}

// eventually polls cond until it holds (true) or a minute passes (false).
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// waitOutput waits until what p printed contains want.
func waitOutput(t *testing.T, p interface{ output() string }, want string) {
	t.Helper()
	if !eventually(func() bool { return strings.Contains(p.output(), want) }) {
		t.Fatalf("no %q within a minute in:\n%s", want, p.output())
	}
}
