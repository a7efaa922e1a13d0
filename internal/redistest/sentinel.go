package redistest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SentinelMasterName is the name StartSentinel's sentinels monitor the master by.
const SentinelMasterName = "forge"

// SentinelSet is a Sentinel-managed Redis owned by a test: a master, one replica
// of it, and three sentinels (quorum 2) that fail the master over to the replica
// about a second after it stops answering.
type SentinelSet struct {
	t testing.TB
	// Master and Replica are the data nodes in their roles at start; after a
	// failover the replica is the master (MasterAddr says which is).
	Master, Replica *Server
	Sentinels       []*Server
}

// StartSentinel starts a master, a replica of it (synchronised before it
// returns) and three sentinels that monitor the master as SentinelMasterName and
// know each other and the replica. opts apply to both data nodes (WithTLS,
// WithArgs, …); replication itself is plain. Everything stops when the test ends.
func StartSentinel(t testing.TB, opts ...Option) *SentinelSet {
	t.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	set := &SentinelSet{t: t}
	// A replica (the first, and the old master rejoining) syncs at once.
	c.args = append([]string{"--repl-diskless-sync-delay", "0"}, c.args...)
	set.Master = start(t, c)
	rc := c
	rc.args = append(append([]string(nil), c.args...), "--replicaof", "127.0.0.1", strconv.Itoa(set.Master.port))
	set.Replica = start(t, rc)
	set.waitFor("the replica to synchronise", 30*time.Second, func() bool {
		return set.Replica.Info("replication", "master_link_status") == "up"
	})
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		conf := filepath.Join(dir, "sentinel.conf")
		if err := os.WriteFile(conf, nil, 0o600); err != nil {
			t.Fatalf("redistest: %v", err)
		}
		set.Sentinels = append(set.Sentinels, start(t, config{
			pre: []string{conf, "--sentinel"},
			args: []string{
				"--sentinel", "monitor", SentinelMasterName, "127.0.0.1", strconv.Itoa(set.Master.port), "2",
				"--sentinel", "down-after-milliseconds", SentinelMasterName, "1000",
				"--sentinel", "failover-timeout", SentinelMasterName, "10000",
				"--sentinel", "parallel-syncs", SentinelMasterName, "1",
			},
		}))
	}
	set.waitFor("the sentinels to know each other and the replica", 30*time.Second, func() bool {
		for _, s := range set.Sentinels {
			r, err := s.Do("SENTINEL", "MASTER", SentinelMasterName)
			if err != nil {
				return false
			}
			f := pairs(r)
			if f["num-other-sentinels"] != "2" || f["num-slaves"] != "1" {
				return false
			}
		}
		return true
	})
	return set
}

func (set *SentinelSet) waitFor(what string, limit time.Duration, ok func() bool) {
	set.t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			set.t.Fatalf("redistest: timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pairs reads a flat name/value reply (one per line, as Do returns an array).
func pairs(r string) map[string]string {
	lines := strings.Split(r, "\n")
	m := make(map[string]string, len(lines)/2)
	for i := 0; i+1 < len(lines); i += 2 {
		m[lines[i]] = lines[i+1]
	}
	return m
}

// SentinelAddrs returns every sentinel's "127.0.0.1:port".
func (set *SentinelSet) SentinelAddrs() []string {
	out := make([]string, len(set.Sentinels))
	for i, s := range set.Sentinels {
		out[i] = s.Addr()
	}
	return out
}

// URL returns the set's URL as rueidis.ParseURL reads it, database 0: the
// sentinels as host and addr parameters, and master_set naming the master.
func (set *SentinelSet) URL() string {
	addrs := set.SentinelAddrs()
	u := "redis://" + addrs[0] + "/0?"
	for _, a := range addrs[1:] {
		u += "addr=" + a + "&"
	}
	return u + "master_set=" + SentinelMasterName
}

// MasterAddr returns the master's address as the first sentinel that answers
// reports it.
func (set *SentinelSet) MasterAddr() string {
	for _, s := range set.Sentinels {
		if r, err := s.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelMasterName); err == nil {
			if hp := strings.Split(r, "\n"); len(hp) == 2 {
				return net.JoinHostPort(hp[0], hp[1])
			}
		}
	}
	return ""
}

// WaitFailover waits (up to 60 s) until every sentinel names a master other than
// old, and that node says it is a master. It returns the new master's address.
func (set *SentinelSet) WaitFailover(old string) string {
	set.t.Helper()
	var now string
	set.waitFor(fmt.Sprintf("a failover away from %s", old), 60*time.Second, func() bool {
		now = ""
		for _, s := range set.Sentinels {
			r, err := s.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelMasterName)
			hp := strings.Split(r, "\n")
			if err != nil || len(hp) != 2 {
				return false
			}
			a := net.JoinHostPort(hp[0], hp[1])
			if a == old || (now != "" && a != now) {
				return false
			}
			now = a
		}
		for _, n := range []*Server{set.Master, set.Replica} {
			if n.Addr() == now {
				return n.Info("replication", "role") == "master"
			}
		}
		return false
	})
	return now
}
