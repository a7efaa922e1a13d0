package server_test

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/storetest"
)

// TestAttackRegisterFlood registers as fast as it can with one enrollment token
// (issue 13, finding 5): with the server's default limits, at most a burst of
// registrations passes — the rest get resource_exhausted and create nothing.
// The limit holds per token and per source address, each on its own. The
// server's clock stands still while a flood runs, so exactly a burst passes
// however slowly the machine answers; moving it refills the buckets.
func TestAttackRegisterFlood(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		const other = "enroll-other-0123456789"
		t.Run("defaults", func(t *testing.T) {
			t.Parallel()
			s := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{EnrollTokens: []string{enrollToken},
				Clock: storetest.NewClock()}})
			// 5/s per address in bursts of ten seconds' worth.
			ok, limited := flood(t, s, enrollToken, 400)
			if ok != 50 || limited != 350 {
				t.Errorf("%d registered, %d limited; want the burst of 50 registered and the rest limited", ok, limited)
			}
			if n := countAgents(t, s); n != ok {
				t.Errorf("%d agents stored, want the %d registered", n, ok)
			}
		})
		t.Run("per token", func(t *testing.T) {
			t.Parallel()
			clock := storetest.NewClock()
			s := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{EnrollTokens: []string{enrollToken, other},
				RegisterRate: 1, RegisterRatePerAddr: -1, Clock: clock}})
			if ok, _ := flood(t, s, enrollToken, 30); ok != 10 {
				t.Errorf("%d registered with one token at 1/s in bursts of 10, want 10", ok)
			}
			_, err := s.Agent(enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
			if codeOf(err) != "resource_exhausted" || !strings.Contains(err.Error(), "--register-rate") {
				t.Errorf("Register past the limit: %v", err)
			}
			if ok, _ := flood(t, s, other, 5); ok != 5 {
				t.Errorf("another token registered %d of 5: its bucket is its own", ok)
			}
			clock.Advance(2 * time.Second)
			if ok, _ := flood(t, s, enrollToken, 5); ok != 2 {
				t.Errorf("%d registered two seconds later, want 2", ok)
			}
		})
		t.Run("per address", func(t *testing.T) {
			t.Parallel()
			s := forgetest.Start(t, forgetest.Options{Backend: b, Server: server.Config{EnrollTokens: []string{enrollToken, other},
				RegisterRate: -1, RegisterRatePerAddr: 1, Clock: storetest.NewClock()}})
			if ok, _ := flood(t, s, enrollToken, 30); ok != 10 {
				t.Errorf("%d registered from one address at 1/s in bursts of 10, want 10", ok)
			}
			_, err := s.Agent(other).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "x"}))
			if codeOf(err) != "resource_exhausted" || !strings.Contains(err.Error(), "--register-rate-per-addr") {
				t.Errorf("Register with another token from the same address: %v", err)
			}
		})
	})
}

// flood registers n agents with tok, 16 at a time, and counts what passed and
// what was rate-limited; any other outcome fails the test.
func flood(t *testing.T, s *forgetest.Server, tok string, n int) (ok, limited int) {
	t.Helper()
	var okN, limN atomic.Int64
	var wg sync.WaitGroup
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				_, err := s.Agent(tok).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "flood"}))
				switch codeOf(err) {
				case "ok":
					okN.Add(1)
				case "resource_exhausted":
					limN.Add(1)
				default:
					t.Errorf("Register: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	return int(okN.Load()), int(limN.Load())
}

func countAgents(t *testing.T, s *forgetest.Server) int {
	t.Helper()
	res, err := s.Control.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{PageSize: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Msg.Agents)
}

// TestAttackAgentsPileUp: agent records registered once and never seen again no
// longer pile up (issue 13, finding 5): past the agent retention the reaper
// removes them with their tokens, which then fail as "unknown agent".
func TestAttackAgentsPileUp(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		clock := storetest.NewClock()
		s := forgetest.Start(t, forgetest.Options{Backend: b, Store: store.Config{Clock: clock},
			Server: server.Config{DisableReaper: true}})
		ctx := t.Context()
		var toks []string
		for range 5 {
			_, tok := s.Register("once", nil)
			toks = append(toks, tok)
		}
		clock.Advance(store.DefaultAgentRetention + time.Hour)
		if err := s.Store.Reap(ctx); err != nil {
			t.Fatal(err)
		}
		if n := countAgents(t, s); n != 0 {
			t.Fatalf("%d agents left after the retention", n)
		}
		_, err := s.Agent(toks[0]).Heartbeat(ctx, connect.NewRequest(&forgev1.HeartbeatRequest{}))
		if codeOf(err) != "unauthenticated" || !strings.Contains(err.Error(), "unknown agent") {
			t.Fatalf("the token of a removed agent: %v", err)
		}
	})
}
