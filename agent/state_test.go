//go:build linux

package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStateIdentity(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state")
	st, err := openState(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if id, err := st.loadIdentity(); err != nil || id.AgentID != "" {
		t.Fatalf("fresh dir: %+v, %v", id, err)
	}
	want := identity{AgentID: "a123", AgentToken: "fa_a123_secret"}
	if err := st.saveIdentity(want); err != nil {
		t.Fatal(err)
	}
	// A second agent cannot take the same state dir.
	if _, err := openState(dir, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v", err)
	}
	st.close()

	st, err = openState(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if got, err := st.loadIdentity(); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("loaded %+v, %v", got, err)
	}
	for name, mode := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, identityFile): 0o600} {
		fi, err := os.Stat(name)
		if err != nil || fi.Mode().Perm() != mode {
			t.Fatalf("%s: mode %v, want %v (%v)", name, fi.Mode().Perm(), mode, err)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Fatalf("temporary file left: %s", e.Name())
		}
	}
	os.WriteFile(filepath.Join(dir, identityFile), []byte("{garbage"), 0o600)
	if _, err := st.loadIdentity(); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged identity: %v", err)
	}
}

// An agent killed with SIGKILL leaves its command's group running; the next
// start ends the groups recorded in the state dir.
func TestStateEndsLeftoverGroups(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := openState(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { cmd.Wait(); close(reaped) }()
	pgid := cmd.Process.Pid
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	st.addGroup(pgid)
	st.close() // as if the agent died here

	st, err = openState(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	time.Sleep(50 * time.Millisecond) // let sh start its children
	start := time.Now()
	st.endLeftovers()
	if !groupGone(pgid) {
		t.Fatalf("group %d still alive", pgid)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	<-reaped
	b, _ := os.ReadFile(filepath.Join(dir, groupsFile))
	if strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("groups file after cleanup: %s", b)
	}
}
