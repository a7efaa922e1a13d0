package redistest_test

import (
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
)

// TestReplicatedCluster walks a 3+3 cluster through what fault tests do to it:
// a master killed (its replica takes over and keeps the data), the dead node
// restarted (it comes back as a replica), a master paused past the node timeout,
// and a slot moved while a client keeps writing to it.
func TestReplicatedCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartReplicated(t, 3, 1)
	nodes, err := cl.Topology()
	if err != nil {
		t.Fatal(err)
	}
	masters, replicas := 0, 0
	for _, n := range nodes {
		if n.Master {
			masters++
		} else {
			replicas++
		}
		if n.Server == nil {
			t.Fatalf("node %s is not one of the cluster's servers", n.ID)
		}
	}
	if masters != 3 || replicas != 3 {
		t.Fatalf("%d masters and %d replicas, want 3 and 3", masters, replicas)
	}
	for _, key := range []string{"k", "{forge:s07}:due", "{x}a"} {
		m, err := cl.MasterOf(redistest.Slot(key))
		if err != nil {
			t.Fatal(err)
		}
		if got := m.MustDo("CLUSTER", "KEYSLOT", key); got != strconv.Itoa(redistest.Slot(key)) {
			t.Fatalf("Slot(%q) = %d, Redis says %s", key, redistest.Slot(key), got)
		}
	}

	// Kill the master of {x}: its replica takes over with the data.
	slot := redistest.Slot("{x}")
	m, err := cl.MasterOf(slot)
	if err != nil {
		t.Fatal(err)
	}
	m.MustDo("SET", "{x}a", "1")
	m.MustDo("WAIT", "1", "2000")
	start := time.Now()
	nm, err := cl.KillMaster(m, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failover took %s", time.Since(start))
	if nm == m {
		t.Fatal("the killed master still serves its slots")
	}
	if got := nm.MustDo("GET", "{x}a"); got != "1" {
		t.Fatalf("after failover GET = %q, want 1", got)
	}
	if err := m.TryRestart(); err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	if rs, _ := cl.ReplicasOf(nm); len(rs) != 1 || rs[0] != m {
		t.Fatalf("replicas of the new master = %v, want the restarted node", rs)
	}

	// Pause the new master past the node timeout: the restarted node takes over.
	if err := nm.Pause(); err != nil {
		t.Fatal(err)
	}
	slots, _ := cl.SlotsOf(nm)
	if len(slots) == 0 {
		// The paused node cannot answer; ask the cluster what it served.
		slots = []int{slot}
	}
	back, err := cl.WaitFailover(nm, slots, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if back != m {
		t.Fatalf("paused master's slots went to %s, want %s", back.Addr(), m.Addr())
	}
	if err := nm.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := cl.WaitHealthy(60 * time.Second); err != nil {
		t.Fatal(err)
	}

	// Move {x}'s slot while a writer keeps adding keys to it through redirects.
	for i := range 50 {
		back.MustDo("SET", fmt.Sprintf("{x}k%d", i), "v")
	}
	all, _ := cl.Masters()
	var to *redistest.Server
	for _, s := range all {
		if s != back {
			to = s
		}
	}
	// Only the writes Redis acknowledged must be there after the move. A write
	// may fail meanwhile (a node that answers MOVED just after the slot changed
	// hands, before the node asked for the topology learns it) while later ones
	// succeed, so each acknowledged key is recorded, not a count.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var acked []string
	failed := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key := fmt.Sprintf("{x}w%d", i)
			if err := setFollowing(cl, key); err != nil {
				failed++
				continue
			}
			acked = append(acked, key)
		}
	}()
	if err := cl.MigrateSlot(slot, to, redistest.MigrateOptions{Batch: 5, Pause: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	t.Logf("during the move: %d writes acknowledged, %d refused", len(acked), failed)
	if owner, _ := cl.MasterOf(slot); owner != to {
		t.Fatalf("slot %d is served by %v after the move, want %s", slot, owner, to.Addr())
	}
	for i := range 50 {
		if got := to.MustDo("GET", fmt.Sprintf("{x}k%d", i)); got != "v" {
			t.Fatalf("key %d after the move = %q", i, got)
		}
	}
	for _, key := range acked {
		if got := to.MustDo("GET", key); got != "v" {
			t.Fatalf("key %s, acknowledged during the move, = %q after it", key, got)
		}
	}
	if len(acked) == 0 {
		t.Fatal("no write went through during the move")
	}
	if _, err := back.Do("GET", "{x}k1"); err == nil {
		t.Fatal("the old owner still answers for the moved slot")
	}
}

// setFollowing writes key, following one MOVED or ASK the way a cluster client
// does.
func setFollowing(cl *redistest.Cluster, key string) error {
	m, err := cl.MasterOf(redistest.Slot(key))
	if err != nil {
		return err
	}
	_, err = m.Do("SET", key, "v")
	if err == nil {
		return nil
	}
	var slot int
	var addr string
	asking := false
	if _, e := fmt.Sscanf(err.Error(), "ASK %d %s", &slot, &addr); e == nil {
		asking = true
	} else if _, e := fmt.Sscanf(err.Error(), "MOVED %d %s", &slot, &addr); e != nil {
		return err
	}
	for _, s := range cl.Nodes {
		if s.Addr() == addr {
			if asking {
				_, err = s.DoAsking("SET", key, "v")
			} else {
				_, err = s.Do("SET", key, "v")
			}
			return err
		}
	}
	return err
}
