package main_test

import (
	"net"
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
