package redistest

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of masters without replicas, owned by a test.
type Cluster struct {
	t     owner
	Nodes []*Server
}

// StartCluster starts n cluster-enabled redis-servers (n ≥ 1), splits the 16384
// hash slots evenly between them, joins them, and waits until every node reports
// cluster_state:ok and knows every other node. The nodes stop when the test ends.
func StartCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	return startCluster(t, n, opts...)
}

func startCluster(t owner, n int, opts ...Option) *Cluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("redistest: StartCluster needs at least one node, got %d", n)
	}
	var c config
	for _, o := range opts {
		o(&c)
	}
	c.cluster = true
	cl := &Cluster{t: t}
	for i := 0; i < n; i++ {
		cl.Nodes = append(cl.Nodes, start(t, c))
	}
	const slots = 16384
	for i, s := range cl.Nodes {
		lo, hi := i*slots/n, (i+1)*slots/n-1
		s.MustDo("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi))
	}
	for _, s := range cl.Nodes[1:] {
		s.MustDo("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(cl.Nodes[0].port), strconv.Itoa(cl.Nodes[0].busPort))
	}
	deadline := time.Now().Add(30 * time.Second)
	for !cl.ready() {
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, s := range cl.Nodes {
				r, _ := s.Do("CLUSTER", "INFO")
				fmt.Fprintf(&b, "%s:\n%s\n", s.Addr(), r)
			}
			t.Fatalf("redistest: cluster did not become ready:\n%s", b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cl
}

func (cl *Cluster) ready() bool {
	n := strconv.Itoa(len(cl.Nodes))
	for _, s := range cl.Nodes {
		r, err := s.Do("CLUSTER", "INFO")
		if err != nil || infoField(r, "cluster_state") != "ok" || infoField(r, "cluster_known_nodes") != n ||
			infoField(r, "cluster_slots_ok") != "16384" {
			return false
		}
	}
	return true
}

// Addrs returns every node's "127.0.0.1:port".
func (cl *Cluster) Addrs() []string {
	out := make([]string, len(cl.Nodes))
	for i, s := range cl.Nodes {
		out[i] = s.Addr()
	}
	return out
}

// URL returns a redis:// URL naming every node (the first as host, the others as
// addr parameters), as rueidis.ParseURL reads it.
func (cl *Cluster) URL() string {
	addrs := cl.Addrs()
	u := "redis://" + addrs[0]
	for i, a := range addrs[1:] {
		if i == 0 {
			u += "?addr=" + a
		} else {
			u += "&addr=" + a
		}
	}
	return u
}
