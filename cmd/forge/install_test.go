//go:build linux

package main_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	forge "github.com/orange-forge/forge/cmd/forge"
)

// TestAgentInstallFiles: `forge agent install --root DIR` writes the unit, the
// configuration (only what differs from the defaults, never the token) and the
// token file (0600) that the service reads; uninstall --purge removes them.
func TestAgentInstallFiles(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	out, code := runForge(t, nil, "agent", "install", "--root", root, "--server", "https://forge.example.com",
		"--enroll-token", enrollToken, "--label", "role=web", "--label", "env=prod", "--allow-exec", "/usr/bin/uptime",
		"--concurrency", "8", "--no-start")
	if code != 0 {
		t.Fatalf("install exited %d:\n%s", code, out)
	}
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	unit := read(t, root, "/etc/systemd/system/forge-agent.service")
	if !strings.Contains(unit, "\nExecStart="+exe+" agent\n") || !strings.Contains(unit, "\nUser=forge\n") {
		t.Fatalf("the unit does not run this binary as forge:\n%s", unit)
	}
	env := read(t, root, "/etc/forge/agent.env")
	var set []string
	for _, line := range strings.Split(env, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			set = append(set, line)
		}
	}
	want := []string{`FORGE_ALLOW_EXEC="/usr/bin/uptime"`, `FORGE_CONCURRENCY="8"`, `FORGE_LABEL="env=prod,role=web"`, `FORGE_SERVER="https://forge.example.com"`}
	if !slices.Equal(set, want) {
		t.Fatalf("agent.env sets %q, want %q", set, want)
	}
	if strings.Contains(env, enrollToken) {
		t.Fatal("the token is in the configuration file")
	}
	if tok := read(t, root, "/etc/forge/enroll-token"); tok != enrollToken+"\n" {
		t.Fatalf("token file holds %q", tok)
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/forge/enroll-token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}

	// The configuration written is the one the agent reads: parsed back through
	// the variables, it gives the flags given.
	vars := env2map(set)
	got, err := (&forge.Main{Stderr: os.Stderr, Getenv: func(k string) string { return vars[k] }}).ParseAgent(nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Servers, []string{"https://forge.example.com"}) || got.Concurrency != 8 ||
		!reflect.DeepEqual(got.Labels, map[string]string{"env": "prod", "role": "web"}) || !slices.Equal(got.AllowExec, []string{"/usr/bin/uptime"}) {
		t.Fatalf("the configuration reads back as %+v", got)
	}

	// Installed again without a token, the existing token file is kept.
	if out, code := runForge(t, nil, "agent", "install", "--root", root, "--server", "https://other.example.com", "--no-start"); code != 0 {
		t.Fatalf("second install exited %d:\n%s", code, out)
	}
	if tok := read(t, root, "/etc/forge/enroll-token"); tok != enrollToken+"\n" {
		t.Fatalf("token file after a second install holds %q", tok)
	}
	// Without a token, on a machine that has none and no identity: refused.
	out, code = runForge(t, nil, "agent", "install", "--root", t.TempDir(), "--server", "https://forge.example.com")
	if code != 1 || !strings.Contains(out, "no enrollment token") {
		t.Fatalf("install without a token: exit %d:\n%s", code, out)
	}
	out, code = runForge(t, nil, "agent", "install", "--root", t.TempDir(), "--server", "https://f.example.com", "--enroll-token", enrollToken, "--state-dir", "/tmp/x")
	if code != 1 || !strings.Contains(out, "--state-dir") {
		t.Fatalf("install with --state-dir: exit %d:\n%s", code, out)
	}

	if out, code := runForge(t, nil, "agent", "uninstall", "--root", root, "--purge"); code != 0 {
		t.Fatalf("uninstall exited %d:\n%s", code, out)
	}
	for _, p := range []string{"etc/systemd/system/forge-agent.service", "etc/forge/agent.env", "etc/forge/enroll-token"} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall --purge (%v)", p, err)
		}
	}
}

func read(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// env2map reads NAME="value" lines as systemd does for these values.
func env2map(lines []string) map[string]string {
	m := map[string]string{}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, "=")
		m[k] = strings.Trim(v, `"`)
	}
	return m
}
