package redisstore

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// TestHandOver: a task a report finishes while someone on this replica waits
// for it is answered to the waiter's first read without a Redis round trip,
// and is the task Redis holds (read again after), for a single-agent task and
// a fan-out's, with a short output, a long one (kept in lists: read from
// Redis) and none; a task nobody waits for is not kept, and Reap forgets
// what is kept.
func TestHandOver(t *testing.T) {
	t.Parallel()
	s, cc := countedStore(t, redistest.Start(t).URL())
	ctx := t.Context()
	a, err := s.RegisterAgent(ctx, store.RegisterParams{Name: "n", SecretHash: sum("s")})
	if err != nil {
		t.Fatal(err)
	}
	cred := store.Cred{AgentID: a.ID, SecretHash: sum("s")}
	finish := func(target store.Target, output string, watch bool) string {
		t.Helper()
		if _, err := s.Dispatch(ctx, store.JobSpec{Type: "echo", Payload: []byte("pl"), Target: target,
			Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Lease(ctx, store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute})
		if err != nil || len(r.Tasks) != 1 {
			t.Fatalf("Lease: %+v %v", r, err)
		}
		id := r.Tasks[0].ID
		if watch {
			w := s.Watch(store.TaskKey(id))
			defer w.Stop()
		}
		if _, err := s.Report(ctx, store.ReportParams{Cred: cred, TaskID: id, Attempt: 1, Outcome: store.OutcomeSucceeded,
			Output: []byte(output), OutputSize: int64(len(output))}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	read := func(id string) (store.Task, int) {
		t.Helper()
		cc.take()
		tk, err := s.GetTask(ctx, id)
		if err != nil || tk.State != store.StateSucceeded {
			t.Fatalf("GetTask: %+v %v", tk, err)
		}
		trips, _, _ := cc.take()
		return tk, trips
	}
	for _, c := range []struct {
		name   string
		target store.Target
		output string
		kept   bool
	}{
		{"single, short output", store.Target{AgentID: a.ID}, "hi", true},
		{"single, no output", store.Target{AgentID: a.ID}, "", true},
		{"single, long output", store.Target{AgentID: a.ID}, strings.Repeat("x", 200), false},
		{"fan-out, short output", store.Target{All: true, IncludeOffline: true}, "hi", true},
	} {
		id := finish(c.target, c.output, true)
		got, trips := read(id)
		if c.kept != (trips == 0) {
			t.Errorf("%s: the waiter's read made %d round trips; want it kept: %v", c.name, trips, c.kept)
		}
		again, trips := read(id)
		if trips == 0 {
			t.Errorf("%s: a second read did not go to Redis", c.name)
		}
		if !reflect.DeepEqual(got, again) {
			t.Errorf("%s: the waiter got\n%+v\nRedis holds\n%+v", c.name, got, again)
		}
		if string(got.Output) != c.output || string(got.Payload) != "pl" {
			t.Errorf("%s: output %q payload %q", c.name, got.Output, got.Payload)
		}
	}
	if _, trips := read(finish(store.Target{AgentID: a.ID}, "hi", false)); trips == 0 {
		t.Error("a task nobody waited for was kept")
	}
	id := finish(store.Target{AgentID: a.ID}, "hi", true)
	if err := s.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	if _, trips := read(id); trips == 0 {
		t.Error("Reap did not forget the kept task")
	}
}
