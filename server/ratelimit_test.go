package server_test

import (
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

func TestRateLimitPerToken(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{RateLimit: 0.01, RateBurst: 3}})
		_, a := register(e, "a", nil)
		_, other := register(e, "b", nil)
		req := func() *connect.Request[forgev1.PollRequest] {
			return connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)})
		}
		for i := range 3 {
			if _, err := a.Poll(t.Context(), req()); err != nil {
				t.Fatalf("call %d within the burst: %v", i+1, err)
			}
		}
		_, err := a.Poll(t.Context(), req())
		wantCode(t, err, connect.CodeResourceExhausted)
		// Another agent has a bucket of its own.
		if _, err := other.Poll(t.Context(), req()); err != nil {
			t.Fatalf("another agent was limited: %v", err)
		}
	})
}
