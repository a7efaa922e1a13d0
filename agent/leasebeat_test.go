package agent_test

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// shortLeaseStub hands out one task whose lease ends 300 ms after the answer —
// as a Poll answer that waited while the agent was frozen — with a heartbeat
// interval of 5 s, and records when heartbeats name it.
type shortLeaseStub struct {
	forgev1connect.UnimplementedAgentServiceHandler
	mu    sync.Mutex
	gave  time.Time
	beats []time.Time
}

func (s *shortLeaseStub) Register(context.Context, *connect.Request[forgev1.RegisterRequest]) (*connect.Response[forgev1.RegisterResponse], error) {
	return connect.NewResponse(&forgev1.RegisterResponse{AgentId: "astub", AgentToken: "fa_astub_secret",
		PollWait: durationpb.New(time.Second), HeartbeatInterval: durationpb.New(5 * time.Second)}), nil
}

func (s *shortLeaseStub) Poll(ctx context.Context, req *connect.Request[forgev1.PollRequest]) (*connect.Response[forgev1.PollResponse], error) {
	s.mu.Lock()
	give := s.gave.IsZero() && req.Msg.GetMaxTasks() > 0
	if give {
		s.gave = time.Now()
	}
	s.mu.Unlock()
	if give {
		return connect.NewResponse(&forgev1.PollResponse{Tasks: []*forgev1.Task{{Id: "t1-astub", Attempt: 1, Type: "block",
			LeaseExpiresAt: timestamppb.New(time.Now().Add(300 * time.Millisecond))}}}), nil
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return connect.NewResponse(&forgev1.PollResponse{}), nil
}

func (s *shortLeaseStub) Heartbeat(_ context.Context, req *connect.Request[forgev1.HeartbeatRequest]) (*connect.Response[forgev1.HeartbeatResponse], error) {
	s.mu.Lock()
	if len(req.Msg.Running) > 0 {
		s.beats = append(s.beats, time.Now())
	}
	s.mu.Unlock()
	return connect.NewResponse(&forgev1.HeartbeatResponse{HeartbeatInterval: durationpb.New(5 * time.Second)}), nil
}

func (s *shortLeaseStub) ReportResult(context.Context, *connect.Request[forgev1.ReportResultRequest]) (*connect.Response[forgev1.ReportResultResponse], error) {
	return connect.NewResponse(&forgev1.ReportResultResponse{State: forgev1.TaskState_TASK_STATE_SUCCEEDED}), nil
}

// TestHeartbeatWhenLeaseIsShort: a task that arrives with less of its lease left
// than the heartbeat interval is heartbeated at once, not at the next interval,
// when the lease would be gone.
func TestHeartbeatWhenLeaseIsShort(t *testing.T) {
	t.Parallel()
	s := &shortLeaseStub{}
	_, h := forgev1connect.NewAgentServiceHandler(s)
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	b := newBlocker()
	a := startAgent(t, agent.Config{Servers: []string{hs.URL}, Concurrency: 1}, map[string]agent.Handler{"block": b.handle})
	b.waitStarted(t)
	waitFor(t, 10*time.Second, "a heartbeat naming the task", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.beats) > 0
	})
	s.mu.Lock()
	after := s.beats[0].Sub(s.gave)
	s.mu.Unlock()
	close(b.release)
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if after >= 5*time.Second {
		t.Fatalf("first heartbeat %s after the task arrived with 300 ms of lease left: at the interval, too late", after)
	}
	t.Logf("first heartbeat %s after the task arrived", after)
}
