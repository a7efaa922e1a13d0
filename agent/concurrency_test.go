package agent_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// greedyProxy forwards to target and rewrites every Poll's max_tasks to 64, as
// a hostile party in the middle would to make the agent take more than it runs.
func greedyProxy(t *testing.T, target string) string {
	u, _ := url.Parse(target)
	p := httputil.NewSingleHostReverseProxy(u)
	director := p.Director
	p.Director = func(req *http.Request) {
		director(req)
		if !strings.HasSuffix(req.URL.Path, "/Poll") || !strings.HasPrefix(req.Header.Get("Content-Type"), "application/proto") {
			return
		}
		b, _ := io.ReadAll(req.Body)
		var m forgev1.PollRequest
		if proto.Unmarshal(b, &m) == nil {
			m.MaxTasks = proto.Int32(64)
			b, _ = proto.Marshal(&m)
		}
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.ContentLength = int64(len(b))
		req.Header.Set("Content-Length", strconv.Itoa(len(b)))
	}
	hs := httptest.NewServer(p)
	t.Cleanup(hs.Close)
	return hs.URL
}

// TestAttackConcurrency makes an agent with --concurrency 2 receive every task
// of its queue in one Poll answer (issue 13, finding 7): it never runs more
// than 2 at once, and hands the rest back at once, so every task finishes
// long before a lease (2 minutes here) could have brought them back.
func TestAttackConcurrency(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := newEnv(t, b, server.Config{Lease: 2 * time.Minute})
		var running, most atomic.Int32
		h := func(ctx context.Context, tk *agent.Task) ([]byte, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
			return nil, nil
		}
		a := startAgent(t, agent.Config{Servers: []string{greedyProxy(t, e.URL)}, Concurrency: 2}, map[string]agent.Handler{"work": h})
		const n = 12
		ids := make([]string, n)
		for i := range ids {
			ids[i] = e.dispatch(a.ID(), "work", nil, 0)
		}
		// Each wait (60 s) ends before a lease (2 min) could bring a task back:
		// a task handed back late, or not at all, fails it.
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := e.Control.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: id, Wait: durationpb.New(60 * time.Second)}))
				if err != nil || res.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
					t.Errorf("task %s: %v, %v", id, res, err)
				}
			}()
		}
		wg.Wait()
		if m := most.Load(); m > 2 {
			t.Errorf("%d handlers ran at once with concurrency 2", m)
		}
		returned := 0
		for _, id := range ids {
			for _, h := range e.Task(id).History {
				if h.Reason == store.ReasonReturned(h.Attempt) {
					returned++
				}
			}
		}
		if returned == 0 {
			t.Errorf("no task was handed back: the attack did not happen")
		}
	})
}
