package agent_test

import (
	"context"
	"net/http/httptest"
	"strconv"
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

// stub is a scripted AgentService: it hands out one task, then holds polls; its
// heartbeats answer that task "abandon". It records what the agent sent.
type stub struct {
	forgev1connect.UnimplementedAgentServiceHandler
	mu       sync.Mutex
	gave     bool
	polls    []*int32 // max_tasks of each Poll (nil: omitted)
	timeouts []time.Duration
	reports  []*forgev1.ReportResultRequest
	beats    int
}

func (s *stub) Register(ctx context.Context, req *connect.Request[forgev1.RegisterRequest]) (*connect.Response[forgev1.RegisterResponse], error) {
	return connect.NewResponse(&forgev1.RegisterResponse{AgentId: "astub", AgentToken: "fa_astub_secret",
		PollWait: durationpb.New(2 * time.Second), HeartbeatInterval: durationpb.New(50 * time.Millisecond)}), nil
}

func (s *stub) Poll(ctx context.Context, req *connect.Request[forgev1.PollRequest]) (*connect.Response[forgev1.PollResponse], error) {
	if req.Header().Get("Authorization") != "Bearer fa_astub_secret" {
		return nil, connect.NewError(connect.CodeUnauthenticated, nil)
	}
	ms, _ := strconv.Atoi(req.Header().Get("Connect-Timeout-Ms"))
	s.mu.Lock()
	s.polls = append(s.polls, req.Msg.MaxTasks)
	s.timeouts = append(s.timeouts, time.Duration(ms)*time.Millisecond)
	give := !s.gave && req.Msg.GetMaxTasks() > 0
	s.gave = s.gave || give
	s.mu.Unlock()
	if give {
		return connect.NewResponse(&forgev1.PollResponse{Tasks: []*forgev1.Task{{Id: "t1", Attempt: 1, Type: "block"}}}), nil
	}
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	return connect.NewResponse(&forgev1.PollResponse{}), nil
}

func (s *stub) Heartbeat(ctx context.Context, req *connect.Request[forgev1.HeartbeatRequest]) (*connect.Response[forgev1.HeartbeatResponse], error) {
	s.mu.Lock()
	s.beats++
	s.mu.Unlock()
	return connect.NewResponse(&forgev1.HeartbeatResponse{Abandon: req.Msg.Running, HeartbeatInterval: durationpb.New(50 * time.Millisecond)}), nil
}

func (s *stub) ReportResult(ctx context.Context, req *connect.Request[forgev1.ReportResultRequest]) (*connect.Response[forgev1.ReportResultResponse], error) {
	s.mu.Lock()
	s.reports = append(s.reports, req.Msg)
	s.mu.Unlock()
	return connect.NewResponse(&forgev1.ReportResultResponse{State: forgev1.TaskState_TASK_STATE_SUCCEEDED}), nil
}

func TestAbandonFullSlotsAndPollDeadline(t *testing.T) {
	t.Parallel()
	s := &stub{}
	_, h := forgev1connect.NewAgentServiceHandler(s)
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	b := newBlocker()
	a := startAgent(t, agent.Config{Servers: []string{hs.URL}, Concurrency: 1}, map[string]agent.Handler{"block": b.handle})
	id := b.waitStarted(t)
	waitFor(t, 5*time.Second, "handler abandoned", func() bool { return b.cause(id) != nil })
	if c := b.cause(id); !strings.Contains(c.Error(), "abandoned") {
		t.Fatalf("cause %v", c)
	}
	time.Sleep(300 * time.Millisecond) // a report would have been sent by now
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.reports) != 0 {
		t.Fatalf("an abandoned attempt was reported: %v", s.reports)
	}
	// While its one slot was busy the agent still held a Poll, asking explicitly
	// for no task; every Poll carried a deadline of the wait plus a margin.
	sawZero := false
	for i, m := range s.polls {
		if m == nil {
			t.Fatalf("poll %d omitted max_tasks", i)
		}
		sawZero = sawZero || *m == 0
		if d := s.timeouts[i]; d < 2*time.Second || d > 2*time.Second+15*time.Second {
			t.Fatalf("poll %d deadline %v, want about 2s + margin", i, d)
		}
	}
	if !sawZero {
		t.Fatalf("no poll with max_tasks 0 while the slot was busy: %v", s.polls)
	}
	if s.beats == 0 {
		t.Fatal("no heartbeat while a task ran")
	}
}
