package server_test

import (
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
)

// BenchmarkPing is the floor: an empty Connect unary call over the same transport.
func BenchmarkPing(b *testing.B) {
	e := forgetest.Start(b, forgetest.Options{})
	c := forgev1connect.NewPingServiceClient(http.DefaultClient, e.URL)
	ctx := b.Context()
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
	e := forgetest.Start(b, forgetest.Options{})
	ctx := b.Context()
	a, err := agent.New(agent.Config{Servers: []string{e.URL}, EnrollToken: enrollToken, Labels: map[string]string{"bench": "rt"},
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	a.Handle("echo", agent.EchoHandler())
	go a.Run(ctx)
	// A client of its own, so its connections are not shared with the agent's.
	ctl := forgev1connect.NewControlServiceClient(&http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}, e.URL,
		connect.WithInterceptors(bearer.Interceptor(adminToken)))
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
