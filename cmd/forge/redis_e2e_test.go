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

// startReplica starts `forge server --redis` and returns its URL and process.
func startReplica(t *testing.T, redisURL string, args ...string) (string, *proc) {
	t.Helper()
	p := start(t, []string{"FORGE_ENROLL_TOKEN=" + enrollToken, "FORGE_ADMIN_TOKEN=" + adminToken},
		"forge", append([]string{"server", "--listen", "127.0.0.1:0", "--redis", redisURL}, args...)...)
	select {
	case u := <-p.url:
		return u, p
	case <-time.After(30 * time.Second):
		t.Fatalf("replica did not start:\n%s", p.output())
	}
	return "", nil
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
			a, _ := startReplica(t, redisURL)
			b, _ := startReplica(t, redisURL)
			start(t, nil, "forge", "agent", "--server", a, "--enroll-token", enrollToken, "--label", "replicas="+name)
			ctlB := control(b)
			ag := waitAgents(t, ctlB, "replicas="+name, 1)[0]
			echoRoundTrips(t, ctlB, ag.Id, 20)
		})
	}
}

// TestRedisReplicaKilledUnderLoad: SIGKILL one of two replicas while tasks flow;
// agents fail over to the other, and every dispatched task completes.
func TestRedisReplicaKilledUnderLoad(t *testing.T) {
	t.Parallel()
	redisURL := redistest.Start(t).URL()
	a, procA := startReplica(t, redisURL, "--lease", "2s")
	b, _ := startReplica(t, redisURL, "--lease", "2s")
	for range 3 {
		start(t, nil, "forge", "agent", "--server", a+","+b, "--enroll-token", enrollToken, "--label", "fault=replica")
	}
	ctl := control(b)
	waitAgents(t, ctl, "fault=replica", 3)
	var ids []string
	deadline := time.Now().Add(3 * time.Second)
	killed := false
	for time.Now().Before(deadline) {
		d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
			Target: &forgev1.DispatchRequest_Selector{Selector: "fault=replica"}, IncludeOffline: true}))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Msg.TaskIds...)
		if !killed && time.Until(deadline) < 2*time.Second {
			procA.cmd.Process.Kill()
			killed = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	counts := account(t, ctl, ids)
	if counts[forgev1.TaskState_TASK_STATE_SUCCEEDED] != len(ids) {
		t.Fatalf("of %d tasks: %v; want all succeeded", len(ids), counts)
	}
	t.Logf("%d tasks, all succeeded across the replica kill", len(ids))
}

// TestRedisRestartUnderLoad: Redis (with an append-only file) crashes and comes
// back while tasks flow; servers and agents recover by themselves, /readyz tells
// the outage, and every task accepted before or after reaches a terminal state.
func TestRedisRestartUnderLoad(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t, redistest.WithAOF())
	url, _ := startReplica(t, rd.URL(), "--lease", "2s")
	for range 2 {
		start(t, nil, "forge", "agent", "--server", url, "--enroll-token", enrollToken, "--label", "fault=redis")
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
	waitFor(t, func() bool {
		res, err := http.Get(url + "/readyz")
		return err == nil && res.StatusCode == http.StatusOK
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
