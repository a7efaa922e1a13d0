package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

// TestMain starts the fleet the examples talk to — a forge server in memory
// on a free loopback port, and three agents in this process — and gives its
// address and operator token to the examples as FORGE_SERVER and
// FORGE_ADMIN_TOKEN, the variables `forge run` reads.
func TestMain(m *testing.M) {
	stop, err := startExampleFleet()
	if err != nil {
		fmt.Fprintln(os.Stderr, "client tests: starting the examples' fleet:", err)
		os.Exit(1)
	}
	defer stop()
	forgetest.Main(m)
}

// The examples' fleet: web-1 and web-2 (role=web) and db-1 (role=db), all
// env=prod. Each runs `echo` and `sh` with exec, `greet` (hello, <payload>)
// and `wait` (runs until canceled).
var exampleAgents = []struct {
	name   string
	labels map[string]string
}{
	{"web-1", map[string]string{"env": "prod", "role": "web"}},
	{"web-2", map[string]string{"env": "prod", "role": "web"}},
	{"db-1", map[string]string{"env": "prod", "role": "db"}},
}

func startExampleFleet() (stop func(), err error) {
	ctx, cancel := context.WithCancel(context.Background())
	var stops []func()
	stop = func() {
		cancel()
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	st := memstore.New(store.Config{})
	stops = append(stops, func() { st.Close() })
	srv, err := server.New(server.Config{Store: st, EnrollTokens: []string{forgetest.EnrollToken}, AdminTokens: []string{forgetest.AdminToken}})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	stops = append(stops, func() { srv.Close(); hs.Close() })
	url := "http://" + ln.Addr().String()
	os.Setenv("FORGE_SERVER", url)
	os.Setenv("FORGE_ADMIN_TOKEN", forgetest.AdminToken)

	done := make(chan error, len(exampleAgents))
	for _, ea := range exampleAgents {
		a, err := agent.New(agent.Config{Servers: []string{url}, EnrollToken: forgetest.EnrollToken, Name: ea.name, Labels: ea.labels,
			DrainGrace: time.Second})
		if err != nil {
			return nil, err
		}
		a.Handle("exec", agent.ExecHandler([]string{"echo", "sh"}))
		a.Handle("greet", func(ctx context.Context, t *agent.Task) ([]byte, error) {
			return append([]byte("hello, "), t.Payload...), nil
		})
		a.Handle("wait", func(ctx context.Context, t *agent.Task) ([]byte, error) {
			<-ctx.Done()
			return nil, context.Cause(ctx)
		})
		go func() { done <- a.Run(ctx) }()
	}
	stops = append(stops, func() {
		for range exampleAgents {
			<-done
		}
	})
	// Ready when every agent holds a Poll: a task dispatched now reaches it at once.
	ctl := forgev1connect.NewControlServiceClient(http.DefaultClient, url, connect.WithInterceptors(bearer.Interceptor(forgetest.AdminToken)))
	for deadline := time.Now().Add(30 * time.Second); ; {
		res, err := ctl.ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{Status: forgev1.AgentStatus_AGENT_STATUS_ONLINE}))
		if err == nil && len(res.Msg.Agents) == len(exampleAgents) && srv.HeldPolls() == len(exampleAgents) {
			return stop, nil
		}
		if time.Now().After(deadline) {
			var names []string
			if err == nil {
				for _, a := range res.Msg.Agents {
					names = append(names, a.Name)
				}
			}
			return nil, errors.New("the agents did not come online: " + strings.Join(names, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	slices.Sort(out)
	return out
}
