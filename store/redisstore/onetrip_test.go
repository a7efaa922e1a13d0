package redisstore

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// TestDispatchOneTripTaskRefused makes the task script of a one-round-trip
// dispatch (dispatchOneTrip) fail while the job record beside it is written:
// the store's Redis user loses access to the agent's shard (ACL NOPERM), as a
// script lost to a slot move or a cut connection would fail. The job is not
// accepted: a retry with the same idempotency key, once the shard is back,
// answers the same job and its task exists.
func TestDispatchOneTripTaskRefused(t *testing.T) {
	t.Parallel()
	for name, start := range map[string]func() (string, []*redistest.Server){
		"single": func() (string, []*redistest.Server) {
			s := redistest.Start(t)
			return s.URL(), []*redistest.Server{s}
		},
		"cluster": func() (string, []*redistest.Server) {
			cl := redistest.StartCluster(t, 3)
			return cl.URL(), cl.Nodes
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			url, nodes := start()
			acl := func(rules ...string) {
				t.Helper()
				for _, n := range nodes {
					n.MustDo(append([]string{"ACL", "SETUSER", "w"}, rules...)...)
				}
			}
			acl("reset", "on", ">pw", "+@all", "allkeys", "allchannels")
			prefix := fmt.Sprintf("ot%d", time.Now().UnixNano())
			s, err := Open(t.Context(), strings.Replace(url, "redis://", "redis://w:pw@", 1), store.Config{}, Options{Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "n", SecretHash: sum("s")})
			if err != nil {
				t.Fatal(err)
			}
			spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: a.ID},
				Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 1, IdempotencyKey: "key"}

			// Every key but those of the agent's shard.
			rules := []string{"resetkeys", "~{" + prefix + ":j:*", "~{" + prefix + ":i:*", "~{" + prefix + "}*"}
			for i, tag := range s.k.shard {
				if i != shardOf(a.ID) {
					rules = append(rules, "~"+tag+"*")
				}
			}
			acl(rules...)
			_, ferr := s.Dispatch(t.Context(), spec)
			acl("allkeys")
			if ferr == nil {
				t.Fatal("Dispatch succeeded without access to the agent's shard")
			}

			job, err := s.Dispatch(t.Context(), spec)
			if err != nil {
				t.Fatalf("retry: %v (the failed attempt: %v)", err, ferr)
			}
			if len(job.TaskIDs) != 1 {
				t.Fatalf("the job lists %d tasks, want 1", len(job.TaskIDs))
			}
			task, err := s.GetTask(t.Context(), job.TaskIDs[0])
			if err != nil {
				t.Fatalf("job %s answered (existing %v) but its task: %v (the failed attempt: %v)", job.ID, job.Existing, err, ferr)
			}
			if task.State != store.StatePending {
				t.Fatalf("the task is %v, want pending", task.State)
			}
			again, err := s.Dispatch(t.Context(), spec)
			if err != nil || again.ID != job.ID || !again.Existing {
				t.Fatalf("a third Dispatch = %s existing %v, %v; want %s", again.ID, again.Existing, err, job.ID)
			}
		})
	}
}
