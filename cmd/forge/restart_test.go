package main_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// TestServerRestartWithHeldPolls: 30 agents hold polls on one server (Redis
// store) while half of their tasks run and the rest wait in their queues; the
// server is stopped — SIGTERM, and in the other case SIGKILL — and started again
// on the same address. The agents come back by themselves, spread out by their
// jittered backoff, with a bounded number of calls while the server is down;
// every task ends SUCCEEDED and ran exactly once; the restarted server logs no
// error.
func TestServerRestartWithHeldPolls(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			serverRestart(t, sig)
		})
	}
}

// callLog records every call agents make: when, by which agent, and whether
// the server answered it with success.
type callLog struct {
	base http.RoundTripper
	mu   sync.Mutex
	all  []call
}

type call struct {
	at    time.Time // when it was sent
	agent string
	path  string
	ok    bool
}

func (l *callLog) RoundTrip(req *http.Request) (*http.Response, error) {
	agentID := ""
	if tok, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer fa_"); ok {
		agentID, _, _ = strings.Cut(tok, "_")
	}
	at := time.Now()
	res, err := l.base.RoundTrip(req)
	l.mu.Lock()
	l.all = append(l.all, call{at: at, agent: agentID, path: req.URL.Path, ok: err == nil && res.StatusCode == http.StatusOK})
	l.mu.Unlock()
	return res, err
}

func (l *callLog) calls() []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.all)
}

func serverRestart(t *testing.T, sig syscall.Signal) {
	redisURL := redistest.Start(t).URL()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	url := "http://" + addr
	serve := func() *proc {
		p := startProc(t, tokensEnv, "forge", "server", "--listen", addr, "--redis", redisURL)
		p.waitURL(t)
		return p
	}
	srv := serve()
	ctl := control(url)

	const n = 30
	label := "restart=" + strings.ToLower(sig.String())
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4 * n
	calls := &callLog{base: tr}
	hc := &http.Client{Transport: calls}
	var mu sync.Mutex
	runs := map[string]int{}
	var started sync.WaitGroup
	started.Add(n)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range n {
		a, err := agent.New(agent.Config{Servers: []string{url}, EnrollToken: enrollToken, Labels: map[string]string{"restart": label[len("restart="):]},
			Name: fmt.Sprintf("restart-%d", i), HTTPClient: hc, Logger: slog.New(slog.DiscardHandler), Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		a.Handle("work", func(ctx context.Context, task *agent.Task) ([]byte, error) {
			mu.Lock()
			runs[task.ID]++
			mu.Unlock()
			d, _ := time.ParseDuration(string(task.Payload))
			if d > time.Second {
				started.Done()
			}
			select {
			case <-time.After(d):
				return []byte("done"), nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		})
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	waitAgents(t, ctl, label, n)

	dispatch := func(payload string) string {
		d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "work", Payload: []byte(payload),
			Target: &forgev1.DispatchRequest_Selector{Selector: label}}))
		if err != nil || len(d.Msg.TaskIds) != n {
			t.Fatalf("Dispatch = %v, %v", d, err)
		}
		return d.Msg.JobId
	}
	// Every agent runs one task through the restart and has another waiting; while
	// busy, each holds a Poll with max_tasks 0 to hear cancels.
	running := dispatch("4s")
	started.Wait()
	waiting := dispatch("100ms")
	waitFor(t, "every agent holds a Poll", func() bool {
		held, _ := strconv.Atoi(metric(t, url, "forge_polls_held"))
		return held >= n
	})

	down := time.Now()
	srv.signal(sig)
	if err := srv.wait(t); sig == syscall.SIGTERM && err != nil {
		t.Fatalf("server exited with %v after SIGTERM, want 0", err)
	}
	stopped := time.Since(down)
	time.Sleep(2 * time.Second)
	up := time.Now()
	srv2 := serve()

	for _, job := range []string{running, waiting} {
		w, err := ctl.WaitJob(t.Context(), connect.NewRequest(&forgev1.WaitJobRequest{JobId: job, Wait: durationpb.New(60 * time.Second)}))
		if err != nil || !w.Msg.Job.Done || w.Msg.Job.Counts.Succeeded != n {
			t.Fatalf("job %s after the restart = %v, %v; want %d tasks SUCCEEDED", job, w, err, n)
		}
	}
	mu.Lock()
	for id, c := range runs {
		if c != 1 {
			t.Errorf("task %s ran %d times", id, c)
		}
	}
	if len(runs) != 2*n {
		t.Errorf("%d tasks ran, want %d", len(runs), 2*n)
	}
	mu.Unlock()

	// While the server was down, each agent called a few times (backoff), not in a
	// loop; when it came back, the agents' first Polls were spread out.
	all := calls.calls()
	perAgent := map[string]int{}
	firstBack := map[string]time.Time{}
	for _, c := range all {
		if c.agent == "" {
			continue
		}
		if c.at.After(down) && c.at.Before(up) {
			perAgent[c.agent]++
		}
		if c.ok && strings.HasSuffix(c.path, "/Poll") && c.at.After(up) && firstBack[c.agent].IsZero() {
			firstBack[c.agent] = c.at
		}
	}
	worst := 0
	for _, k := range perAgent {
		worst = max(worst, k)
	}
	if worst > 20 {
		t.Errorf("an agent made %d calls in the %s the server was down: a retry storm", worst, up.Sub(down).Round(time.Millisecond))
	}
	if len(firstBack) != n {
		t.Fatalf("%d of %d agents reached the restarted server", len(firstBack), n)
	}
	var backs []time.Time
	for _, at := range firstBack {
		backs = append(backs, at)
	}
	slices.SortFunc(backs, func(a, b time.Time) int { return a.Compare(b) })
	spread := backs[len(backs)-1].Sub(backs[0])
	if spread < 100*time.Millisecond {
		t.Errorf("all %d agents came back within %s of each other: no jitter", n, spread)
	}
	if out := srv2.output(); strings.Contains(out, "level=ERROR") {
		t.Errorf("the restarted server logged errors:\n%s", out)
	}
	t.Logf("%s: stopped in %s, down %s; calls while down: at most %d per agent; agents back within %s of the restart, spread over %s",
		sig, stopped.Round(time.Millisecond), up.Sub(down).Round(time.Millisecond), worst,
		backs[len(backs)-1].Sub(up).Round(time.Millisecond), spread.Round(time.Millisecond))
}
