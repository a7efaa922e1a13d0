package server_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

const (
	enrollToken = "enroll-0123456789abcdef"
	adminToken  = "admin-0123456789abcdef"
)

type env struct {
	t       *testing.T
	srv     *server.Server
	url     string
	control forgev1connect.ControlServiceClient
}

func newEnv(t *testing.T) *env {
	t.Helper()
	st := memstore.New(store.Config{})
	srv, err := server.New(server.Config{Store: st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close(); st.Close() })
	return &env{t: t, srv: srv, url: hs.URL,
		control: forgev1connect.NewControlServiceClient(http.DefaultClient, hs.URL, connect.WithInterceptors(bearer(adminToken)))}
}

func (e *env) heldPolls() int { return e.srv.HeldPolls() }

func bearer(tok string) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+tok)
			return next(ctx, req)
		}
	}
}

func (e *env) agentClient(tok string) forgev1connect.AgentServiceClient {
	return forgev1connect.NewAgentServiceClient(http.DefaultClient, e.url, connect.WithInterceptors(bearer(tok)))
}

func (e *env) register(name string, labels map[string]string) (string, forgev1connect.AgentServiceClient) {
	e.t.Helper()
	res, err := e.agentClient(enrollToken).Register(e.t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: name, Labels: labels}))
	if err != nil {
		e.t.Fatalf("Register: %v", err)
	}
	return res.Msg.AgentId, e.agentClient(res.Msg.AgentToken)
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id, ag := e.register("web-1", map[string]string{"env": "prod"})
	ctx := t.Context()

	polled := make(chan *forgev1.PollResponse, 1)
	go func() {
		res, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(10 * time.Second)}))
		if err != nil {
			t.Error(err)
			polled <- &forgev1.PollResponse{}
			return
		}
		polled <- res.Msg
	}()
	time.Sleep(50 * time.Millisecond) // let the Poll be held first (the test passes either way)
	d, err := e.control.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: id}}))
	if err != nil {
		t.Fatal(err)
	}
	p := <-polled
	if len(p.Tasks) != 1 || p.Tasks[0].Id != d.Msg.TaskIds[0] || p.Tasks[0].Attempt != 1 || string(p.Tasks[0].Payload) != "hi" {
		t.Fatalf("Poll = %v", p)
	}
	task := p.Tasks[0]
	if _, err := ag.ReportResult(ctx, connect.NewRequest(&forgev1.ReportResultRequest{TaskId: task.Id, Attempt: 1,
		Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED, Output: []byte("hi")})); err != nil {
		t.Fatal(err)
	}
	w, err := e.control.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: task.Id}))
	if err != nil || w.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(w.Msg.Task.Output) != "hi" {
		t.Fatalf("WaitTask = %v, %v", w, err)
	}
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, ag := e.register("a", nil)
	ctx := t.Context()
	_, err := e.agentClient("").Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
	wantCode(t, err, connect.CodeUnauthenticated)
	_, err = e.agentClient("fa_a0000000000000000_0123456789abcdef0123").Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
	wantCode(t, err, connect.CodeUnauthenticated)
	_, err = e.agentClient(adminToken).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
	wantCode(t, err, connect.CodePermissionDenied)
	_, err = e.agentClient(enrollToken).Poll(ctx, connect.NewRequest(&forgev1.PollRequest{}))
	wantCode(t, err, connect.CodePermissionDenied)
	// ag's own interceptor carries its token; use it on ControlService.
	ctl := forgev1connect.NewControlServiceClient(http.DefaultClient, e.url, connect.WithInterceptors(bearer(enrollToken)))
	_, err = ctl.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{}))
	wantCode(t, err, connect.CodePermissionDenied)
	zero := int32(0)
	if _, err := ag.Poll(ctx, connect.NewRequest(&forgev1.PollRequest{MaxTasks: &zero, Wait: durationpb.New(0)})); err != nil {
		t.Fatal(err)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatal("not a connect error")
	}
	_ = proto.Clone
}
