//go:build linux

package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
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
	// sh stays (it waits), so the group is sh and two sleeps, one in the background.
	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60 & wait")
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

	// The children the test means to end must exist before it ends them.
	var members map[int]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		members = liveMembers(pgid)
		sleeps := 0
		for _, comm := range members {
			if comm == "sleep" {
				sleeps++
			}
		}
		if len(members) == 3 && sleeps == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("group %d never had sh and two sleeps: %v", pgid, members)
		}
	}

	st, err = openState(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	start := time.Now()
	st.endLeftovers()
	t.Logf("ended %d processes of group %d in %v", len(members), pgid, time.Since(start))
	if left := liveMembers(pgid); len(left) != 0 {
		t.Fatalf("group %d still has live processes: %v", pgid, left)
	}
	for pid := range members {
		if state, pgrp, _, ok := procStat(strconv.Itoa(pid)); ok && pgrp == pgid && state != 'Z' && state != 'X' {
			t.Fatalf("process %d (%s) of group %d still alive", pid, members[pid], pgid)
		}
	}
	if !groupGone(pgid) {
		t.Fatalf("group %d not gone", pgid)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("ending the group took %v", d)
	}
	select {
	case <-reaped:
	case <-time.After(10 * time.Second):
		t.Fatal("sh was not reaped")
	}
	b, _ := os.ReadFile(filepath.Join(dir, groupsFile))
	if strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("groups file after cleanup: %s", b)
	}
}

// liveMembers returns the live (not zombie) processes of group pgid with their
// command names.
func liveMembers(pgid int) map[int]string {
	out := map[int]string{}
	names, _ := filepath.Glob("/proc/[0-9]*")
	for _, name := range names {
		pid := filepath.Base(name)
		state, pgrp, _, ok := procStat(pid)
		if !ok || pgrp != pgid || state == 'Z' || state == 'X' {
			continue
		}
		comm, _ := os.ReadFile(name + "/comm")
		n, _ := strconv.Atoi(pid)
		out[n] = strings.TrimSpace(string(comm))
	}
	return out
}
