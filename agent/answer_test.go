package agent_test

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// TestAttackAnswerBomb: a party in the middle answers an agent's Poll with a
// gzip bomb (64 KiB that inflate to 64 MiB; the same with GiBs would exhaust
// the machine's memory). The agent inflates no more than its MaxAnswer, takes
// the answer as a failed call, and goes on to run the next task it is given.
func TestAttackAnswerBomb(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := newEnv(t, b, server.Config{})
		var one bytes.Buffer
		w, _ := gzip.NewWriterLevel(&one, gzip.BestCompression)
		w.Write(bytes.Repeat([]byte{0}, 1<<20))
		w.Close()
		bomb := bytes.Repeat(one.Bytes(), 64)

		var bombed atomic.Bool
		u, _ := url.Parse(e.URL)
		proxy := httputil.NewSingleHostReverseProxy(u)
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/Poll") && bombed.CompareAndSwap(false, true) {
				w.Header().Set("Content-Type", "application/proto")
				w.Header().Set("Content-Encoding", "gzip")
				w.Write(bomb)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		t.Cleanup(hs.Close)

		logs := newLogBuffer(t)
		var c runCounter
		a := startAgent(t, agent.Config{Servers: []string{hs.URL}, MaxAnswer: 1 << 20,
			Logger: logs.logger()},
			map[string]agent.Handler{"count": c.handle})
		waitFor(t, 20*time.Second, "the bomb sent", bombed.Load)
		id := e.dispatch(a.ID(), "count", []byte("after"), 0)
		wantState(t, e.wait(id), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if !strings.Contains(logs.String(), "inflates to more than 1048576 bytes") {
			t.Errorf("the agent did not refuse the bomb at its limit; its log:\n%s", logs.String())
		}
		a.stop(t)
	})
}
