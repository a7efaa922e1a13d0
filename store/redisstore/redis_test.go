package redisstore_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
	"github.com/orange-forge/forge/store/storetest"
)

func open(t *testing.T, url, prefix string, cfg store.Config) *redisstore.Store {
	t.Helper()
	s, err := redisstore.Open(t.Context(), url, cfg, redisstore.Options{Prefix: prefix})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func register(t *testing.T, s store.Store, secret string) store.Cred {
	t.Helper()
	a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "n", SecretHash: hash(secret)})
	if err != nil {
		t.Fatalf("RegisterAgent: %v", err)
	}
	return store.Cred{AgentID: a.ID, SecretHash: hash(secret)}
}

func spec(agentID string) store.JobSpec {
	return store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: agentID},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
}

func waitFire(t *testing.T, w *store.Watcher, within time.Duration, what string) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-w.C:
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("%s: watcher did not fire within %s", what, within)
		return 0
	}
}

// crossReplica checks that a Watch on one Store fires when another Store on the
// same Redis changes the watched agent, and reports how long it took.
func crossReplica(t *testing.T, url string) {
	a := open(t, url, "x", store.Config{})
	b := open(t, url, "x", store.Config{})
	cred := register(t, a, "s")
	var worst time.Duration
	for i := 0; i < 20; i++ {
		w := a.Watch(store.AgentKey(cred.AgentID))
		start := time.Now()
		if _, err := b.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
			t.Fatal(err)
		}
		waitFire(t, w, 2*time.Second, "dispatch on the other replica")
		worst = max(worst, time.Since(start))
		w.Stop()
	}
	// Each wake must come within waitFire's bound (2 s: generous, since this
	// runs under -race on a shared machine); the figure is for the log, and
	// BenchmarkCrossReplicaWake measures it.
	t.Logf("dispatch on B to wake on A: worst of 20 = %s", worst)
	// The watcher on A also sees B's lease of a task.
	tasks, _, _ := a.ListTasks(t.Context(), store.TaskFilter{AgentID: cred.AgentID, Page: store.Page{Size: 1}})
	wt := a.Watch(store.TaskKey(tasks[len(tasks)-1].ID))
	defer wt.Stop()
	if _, err := b.Lease(t.Context(), store.LeaseParams{Cred: cred, Max: 100, Lease: time.Minute, Hold: time.Second}); err != nil {
		t.Fatal(err)
	}
	waitFire(t, wt, 2*time.Second, "lease on the other replica")
}

func TestCrossReplicaWake(t *testing.T) {
	t.Parallel()
	crossReplica(t, redistest.Start(t).URL())
}

func TestCrossReplicaWakeCluster(t *testing.T) {
	t.Parallel()
	crossReplica(t, redistest.StartCluster(t, 3).URL())
}

// TestOpenContextBoundsOpeningOnly: the context given to Open bounds the opening,
// not the store's life. Once it ends, the store still hears other replicas'
// changes (its subscriptions run until Close).
func TestOpenContextBoundsOpeningOnly(t *testing.T) {
	t.Parallel()
	url := redistest.Start(t).URL()
	ctx, cancel := context.WithCancel(t.Context())
	a, err := redisstore.Open(ctx, url, store.Config{}, redisstore.Options{Prefix: "life"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	cancel()
	b := open(t, url, "life", store.Config{})
	cred := register(t, a, "s")
	w := a.Watch(store.AgentKey(cred.AgentID))
	defer w.Stop()
	if _, err := b.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
		t.Fatal(err)
	}
	waitFire(t, w, 10*time.Second, "dispatch on the other replica after Open's context ended")
	if err := a.Ping(t.Context()); err != nil {
		t.Fatalf("Ping after Open's context ended: %v", err)
	}
}

// TestSubscriptionDropped kills the pub/sub connection: every watcher fires (it may
// have missed a notification), and notifications flow again afterwards.
func TestSubscriptionDropped(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	subscriptionDropped(t, srv.URL(), []*redistest.Server{srv})
}

func TestSubscriptionDroppedCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	subscriptionDropped(t, cl.URL(), cl.Nodes)
}

func subscriptionDropped(t *testing.T, url string, nodes []*redistest.Server) {
	a := open(t, url, "x", store.Config{})
	b := open(t, url, "x", store.Config{})
	cred := register(t, a, "s")
	w := a.Watch(store.AgentKey("a0000000000000000")) // a key nobody changes
	defer w.Stop()
	killed := 0
	for _, srv := range nodes {
		n, _ := strconv.Atoi(srv.MustDo("CLIENT", "KILL", "TYPE", "pubsub"))
		killed += n
	}
	if killed < len(nodes) {
		t.Fatalf("CLIENT KILL TYPE pubsub killed %d clients on %d nodes", killed, len(nodes))
	}
	waitFire(t, w, 5*time.Second, "after the subscription was dropped")

	// Later notifications still arrive.
	deadline := time.Now().Add(5 * time.Second)
	for {
		wa := a.Watch(store.AgentKey(cred.AgentID))
		if _, err := b.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-wa.C:
			wa.Stop()
			return
		case <-time.After(200 * time.Millisecond):
			wa.Stop()
			if time.Now().After(deadline) {
				t.Fatal("notifications did not resume after the subscription was restored")
			}
		}
	}
}

// TestRedisDown stops Redis: calls fail with KindUnavailable (and say nothing of
// Redis' internals); after a restart they work again, and the data kept in the
// AOF is there.
func TestRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithAOF())
	s := open(t, srv.URL(), "x", store.Config{})
	cred := register(t, s, "s")
	j, err := s.Dispatch(t.Context(), spec(cred.AgentID))
	if err != nil {
		t.Fatal(err)
	}
	w := s.Watch(store.AgentKey(cred.AgentID))
	defer w.Stop()
	srv.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	checks := map[string]func() error{
		"Lease": func() error {
			_, err := s.Lease(ctx, store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute})
			return err
		},
		"GetTask":   func() error { _, err := s.GetTask(ctx, j.TaskIDs[0]); return err },
		"Dispatch":  func() error { _, err := s.Dispatch(ctx, spec(cred.AgentID)); return err },
		"Reap":      func() error { return s.Reap(ctx) },
		"Ping":      func() error { return s.Ping(ctx) },
		"ListTasks": func() error { _, _, err := s.ListTasks(ctx, store.TaskFilter{}); return err },
	}
	for name, call := range checks {
		start := time.Now()
		err := call()
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s with Redis down took %s to fail", name, d)
		}
		if store.KindOf(err) != store.KindUnavailable {
			t.Errorf("%s with Redis down: %v (kind %d), want KindUnavailable", name, err, store.KindOf(err))
		}
		if err != nil && (strings.Contains(err.Error(), "127.0.0.1") || strings.Contains(err.Error(), "rueidis")) {
			t.Errorf("%s error leaks internals: %q", name, err.Error())
		}
	}
	srv.Restart()
	// The restarted server has no scripts loaded: EVALSHA falls back to EVAL.
	var lease store.LeaseResult
	deadline := time.Now().Add(10 * time.Second)
	for {
		lease, err = s.Lease(t.Context(), store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Lease after restart: %v", err)
	}
	if len(lease.Tasks) != 1 || lease.Tasks[0].ID != j.TaskIDs[0] {
		t.Fatalf("after restart leased %+v, want the task dispatched before", lease.Tasks)
	}
	if err := s.Reap(t.Context()); err != nil {
		t.Fatalf("Reap after restart: %v", err)
	}
	// Notifications work again.
	w2 := s.Watch(store.AgentKey(cred.AgentID))
	defer w2.Stop()
	deadline = time.Now().Add(5 * time.Second)
	for {
		if _, err := s.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w2.C:
			return
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no notification after restart")
			}
		}
	}
}

// workBetween counts the commands run between two commandCalls readings but
// those a connection costs (rueidis reconnecting or pinging an idle one, the
// clock's TIME, the INFO that reads them): a busy machine adds some at random,
// and they are no call's.
func workBetween(before, after map[string]int64) int64 {
	var n int64
	for k, v := range after {
		switch k {
		case "info", "hello", "ping", "client", "select", "time":
			continue
		}
		n += v - before[k]
	}
	return n
}

func commandCalls(t *testing.T, srv *redistest.Server) (total int64, byCmd map[string]int64) {
	t.Helper()
	byCmd = map[string]int64{}
	for _, l := range strings.Split(srv.MustDo("INFO", "commandstats"), "\n") {
		l = strings.TrimSpace(l)
		name, rest, ok := strings.Cut(l, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				byCmd[strings.TrimPrefix(name, "cmdstat_")] = n
				total += n
			}
		}
	}
	return total, byCmd
}

// TestIdleCost measures what an idle agent costs Redis: the commands one Lease
// with nothing to do runs (INFO commandstats counts the commands inside scripts).
func TestIdleCost(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "x", store.Config{})
	cred := register(t, s, "s")
	// Each Lease is the start of a new Poll, the previous one having ended
	// (Hold 0), as an idle agent's polls are, one per poll window.
	p := store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute}
	if _, err := s.Lease(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	const n = 100
	_, b := commandCalls(t, srv)
	for i := 0; i < n; i++ {
		if _, err := s.Lease(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
	_, a := commandCalls(t, srv)
	var parts []string
	for k, v := range a {
		if d := v - b[k]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s=%.2f", k, float64(d)/n))
		}
	}
	per := float64(workBetween(b, a)) / n
	t.Logf("idle Lease: %.1f Redis commands per call (%s)", per, strings.Join(parts, " "))
	if per > 5 {
		t.Fatalf("an idle Lease costs %.1f commands, want at most 5", per)
	}
	// A held Poll between wakes costs nothing: a Watch sends no command.
	_, b = commandCalls(t, srv)
	w := s.Watch(store.AgentKey(cred.AgentID))
	time.Sleep(300 * time.Millisecond)
	w.Stop()
	_, a = commandCalls(t, srv)
	if d := workBetween(b, a); d > 0 {
		t.Fatalf("a held watch cost %d commands", d)
	}
}

// TestReapIdleCost measures one Reap pass with nothing due: one plain read of
// each shard's due index and of the two job indexes, and no script.
func TestReapIdleCost(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "x", store.Config{})
	cred := register(t, s, "s")
	if _, err := s.Dispatch(t.Context(), spec(cred.AgentID)); err != nil { // due in an hour
		t.Fatal(err)
	}
	if err := s.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, b := commandCalls(t, srv)
	if err := s.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, a := commandCalls(t, srv)
	// Connection upkeep (the client's PINGs, a reconnect's HELLO) and INFO
	// itself are not the pass's work.
	n := workBetween(b, a)
	t.Logf("idle Reap pass: %d Redis commands", n)
	if want := int64(redisstore.NumShards + 2); n != want {
		t.Errorf("an idle Reap pass ran %d commands, want %d (one read per shard and job index)", n, want)
	}
	for _, cmd := range []string{"evalsha", "eval"} {
		if d := a[cmd] - b[cmd]; d != 0 {
			t.Errorf("an idle Reap pass ran %d %s, want none", d, cmd)
		}
	}
}

// TestDefaultClock opens a store without a clock: it follows Redis' TIME.
func TestDefaultClock(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	s := open(t, srv.URL(), "x", store.Config{})
	cred := register(t, s, "s")
	a, err := s.GetAgent(t.Context(), cred.AgentID)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(a.RegisteredAt); d < -time.Second || d > time.Second {
		t.Fatalf("registered %s ago by the default clock", d)
	}
	if a.Status != store.AgentOnline {
		t.Fatalf("status = %v", a.Status)
	}
}

// TestPrefixesAreSeparate checks that two stores with different prefixes on one
// Redis do not see each other.
func TestPrefixesAreSeparate(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	a := open(t, srv.URL(), "one", store.Config{})
	b := open(t, srv.URL(), "two", store.Config{})
	cred := register(t, a, "s")
	if _, err := b.GetAgent(t.Context(), cred.AgentID); store.KindOf(err) != store.KindNotFound {
		t.Fatalf("GetAgent through another prefix: %v", err)
	}
	if err := b.AuthenticateAgent(t.Context(), cred); store.KindOf(err) != store.KindUnauthenticated {
		t.Fatalf("AuthenticateAgent through another prefix: %v", err)
	}
}

// TestManyReplicasReap runs Reap from several stores at once over many expired
// leases: each is requeued exactly once.
func TestManyReplicasReap(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	clock := storetest.NewClock()
	cfg := store.Config{Clock: clock}
	var stores []*redisstore.Store
	for i := 0; i < 4; i++ {
		stores = append(stores, open(t, cl.URL(), "m", cfg))
	}
	var creds []store.Cred
	for i := 0; i < 30; i++ {
		c := register(t, stores[0], fmt.Sprint("s", i))
		creds = append(creds, c)
		for k := 0; k < 3; k++ {
			if _, err := stores[i%4].Dispatch(t.Context(), spec(c.AgentID)); err != nil {
				t.Fatal(err)
			}
		}
		if r, err := stores[0].Lease(t.Context(), store.LeaseParams{Cred: c, Max: 3, Lease: 30 * time.Second}); err != nil || len(r.Tasks) != 3 {
			t.Fatalf("Lease = %d tasks, %v", len(r.Tasks), err)
		}
	}
	clock.Advance(31 * time.Second)
	errs := make(chan error, len(stores))
	for _, s := range stores {
		go func() { errs <- s.Reap(t.Context()) }()
	}
	for range stores {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range creds {
		r, err := stores[1].Lease(t.Context(), store.LeaseParams{Cred: c, Max: 10, Lease: 30 * time.Second})
		if err != nil || len(r.Tasks) != 3 {
			t.Fatalf("after reaping leased %d, %v; want 3", len(r.Tasks), err)
		}
		for _, tk := range r.Tasks {
			if tk.Attempt != 2 || len(tk.History) != 4 {
				t.Fatalf("task %s attempt %d history %+v: want one requeue", tk.ID, tk.Attempt, tk.History)
			}
		}
	}
}

// TestJobCountsFanOut checks that a job's counts (summed per shard) agree with
// its tasks' states across a fan-out, on a cluster.
func TestJobCountsFanOut(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, 3)
	clock := storetest.NewClock()
	s := open(t, cl.URL(), "f", store.Config{Clock: clock})
	creds := map[string]store.Cred{}
	for i := 0; i < 80; i++ {
		c := register(t, s, fmt.Sprint("s", i))
		creds[c.AgentID] = c
	}
	sp := spec("")
	sp.Target = store.Target{All: true}
	j, err := s.Dispatch(t.Context(), sp)
	if err != nil || len(j.TaskIDs) != 80 || j.Counts.Pending != 80 {
		t.Fatalf("Dispatch = %d tasks, counts %+v, %v", len(j.TaskIDs), j.Counts, err)
	}
	i := 0
	for _, c := range creds {
		i++
		if i%4 == 0 {
			continue
		}
		r, err := s.Lease(t.Context(), store.LeaseParams{Cred: c, Max: 1, Lease: 30 * time.Second})
		if err != nil || len(r.Tasks) != 1 {
			t.Fatal(err)
		}
		if i%4 == 1 {
			s.Report(t.Context(), store.ReportParams{Cred: c, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeSucceeded})
		} else if i%4 == 2 {
			s.Report(t.Context(), store.ReportParams{Cred: c, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeFailed})
		}
	}
	got, err := s.GetJob(t.Context(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	var want store.Counts
	for _, id := range j.TaskIDs {
		tk, err := s.GetTask(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		want.Add(tk.State, 1)
	}
	if got.Counts != want || want.Succeeded != 20 || want.Failed != 20 || want.Running != 20 || want.Pending != 20 {
		t.Fatalf("counts = %+v, tasks say %+v", got.Counts, want)
	}
	if _, err := s.CancelJob(t.Context(), j.ID, ""); err != nil {
		t.Fatal(err)
	}
	clock.Advance(31 * time.Second) // leases of the running ones run out: CANCELED
	if err := s.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetJob(t.Context(), j.ID)
	if got.Counts.Canceled != 40 || !got.Counts.Done() || got.Counts.Total() != 80 {
		t.Fatalf("after cancel and reap counts = %+v", got.Counts)
	}
	clock.Advance(8 * 24 * time.Hour)
	if err := s.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetJob(t.Context(), j.ID); store.KindOf(err) != store.KindNotFound {
		t.Fatalf("job past retention: %v", err)
	}
	// Every key of prefix f — per shard ({f:sNN}...), per job ({f:j:...}), per
	// idempotency key ({f:i:...}) and global ({f}:...) — is gone but what
	// belongs to the agents: each agent's record in its shard, the agent list,
	// and the agent's entries in its shard's due index (agent retention) and
	// online index (Stats; every agent is in it from its registration on,
	// whether it polled since or not), and the shards' counters of leases that
	// ran out (Stats; they only grow: here the 20 running tasks' leases). The
	// global job indexes ({f}:jobs, {f}:jret, {f}:jadv) held the job; they go
	// when emptied. Each agent must be found exactly once in each place, and
	// in its own shard.
	tagOf := func(k string) string { return k[:strings.Index(k, "}")+1] }
	records := map[string]string{} // agent id -> its record's shard tag
	due := map[string]string{}     // agent id -> the due index it is in
	online := map[string]string{}  // agent id -> the online index it is in
	list, expired := 0, 0
	index := func(into map[string]string, k string, members string) {
		for _, m := range strings.Split(members, "\n") {
			if _, ok := creds[m]; !ok {
				t.Errorf("left behind after retention: %q in %s, not an agent", m, k)
				continue
			}
			if prev, ok := into[m]; ok {
				t.Errorf("agent %s in %s and in %s", m, prev, k)
			}
			into[m] = tagOf(k)
		}
	}
	for _, n := range cl.Nodes {
		for _, k := range strings.Split(n.MustDo("KEYS", "*"), "\n") {
			if !strings.HasPrefix(k, "{f:") && !strings.HasPrefix(k, "{f}") {
				continue
			}
			shard := strings.HasPrefix(k, "{f:s")
			switch rest := strings.TrimPrefix(k, tagOf(k)); {
			case k == "{f}:agents":
				list++
				if got := n.MustDo("ZCARD", k); got != strconv.Itoa(len(creds)) {
					t.Errorf("the agent list holds %s agents, want %d", got, len(creds))
				}
			case shard && strings.HasPrefix(rest, ":a:"):
				id := strings.TrimPrefix(rest, ":a:")
				if _, ok := creds[id]; !ok {
					t.Errorf("left behind after retention: %s, the record of no agent", k)
				}
				records[id] = tagOf(k)
			case shard && rest == ":due":
				index(due, k, n.MustDo("ZRANGE", k, "0", "-1"))
			case shard && rest == ":on":
				index(online, k, n.MustDo("ZRANGE", k, "0", "-1"))
			case shard && rest == ":n":
				if f := n.MustDo("HKEYS", k); f != "lx" {
					t.Errorf("left behind after retention: fields %q of %s, want only the count of leases that ran out", f, k)
				}
				v, _ := strconv.Atoi(n.MustDo("HGET", k, "lx"))
				expired += v
			default:
				t.Errorf("left behind after retention: %s", k)
			}
		}
	}
	if list != 1 {
		t.Errorf("found the agent list %d times", list)
	}
	if expired != 20 {
		t.Errorf("the shards counted %d leases that ran out, want the 20 running tasks'", expired)
	}
	for id := range creds {
		if records[id] == "" || due[id] != records[id] || online[id] != records[id] {
			t.Errorf("agent %s: record in %q, due entry in %q, online entry in %q; want one of each, in its shard", id, records[id], due[id], online[id])
		}
	}
}

// TestAdvancerRepairs simulates a crash between a rollout job's bookkeeping and
// the release of its next task: Reap's advancer releases it.
func TestAdvancerRepairs(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	clock := storetest.NewClock()
	s := open(t, srv.URL(), "r", store.Config{Clock: clock})
	a := register(t, s, "a")
	b := register(t, s, "b")
	sp := spec("")
	sp.Target = store.Target{All: true}
	sp.MaxConcurrency = 1
	j, err := s.Dispatch(t.Context(), sp)
	if err != nil || j.Counts.Pending != 2 {
		t.Fatalf("Dispatch = %+v, %v", j, err)
	}
	// The bookkeeping says two are released, but the second is still held.
	srv.MustDo("HSET", "{r:j:"+j.ID+"}", "rel", "2")
	second, _ := s.GetTask(t.Context(), j.TaskIDs[1])
	if !second.Held {
		t.Fatalf("second task not held: %+v", second)
	}
	clock.Advance(11 * time.Second)
	if err := s.Reap(t.Context()); err != nil {
		t.Fatal(err)
	}
	second, _ = s.GetTask(t.Context(), j.TaskIDs[1])
	if second.Held || second.DeliverBy.IsZero() {
		t.Fatalf("the advancer did not release the held task: %+v", second)
	}
	_, _ = a, b
}
