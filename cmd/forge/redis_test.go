package main_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/redistest"
)

// startReplica starts `forge server --redis` in this process and returns its URL.
func startReplica(t *testing.T, redisURL string, args ...string) string {
	t.Helper()
	return startServer(t, append([]string{"--redis", redisURL}, args...)...)
}

func echoRoundTrips(t *testing.T, ctl forgev1connect.ControlServiceClient, agentID string, n int) {
	t.Helper()
	for i := range n {
		d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte{byte('a' + i%26)},
			Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}))
		if err != nil {
			t.Fatal(err)
		}
		w, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: d.Msg.TaskIds[0], Wait: durationpb.New(20 * time.Second)}))
		if err != nil || w.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(w.Msg.Task.Output) != string([]byte{byte('a' + i%26)}) {
			t.Fatalf("round trip %d = %v, %v", i, w, err)
		}
	}
}

// TestRedisTwoReplicas: an agent polls replica A; tasks are dispatched and waited
// on through replica B; each is delivered and its result seen on B. Also on a
// three-node Redis Cluster.
func TestRedisTwoReplicas(t *testing.T) {
	t.Parallel()
	for name, url := range map[string]func() string{
		"single":  func() string { return redistest.Start(t).URL() },
		"cluster": func() string { return redistest.StartCluster(t, 3).URL() },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			redisURL := url()
			a := startReplica(t, redisURL)
			b := startReplica(t, redisURL)
			startAgent(t, a, "--label", "replicas="+name)
			ctlB := control(b)
			ag := waitAgents(t, ctlB, "replicas="+name, 1)[0]
			echoRoundTrips(t, ctlB, ag.Id, 20)
		})
	}
}

// TestRedisRestartUnderLoad: Redis (with an append-only file) crashes and comes
// back while tasks flow; servers and agents recover by themselves, /readyz tells
// the outage, and every task accepted before or after reaches a terminal state.
func TestRedisRestartUnderLoad(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t, redistest.WithAOF())
	url := startReplica(t, rd.URL(), "--lease", "2s")
	for range 2 {
		startAgent(t, url, "--label", "fault=redis")
	}
	ctl := control(url)
	waitAgents(t, ctl, "fault=redis", 2)
	var (
		mu  sync.Mutex
		ids []string
	)
	dispatch := func() error {
		d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_Selector{Selector: "fault=redis"}, IncludeOffline: true}))
		if err == nil {
			mu.Lock()
			ids = append(ids, d.Msg.TaskIds...)
			mu.Unlock()
		}
		return err
	}
	for range 20 {
		if err := dispatch(); err != nil {
			t.Fatal(err)
		}
	}
	rd.Kill()
	// While Redis is down: calls fail with unavailable, and /readyz says so.
	if err := dispatch(); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("Dispatch with Redis down = %v, want unavailable", err)
	}
	if res, err := http.Get(url + "/readyz"); err != nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with Redis down = %v, %v; want 503", res, err)
	}
	if res, err := http.Get(url + "/healthz"); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("/healthz with Redis down = %v, %v; want 200 (the process is fine)", res, err)
	}
	rd.Restart()
	waitFor(t, "/readyz after Redis is back", func() bool {
		res, err := http.Get(url + "/readyz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	for range 20 {
		if err := dispatch(); err != nil {
			t.Fatal(err)
		}
	}
	counts := account(t, ctl, ids)
	if counts[forgev1.TaskState_TASK_STATE_SUCCEEDED] != len(ids) {
		t.Fatalf("of %d tasks: %v; want all succeeded", len(ids), counts)
	}
}
