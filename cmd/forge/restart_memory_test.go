package main_test

import (
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestInMemoryServerRestartAgentsKeepWorking is the README's first-hour
// stumble, with the real binaries: three `forge agent` processes on one machine
// (two with state dirs of their own, one without) work for an in-memory
// `forge server`, which is stopped and started again, forgetting them. Each
// agent is told it is unknown, enrolls again by itself with its enrollment
// token and says so, and the same dispatch reaches all three again; no agent
// exits. Their default names differ.
func TestInMemoryServerRestartAgentsKeepWorking(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	url := "http://" + addr
	serve := func() *proc {
		p := startProc(t, tokensEnv, "forge", "server", "--listen", addr)
		p.waitURL(t)
		return p
	}
	srv := serve()
	ctl := control(url)
	agents := []*proc{
		startProc(t, tokensEnv, "forge", "agent", "--server", url, "--label", "env=dev", "--state-dir", t.TempDir()),
		startProc(t, tokensEnv, "forge", "agent", "--server", url, "--label", "env=dev", "--state-dir", t.TempDir()),
		startProc(t, tokensEnv, "forge", "agent", "--server", url, "--label", "env=dev"),
	}
	names := map[string]bool{}
	for _, a := range waitAgents(t, ctl, "env=dev", 3) {
		names[a.Name] = true
	}
	if len(names) != 3 {
		t.Fatalf("three agents on one machine share names: %v", names)
	}
	echoAll := func(what string) {
		t.Helper()
		res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte(what),
			Target: &forgev1.DispatchRequest_Selector{Selector: "env=dev"}, Wait: durationpb.New(30 * time.Second)}))
		if err != nil {
			t.Fatalf("Dispatch %s: %v", what, err)
		}
		ok := 0
		for _, ti := range res.Msg.Tasks {
			if ti.State == forgev1.TaskState_TASK_STATE_SUCCEEDED && string(ti.Output) == what {
				ok++
			}
		}
		if len(res.Msg.TaskIds) != 3 || ok != 3 {
			t.Fatalf("Dispatch %s: %d tasks, %d succeeded; want 3 and 3: %v", what, len(res.Msg.TaskIds), ok, res.Msg.Tasks)
		}
	}
	echoAll("before")

	srv.signal(syscall.SIGTERM)
	if err := srv.wait(t); err != nil {
		t.Fatalf("the server did not stop cleanly: %v", err)
	}
	serve()
	waitAgents(t, ctl, "env=dev", 3)
	echoAll("after")
	for i, a := range agents {
		if a.exited() {
			t.Fatalf("agent %d exited after the server restarted:\n%s", i, a.output())
		}
		if out := a.output(); !strings.Contains(out, "enrolling again") || !strings.Contains(out, "enrolled again") {
			t.Fatalf("agent %d does not say it enrolled again:\n%s", i, out)
		}
	}
}

// TestInMemoryRestartGeneratedTokenRefused is what the README says of an
// in-memory server restarted without tokens of its own: its generated
// enrollment token is new, so an agent enrolled with the old one is refused
// and exits, saying why; the same token (TestInMemoryServerRestartAgentsKeepWorking)
// takes it back.
func TestInMemoryRestartGeneratedTokenRefused(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	admin := env{"FORGE_ADMIN_TOKEN": adminToken} // the enrollment token is generated
	first := startForge(t, admin, "server", "--listen", addr)
	url := first.waitURL(t)
	m := regexp.MustCompile(`enrollment token \(generated, shown once\): (\S+)`).FindStringSubmatch(first.output())
	if m == nil {
		t.Fatalf("the server printed no generated enrollment token:\n%s", first.output())
	}
	a := startForge(t, nil, "agent", "--server", url, "--enroll-token", m[1], "--state-dir", t.TempDir())
	waitAgents(t, control(url), "", 1)
	first.stop(t)
	startForge(t, admin, "server", "--listen", addr).waitURL(t)
	waitFor(t, "the agent to exit", a.exited)
	if code := a.stop(t); code == 0 || !strings.Contains(a.output(), "refused the enrollment token") {
		t.Fatalf("agent with the old generated token: exit %d:\n%s", code, a.output())
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(strings.Fields(string(b)), " "), "a generated one is new at every start, and agents that hold the old one exit") {
		t.Error("the README no longer says that agents holding an old generated enrollment token exit")
	}
}
