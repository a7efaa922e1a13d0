package redisstore_test

import (
	"fmt"
	"hash/fnv"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// shardSlot returns the cluster slot of an agent's shard under prefix, as
// keys.go places it.
func shardSlot(prefix, agentID string) int {
	h := fnv.New32a()
	h.Write([]byte(agentID))
	return redistest.Slot(fmt.Sprintf("{%s:s%02d}", prefix, h.Sum32()%64))
}

// dispatchRetrying dispatches to an agent, retrying while the store is unavailable
// (the cluster settling after a failover).
func dispatchRetrying(t *testing.T, s store.Store, agentID string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := s.Dispatch(t.Context(), spec(agentID))
		if err == nil {
			return
		}
		if store.KindOf(err) != store.KindUnavailable || time.Now().After(deadline) {
			t.Fatalf("Dispatch: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestWakeAcrossFailover: the master of an agent's shard dies and its replica
// takes over. A Poll held on replica A from before the failover is woken by a
// task dispatched through replica B after it, and later notifications reach A
// through the new master — twice, the second time failing back to the first node.
func TestWakeAcrossFailover(t *testing.T) {
	t.Parallel()
	cl := redistest.StartReplicated(t, 3, 1)
	a := open(t, cl.URL(), "f", store.Config{})
	b := open(t, cl.URL(), "f", store.Config{})
	cred := register(t, a, "s")
	slot := shardSlot("f", cred.AgentID)
	for round := 1; round <= 2; round++ {
		if err := cl.WaitHealthy(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		held := a.Watch(store.AgentKey(cred.AgentID))
		master, err := cl.MasterOf(slot)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.KillMaster(master, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		dispatchRetrying(t, b, cred.AgentID)
		d := waitFire(t, held, 5*time.Second, fmt.Sprintf("round %d: a Poll held across the failover", round))
		held.Stop()
		// Later changes reach A through the new master's channel, not only through
		// a wake-everyone after re-subscribing.
		var worst time.Duration
		for i := 0; i < 5; i++ {
			w := a.Watch(store.AgentKey(cred.AgentID))
			start := time.Now()
			dispatchRetrying(t, b, cred.AgentID)
			waitFire(t, w, 2*time.Second, fmt.Sprintf("round %d: a Poll held after the failover", round))
			worst = max(worst, time.Since(start))
			w.Stop()
		}
		t.Logf("round %d: held Poll woken %s after the dispatch; later wakes within %s", round, d, worst)
		if err := master.TryRestart(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWakeAcrossStalledMaster: the master of an agent's shard stalls (SIGSTOP)
// and stays stalled after its replica took over, its connections open and silent.
// A Poll held on replica A is still woken by a task dispatched through replica B.
func TestWakeAcrossStalledMaster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartReplicated(t, 3, 1)
	a := open(t, cl.URL(), "f", store.Config{})
	b := open(t, cl.URL(), "f", store.Config{})
	cred := register(t, a, "s")
	slot := shardSlot("f", cred.AgentID)
	held := a.Watch(store.AgentKey(cred.AgentID))
	defer held.Stop()
	master, err := cl.MasterOf(slot)
	if err != nil {
		t.Fatal(err)
	}
	slots, err := cl.SlotsOf(master)
	if err != nil {
		t.Fatal(err)
	}
	if err := master.Pause(); err != nil {
		t.Fatal(err)
	}
	defer master.Resume()
	if _, err := cl.WaitFailover(master, slots, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	dispatchRetrying(t, b, cred.AgentID)
	t.Logf("dispatch through B took %s after the failover", time.Since(start))
	d := waitFire(t, held, 20*time.Second, "a Poll held while the old master stalls")
	t.Logf("held Poll woken %s after the dispatch", d)
}
