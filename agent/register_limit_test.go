package agent_test

import (
	"testing"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// TestRegisterRateLimitedRetries: an agent whose Register is refused because
// registrations are rate-limited (a fleet enrolling at once) retries with
// backoff and registers, rather than giving up.
func TestRegisterRateLimitedRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, forgetest.Memory, server.Config{RegisterRate: -1, RegisterRatePerAddr: 2})
	// Spend the burst (ten seconds' worth): register until refused.
	for i := 0; ; i++ {
		_, err := e.Agent(enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "burst"}))
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			break
		}
		if err != nil || i == 1000 {
			t.Fatalf("Register %d of the burst: %v", i+1, err)
		}
	}
	a := startAgent(t, agent.Config{Servers: []string{e.URL}}, nil) // waits until it registered
	if a.ID() == "" {
		t.Fatal("not registered")
	}
}
