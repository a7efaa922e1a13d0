package server_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
)

// stuckReads is a store whose job and task reads, once stuck is set, answer
// only when their context ends: a Redis whose queue is minutes long.
type stuckReads struct {
	store.Store
	stuck atomic.Bool
}

func (s *stuckReads) wait(ctx context.Context) error {
	if !s.stuck.Load() {
		return nil
	}
	<-ctx.Done()
	return store.Errorf(store.KindUnavailable, "redis is unavailable: %v", ctx.Err())
}

func (s *stuckReads) GetJob(ctx context.Context, id string) (store.Job, error) {
	if err := s.wait(ctx); err != nil {
		return store.Job{}, err
	}
	return s.Store.GetJob(ctx, id)
}

func (s *stuckReads) GetTask(ctx context.Context, id string) (store.Task, error) {
	if err := s.wait(ctx); err != nil {
		return store.Task{}, err
	}
	return s.Store.GetTask(ctx, id)
}

// TestHeldCallAnswersWhenTheStoreIsStuck: a WaitJob or WaitTask whose store
// read does not come back answers a Connect error before its connection's
// deadline (the hold's end and its slack), rather than having the connection
// closed unanswered (the caller saw "unexpected EOF" at a 50,000-agent
// fan-out, when the replica's Redis queue was long). It takes the whole slack
// (about 25 s) to run, waiting, not working.
func TestHeldCallAnswersWhenTheStoreIsStuck(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		st := &stuckReads{Store: e.Store}
		srv, err := server.New(server.Config{Store: st, EnrollTokens: []string{forgetest.EnrollToken},
			AdminTokens: []string{forgetest.AdminToken}})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv)
		t.Cleanup(func() { srv.Close(); hs.Close() })
		id, _ := e.Register("a", nil)
		tid := e.DispatchTo(id)
		task, err := e.Store.GetTask(t.Context(), tid)
		if err != nil {
			t.Fatal(err)
		}
		st.stuck.Store(true)
		ctl := forgev1connect.NewControlServiceClient(http.DefaultClient, hs.URL, connect.WithInterceptors(bearer.Interceptor(forgetest.AdminToken)))
		errs := make(chan error, 2)
		go func() {
			_, err := ctl.WaitJob(t.Context(), connect.NewRequest(&forgev1.WaitJobRequest{JobId: task.JobID, Wait: durationpb.New(time.Second)}))
			errs <- err
		}()
		go func() {
			_, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(time.Second)}))
			errs <- err
		}()
		for range 2 {
			err := <-errs
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Message() == "unexpected EOF" {
				t.Errorf("a held call whose store read is stuck = %v; want an unavailable answer from the server", err)
			}
		}
	})
}
