package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchQuick runs `forge bench --quick` and checks that every scenario
// prints its row and none failed. Timings are read from the bench, never
// asserted here. It runs the built binary: the bench starts that binary again
// as a child (the idle scenario's server, the storm's fleet).
func TestBenchQuick(t *testing.T) {
	t.Parallel()
	svg := filepath.Join(t.TempDir(), "bench.svg")
	cmd := exec.Command(bin(t, "forge"), "bench", "--quick", "--plot", svg)
	cmd.Env = append(os.Environ(), "FORGE_ADMIN_TOKEN=", "FORGE_ENROLL_TOKEN=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("forge bench --quick: %v\n%s", err, out)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			rows[f[0]] = append(rows[f[0]], line)
		}
	}
	for _, s := range []string{"ping", "roundtrip", "runwait", "crossreplica", "cancel", "throughput",
		"dispatchstart", "fanout", "idle", "storm"} {
		if len(rows[s]) == 0 {
			t.Errorf("no row for scenario %s in:\n%s", s, out)
		}
		for _, line := range rows[s] {
			if strings.Fields(line)[1] == "failed" { // the row of a scenario that errored
				t.Errorf("scenario %s failed:\n%s", s, out)
			}
		}
	}
	b, err := os.ReadFile(svg)
	if err != nil || !strings.HasPrefix(string(b), "<svg") || !strings.Contains(string(b), "polyline") {
		t.Errorf("--plot wrote no latency plot: %v", err)
	}
}
