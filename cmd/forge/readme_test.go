package main_test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
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
// built binary: a reader runs that binary, so this test does too.
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
	startProc(t, env{"FORGE_SERVER": url, "FORGE_ENROLL_TOKEN": enrollToken, "FORGE_STATE_DIR": t.TempDir()}, "embed")
	a := waitAgents(t, ctl, "app=billing", 1)[0]
	res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "greet", Payload: []byte("forge"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}, Wait: durationpb.New(20 * time.Second)}))
	if err != nil || len(res.Msg.Tasks) != 1 || string(res.Msg.Tasks[0].Output) != "hello, forge" {
		t.Fatalf("Dispatch with wait = %v, %v", res, err)
	}
}
