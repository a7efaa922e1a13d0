package redisstore

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// taskCycle runs one task through a Store: dispatch, lease, report, read.
func taskCycle(t *testing.T, s *Store, cred store.Cred) {
	t.Helper()
	ctx := t.Context()
	job, err := s.Dispatch(ctx, store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: cred.AgentID},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3})
	if err != nil {
		t.Fatalf("Dispatch: %v", err)
	}
	r, err := s.Lease(ctx, store.LeaseParams{Cred: cred, Max: 1, Lease: time.Minute})
	if err != nil || len(r.Tasks) != 1 {
		t.Fatalf("Lease: %+v %v", r, err)
	}
	if _, err := s.Report(ctx, store.ReportParams{Cred: cred, TaskID: r.Tasks[0].ID, Attempt: 1, Outcome: store.OutcomeSucceeded}); err != nil {
		t.Fatalf("Report: %v", err)
	}
	if tk, err := s.GetTask(ctx, job.TaskIDs[0]); err != nil || tk.State != store.StateSucceeded {
		t.Fatalf("GetTask: %+v %v", tk, err)
	}
}

// TestFunctionsUsedAndRecovered: the store calls its library's functions
// (FCALL, no EVALSHA), and a node that lost the library (FUNCTION FLUSH, as a
// restart without persistence leaves it) has it loaded again by the next call,
// which then succeeds; on one node and on a cluster.
func TestFunctionsUsedAndRecovered(t *testing.T) {
	t.Parallel()
	for _, cluster := range []bool{false, true} {
		t.Run(map[bool]string{false: "single", true: "cluster"}[cluster], func(t *testing.T) {
			t.Parallel()
			var url string
			var nodes []*redistest.Server
			var err error
			if cluster {
				cl := redistest.StartCluster(t, 3)
				url = cl.URL()
				if nodes, err = cl.Masters(); err != nil {
					t.Fatal(err)
				}
			} else {
				rd := redistest.Start(t)
				url, nodes = rd.URL(), []*redistest.Server{rd}
			}
			s, cc := countedStore(t, url)
			if !s.functions.Load() {
				t.Fatal("the store does not use its library of functions")
			}
			a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "n", SecretHash: sum("s")})
			if err != nil {
				t.Fatal(err)
			}
			cred := store.Cred{AgentID: a.ID, SecretHash: sum("s")}
			cc.take()
			taskCycle(t, s, cred)
			if _, _, names := cc.take(); strings.Contains(names, "EVAL") || !strings.Contains(names, "FCALL") {
				t.Errorf("a task's calls: %s; want FCALL and no EVALSHA", names)
			}
			for _, n := range nodes {
				if _, err := n.Do("FUNCTION", "FLUSH"); err != nil && !strings.Contains(err.Error(), "READONLY") {
					t.Fatal(err)
				}
			}
			taskCycle(t, s, cred)
			if !s.functions.Load() {
				t.Error("the store stopped using functions after a node lost them")
			}
			for _, n := range nodes {
				if lib, err := n.Do("FUNCTION", "LIST", "LIBRARYNAME", theLibrary().name); err == nil && !strings.Contains(lib, theLibrary().name) {
					t.Errorf("%s: the library was not loaded again: %q", n.Addr(), lib)
				}
			}
		})
	}
}

// TestScriptsWithoutFunctions: a Redis user that may not load functions (an
// ACL written before forge used them) still runs everything, as scripts
// (EVALSHA), and the store says so once in its log.
func TestScriptsWithoutFunctions(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t)
	rd.MustDo("ACL", "SETUSER", "old", "on", ">old-password-123", "~*", "&*", "+@all", "-function", "-fcall")
	var log bytes.Buffer
	s, err := Open(t.Context(), "redis://old:old-password-123@"+rd.Addr()+"/0", store.Config{},
		Options{Prefix: "nofn", Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.functions.Load() {
		t.Fatal("the store uses functions its user may not load")
	}
	if !strings.Contains(log.String(), "functions cannot be used") {
		t.Errorf("the fallback to scripts is not logged: %q", log.String())
	}
	cc := &countingClient{Client: s.client}
	s.client = cc
	a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "n", SecretHash: sum("s")})
	if err != nil {
		t.Fatal(err)
	}
	taskCycle(t, s, store.Cred{AgentID: a.ID, SecretHash: sum("s")})
	if _, _, names := cc.take(); strings.Contains(names, "FCALL") || !strings.Contains(names, "EVALSHA") {
		t.Errorf("the calls: %s; want EVALSHA and no FCALL", names)
	}
}

// TestLibraryPerVersion: the library and its functions are named after a
// digest of their text, so two forge versions sharing a Redis (a rolling
// upgrade) each load and call their own.
func TestLibraryPerVersion(t *testing.T) {
	t.Parallel()
	one := buildLibrary([]*script{newScript("x", "return 1")})
	two := buildLibrary([]*script{newScript("x", "return 2")})
	if one.name == two.name || !strings.HasPrefix(one.name, "forge_") {
		t.Fatalf("libraries of different texts are named %q and %q", one.name, two.name)
	}
	rd := redistest.Start(t)
	for _, lib := range []*library{one, two} {
		if _, err := rd.Do("FUNCTION", "LOAD", lib.text); err != nil {
			t.Fatalf("FUNCTION LOAD %s: %v", lib.name, err)
		}
	}
	for want, lib := range map[string]*library{"1": one, "2": two} {
		for sc, fn := range lib.fn {
			if got, err := rd.Do("FCALL", fn, "0"); err != nil || got != want {
				t.Errorf("FCALL %s (%s) = %q %v, want %s", fn, sc.name, got, err, want)
			}
		}
	}
}
