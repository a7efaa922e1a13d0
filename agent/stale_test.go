package agent_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// lateStub hands out the attempts of one task in a given order, one per Poll,
// as a server does when a Poll answer reached a frozen agent late: attempt 1 was
// leased into that answer, its lease expired, and attempt 2 went into the next.
// Heartbeats keep every attempt; reports are recorded.
type lateStub struct {
	forgev1connect.UnimplementedAgentServiceHandler
	mu      sync.Mutex
	order   []int32
	reports []*forgev1.ReportResultRequest
}

func (s *lateStub) Register(context.Context, *connect.Request[forgev1.RegisterRequest]) (*connect.Response[forgev1.RegisterResponse], error) {
	return connect.NewResponse(&forgev1.RegisterResponse{AgentId: "astub", AgentToken: "fa_astub_secret",
		PollWait: durationpb.New(time.Second), HeartbeatInterval: durationpb.New(5 * time.Second)}), nil
}

func (s *lateStub) Poll(ctx context.Context, req *connect.Request[forgev1.PollRequest]) (*connect.Response[forgev1.PollResponse], error) {
	s.mu.Lock()
	var give []*forgev1.Task
	if len(s.order) > 0 && req.Msg.GetMaxTasks() > 0 {
		give = []*forgev1.Task{{Id: "t1-astub", Attempt: s.order[0], Type: "block"}}
		s.order = s.order[1:]
	}
	s.mu.Unlock()
	if give != nil {
		return connect.NewResponse(&forgev1.PollResponse{Tasks: give}), nil
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return connect.NewResponse(&forgev1.PollResponse{}), nil
}

func (s *lateStub) Heartbeat(context.Context, *connect.Request[forgev1.HeartbeatRequest]) (*connect.Response[forgev1.HeartbeatResponse], error) {
	return connect.NewResponse(&forgev1.HeartbeatResponse{}), nil
}

func (s *lateStub) ReportResult(_ context.Context, req *connect.Request[forgev1.ReportResultRequest]) (*connect.Response[forgev1.ReportResultResponse], error) {
	s.mu.Lock()
	s.reports = append(s.reports, req.Msg)
	s.mu.Unlock()
	return connect.NewResponse(&forgev1.ReportResultResponse{State: forgev1.TaskState_TASK_STATE_SUCCEEDED}), nil
}

// attemptBlocker runs each attempt until released or stopped, recording which
// attempts started and why each stopped.
type attemptBlocker struct {
	mu      sync.Mutex
	started []int32
	causes  map[int32]error
	release chan struct{}
}

func (b *attemptBlocker) handle(ctx context.Context, t *agent.Task) ([]byte, error) {
	b.mu.Lock()
	b.started = append(b.started, t.Attempt)
	b.mu.Unlock()
	select {
	case <-b.release:
		return []byte("done"), nil
	case <-ctx.Done():
		b.mu.Lock()
		b.causes[t.Attempt] = context.Cause(ctx)
		b.mu.Unlock()
		return nil, ctx.Err()
	}
}

// TestStaleAttemptNotRunBesideNewer: when a late Poll answer brings an older
// attempt of a task the agent also holds a newer attempt of, only the newer one
// runs to its report — whichever arrives first.
func TestStaleAttemptNotRunBesideNewer(t *testing.T) {
	t.Parallel()
	for name, order := range map[string][]int32{"older first": {1, 2}, "newer first": {2, 1}} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := &lateStub{order: order}
			_, h := forgev1connect.NewAgentServiceHandler(s)
			hs := httptest.NewServer(h)
			t.Cleanup(hs.Close)
			b := &attemptBlocker{causes: map[int32]error{}, release: make(chan struct{})}
			a := startAgent(t, agent.Config{Servers: []string{hs.URL}, Concurrency: 2}, map[string]agent.Handler{"block": b.handle})
			// Both attempts are delivered; the older one is stopped or never starts.
			waitFor(t, 10*time.Second, "both attempts delivered", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				return len(s.order) == 0
			})
			if order[0] == 1 {
				waitFor(t, 10*time.Second, "attempt 1 stopped", func() bool {
					b.mu.Lock()
					defer b.mu.Unlock()
					return b.causes[1] != nil
				})
				if c := b.causes[1]; !strings.Contains(c.Error(), "abandoned") {
					t.Fatalf("attempt 1 stopped by %v, want abandoned", c)
				}
			} else {
				time.Sleep(200 * time.Millisecond) // attempt 1 would have started by now
			}
			close(b.release)
			waitFor(t, 10*time.Second, "attempt 2 reported", func() bool {
				s.mu.Lock()
				defer s.mu.Unlock()
				return len(s.reports) > 0
			})
			time.Sleep(200 * time.Millisecond) // another report would have come by now
			if err := a.stop(t); err != nil {
				t.Fatal(err)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			b.mu.Lock()
			defer b.mu.Unlock()
			if len(s.reports) != 1 || s.reports[0].Attempt != 2 {
				t.Fatalf("reports %v, want attempt 2's only", s.reports)
			}
			if order[0] == 2 && len(b.started) != 1 {
				t.Fatalf("attempts started %v: the stale attempt 1 ran after attempt 2", b.started)
			}
		})
	}
}
