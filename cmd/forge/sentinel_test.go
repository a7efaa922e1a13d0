package main_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/redistest"
)

// TestRedisSentinelFailover: two servers share a Sentinel-managed Redis (one
// master, one replica, three sentinels) as the documented ACL user; while
// tasks are dispatched through both, the master is killed. The sentinels
// promote the replica, forge follows by itself and carries on, and every task
// a Dispatch accepted — before, during and after the failover — ends SUCCEEDED:
// nothing accepted is lost.
//
// Redis replicates asynchronously, so by default that holds unless the master
// dies within the moment between answering a write and sending it on. With
// --redis-wait-replicas 1 it is a guarantee: each write is on the replica
// before forge answers. The price shows here: with the only replica promoted,
// writes wait until a replica is back (the old master, restarted, rejoins as
// one).
func TestRedisSentinelFailover(t *testing.T) {
	t.Parallel()
	t.Run("default", func(t *testing.T) { t.Parallel(); sentinelFailover(t, false) })
	t.Run("wait replicas", func(t *testing.T) { t.Parallel(); sentinelFailover(t, true) })
}

func sentinelFailover(t *testing.T, waitReplicas bool) {
	set := redistest.StartSentinel(t)
	setACLUser(t, set.Master, set.Replica)
	pw := writeFile(t, "pw", aclPassword+"\n")
	u := set.URL()
	redisURL := u[:len("redis://")] + "forge@" + u[len("redis://"):]
	args := []string{"--lease", "2s", "--redis-password-file", pw}
	if waitReplicas {
		args = append(args, "--redis-wait-replicas", "1")
	}
	a := startReplica(t, redisURL, args...)
	b := startReplica(t, redisURL, args...)
	for _, url := range []string{a, b, a} {
		startAgent(t, url, "--label", "fault=sentinel")
	}
	ctls := []forgev1connect.ControlServiceClient{control(a), control(b)}
	waitAgents(t, ctls[0], "fault=sentinel", 3)

	var (
		mu       sync.Mutex
		ids      []string
		after    int // accepted once the failover was over
		failed   int
		over     bool
		stopping = make(chan struct{})
		wg       sync.WaitGroup
	)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopping:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				d, err := ctls[(w+i)%2].Dispatch(ctx, connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("x"),
					Target: &forgev1.DispatchRequest_Selector{Selector: "fault=sentinel"}, IncludeOffline: true}))
				cancel()
				mu.Lock()
				if err == nil {
					ids = append(ids, d.Msg.TaskIds...)
					if over {
						after++
					}
				} else {
					failed++
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	accepted := func() int { mu.Lock(); defer mu.Unlock(); return len(ids) }
	waitFor(t, "tasks flowing", func() bool { return accepted() >= 60 })
	old := set.Master.Addr()
	set.Master.Kill()
	t0 := time.Now()
	t.Logf("killed the master %s at %s", old, t0.Format("15:04:05.000"))
	set.WaitFailover(old)
	mu.Lock()
	over = true
	mu.Unlock()
	t.Logf("the sentinels promoted %s %s after the kill", set.MasterAddr(), time.Since(t0).Round(time.Millisecond))
	if waitReplicas {
		set.Master.Restart() // the sentinels make it a replica of the new master
	}
	waitFor(t, "dispatches accepted after the failover", func() bool { mu.Lock(); defer mu.Unlock(); return after >= 60 })
	close(stopping)
	wg.Wait()
	t.Logf("%d tasks accepted (%d after the failover), %d dispatches refused during it", len(ids), after, failed)
	counts := account(t, ctls[1], ids)
	if counts[forgev1.TaskState_TASK_STATE_SUCCEEDED] != len(ids) {
		for _, id := range ids { // what became of each task that did not succeed, for the logs above
			if res, err := ctls[1].GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id})); err != nil {
				t.Logf("task %s: %v", id, err)
			} else if res.Msg.Task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
				t.Logf("task %s ended %s; history: %v", id, res.Msg.Task.State, res.Msg.Task.History)
			}
		}
		t.Fatalf("of %d accepted tasks: %v; want all SUCCEEDED", len(ids), counts)
	}
}

// TestRedisSentinelPassword: sentinels that require a password of their own
// are reached with --redis-sentinel-password-file; without it the server says
// the sentinels refused it.
func TestRedisSentinelPassword(t *testing.T) {
	t.Parallel()
	set := redistest.StartSentinel(t)
	const sentinelPassword = "sentinel-Passw0rd-for-tests"
	for _, s := range set.Sentinels {
		s.MustDo("ACL", "SETUSER", "default", "resetpass", ">"+sentinelPassword)
	}
	p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0", "--redis", set.URL())
	waitOutput(t, p, "cause=auth")
	if line := logLine(p.output(), "cause=auth"); !strings.Contains(line, "NOAUTH") {
		t.Errorf("without the sentinels' password: %s", line)
	}
	pw := writeFile(t, "sentinel-pw", sentinelPassword+"\n")
	url := startServer(t, "--redis", set.URL(), "--redis-sentinel-password-file", pw)
	startAgent(t, url, "--label", "sentinel=auth")
	ctl := control(url)
	echoRoundTrips(t, ctl, waitAgents(t, ctl, "sentinel=auth", 1)[0].Id, 3)
}
