package server_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/storetest"
)

// TestRegisterReplay: an agent whose Register timed out after the server had
// enrolled it retries with the same idempotency_key, and gets the same agent,
// with a new token; the token of the answer it never read stops working, and no
// orphan is left to count as online and take tasks from a fan-out.
func TestRegisterReplay(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		const other = "enroll-other-0123456789"
		s := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{EnrollTokens: []string{enrollToken, other},
			RegisterRate: 1, RegisterRatePerAddr: -1, Clock: storetest.NewClock()}})
		register := func(tok, key string) (*forgev1.RegisterResponse, error) {
			res, err := s.Agent(tok).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{
				Name: "web-1", Labels: map[string]string{"env": "prod"}, IdempotencyKey: key}))
			if err != nil {
				return nil, err
			}
			return res.Msg, nil
		}
		first, err := register(enrollToken, "k-0123456789")
		if err != nil {
			t.Fatal(err)
		}
		second, err := register(enrollToken, "k-0123456789")
		if err != nil {
			t.Fatal(err)
		}
		if second.AgentId != first.AgentId || second.AgentToken == first.AgentToken {
			t.Fatalf("retried Register = agent %s; want agent %s again, with a new token", second.AgentId, first.AgentId)
		}
		if n := countAgents(t, s); n != 1 {
			t.Errorf("%d agents listed after a retried Register, want 1", n)
		}
		poll := func(tok string) error {
			_, err := s.Agent(tok).Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(0)}))
			return err
		}
		if err := poll(first.AgentToken); codeOf(err) != "unauthenticated" || !strings.Contains(err.Error(), store.MsgUnknownAgent) {
			t.Errorf("Poll with the first answer's token: %v; want unauthenticated %q", err, store.MsgUnknownAgent)
		}
		if err := poll(second.AgentToken); err != nil {
			t.Errorf("Poll with the retry's token: %v", err)
		}

		// The key is the enrollment token's: the same key with another token
		// (someone who saw the key but holds another token) makes a new agent.
		third, err := register(other, "k-0123456789")
		if err != nil {
			t.Fatal(err)
		}
		if third.AgentId == first.AgentId {
			t.Errorf("the same key with another enrollment token named agent %s; want a new agent", first.AgentId)
		}

		// A retry still counts against the rate limit (1/s in bursts of 10;
		// two used above): a client retrying in a loop is held back like any other.
		passed := 0
		for range 12 {
			_, err := register(enrollToken, "k-0123456789")
			switch codeOf(err) {
			case "ok":
				passed++
			case "resource_exhausted":
			default:
				t.Fatalf("retried Register: %v", err)
			}
		}
		if passed != 8 {
			t.Errorf("%d of 12 retries passed the rate limit; want the 8 left of the burst", passed)
		}
		if n := countAgents(t, s); n != 2 {
			t.Errorf("%d agents listed, want 2", n)
		}
	})
}

// TestRegisterReplayBadKey: an idempotency_key too long or not printable, or
// one sent with an agent's own token, is refused naming the field.
func TestRegisterReplayBadKey(t *testing.T) {
	t.Parallel()
	s := forgetest.Start(t, forgetest.Options{Backend: forgetest.Memory})
	_, tok := s.Register("web-1", nil)
	for _, c := range []struct {
		tok, key string
	}{
		{enrollToken, strings.Repeat("k", store.MaxIdempotencyKey+1)},
		{enrollToken, "k\x1b[2J"},
		{tok, "k-0123456789"},
	} {
		_, err := s.Agent(c.tok).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "web-1", IdempotencyKey: c.key}))
		if codeOf(err) != "invalid_argument" || !strings.Contains(err.Error(), "idempotency_key") {
			t.Errorf("Register with idempotency_key %.20q: %v; want invalid_argument naming the field", c.key, err)
		}
	}
}
