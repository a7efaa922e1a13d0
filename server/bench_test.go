package server_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

// BenchmarkPing is the floor: an empty Connect unary call over the same transport.
func BenchmarkPing(b *testing.B) {
	st := memstore.New(store.Config{})
	srv, _ := server.New(server.Config{Store: st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken}})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	c := forgev1connect.NewPingServiceClient(hs.Client(), hs.URL)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.Ping(ctx, connect.NewRequest(&forgev1.PingRequest{})); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	report(b, lat)
}

// BenchmarkRoundTrip measures Dispatch → an idle agent's handler → result seen
// through WaitTask, one task at a time, with the real agent package.
func BenchmarkRoundTrip(b *testing.B) {
	st := memstore.New(store.Config{})
	srv, _ := server.New(server.Config{Store: st, EnrollTokens: []string{enrollToken}, AdminTokens: []string{adminToken}})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := agent.New(agent.Config{Servers: []string{hs.URL}, EnrollToken: enrollToken, Labels: map[string]string{"bench": "rt"},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	a.Handle("echo", agent.EchoHandler())
	go a.Run(ctx)
	ctl := forgev1connect.NewControlServiceClient(&http.Client{Transport: hs.Client().Transport}, hs.URL, connect.WithInterceptors(bearer(adminToken)))
	var id string
	for id == "" {
		res, _ := ctl.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{Selector: "bench=rt"}))
		if res != nil && len(res.Msg.Agents) == 1 {
			id = res.Msg.Agents[0].Id
		}
		time.Sleep(10 * time.Millisecond)
	}
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		d, err := ctl.Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"),
			Target: &forgev1.DispatchRequest_AgentId{AgentId: id}}))
		if err != nil {
			b.Fatal(err)
		}
		w, err := ctl.WaitTask(ctx, connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: d.Msg.TaskIds[0], Wait: durationpb.New(10 * time.Second)}))
		if err != nil || w.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			b.Fatalf("WaitTask = %v, %v", w, err)
		}
		lat = append(lat, time.Since(t0))
	}
	report(b, lat)
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
