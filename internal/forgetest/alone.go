package forgetest

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// aloneEnv names the test a child process of RunAlone runs.
const aloneEnv = "FORGE_TEST_ALONE"

// RunAlone runs the calling test again in a process of its own — the test
// binary, with -test.run selecting this test only — and tells the caller
// whether it is that process, the one that should run the test's body:
//
//	if !forgetest.RunAlone(t) {
//		return
//	}
//
// In the test binary it starts the child, waits for it, and returns false
// once the child passed (its log lines are logged here), or fails t with the
// child's output. In the child it returns true.
//
// It is for tests that measure the whole process, such as the heap: run among
// the package's other parallel tests, the heap a test reads is theirs too, and
// a bound on it fails whenever a neighbour allocates.
func RunAlone(t *testing.T) bool {
	t.Helper()
	if name := os.Getenv(aloneEnv); name != "" {
		if name != t.Name() {
			t.Fatalf("forgetest: RunAlone in %s, in a child process started for %s", t.Name(), name)
		}
		return true
	}
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	args := []string{"-test.run=" + strings.Join(parts, "/"), "-test.count=1", "-test.v=true"}
	if d, ok := t.Deadline(); ok && time.Until(d) > 10*time.Second {
		// The child's own deadline comes first, so that a child that hangs
		// prints its goroutines here rather than being cut off with the parent.
		left := time.Until(d)
		args = append(args, "-test.timeout="+(left-min(left/10, time.Minute)).Round(time.Second).String())
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), aloneEnv+"="+t.Name())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil || !strings.Contains(out.String(), "--- PASS: "+t.Name()+" ") {
		t.Fatalf("forgetest: %s alone in a child process: %v\n%s", t.Name(), err, out.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if testLog.MatchString(line) {
			t.Log("child: " + strings.TrimSpace(line))
		}
	}
	return false
}

// testLog matches a line a test logged (t.Log): "    file_test.go:12: text".
var testLog = regexp.MustCompile(`^\s+\S+_test\.go:\d+: `)
