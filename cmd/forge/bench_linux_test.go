package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestBenchKilledTakesChildren: kill -9 of the bench during the scale
// scenario takes its redis-servers and replicas with it (they are not left
// running, reparented to init).
func TestBenchKilledTakesChildren(t *testing.T) {
	t.Parallel()
	// Its output goes to a file, not a pipe: children left running would hold
	// a pipe open, and waiting for the bench would wait for them.
	out, err := os.Create(filepath.Join(t.TempDir(), "bench.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin(t, "forge"), "bench", "--quick", "--scenario", "scale")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	var kids []int
	t.Cleanup(func() {
		for _, k := range kids { // any the kernel did not kill
			syscall.Kill(k, syscall.SIGKILL)
		}
	})
	waitFor(t, "three redis-servers and two replicas", func() bool {
		kids = childrenOf(cmd.Process.Pid)
		redis, replicas := 0, 0
		for _, k := range kids {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(k), "cmdline"))
			args := strings.Split(string(cmdline), "\x00")
			switch {
			case strings.Contains(args[0], "redis-server"): // it sets its own title: "redis-server 127.0.0.1:PORT [cluster]"
				redis++
			case len(args) > 1 && args[1] == "server":
				replicas++
			}
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("the bench exited before its children were up:\n%s", b)
		default:
		}
		return redis >= 3 && replicas >= 2
	})
	cmd.Process.Kill()
	<-exited
	for _, k := range kids {
		waitFor(t, "child "+strconv.Itoa(k)+" to die with the bench", func() bool { return gone(k) })
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		k, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := procField(k, 4); ok && ppid == strconv.Itoa(pid) {
			out = append(out, k)
		}
	}
	return out
}

// procField is field n of /proc/pid/stat (1-based: 3 is the state, 4 the
// parent), read after the command's name, which may hold spaces.
func procField(pid, n int) (string, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", false
	}
	f := strings.Fields(s[i+1:])
	if n < 3 || len(f) < n-2 {
		return "", false
	}
	return f[n-3], true
}

// gone tells whether pid has exited (a zombie has).
func gone(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return true
	}
	st, ok := procField(pid, 3)
	return !ok || st == "Z"
}
