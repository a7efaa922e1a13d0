// Package forgetest starts real forge servers for tests: server.New over a
// chosen store (memory, a Redis node, a Redis Cluster), served over HTTP on a free
// loopback port, with operator and agent clients and known tokens. Suites say what
// they test; Each runs them on every store.
//
// Redis servers are shared by the tests of one binary (each test under its own
// key prefix) when the binary's TestMain calls Main; otherwise each test starts
// its own.
package forgetest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
	"github.com/orange-forge/forge/store/redisstore"
)

// The tokens a Server accepts unless Options.Server gives others.
const (
	EnrollToken = "enroll-0123456789abcdef"
	AdminToken  = "admin-0123456789abcdef"
)

// Backend names a store implementation.
type Backend string

// The stores a Server can run on.
const (
	Memory  Backend = "memory"  // memstore
	Redis   Backend = "redis"   // redisstore on one redis-server
	Cluster Backend = "cluster" // redisstore on a three-node Redis Cluster
)

// Backends returns the stores every server-level suite runs on (see Each):
// memory and one Redis node.
func Backends() []Backend { return []Backend{Memory, Redis} }

// Each runs f once per backend of Backends, as parallel subtests named after
// the backend (TestX/memory, TestX/redis).
func Each(t *testing.T, f func(t *testing.T, b Backend)) {
	t.Helper()
	for _, b := range Backends() {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			f(t, b)
		})
	}
}

// Options choose a Server's store and configuration.
type Options struct {
	// Backend is the store; empty means Memory.
	Backend Backend
	// Store configures the store (a test's clock, limits).
	Store store.Config
	// OwnRedis gives the test a redis-server of its own (Backend Redis), without
	// persistence, instead of the binary's shared one: LoseState restarts it.
	OwnRedis bool
	// Server configures the server. Store is always set by Start; EnrollTokens
	// and AdminTokens default to EnrollToken and AdminToken; a nil Logger
	// means the server and store log into Server.Log.
	Server server.Config
}

// Server is a forge server on a real HTTP server on a free loopback port. It
// embeds the *server.Server, so HeldPolls and Close are at hand.
type Server struct {
	*server.Server
	// URL is the server's base URL, http://127.0.0.1:port.
	URL string
	// Store is the store the server runs on; tests may drive it (Reap).
	Store store.Store
	// Backend is the kind of store.
	Backend Backend
	// Log holds the log lines of the server and its store, as JSON, when
	// Options.Server.Logger was nil.
	Log *Log
	// Control is a ControlService client with AdminToken.
	Control forgev1connect.ControlServiceClient

	t      testing.TB
	config server.Config
	redis  *redisStore // nil on Memory
	// storeConfig is what the store was opened with, for LoseState.
	storeConfig store.Config
	served      swapHandler // what the HTTP server serves: Server, replaced by LoseState on Memory
}

// Start starts a Server and stops it (server, HTTP server, then store) when the
// test ends.
func Start(t testing.TB, opt Options) *Server {
	t.Helper()
	if opt.Backend == "" {
		opt.Backend = Memory
	}
	cfg := opt.Server
	var log *Log
	if cfg.Logger == nil {
		log = &Log{}
		cfg.Logger = log.Logger()
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("forgetest: the last lines the %s server logged:\n%s", opt.Backend, log.Tail(40))
			}
		})
	}
	s := &Server{t: t, Backend: opt.Backend, Log: log, storeConfig: opt.Store}
	switch opt.Backend {
	case Memory:
		st := memstore.New(opt.Store)
		t.Cleanup(func() { st.Close() })
		s.Store = st
	case Redis, Cluster:
		s.redis = openRedis(t, opt.Backend, opt.OwnRedis, opt.Store, cfg.Logger)
		s.Store = s.redis.st
	default:
		t.Fatalf("forgetest: unknown backend %q", opt.Backend)
	}
	s.start(cfg)
	return s
}

// start serves a new server.Server over s.Store.
func (s *Server) start(cfg server.Config) {
	s.t.Helper()
	cfg.Store = s.Store
	if cfg.EnrollTokens == nil {
		cfg.EnrollTokens = []string{EnrollToken}
	}
	if cfg.AdminTokens == nil {
		cfg.AdminTokens = []string{AdminToken}
	}
	srv, err := server.New(cfg)
	if err != nil {
		s.t.Fatalf("forgetest: server.New: %v", err)
	}
	s.served.set(srv)
	hs := httptest.NewServer(&s.served)
	s.t.Cleanup(func() { s.served.get().Close(); hs.Close() })
	s.Server, s.URL, s.config = srv, hs.URL, cfg
	s.Control = s.ControlAs(AdminToken)
}

// Replica starts a second server over the same store, as another replica behind
// a load balancer would be, with cfg (Store and Logger come from s when unset).
func (s *Server) Replica(cfg server.Config) *Server {
	s.t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = s.config.Logger
	}
	r := &Server{t: s.t, Store: s.Store, Backend: s.Backend, Log: s.Log, redis: s.redis}
	r.start(cfg)
	return r
}

// Agent returns an AgentService client that sends token.
func (s *Server) Agent(token string) forgev1connect.AgentServiceClient {
	return forgev1connect.NewAgentServiceClient(http.DefaultClient, s.URL, connect.WithInterceptors(bearer.Interceptor(token)))
}

// ControlAs returns a ControlService client that sends token.
func (s *Server) ControlAs(token string) forgev1connect.ControlServiceClient {
	return forgev1connect.NewControlServiceClient(http.DefaultClient, s.URL, connect.WithInterceptors(bearer.Interceptor(token)))
}

// Register enrolls an agent with EnrollToken and returns its id and token.
func (s *Server) Register(name string, labels map[string]string) (id, token string) {
	s.t.Helper()
	res, err := s.Agent(EnrollToken).Register(s.t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: name, Labels: labels}))
	if err != nil {
		s.t.Fatalf("forgetest: Register %q: %v", name, err)
	}
	return res.Msg.AgentId, res.Msg.AgentToken
}

// DispatchTo dispatches an "echo" task to one agent and returns the task's id.
func (s *Server) DispatchTo(agentID string) string {
	s.t.Helper()
	res, err := s.Control.Dispatch(s.t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo",
		Target: &forgev1.DispatchRequest_AgentId{AgentId: agentID}}))
	if err != nil {
		s.t.Fatalf("forgetest: Dispatch to %s: %v", agentID, err)
	}
	if len(res.Msg.TaskIds) != 1 {
		s.t.Fatalf("forgetest: Dispatch to %s made %d tasks", agentID, len(res.Msg.TaskIds))
	}
	return res.Msg.TaskIds[0]
}

// Task returns what GetTask says of a task.
func (s *Server) Task(id string) *forgev1.TaskInfo {
	s.t.Helper()
	res, err := s.Control.GetTask(s.t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: id}))
	if err != nil {
		s.t.Fatalf("forgetest: GetTask %s: %v", id, err)
	}
	return res.Msg.Task
}

// Post sends body to path (such as "/forge.v1.AgentService/Poll") as a unary
// Connect call with token (none when empty) and content type ctype, and returns
// the HTTP status and, for a Connect error, its code and message.
func (s *Server) Post(ctx context.Context, path, token, ctype string, body io.Reader) (status int, code, msg string) {
	s.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "POST", s.URL+path, body)
	if err != nil {
		s.t.Fatalf("forgetest: %s: %v", path, err)
	}
	if token != "" {
		bearer.Set(req.Header, token)
	}
	req.Header.Set("Content-Type", ctype)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("forgetest: %s: %v", path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var e struct{ Code, Message string }
	if res.StatusCode != http.StatusOK {
		json.Unmarshal(b, &e)
	}
	return res.StatusCode, e.Code, e.Message
}

// Log collects JSON log lines; it is safe for concurrent use.
type Log struct {
	buf syncBuffer
}

// Logger returns a logger at debug level that writes into l.
func (l *Log) Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(&l.buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// String returns every line logged so far.
func (l *Log) String() string { return l.buf.String() }

// Lines returns the lines logged so far.
func (l *Log) Lines() []string {
	s := strings.TrimSpace(l.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// Tail returns the last n lines logged so far.
func (l *Log) Tail(n int) string {
	lines := l.Lines()
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("(%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

var prefixes atomic.Int64

// newPrefix returns a key prefix no other test of this binary uses.
func newPrefix() string { return fmt.Sprintf("ft%d", prefixes.Add(1)) }

// redisStore is a redisstore and where its keys live.
type redisStore struct {
	st     *redisstore.Store
	nodes  []*redistest.Server
	prefix string
	own    bool // the test's own redis-server (Options.OwnRedis)
}

func openRedis(t testing.TB, b Backend, own bool, cfg store.Config, log *slog.Logger) *redisStore {
	t.Helper()
	var url string
	var nodes []*redistest.Server
	switch {
	case b == Cluster:
		if own {
			t.Fatalf("forgetest: OwnRedis is for the Redis backend, not %s", b)
		}
		cl := sharedCluster(t)
		url, nodes = cl.URL(), cl.Nodes
	case own:
		srv := redistest.Start(t)
		url, nodes = srv.URL(), []*redistest.Server{srv}
	default:
		srv := sharedRedis(t)
		url, nodes = srv.URL(), []*redistest.Server{srv}
	}
	r := &redisStore{nodes: nodes, prefix: newPrefix(), own: own}
	st, err := redisstore.Open(t.Context(), url, cfg, redisstore.Options{Prefix: r.prefix, Logger: log})
	if err != nil {
		t.Fatalf("forgetest: redisstore.Open: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	r.st = st
	return r
}

// Metric returns the value of one sample of the server's /metrics, named as
// Prometheus prints it (forge_polls_held, or name{label="value"}); 0 when the
// sample is absent, as a counter no one has counted yet is.
func (s *Server) Metric(sample string) float64 {
	s.t.Helper()
	res, err := http.Get(s.URL + "/metrics")
	if err != nil {
		s.t.Fatalf("forgetest: /metrics: %v", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		s.t.Fatalf("forgetest: /metrics: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				s.t.Fatalf("forgetest: /metrics: %q", line)
			}
			return f
		}
	}
	return 0
}

// Redis returns the redis-servers the store runs on and the prefix of its keys,
// for tests that look at Redis itself (INFO, MEMORY USAGE); none on Memory.
// With OwnRedis the server is the test's alone, so its counters are the test's.
func (s *Server) Redis() (nodes []*redistest.Server, prefix string) {
	if s.redis == nil {
		return nil, ""
	}
	return s.redis.nodes, s.redis.prefix
}
