package server_test

import (
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

func TestRateLimitPerToken(t *testing.T) {
	t.Parallel()
	st := memstore.New(store.Config{})
	srv, err := server.New(server.Config{Store: st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken},
		RateLimit: 0.01, RateBurst: 3})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	e := &env{t: t, srv: srv, url: hs.URL}
	_, a := e.register("a", nil)
	_, b := e.register("b", nil)
	req := func() *connect.Request[forgev1.PollRequest] {
		return connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)})
	}
	for i := range 3 {
		if _, err := a.Poll(t.Context(), req()); err != nil {
			t.Fatalf("call %d within the burst: %v", i+1, err)
		}
	}
	_, err = a.Poll(t.Context(), req())
	wantCode(t, err, connect.CodeResourceExhausted)
	// Another agent has a bucket of its own.
	if _, err := b.Poll(t.Context(), req()); err != nil {
		t.Fatalf("another agent was limited: %v", err)
	}
}
