package server_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

// TestHeldCallsOutliveShortServerTimeouts: an application that mounts forge on
// an http.Server of its own with short ReadTimeout and WriteTimeout (1 s here)
// still gets held calls answered: each held call extends its own connection's
// deadlines for as long as it holds.
func TestHeldCallsOutliveShortServerTimeouts(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		srv, err := server.New(server.Config{Store: e.Store, EnrollTokens: []string{forgetest.EnrollToken},
			AdminTokens: []string{forgetest.AdminToken}})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewUnstartedServer(srv)
		hs.Config.ReadTimeout = time.Second
		hs.Config.WriteTimeout = time.Second
		hs.Start()
		t.Cleanup(func() { srv.Close(); hs.Close() })

		id, tok := e.Register("a", nil)
		ag := forgev1connect.NewAgentServiceClient(http.DefaultClient, hs.URL, connect.WithInterceptors(bearer.Interceptor(tok)))
		ch := pollAsync(t.Context(), ag, &forgev1.PollRequest{Wait: durationpb.New(4 * time.Second)})
		time.Sleep(2500 * time.Millisecond) // past both timeouts
		tid := e.DispatchTo(id)
		r := get(ch, t)
		if r.err != nil || len(r.res.Tasks) != 1 || r.res.Tasks[0].Id != tid {
			t.Fatalf("Poll held past the server's timeouts = %+v; want task %s", r, tid)
		}
		ctl := forgev1connect.NewControlServiceClient(http.DefaultClient, hs.URL, connect.WithInterceptors(bearer.Interceptor(forgetest.AdminToken)))
		start := time.Now()
		w, err := ctl.WaitTask(t.Context(), connect.NewRequest(&forgev1.WaitTaskRequest{TaskId: tid, Wait: durationpb.New(2500 * time.Millisecond)}))
		if err != nil || w.Msg.Task.State != forgev1.TaskState_TASK_STATE_RUNNING || time.Since(start) < 2*time.Second {
			t.Fatalf("WaitTask held 2.5 s = %v, %v after %v; want the running task after the whole wait", w, err, time.Since(start))
		}
	})
}

// TestMetricsInTheApplicationsRegistry: given a registry, the server registers
// its forge_* collectors there (and serves it at /metrics); a second server
// on the same registry is refused; a Registerer that cannot be gathered leaves
// /metrics to the application.
func TestMetricsInTheApplicationsRegistry(t *testing.T) {
	t.Parallel()
	st := memstore.New(store.Config{})
	t.Cleanup(func() { st.Close() })
	reg := prometheus.NewRegistry()
	app := prometheus.NewCounter(prometheus.CounterOpts{Name: "app_requests_total", Help: "The application's own."})
	reg.MustRegister(app)
	srv, err := server.New(server.Config{Store: st, AdminTokens: []string{forgetest.AdminToken}, Metrics: reg, DisableReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	ctl := forgev1connect.NewControlServiceClient(http.DefaultClient, hs.URL, connect.WithInterceptors(bearer.Interceptor(forgetest.AdminToken)))
	if _, err := ctl.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	if !names["forge_rpc_requests_total"] || !names["app_requests_total"] || names["go_goroutines"] {
		t.Fatalf("the application's registry holds %v; want forge's and the application's metrics, no Go collector added", names)
	}
	body := getBody(t, hs.URL+"/metrics", http.StatusOK)
	if !strings.Contains(body, `forge_rpc_requests_total{code="ok",procedure="/forge.v1.ControlService/ListAgents"} 1`) || !strings.Contains(body, "app_requests_total") {
		t.Fatalf("/metrics does not serve the application's registry:\n%s", body)
	}
	if _, err := server.New(server.Config{Store: st, Metrics: reg, DisableReaper: true}); err == nil || !strings.Contains(err.Error(), "registering metrics") {
		t.Fatalf("a second server on the same registry: %v; want refused", err)
	}
	only := prometheus.WrapRegistererWith(prometheus.Labels{"replica": "x"}, prometheus.NewRegistry())
	srv2, err := server.New(server.Config{Store: st, Metrics: only, DisableReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	hs2 := httptest.NewServer(srv2)
	defer hs2.Close()
	getBody(t, hs2.URL+"/metrics", http.StatusNotFound)
	// Without Metrics, a registry of its own, with the Go collector.
	srv3, err := server.New(server.Config{Store: st, DisableReaper: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv3.Close()
	hs3 := httptest.NewServer(srv3)
	defer hs3.Close()
	if body := getBody(t, hs3.URL+"/metrics", http.StatusOK); !strings.Contains(body, "go_goroutines") {
		t.Fatal("a server's own registry lacks the Go collector")
	}
}

// TestReady: Ready is what /readyz says, as a call.
func TestReady(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		if err := e.Ready(t.Context()); err != nil {
			t.Fatalf("Ready = %v", err)
		}
		getBody(t, e.URL+"/readyz", http.StatusOK)
		e.Close()
		if err := e.Ready(t.Context()); !errors.Is(err, server.ErrClosed) {
			t.Fatalf("Ready after Close = %v, want ErrClosed", err)
		}
		if body := getBody(t, e.URL+"/readyz", http.StatusServiceUnavailable); !strings.Contains(body, "shutting down") {
			t.Fatalf("/readyz after Close = %q", body)
		}
	})
}

func getBody(t *testing.T, url string, want int) string {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != want {
		t.Fatalf("GET %s = %d %s, want %d", url, res.StatusCode, b, want)
	}
	return string(b)
}
