package redisstore_test

import (
	"fmt"
	"hash/fnv"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// TestSlotMovedUnderScripts moves an agent's shard to another master and stops
// half way, with the task records moved and the agent's queue not: the case where
// a script finds keys of its slot on the other node. Every agent call and a
// dispatch to the agent answer unavailable meanwhile and change nothing; once the
// move ends, the agent leases every task it was given.
func TestSlotMovedUnderScripts(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 2)
	s := open(t, cl.URL(), "m", store.Config{})
	cred := register(t, s, "s")
	// One task running with a cancel not yet delivered, three queued: every key
	// Lease declares exists, so only the keys it finds on its own (the queued
	// tasks' records) can be missing.
	if _, err := s.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
		t.Fatal(err)
	}
	first, err := s.Lease(t.Context(), store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute, Hold: time.Second})
	if err != nil || len(first.Tasks) != 1 {
		t.Fatalf("Lease = %v, %v", first, err)
	}
	if _, err := s.CancelTask(t.Context(), first.Tasks[0].ID, ""); err != nil {
		t.Fatal(err)
	}
	const n = 3
	for range n {
		if _, err := s.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
			t.Fatal(err)
		}
	}
	h := fnv.New32a()
	h.Write([]byte(cred.AgentID))
	tag := fmt.Sprintf("{m:s%02d}", h.Sum32()%64)
	slot := redistest.Slot(tag)
	masters, err := cl.Masters()
	if err != nil {
		t.Fatal(err)
	}
	from, _ := cl.MasterOf(slot)
	to := masters[0]
	if to == from {
		to = masters[1]
	}
	m, err := cl.StartMigration(slot, to)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := m.Keys(1000)
	if err != nil {
		t.Fatal(err)
	}
	var tasks []string
	for _, k := range keys {
		if strings.HasPrefix(k, tag+":t:") && !strings.HasSuffix(k, first.Tasks[0].ID) {
			tasks = append(tasks, k)
		}
	}
	if len(tasks) != n {
		t.Fatalf("%d task records in the slot, want %d: %v", len(tasks), n, keys)
	}
	if err := m.Move(tasks...); err != nil {
		t.Fatal(err)
	}

	unavailable := func(what string, err error) {
		t.Helper()
		if store.KindOf(err) != store.KindUnavailable {
			t.Errorf("%s with the slot half moved = %v, want unavailable", what, err)
		}
	}
	_, err = s.Lease(t.Context(), store.LeaseParams{Cred: cred, Max: n, Lease: time.Minute, Hold: time.Second})
	unavailable("Lease", err)
	_, err = s.Dispatch(t.Context(), spec(cred.AgentID))
	unavailable("Dispatch", err)
	_, err = s.Heartbeat(t.Context(), store.HeartbeatParams{Cred: cred, Lease: time.Minute})
	unavailable("Heartbeat", err)
	_, err = s.GetAgent(t.Context(), cred.AgentID)
	unavailable("GetAgent", err)

	if err := m.Finish(); err != nil {
		t.Fatal(err)
	}
	got := 0
	deadline := time.Now().Add(10 * time.Second)
	for got < n && time.Now().Before(deadline) {
		res, err := s.Lease(t.Context(), store.LeaseParams{Cred: cred, Max: n, Lease: time.Minute, Hold: time.Second})
		if err != nil {
			t.Fatalf("Lease after the move: %v", err)
		}
		got += len(res.Tasks)
	}
	if got != n {
		t.Fatalf("leased %d tasks after the move, want %d: the others were lost in it", got, n)
	}
}
