package agent_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// TestRegisterRetryKeepsIdentity: the answer to the agent's first Register is
// lost after the server enrolled it (as when the call times out on a loaded
// server). The agent retries with the same idempotency_key, so it ends with the
// agent the first call made — one agent listed, no orphan for a fan-out to
// match — and runs the tasks sent to it.
func TestRegisterRetryKeepsIdentity(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := newEnv(t, b, server.Config{})
		u, _ := url.Parse(e.URL)
		proxy := httputil.NewSingleHostReverseProxy(u)
		var mu sync.Mutex
		var keys []string
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/Register") {
				proxy.ServeHTTP(w, r)
				return
			}
			body, _ := io.ReadAll(r.Body)
			var m forgev1.RegisterRequest
			if err := proto.Unmarshal(body, &m); err != nil {
				t.Errorf("Register body: %v", err)
			}
			mu.Lock()
			keys = append(keys, m.IdempotencyKey)
			first := len(keys) == 1
			mu.Unlock()
			r.Body = io.NopCloser(bytes.NewReader(body))
			if first { // the server enrolls; the answer never reaches the agent
				rec := httptest.NewRecorder()
				proxy.ServeHTTP(rec, r)
				if rec.Code != http.StatusOK {
					t.Errorf("first Register: HTTP %d %s", rec.Code, rec.Body)
				}
				http.Error(w, "the answer was lost", http.StatusBadGateway)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		t.Cleanup(hs.Close)

		var c runCounter
		a := startAgent(t, agent.Config{Servers: []string{hs.URL}}, map[string]agent.Handler{"count": c.handle})
		mu.Lock()
		if len(keys) != 2 || keys[0] == "" || keys[1] != keys[0] {
			t.Errorf("idempotency keys of the agent's Registers: %q; want one key, sent again with the retry", keys)
		}
		mu.Unlock()
		res, err := e.Control.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Msg.Agents) != 1 || res.Msg.Agents[0].Id != a.ID() {
			t.Fatalf("agents listed: %v; want only the agent's own, %s", res.Msg.Agents, a.ID())
		}
		id := e.dispatch(a.ID(), "count", []byte("x"), 0)
		wantState(t, e.wait(id), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		a.stop(t)
	})
}
