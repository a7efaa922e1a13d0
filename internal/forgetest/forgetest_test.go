package forgetest_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

func TestMain(m *testing.M) { forgetest.Main(m) }

// Stored must see what was written, in keys and in values, or a scan for what
// must not be stored proves nothing.
func TestStoredSeesEverything(t *testing.T) {
	t.Parallel()
	for _, b := range []forgetest.Backend{forgetest.Memory, forgetest.Redis, forgetest.Cluster} {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			e := forgetest.Start(t, forgetest.Options{Backend: b})
			id, _ := e.Register("needle-name", map[string]string{"needle-key": "needle-value"})
			if _, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
				Payload: []byte("needle-payload"), IdempotencyKey: "needle-idem",
				Target: &forgev1.DispatchRequest_AgentId{AgentId: id}})); err != nil {
				t.Fatal(err)
			}
			e.Close()
			all := strings.Join(e.Stored(), "\x00")
			for _, n := range []string{id, "needle-name", "needle-key", "needle-value", "needle-payload"} {
				if !strings.Contains(all, n) {
					t.Errorf("Stored() does not show %q", n)
				}
			}
		})
	}
}

// A replica serves the same store: what one dispatches the other sees.
func TestReplicaSharesTheStore(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		r := e.Replica(server.Config{})
		id, _ := e.Register("a", nil)
		tid := r.DispatchTo(id)
		if got := e.Task(tid); got.AgentId != id || got.State != forgev1.TaskState_TASK_STATE_PENDING {
			t.Fatalf("task through the other replica = %v", got)
		}
	})
}
