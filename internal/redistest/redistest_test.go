package redistest_test

import (
	"os"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/redistest"
)

func TestStartStop(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t)
	if !strings.HasPrefix(s.URL(), "redis://127.0.0.1:") || !strings.HasSuffix(s.URL(), "/0") {
		t.Fatalf("URL = %q", s.URL())
	}
	if got := s.MustDo("SET", "k", "v"); got != "OK" {
		t.Fatalf("SET = %q", got)
	}
	if got := s.Info("persistence", "aof_enabled"); got != "0" {
		t.Fatalf("aof_enabled = %q, want 0", got)
	}
	s.Stop()
	if s.Running() {
		t.Fatal("running after Stop")
	}
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("PING answered after Stop")
	}
	s.Stop() // twice is fine
	s.Restart()
	if got := s.MustDo("GET", "k"); got != "" {
		t.Fatalf("without AOF, GET after restart = %q, want nothing", got)
	}
}

func TestAOFSurvivesKill(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, redistest.WithAOF())
	addr := s.Addr()
	s.MustDo("SET", "k", "v")
	s.Kill()
	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("restart moved from %s to %s", addr, s.Addr())
	}
	if got := s.MustDo("GET", "k"); got != "v" {
		t.Fatalf("GET after kill and restart = %q, want v", got)
	}
}

func TestTwoServersAreSeparate(t *testing.T) {
	t.Parallel()
	a, b := redistest.Start(t), redistest.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatal("same address twice")
	}
	a.MustDo("SET", "k", "a")
	if got := b.MustDo("GET", "k"); got != "" {
		t.Fatalf("b sees a's key: %q", got)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	if len(cl.Addrs()) != 3 {
		t.Fatalf("Addrs = %v", cl.Addrs())
	}
	for _, n := range cl.Nodes {
		if st := n.Info("cluster", "cluster_enabled"); st != "1" {
			t.Fatalf("%s: cluster_enabled = %q", n.Addr(), st)
		}
		info := n.MustDo("CLUSTER", "INFO")
		if !strings.Contains(info, "cluster_state:ok") {
			t.Fatalf("%s: %s", n.Addr(), info)
		}
	}
	// Keys land on the node owning their slot; the others redirect.
	moved := 0
	for _, n := range cl.Nodes {
		if _, err := n.Do("SET", "{x}k", "v"); err != nil {
			if !strings.HasPrefix(err.Error(), "MOVED") {
				t.Fatalf("SET on %s: %v", n.Addr(), err)
			}
			moved++
		}
	}
	if moved != 2 {
		t.Fatalf("%d nodes redirected, want 2", moved)
	}
	if !strings.Contains(cl.URL(), "addr=") {
		t.Fatalf("URL = %q", cl.URL())
	}
}

func TestStartShared(t *testing.T) {
	t.Parallel()
	s, stop, err := redistest.StartShared()
	if err != nil {
		t.Fatal(err)
	}
	dir := s.Dir()
	if got, err := s.Do("PING"); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v", got, err)
	}
	stop()
	if s.Running() {
		t.Fatal("running after stop")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("directory %s after stop: %v", dir, err)
	}
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("PING answered after stop")
	}
}
