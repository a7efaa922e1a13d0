package server_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
)

// docBlock returns the first ```lang block of the section of a Markdown file
// that starts with the heading.
func docBlock(t *testing.T, path, heading, lang string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("%s has no section %q", path, heading)
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	_, block, ok := strings.Cut(section, "```"+lang+"\n")
	if !ok {
		t.Fatalf("%s, %s: no %s block", path, heading, lang)
	}
	block, _, _ = strings.Cut(block, "```")
	return block
}

// TestAPIDocReadOutput runs docs/api.md's ReadOutput example with curl against a
// real server holding the output it shows, and compares the answer with the one
// printed there.
func TestAPIDocReadOutput(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is not on PATH; the docs' examples run with it (Debian: apt-get install curl)")
	}
	e := forgetest.Start(t, forgetest.Options{})
	ag, _, task := leased(t, e)
	if _, err := appendOut(t.Context(), ag, task, stdout, 0, "step 1\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := appendOut(t.Context(), ag, task, stderr, 0, "warning\n"); err != nil {
		t.Fatal(err)
	}
	sh := docBlock(t, "../docs/api.md", "## Live output", "sh")
	want := docBlock(t, "../docs/api.md", "## Live output", "json")
	cmd := exec.CommandContext(t.Context(), "sh", "-c", strings.ReplaceAll(sh, "http://127.0.0.1:8080", e.URL))
	cmd.Env = append(os.Environ(), "ADMIN="+forgetest.AdminToken, "TASK="+task.Id)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", sh, err)
	}
	var got, exp forgev1.ReadOutputResponse
	if err := protojson.Unmarshal(out, &got); err != nil {
		t.Fatalf("the answer %q: %v", out, err)
	}
	if err := protojson.Unmarshal([]byte(want), &exp); err != nil {
		t.Fatalf("the answer in docs/api.md %q: %v", want, err)
	}
	if !proto.Equal(&got, &exp) {
		t.Fatalf("curl answered\n%s\ndocs/api.md shows\n%s", out, want)
	}
}
