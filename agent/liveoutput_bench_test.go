package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/server"
)

// BenchmarkLiveOutput measures live output end to end: a real server (memory, or
// a Redis of the benchmark's own), an agent running `exec`, and a reader
// following the task with ReadOutput through another replica on Redis.
//
//	go test -run '^$' -bench LiveOutput -benchtime 3x ./agent/
//
// delay: a command prints a line every 100 ms for 3 s; each line's delay from
// its print to ReadOutput, as p50 and p99 (target: 500 ms).
//
// cost: a command prints a line every 10 ms for 5 s (continuously, as far as
// batching can tell) while the reader follows it; Redis commands per second
// (INFO commandstats, which counts the commands scripts run), less what the
// idle agent costs (its held Poll; the reapers are off) measured before, and the
// AppendOutput and ReadOutput calls per second; cost-unread is the same task
// with nobody reading it.
func BenchmarkLiveOutput(b *testing.B) {
	for _, backend := range forgetest.Backends() {
		b.Run(string(backend), func(b *testing.B) {
			// No reaper: its passes (66 reads a second per replica) would drown
			// what is measured, and nothing here needs one.
			cfg := server.Config{DisableReaper: true}
			e := forgetest.Start(b, forgetest.Options{Backend: backend, OwnRedis: backend == forgetest.Redis, Server: cfg})
			reader := e
			if backend != forgetest.Memory {
				reader = e.Replica(cfg)
			}
			a, err := agent.New(agent.Config{Servers: []string{e.URL}, EnrollToken: forgetest.EnrollToken})
			if err != nil {
				b.Fatal(err)
			}
			a.Handle("exec", agent.ExecHandler([]string{"sh"}))
			ctx, cancel := context.WithCancel(b.Context())
			defer cancel()
			go a.Run(ctx)
			for a.ID() == "" {
				time.Sleep(10 * time.Millisecond)
			}
			b.Run("delay", func(b *testing.B) {
				var delays []time.Duration
				for range b.N {
					id := dispatchExec(b, e, a.ID(), execPayload(printLines))
					out, _, _ := follow(b, reader.Control, id)
					for _, l := range out {
						var n int
						var ns int64
						if _, err := fmt.Sscanf(l.line, "line %d %d", &n, &ns); err == nil {
							delays = append(delays, l.at.Sub(time.Unix(0, ns)))
						}
					}
				}
				slices.Sort(delays)
				b.ReportMetric(ms(delays[len(delays)/2]), "p50_ms")
				b.ReportMetric(ms(delays[len(delays)*99/100]), "p99_ms")
				b.ReportMetric(ms(delays[len(delays)-1]), "max_ms")
				b.ReportMetric(0, "ns/op")
			})
			for _, followed := range []bool{true, false} {
				name := "cost"
				if !followed {
					name = "cost-unread"
				}
				b.Run(name, func(b *testing.B) {
					nodes, _ := e.Redis()
					const script = `i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo "line $i of a command that prints all the time"; sleep 0.01; done`
					var cmds, idleRate, secs, appends, reads float64
					for range b.N {
						idle0, at0 := commands(nodes), time.Now()
						time.Sleep(3 * time.Second)
						idleRate = (commands(nodes) - idle0) / time.Since(at0).Seconds()
						c0, a0, r0 := commands(nodes), rpcs(e, "AgentService/AppendOutput"), rpcs(reader, "ControlService/ReadOutput")
						start := time.Now()
						id := dispatchExec(b, e, a.ID(), execPayload(script))
						if followed {
							follow(b, reader.Control, id)
						} else {
							waitTask(b, e, id)
						}
						d := time.Since(start).Seconds()
						secs += d
						cmds += commands(nodes) - c0 - idleRate*d
						appends += rpcs(e, "AgentService/AppendOutput") - a0
						reads += rpcs(reader, "ControlService/ReadOutput") - r0
					}
					if nodes != nil {
						b.ReportMetric(cmds/secs, "redis_cmds/s")
						b.ReportMetric(idleRate, "idle_redis_cmds/s")
					}
					b.ReportMetric(appends/secs, "appends/s")
					b.ReportMetric(reads/secs, "reads/s")
					b.ReportMetric(0, "ns/op")
				})
			}
		})
	}
}

// dispatchExec dispatches an exec task to one agent and returns its id.
func dispatchExec(tb testing.TB, e *forgetest.Server, agentID string, payload []byte) string {
	tb.Helper()
	res, err := e.Control.Dispatch(tb.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec", Payload: payload,
		Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}))
	if err != nil || len(res.Msg.TaskIds) != 1 {
		tb.Fatalf("Dispatch: %v, %v", res, err)
	}
	return res.Msg.TaskIds[0]
}

// waitTask waits until a task has ended.
func waitTask(tb testing.TB, e *forgetest.Server, id string) {
	tb.Helper()
	for {
		res, err := e.Control.WaitTask(tb.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: id, Wait: durationpb.New(10 * time.Second)}))
		if err != nil {
			tb.Fatalf("WaitTask: %v", err)
		}
		if st := res.Msg.Task.State; st != forgev1.TaskState_TASK_STATE_PENDING && st != forgev1.TaskState_TASK_STATE_RUNNING {
			return
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// commands sums the calls of every command in INFO commandstats over nodes.
func commands(nodes []*redistest.Server) float64 {
	var sum float64
	for _, n := range nodes {
		info, _ := n.Do("INFO", "commandstats")
		for _, l := range strings.Split(info, "\n") {
			if !strings.HasPrefix(l, "cmdstat_") {
				continue
			}
			_, rest, _ := strings.Cut(l, "calls=")
			v, _, _ := strings.Cut(rest, ",")
			c, _ := strconv.ParseFloat(v, 64)
			sum += c
		}
	}
	return sum
}

// rpcs returns how many calls of a procedure a server answered OK.
func rpcs(e *forgetest.Server, proc string) float64 {
	return e.Metric(`forge_rpc_requests_total{code="ok",procedure="/forge.v1.` + proc + `"}`)
}
