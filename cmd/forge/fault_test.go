package main_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/redistest"
)

var terminal = map[forgev1.TaskState]bool{
	forgev1.TaskState_TASK_STATE_SUCCEEDED: true, forgev1.TaskState_TASK_STATE_FAILED: true,
	forgev1.TaskState_TASK_STATE_CANCELED: true, forgev1.TaskState_TASK_STATE_TIMED_OUT: true,
	forgev1.TaskState_TASK_STATE_EXPIRED: true, forgev1.TaskState_TASK_STATE_LOST: true,
}

// onBackends runs a fault test on the in-memory store and on a Redis of its own.
func onBackends(t *testing.T, fn func(t *testing.T, backend []string)) {
	t.Parallel()
	t.Run("memory", func(t *testing.T) { t.Parallel(); fn(t, nil) })
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		fn(t, []string{"--redis", redistest.Start(t).URL()})
	})
}

// account checks that every accepted task is in exactly one terminal state and
// returns the count per state.
func account(t *testing.T, ctl forgev1connect.ControlServiceClient, taskIDs []string) map[forgev1.TaskState]int {
	t.Helper()
	counts := map[forgev1.TaskState]int{}
	for _, id := range taskIDs {
		res, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: id, Wait: durationpb.New(60 * time.Second)}))
		if err != nil {
			t.Fatalf("accounting: task %s: %v", id, err)
		}
		if !terminal[res.Msg.Task.State] {
			t.Fatalf("accounting: task %s is %s, not terminal", id, res.Msg.Task.State)
		}
		counts[res.Msg.Task.State]++
	}
	return counts
}

// runFleet starts n in-process agents (the real agent package, sharing one
// transport) with the given labels and handler; they stop at test end.
func runFleet(t *testing.T, url string, n int, labels map[string]string, h func(i int) agent.Handler) {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4 * n
	hc := &http.Client{Transport: tr}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range n {
		a, err := agent.New(agent.Config{Servers: []string{url}, EnrollToken: enrollToken, Labels: labels,
			Name: fmt.Sprintf("fleet-%d", i), HTTPClient: hc, Logger: slog.New(slog.DiscardHandler), Concurrency: 1})
		if err != nil {
			t.Fatal(err)
		}
		a.Handle("work", h(i))
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// TestFaultFanOutRollout: one dispatch to 200 agents with max_concurrency 20 and
// max_failures 5, where one agent in ten fails: never more than 20 run at once and
// the counts add up exactly.
func TestFaultFanOutRollout(t *testing.T) { onBackends(t, faultFanOutRollout) }

func faultFanOutRollout(t *testing.T, backend []string) {
	url := startServer(t, backend...)
	ctl := control(url)
	const n, conc, maxFail = 200, 20, 5
	var running, peak atomic.Int32
	runFleet(t, url, n, map[string]string{"fault": "fanout"}, func(i int) agent.Handler {
		return func(ctx context.Context, _ *agent.Task) ([]byte, error) {
			r := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if r <= p || peak.CompareAndSwap(p, r) {
					break
				}
			}
			time.Sleep(5 * time.Millisecond)
			if i%10 == 7 {
				return nil, errors.New("this one fails")
			}
			return []byte("ok"), nil
		}
	})
	waitAgents(t, ctl, "fault=fanout", n)
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "work",
		Target: &forgev1.DispatchRequest_Selector{Selector: "fault=fanout"}, MaxConcurrency: conc, MaxFailures: maxFail}))
	if err != nil || len(d.Msg.TaskIds) != n {
		t.Fatalf("Dispatch = %v, %v", d, err)
	}
	w, err := ctl.WaitJob(t.Context(), connect.NewRequest(&forgev1.WaitJobRequest{JobId: d.Msg.JobId, Wait: durationpb.New(120 * time.Second)}))
	if err != nil || !w.Msg.Job.Done {
		t.Fatalf("WaitJob = %v, %v", w, err)
	}
	c := w.Msg.Job.Counts
	counts := account(t, ctl, d.Msg.TaskIds)
	if int(c.Succeeded) != counts[forgev1.TaskState_TASK_STATE_SUCCEEDED] || int(c.Failed) != counts[forgev1.TaskState_TASK_STATE_FAILED] ||
		int(c.Canceled) != counts[forgev1.TaskState_TASK_STATE_CANCELED] || c.Total != n ||
		c.Succeeded+c.Failed+c.Canceled != n {
		t.Fatalf("job counts %v disagree with the tasks %v", c, counts)
	}
	if c.Failed < maxFail || c.Failed > maxFail+conc-1 || c.Canceled == 0 || !w.Msg.Job.Canceled {
		t.Fatalf("counts %v: want the job stopped after %d failures", c, maxFail)
	}
	if p := peak.Load(); p > conc {
		t.Fatalf("%d tasks ran at once, max_concurrency is %d", p, conc)
	}
	t.Logf("counts %v, peak concurrency %d", c, peak.Load())
}
