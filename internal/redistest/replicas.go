package redistest

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// This file grows Cluster into one with replicas, so a test can kill a master and
// watch its replica take over, and reads the cluster's topology as the nodes see it.

// NodeTimeout is the cluster-node-timeout of StartReplicated's nodes: a master
// silent this long is failed over, so a failover takes a few seconds.
const NodeTimeout = time.Second

// StartReplicated starts a Redis Cluster of masters masters (≥ 1), each with
// replicas replicas, splits the hash slots evenly between the masters, and waits
// until the cluster is healthy (see WaitHealthy). Nodes time out after
// NodeTimeout, and a replica takes over whatever its replication lag, so killing
// or pausing a master fails it over within seconds. Nothing is persisted: a node
// restarted after a kill comes back empty and, its slots having moved to its
// replica meanwhile, joins as a replica and copies the data back. The nodes stop
// when the test ends.
func StartReplicated(t testing.TB, masters, replicas int, opts ...Option) *Cluster {
	t.Helper()
	if masters < 1 || replicas < 0 {
		t.Fatalf("redistest: StartReplicated needs at least one master, got %d masters, %d replicas", masters, replicas)
	}
	var c config
	for _, o := range opts {
		o(&c)
	}
	c.cluster = true
	c.args = append([]string{
		"--cluster-node-timeout", strconv.Itoa(int(NodeTimeout / time.Millisecond)),
		// Take over whatever the replica's lag: tests kill masters on purpose.
		"--cluster-replica-validity-factor", "0",
		// Keep the layout the test built: no replica wanders to another master.
		"--cluster-allow-replica-migration", "no",
		"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
	}, c.args...)
	cl := &Cluster{t: t}
	total := masters * (1 + replicas)
	for i := 0; i < total; i++ {
		cl.Nodes = append(cl.Nodes, start(t, c))
	}
	const slots = 16384
	for i, s := range cl.Nodes[:masters] {
		lo, hi := i*slots/masters, (i+1)*slots/masters-1
		s.MustDo("CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi))
	}
	for _, s := range cl.Nodes[1:] {
		s.MustDo("CLUSTER", "MEET", "127.0.0.1", strconv.Itoa(cl.Nodes[0].port), strconv.Itoa(cl.Nodes[0].busPort))
	}
	// A replica can follow a master only once it knows the master.
	deadline := time.Now().Add(30 * time.Second)
	for i, s := range cl.Nodes[masters:] {
		master := cl.Nodes[i%masters]
		id := master.MustDo("CLUSTER", "MYID")
		for {
			_, err := s.Do("CLUSTER", "REPLICATE", id)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: %s cannot replicate %s: %v", s.Addr(), master.Addr(), err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	return cl
}

// Node is one node of a cluster as the nodes describe it (CLUSTER NODES).
type Node struct {
	Server   *Server // nil for a node this Cluster did not start
	ID       string
	Master   bool
	MasterID string // the master a replica follows
	Failed   bool   // flagged fail (or fail? by the node asked)
	Slots    []int  // slots served, for a master
}

// Topology returns the cluster's nodes as the first node that answers sees them,
// masters first (in slot order), then replicas.
func (cl *Cluster) Topology() ([]Node, error) {
	var lastErr error
	for _, s := range cl.Nodes {
		if !s.answering() {
			continue
		}
		nodes, err := cl.topologyFrom(s)
		if err == nil {
			return nodes, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("redistest: no node answers CLUSTER NODES: %v", lastErr)
}

func (cl *Cluster) topologyFrom(s *Server) ([]Node, error) {
	r, err := s.Do("CLUSTER", "NODES")
	if err != nil {
		return nil, err
	}
	var out []Node
	for _, line := range strings.Split(strings.TrimSpace(r), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		n := Node{ID: f[0], MasterID: f[3]}
		addr, _, _ := strings.Cut(f[1], "@")
		for _, srv := range cl.Nodes {
			if srv.Addr() == addr {
				n.Server = srv
			}
		}
		for _, flag := range strings.Split(f[2], ",") {
			switch flag {
			case "master":
				n.Master = true
			case "fail", "fail?":
				n.Failed = true
			}
		}
		if n.MasterID == "-" {
			n.MasterID = ""
		}
		for _, sl := range f[8:] {
			if strings.HasPrefix(sl, "[") {
				continue // a slot being migrated or imported
			}
			lo, hi, isRange := strings.Cut(sl, "-")
			a, _ := strconv.Atoi(lo)
			b := a
			if isRange {
				b, _ = strconv.Atoi(hi)
			}
			for x := a; x <= b; x++ {
				n.Slots = append(n.Slots, x)
			}
		}
		out = append(out, n)
	}
	slices.SortStableFunc(out, func(a, b Node) int {
		switch {
		case a.Master && len(a.Slots) > 0 && !(b.Master && len(b.Slots) > 0):
			return -1
		case b.Master && len(b.Slots) > 0 && !(a.Master && len(a.Slots) > 0):
			return 1
		case len(a.Slots) > 0 && len(b.Slots) > 0:
			return a.Slots[0] - b.Slots[0]
		}
		return 0
	})
	return out, nil
}

// Masters returns the servers that serve slots now, in slot order.
func (cl *Cluster) Masters() ([]*Server, error) {
	nodes, err := cl.Topology()
	if err != nil {
		return nil, err
	}
	var out []*Server
	for _, n := range nodes {
		if n.Master && len(n.Slots) > 0 && !n.Failed && n.Server != nil {
			out = append(out, n.Server)
		}
	}
	return out, nil
}

// ReplicasOf returns the servers that follow master now.
func (cl *Cluster) ReplicasOf(master *Server) ([]*Server, error) {
	nodes, err := cl.Topology()
	if err != nil {
		return nil, err
	}
	id := ""
	for _, n := range nodes {
		if n.Server == master {
			id = n.ID
		}
	}
	var out []*Server
	for _, n := range nodes {
		if id != "" && n.MasterID == id && n.Server != nil && !n.Failed {
			out = append(out, n.Server)
		}
	}
	return out, nil
}

// MasterOf returns the server that serves slot now.
func (cl *Cluster) MasterOf(slot int) (*Server, error) {
	nodes, err := cl.Topology()
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if n.Master && !n.Failed && slices.Contains(n.Slots, slot) && n.Server != nil {
			return n.Server, nil
		}
	}
	return nil, fmt.Errorf("redistest: no live master serves slot %d", slot)
}

// KillMaster kills master with SIGKILL and waits for its replica to take over
// its slots (WaitFailover). It returns the new master. The killed node stays
// down; TryRestart brings it back as a replica.
func (cl *Cluster) KillMaster(master *Server, timeout time.Duration) (*Server, error) {
	slots, err := cl.SlotsOf(master)
	if err != nil {
		return nil, err
	}
	if len(slots) == 0 {
		return nil, fmt.Errorf("redistest: %s serves no slot", master.Addr())
	}
	master.Kill()
	return cl.WaitFailover(master, slots, timeout)
}

// WaitFailover waits until oldSlots, which old served, are served by another
// node, every live node agrees on who serves every slot, and the cluster is up
// again. It returns the master that took over old's first slot.
func (cl *Cluster) WaitFailover(old *Server, oldSlots []int, timeout time.Duration) (*Server, error) {
	if len(oldSlots) == 0 {
		return nil, fmt.Errorf("redistest: WaitFailover needs the slots %s served", old.Addr())
	}
	deadline := time.Now().Add(timeout)
	for {
		if m, err := cl.MasterOf(oldSlots[0]); err == nil && m != old && cl.agree() && cl.up() {
			return m, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: no failover of %s within %s:\n%s", ErrTimeout, old.Addr(), timeout, cl.describe())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// SlotsOf returns the slots s serves now (none for a replica).
func (cl *Cluster) SlotsOf(s *Server) ([]int, error) {
	nodes, err := cl.Topology()
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if n.Server == s && n.Master {
			return n.Slots, nil
		}
	}
	return nil, nil
}

// WaitHealthy waits until every node of the cluster runs, every node reports
// cluster_state:ok with every slot served, all nodes agree on who serves each
// slot and on every node's role, no node is a master without slots, and every
// replica's link to its master is up and synced: a state in which any one master
// may die without losing a slot. (A master killed and restarted comes back for a
// moment as a master without slots before it turns into its successor's replica,
// and the other nodes learn that by gossip: until then it protects nothing.)
func (cl *Cluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !cl.Healthy() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: cluster not healthy within %s:\n%s", ErrTimeout, timeout, cl.describe())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// Healthy tells whether the cluster is in the state WaitHealthy waits for.
func (cl *Cluster) Healthy() bool {
	for _, s := range cl.Nodes {
		if !s.answering() {
			return false
		}
	}
	if !cl.up() || !cl.agree() || !cl.rolesSettled() {
		return false
	}
	for _, s := range cl.Nodes {
		r, err := s.Do("INFO", "replication")
		if err != nil {
			return false
		}
		if infoField(r, "role") == "slave" &&
			(infoField(r, "master_link_status") != "up" || infoField(r, "master_sync_in_progress") != "0") {
			return false
		}
	}
	return true
}

// up tells whether every running node reports the cluster ok with all slots served.
func (cl *Cluster) up() bool {
	for _, s := range cl.Nodes {
		if !s.answering() {
			continue
		}
		r, err := s.Do("CLUSTER", "INFO")
		if err != nil || infoField(r, "cluster_state") != "ok" || infoField(r, "cluster_slots_ok") != "16384" {
			return false
		}
	}
	return true
}

// agree tells whether every running node names the same master for every slot
// and sees no slot in migration.
func (cl *Cluster) agree() bool {
	var want map[int]string
	for _, s := range cl.Nodes {
		if !s.answering() {
			continue
		}
		r, err := s.Do("CLUSTER", "NODES")
		if err != nil || strings.Contains(r, "[") {
			return false
		}
		nodes, err := cl.topologyFrom(s)
		if err != nil {
			return false
		}
		owners := map[int]string{}
		for _, n := range nodes {
			if n.Master && !n.Failed {
				for _, sl := range n.Slots {
					owners[sl] = n.ID
				}
			}
		}
		if want == nil {
			want = owners
			continue
		}
		if len(owners) != len(want) {
			return false
		}
		for sl, id := range owners {
			if want[sl] != id {
				return false
			}
		}
	}
	return want != nil
}

// rolesSettled tells whether every running node gives each of the cluster's
// nodes the same role — a master serving slots, or a replica of a given master —
// and none sees one of them as a master without slots.
func (cl *Cluster) rolesSettled() bool {
	var want map[string]string
	for _, s := range cl.Nodes {
		if !s.answering() {
			continue
		}
		nodes, err := cl.topologyFrom(s)
		if err != nil {
			return false
		}
		roles := map[string]string{}
		for _, n := range nodes {
			if n.Server == nil {
				continue
			}
			switch {
			case n.Master && len(n.Slots) > 0:
				roles[n.ID] = "master"
			case !n.Master && n.MasterID != "":
				roles[n.ID] = "replica of " + n.MasterID
			default:
				return false
			}
		}
		if want == nil {
			want = roles
			continue
		}
		if !maps.Equal(roles, want) {
			return false
		}
	}
	return want != nil
}

// describe returns each node's view of the cluster, for failure messages.
func (cl *Cluster) describe() string {
	var b strings.Builder
	for _, s := range cl.Nodes {
		if !s.answering() {
			fmt.Fprintf(&b, "%s: not running or paused\n", s.Addr())
			continue
		}
		r, err := s.Do("CLUSTER", "NODES")
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", s.Addr(), err)
			continue
		}
		fmt.Fprintf(&b, "%s sees:\n%s\n", s.Addr(), strings.TrimSpace(r))
	}
	return b.String()
}

// Slot returns the hash slot of a key, as Redis Cluster computes it: CRC16 of the
// key's hash tag (the part between the first { and the next }, when not empty) or
// of the whole key, modulo 16384.
func Slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % 16384)
}

// crc16 is CRC-16/XMODEM, the checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
