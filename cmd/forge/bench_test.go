package main_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/orange-forge/forge/internal/redistest"
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
			if strings.Fields(line)[1] == "failed" || strings.HasSuffix(line, "ERROR") { // the row of a scenario that errored
				t.Errorf("scenario %s failed:\n%s", s, out)
			}
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if n := utf8.RuneCountInString(line); n > 120 {
			t.Errorf("a line of %d columns (at most 120):\n%s", n, line)
		}
		if strings.Contains(line, "NOT MET") {
			t.Errorf("--quick judged a target:\n%s", line)
		}
	}
	if !strings.Contains(string(out), "not judged") {
		t.Errorf("--quick printed no row as not judged:\n%s", out)
	}
	b, err := os.ReadFile(svg)
	if err != nil || !strings.HasPrefix(string(b), "<svg") || !strings.Contains(string(b), "polyline") {
		t.Errorf("--plot wrote no latency plot: %v", err)
	}
}

// TestBenchRedisTLS: `forge bench --redis` takes the --redis-* flags, for its
// in-process servers and for the idle scenario's child server alike: here a
// Redis that serves only mutual TLS with the test's CA.
func TestBenchRedisTLS(t *testing.T) {
	t.Parallel()
	c := redistest.NewCerts(t)
	rd := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertRequired))
	cmd := exec.Command(bin(t, "forge"), "bench", "--quick", "--scenario", "roundtrip,idle",
		"--redis", rd.TLSURL(), "--redis-ca", c.CA, "--redis-cert", c.ClientCert, "--redis-key", c.ClientKey)
	cmd.Env = append(os.Environ(), "FORGE_ADMIN_TOKEN=", "FORGE_ENROLL_TOKEN=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("forge bench: %v\n%s", err, out)
	}
	for _, s := range []string{"roundtrip", "idle"} {
		ok := false
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == s && f[1] != "failed" {
				ok = true
			}
		}
		if !ok {
			t.Errorf("no good row for %s:\n%s", s, out)
		}
	}
	if n := rd.Info("stats", "total_commands_processed"); n == "" || n == "0" {
		t.Errorf("the bench sent Redis nothing (total_commands_processed %q)", n)
	}
}

// TestBenchScaleQuick runs the scale scenario at its --quick size (400 agents
// in two processes over two replicas and a 3-master Redis Cluster it starts):
// every step prints its row, none failed, no agent or task was lost. The
// 50,000-agent run is made by hand (docs/performance.md); nothing here is timed.
func TestBenchScaleQuick(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(bin(t, "forge"), "bench", "--quick", "--scenario", "scale", "--json")
	cmd.Env = append(os.Environ(), "FORGE_ADMIN_TOKEN=", "FORGE_ENROLL_TOKEN=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("forge bench --scenario scale: %v\n%s", err, out)
	}
	var rep struct {
		ScaleStore   string `json:"scale_store"`
		ScaleServers string `json:"scale_servers"`
		Results      []struct {
			Scenario, Name, Summary, Status string
			Values                          map[string]float64
		}
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The header says what the scale scenario runs on, not the in-process
	// server of the ping floor.
	if !strings.Contains(rep.ScaleStore, "redis cluster (3 masters") || rep.ScaleServers != "2 replicas (child processes)" {
		t.Errorf("scale runs on %q, %q", rep.ScaleStore, rep.ScaleServers)
	}
	var scale int
	for _, r := range rep.Results {
		if r.Scenario != "scale" {
			continue
		}
		scale++
		if r.Status == "ERROR" {
			t.Errorf("%s: %s", r.Name, out)
		}
		if v, ok := r.Values["tasks_not_succeeded"]; ok && v != 0 {
			t.Errorf("%s: %v tasks lost", r.Name, v)
		}
		if v, ok := r.Values["agents_polling_after"]; ok && v != 400 {
			t.Errorf("%s: %v of 400 agents polling after the restart", r.Name, v)
		}
		if v, ok := r.Values["succeeded"]; ok && v != 400 {
			t.Errorf("%s: %v of 400 tasks succeeded", r.Name, v)
		}
		// The replicas hold polls as long as the idle step's short window, so
		// every agent renews its Poll in it: Redis sees script calls.
		if v, ok := r.Values["redis_script_calls_per_s"]; ok && v <= 0 {
			t.Errorf("%s: %s (no Redis call in the poll window)", r.Name, r.Summary)
		}
		if strings.Contains(r.Name, " 1 Redis masters") || strings.Contains(r.Name, " 1 replicas") {
			t.Errorf("%s: a plural of one", r.Name)
		}
	}
	if scale != 4 {
		t.Errorf("%d scale rows, want 4 (register, idle, fan-out, rolling restart):\n%s", scale, out)
	}
}

// TestBenchSoakQuick runs the soak scenario's short form (5 s of mixed load on
// a Redis of its own, the server a child process): its row says how many tasks
// ran, none failed, and it read the server's RSS and what Redis holds per task.
// The 5-minute soak is run by hand (docs/operations.md); nothing here is timed.
func TestBenchSoakQuick(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t)
	cmd := exec.Command(bin(t, "forge"), "bench", "--quick", "--scenario", "soak", "--redis", rd.URL(), "--json")
	cmd.Env = append(os.Environ(), "FORGE_ADMIN_TOKEN=", "FORGE_ENROLL_TOKEN=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("forge bench --scenario soak: %v\n%s", err, out)
	}
	var rep struct {
		Results []struct {
			Scenario, Name, Summary, Status, Note string
			Values                                map[string]float64
		}
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var soak int
	for _, r := range rep.Results {
		if r.Scenario != "soak" {
			continue
		}
		soak++
		if r.Status == "ERROR" || r.Values["errors"] != 0 {
			t.Errorf("soak: %s: %s", r.Summary, r.Note)
		}
		if r.Values["tasks"] <= 0 || r.Values["rss_end_bytes"] <= 0 || r.Values["redis_bytes_per_task"] <= 0 {
			t.Errorf("soak measured too little (tasks, server RSS, Redis bytes per task): %v", r.Values)
		}
	}
	if soak != 1 {
		t.Errorf("%d soak rows, want 1:\n%s", soak, out)
	}
}

// TestBenchIdleProfile: --idle-profile saves the idle scenario's child server
// profiles (started with --debug-listen): runtime metrics before, while held
// and after the window, the heap and goroutines while held, the window's CPU.
func TestBenchIdleProfile(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "prof")
	cmd := exec.Command(bin(t, "forge"), "bench", "--quick", "--scenario", "idle", "--idle-profile", dir)
	cmd.Env = append(os.Environ(), "FORGE_ADMIN_TOKEN=", "FORGE_ENROLL_TOKEN=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("forge bench --idle-profile: %v\n%s", err, out)
	}
	// The table wraps its notes; read them as one line.
	if text := strings.Join(strings.Fields(string(out)), " "); !strings.Contains(text, "profiles of the server in "+dir) || strings.Contains(text, "incomplete") {
		t.Errorf("the idle row does not say where its complete profiles are:\n%s", out)
	}
	for _, name := range []string{"runtime-metrics-before.txt", "runtime-metrics-held.txt", "runtime-metrics-after-window.txt",
		"runtime-metrics-after-window-gc.txt", "goroutines-held.txt", "heap-held.pb.gz", "heap-after-window.pb.gz", "cpu-window.pb.gz"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || len(b) == 0 {
			t.Errorf("%s: %d bytes, %v", name, len(b), err)
		}
	}
	held, _ := os.ReadFile(filepath.Join(dir, "runtime-metrics-held.txt"))
	if !strings.Contains(string(held), "/memory/classes/heap/stacks:bytes ") {
		t.Errorf("runtime-metrics-held.txt lacks the stacks:\n%s", held)
	}
	if g, _ := os.ReadFile(filepath.Join(dir, "goroutines-held.txt")); !strings.Contains(string(g), "server.(*Server).wait") {
		t.Errorf("goroutines-held.txt shows no held Poll:\n%.2000s", g)
	}
}
