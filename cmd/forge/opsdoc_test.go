package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// TestOperationsDocFlags: every flag `forge server -h` and `forge agent -h`
// list is in docs/operations.md, so an operator reading it sees every knob,
// the security ones included.
func TestOperationsDocFlags(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	flagLine := regexp.MustCompile(`(?m)^\s+(--[a-z0-9-]+)\s`)
	for _, cmd := range []string{"server", "agent"} {
		out, _ := runForge(t, env{}, cmd, "-h")
		flags := flagLine.FindAllStringSubmatch(out, -1)
		if len(flags) < 10 {
			t.Fatalf("forge %s -h lists %d flags:\n%s", cmd, len(flags), out)
		}
		for _, f := range flags {
			if !strings.Contains(string(doc), "`"+f[1]+"`") {
				t.Errorf("forge %s %s is not in docs/operations.md", cmd, f[1])
			}
		}
	}
}

// TestReadmeSigningKeys runs the README's openssl commands for signed tasks and
// uses what they write: the server signs with key.pem, an agent pinned to
// pub.pem runs the task.
func TestReadmeSigningKeys(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("the README's signing keys need openssl (apt-get install -y openssl)")
	}
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\n", " ")
	cmds := regexp.MustCompile("`(openssl [^`]+)`").FindAllStringSubmatch(text, -1)
	if len(cmds) != 2 {
		t.Fatalf("the README shows %d openssl commands, want the key and its public half", len(cmds))
	}
	dir := t.TempDir()
	for _, c := range cmds {
		cmd := exec.Command("sh", "-c", c[1])
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", c[1], err, out)
		}
	}
	url := startServer(t, "--signing-key", filepath.Join(dir, "key.pem"))
	ctl := control(url)
	startAgent(t, url, "--signing-pubkey", filepath.Join(dir, "pub.pem"), "--label", "readme=signed")
	a := waitAgents(t, ctl, "readme=signed", 1)[0]
	res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("signed"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}, Wait: durationpb.New(30 * time.Second)}))
	if err != nil || len(res.Msg.Tasks) != 1 || res.Msg.Tasks[0].State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("Dispatch to the pinned agent = %v, %v; want it run", res, err)
	}
}
