package main_test

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestReflectionDocs runs docs/api.md's `buf curl` examples, as printed, against
// the built binary on plain HTTP: reflection (HTTP/2 with prior knowledge)
// lists the API without the protos, a call made from what it learnt answers,
// and the health service says SERVING.
func TestReflectionDocs(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- reflection:start -->\n```sh\n(.*?)```\n<!-- reflection:end -->").FindSubmatch(doc)
	if m == nil {
		t.Fatal("docs/api.md has no reflection block")
	}
	const admin = "admin-reflect-0123456789"
	u := startProc(t, env{"FORGE_ADMIN_TOKEN": admin}, "forge", "server", "--listen", "127.0.0.1:0").waitURL(t)
	script := "buf() { go tool -modfile=tools/go.mod buf \"$@\"; }\n" + strings.ReplaceAll(string(m[1]), "http://127.0.0.1:8080", u)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "ADMIN="+admin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docs/api.md's reflection examples failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"forge.v1.ControlService/Dispatch\n", "forge.v1.AgentService/Poll\n", "grpc.health.v1.Health/Check\n",
		"{}\n", // ListAgents: no agent online
		`"status": "SERVING"`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the examples' output has no %q:\n%s", want, out)
		}
	}
}
