package main_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestBenchUsage: a size of zero or less given on the command line is refused
// as a usage error (it would quietly mean the default, a 50,000-agent run);
// the help wraps like other commands' and says which scenarios are not run
// by default; an error says "forge bench:" once.
func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--scale-agents", "0"}, {"--scale-agents", "-1"}, {"--scale-replicas", "0"}, {"--scale-replicas", "-3"},
		{"--agents", "0"}, {"--agents", "-5"}, {"--soak-duration", "-1s"},
	} {
		out, code := runForge(t, nil, append([]string{"bench", "--scenario", "scale"}, args...)...)
		if code != 2 || !strings.Contains(out, args[0]+" ") || !strings.Contains(out, "forge bench -h") {
			t.Errorf("forge bench %v: exit %d, want 2 and a usage error naming the flag:\n%s", args, code, out)
		}
	}

	help, code := runForge(t, nil, "bench", "--help")
	if code != 0 {
		t.Fatalf("forge bench --help: exit %d\n%s", code, help)
	}
	for _, line := range strings.Split(help, "\n") {
		if strings.HasPrefix(line, "      ") {
			continue // a flag's text, one line each as in every command's help
		}
		if n := utf8.RuneCountInString(line); n > 100 {
			t.Errorf("a help line of %d columns:\n%s", n, line)
		}
	}
	if text := strings.Join(strings.Fields(help), " "); !strings.Contains(text, "default: all but scale and soak") {
		t.Errorf("--scenario's help does not say scale and soak are not in the default:\n%s", help)
	}
	if strings.Contains(help, "[FORGE_") {
		t.Errorf("the help names variables the bench reads (it reads none):\n%s", help)
	}

	out, code := runForge(t, nil, "bench", "--server", "http://127.0.0.1:1")
	if code != 1 || !strings.Contains(out, "forge bench: --server needs --admin-token and --enroll-token") {
		t.Errorf("--server without tokens: exit %d:\n%s", code, out)
	}
}

// TestBenchNotForge: --server aimed at an HTTP server that is not forge, or at
// a closed port, ends the run at once, saying which and exiting 1.
func TestBenchNotForge(t *testing.T) {
	t.Parallel()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not implemented", http.StatusNotImplemented)
	}))
	defer other.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	for url, want := range map[string]string{other.URL: other.URL + ": not a forge server: ", closed: closed + ": unreachable: "} {
		out, code := runForge(t, nil, "bench", "--server", url, "--admin-token", adminToken, "--enroll-token", enrollToken, "--quick")
		if code != 1 || !strings.Contains(out, "forge bench: "+want) || strings.Contains(out, "SCENARIO") {
			t.Errorf("forge bench --server %s: exit %d, want 1 and %q before any scenario:\n%s", url, code, want, out)
		}
	}
}

// TestBenchEnrollRefused: a scenario whose agents cannot register (the
// enrollment token is refused) prints its ERROR row with the agent's own
// reason, and the run exits 1.
func TestBenchEnrollRefused(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	out, code := runForge(t, nil, "bench", "--server", url, "--admin-token", adminToken,
		"--enroll-token", "not-the-enroll-token-0123", "--quick", "--scenario", "roundtrip")
	text := strings.Join(strings.Fields(out), " ") // the table wraps its notes
	if code != 1 || !strings.Contains(text, "ERROR") || !strings.Contains(text, "the first: ") ||
		!strings.Contains(strings.ToLower(text), "unauthenticated") {
		t.Errorf("a refused enrollment token: exit %d, want 1, an ERROR row and the agent's reason:\n%s", code, out)
	}
}

// TestBenchPlotUnwritable: a --plot path that cannot be written fails before
// the run, not after it with the table lost.
func TestBenchPlotUnwritable(t *testing.T) {
	t.Parallel()
	plot := filepath.Join(t.TempDir(), "no-such-dir", "bench.svg")
	out, code := runForge(t, nil, "bench", "--quick", "--scenario", "ping", "--plot", plot)
	if code != 1 || !strings.Contains(out, plot) || strings.Contains(out, "SCENARIO") {
		t.Errorf("--plot %s: exit %d, want 1 and the error before any scenario ran:\n%s", plot, code, out)
	}
}

// TestBenchIgnoresEnv: the bench takes its target from its flags only; the
// variables of a shell set up for a production server change nothing.
func TestBenchIgnoresEnv(t *testing.T) {
	t.Parallel()
	e := env{"FORGE_REDIS": "redis://127.0.0.1:1/0", "FORGE_SERVER": "http://127.0.0.1:1",
		"FORGE_ADMIN_TOKEN": adminToken, "FORGE_ENROLL_TOKEN": enrollToken, "FORGE_AGENTS": "0"}
	out, code := runForge(t, e, "bench", "--quick", "--scenario", "ping")
	if code != 0 || !strings.Contains(out, "store: memory · server: in-process http://127.0.0.1:") {
		t.Errorf("forge bench with FORGE_REDIS and FORGE_SERVER set: exit %d, want 0 on the in-process memory server:\n%s", code, out)
	}
}
