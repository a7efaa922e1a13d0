package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/server"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/memstore"
)

// scriptRoundTripper is a store that can time a bare Redis script round trip
// through its own client (redisstore.Store).
type scriptRoundTripper interface {
	ScriptRoundTrip(ctx context.Context) error
}

// runner holds what the scenarios share: the store, the in-process servers (or
// the URLs of external ones), the operator client, and the bare-call floor.
type runner struct {
	cfg Config
	log *slog.Logger

	enroll, admin string
	st            store.Store // in-process only
	main          *instance   // in-process only
	url           string

	opHTTP *http.Client // operator calls, scrapes; SingleWrite like the agents
	ctl    forgev1connect.ControlServiceClient

	floor     time.Duration // F: p50 of the bare call
	rfloor    time.Duration // R: p50 of a bare Redis script round trip (Redis only)
	floorRate float64       // bare calls/s, concurrent

	one    *single        // the one-agent fleet
	kf     *fleet         // the 1,000-agent fleet
	kids   []string       // its agent ids
	kstart chan time.Time // its "start" handler's start times
}

func (r *runner) external() bool { return len(r.cfg.Servers) > 0 }

func (r *runner) storeName() string {
	switch {
	case r.external():
		return "external"
	case r.cfg.RedisURL != "":
		return "redis"
	}
	return "memory"
}

func (r *runner) targetName() string {
	if r.external() {
		return strings.Join(r.cfg.Servers, ",")
	}
	return "in-process " + r.url
}

func (r *runner) init(ctx context.Context) error {
	r.opHTTP = &http.Client{Transport: agent.SingleWrite(newTransport(512))}
	if r.external() {
		if r.cfg.AdminToken == "" || r.cfg.EnrollToken == "" {
			return errors.New("--server needs --admin-token and --enroll-token")
		}
		r.enroll, r.admin = r.cfg.EnrollToken, r.cfg.AdminToken
		r.url = strings.TrimRight(r.cfg.Servers[0], "/")
		for _, u := range r.cfg.Servers {
			if err := r.probe(ctx, strings.TrimRight(u, "/")); err != nil {
				return err
			}
		}
	} else {
		r.enroll, r.admin = "fe_bench_"+randHex(12), "fo_bench_"+randHex(12)
		st, err := r.openStore(ctx)
		if err != nil {
			return err
		}
		r.st = st
		if r.main, err = r.startServer(st, "127.0.0.1:0", 0); err != nil {
			st.Close()
			return err
		}
		r.url = r.main.url
	}
	r.ctl = r.control(r.url)
	return nil
}

// probe makes sure a server to measure is a forge server that takes the admin
// token, before any scenario waits out its timeouts against it.
func (r *runner) probe(parent context.Context, url string) error {
	ctx, cancel := context.WithTimeout(parent, 10*time.Second)
	defer cancel()
	_, err := forgev1connect.NewPingServiceClient(r.opHTTP, url).Ping(ctx, connect.NewRequest(&forgev1.PingRequest{}))
	switch {
	case err == nil:
	case parent.Err() != nil:
		return parent.Err()
	case ctx.Err() != nil:
		return fmt.Errorf("%s: unreachable: no answer within 10s", url)
	case connect.CodeOf(err) == connect.CodeUnavailable:
		return fmt.Errorf("%s: unreachable: %w", url, err)
	default:
		return fmt.Errorf("%s: not a forge server: %w", url, err)
	}
	_, err = r.control(url).ListAgents(ctx, connect.NewRequest(&forgev1.ListAgentsRequest{PageSize: 1}))
	if c := connect.CodeOf(err); c == connect.CodeUnauthenticated || c == connect.CodePermissionDenied {
		return fmt.Errorf("%s: --admin-token refused: %w", url, err)
	}
	return nil
}

func (r *runner) close(ctx context.Context) {
	r.stopFleets()
	if r.main != nil {
		r.main.close(ctx)
	}
	if r.st != nil {
		r.st.Close()
	}
	r.opHTTP.CloseIdleConnections()
}

func (r *runner) openStore(ctx context.Context) (store.Store, error) {
	cfg := store.Config{MaxTargets: -1} // a fleet of any size is dispatched to at once
	if r.cfg.RedisURL != "" {
		return r.cfg.OpenRedis(ctx, r.cfg.RedisURL, cfg)
	}
	return memstore.New(cfg), nil
}

// control returns an operator client of the server at url.
func (r *runner) control(url string) forgev1connect.ControlServiceClient {
	return forgev1connect.NewControlServiceClient(r.opHTTP, url, connect.WithInterceptors(bearer.Interceptor(r.admin)))
}

// instance is an in-process server on a loopback port.
type instance struct {
	srv *server.Server
	hs  *http.Server
	url string
}

// startServer serves a new server.Server over st on addr, configured as
// `forge server` configures its own. pollHold zero keeps the default.
func (r *runner) startServer(st store.Store, addr string, pollHold time.Duration) (*instance, error) {
	// A whole fleet enrolls at once from one address: no limit on Register.
	srv, err := server.New(server.Config{Store: st, EnrollTokens: []string{r.enroll}, AdminTokens: []string{r.admin},
		PollHold: pollHold, RegisterRate: -1, RegisterRatePerAddr: -1})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		srv.Close()
		return nil, err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 60 * time.Second,
		WriteTimeout: 6 * time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		ErrorLog: nil}
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	go hs.Serve(ln)
	return &instance{srv: srv, hs: hs, url: "http://" + ln.Addr().String()}, nil
}

// close stops the instance as `forge server` stops on SIGTERM: held calls are
// answered, then connections close. It waits up to 2 s for calls in flight, even
// when ctx has ended already (as it has when a run is interrupted).
func (in *instance) close(ctx context.Context) {
	in.srv.Close()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if in.hs.Shutdown(ctx) != nil {
		in.hs.Close()
	}
}

// newTransport is an HTTP/1.1 transport keeping up to idle connections.
func newTransport(idle int) *http.Transport {
	var protos http.Protocols
	protos.SetHTTP1(true)
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        idle,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		Protocols:           &protos,
	}
}

// childEnv is the environment of the bench's child processes: this one's
// without its FORGE_* variables, which would otherwise point a child `forge
// server` at the Redis of the shell (FORGE_REDIS) rather than the bench's.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FORGE_") {
			env = append(env, kv)
		}
	}
	return env
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// countingRT counts the calls of a fleet and the ones that failed (transport
// error or a non-200 answer), and bounds concurrent registrations so that
// starting thousands of agents does not overflow the listen backlog.
type countingRT struct {
	base     http.RoundTripper
	register chan struct{}
	calls    atomic.Int64
	errors   atomic.Int64
}

func (c *countingRT) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.HasSuffix(req.URL.Path, "/Register") {
		select {
		case c.register <- struct{}{}:
			defer func() { <-c.register }()
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	c.calls.Add(1)
	res, err := c.base.RoundTrip(req)
	if err != nil || res.StatusCode != http.StatusOK {
		if req.Context().Err() == nil {
			c.errors.Add(1)
		}
	}
	return res, err
}

// fleet is a set of real agents in this process sharing one transport.
type fleet struct {
	agents []*agent.Agent
	tr     *http.Transport
	rt     *countingRT
	cancel context.CancelFunc
	wg     sync.WaitGroup
	failed atomic.Int64
	// firstErr is why the first agent that stopped on its own stopped (its
	// enrollment token refused, say).
	firstErr atomic.Pointer[error]
	// stopped[i] is closed once agent i has stopped.
	stopped []chan struct{}
}

type fleetSpec struct {
	n           int
	servers     []string
	labels      map[string]string
	handlers    map[string]agent.Handler
	concurrency int
	// labelsFor, when set, gives agent i its labels instead of labels.
	labelsFor func(i int) map[string]string
	// idle bounds the idle connections the fleet's transport keeps; zero: 3n+16
	// (each agent's poll, report and heartbeat).
	idle int
	// registering bounds the Registers in flight; zero: 64.
	registering int
}

// startFleet starts n agents; they register (at most 64 at a time, or
// fs.registering) and poll.
func (r *runner) startFleet(ctx context.Context, fs fleetSpec) (*fleet, error) {
	if len(fs.servers) == 0 {
		fs.servers = []string{r.url}
	}
	idle := fs.idle
	if idle <= 0 {
		idle = 3*fs.n + 16
	}
	tr := newTransport(idle)
	registering := fs.registering
	if registering <= 0 {
		registering = 64
	}
	f := &fleet{tr: tr, rt: &countingRT{base: agent.SingleWrite(tr), register: make(chan struct{}, registering)}}
	hc := &http.Client{Transport: f.rt}
	fctx, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	for i := range fs.n {
		labels := fs.labels
		if fs.labelsFor != nil {
			labels = fs.labelsFor(i)
		}
		a, err := agent.New(agent.Config{Servers: fs.servers, EnrollToken: r.enroll, Name: fmt.Sprintf("bench-%d", i),
			Labels: labels, Concurrency: fs.concurrency, HTTPClient: hc, Logger: slog.New(slog.DiscardHandler),
			DrainGrace: time.Second})
		if err != nil {
			f.stop()
			return nil, err
		}
		for t, h := range fs.handlers {
			a.Handle(t, h)
		}
		f.agents = append(f.agents, a)
		f.stopped = append(f.stopped, make(chan struct{}))
	}
	// Each agent starts only when one of the registering slots is free, and
	// frees it once it has an id (or has stopped): an agent's Register
	// deadline must not run while it waits for its turn, or at tens of
	// thousands of agents the ones at the back time out before they are
	// sent, retry, and registration collapses.
	slots := make(chan struct{}, registering)
	f.wg.Add(len(f.agents))
	go func() {
		for i, a := range f.agents {
			select {
			case slots <- struct{}{}:
			case <-fctx.Done():
				for range f.agents[i:] {
					f.wg.Done()
				}
				return
			}
			stopped := f.stopped[i]
			go func() {
				defer f.wg.Done()
				defer close(stopped)
				if err := a.Run(fctx); err != nil {
					f.failed.Add(1)
					if fctx.Err() == nil {
						f.firstErr.CompareAndSwap(nil, &err)
					}
					r.log.Warn("agent stopped", "err", err)
				}
			}()
			go func() {
				defer func() { <-slots }()
				t := time.NewTicker(5 * time.Millisecond)
				defer t.Stop()
				for a.ID() == "" {
					select {
					case <-t.C:
					case <-stopped:
						return
					}
				}
			}()
		}
	}()
	return f, nil
}

// ids waits until every agent has an id and returns them. It gives up when
// timeout passes or an agent stops before it has one, and then says why the
// first agent that stopped stopped.
func (f *fleet) ids(ctx context.Context, timeout time.Duration) ([]string, error) {
	end := time.Now().Add(timeout)
	out := make([]string, len(f.agents))
	for i, a := range f.agents {
		for {
			if out[i] = a.ID(); out[i] != "" {
				break
			}
			select {
			case <-f.stopped[i]:
				return nil, f.notRegistered(fmt.Sprintf("only %d of %d agents registered", i, len(f.agents)))
			default:
			}
			if time.Now().After(end) || ctx.Err() != nil {
				return nil, f.notRegistered(fmt.Sprintf("only %d of %d agents registered within %v", i, len(f.agents), timeout))
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return out, nil
}

// notRegistered is the error of agents that did not register: msg, and why
// the first agent that stopped stopped.
func (f *fleet) notRegistered(msg string) error {
	if err := f.firstErr.Load(); err != nil {
		return fmt.Errorf("%s; %d stopped, the first: %w", msg, f.failed.Load(), *err)
	}
	return errors.New(msg)
}

// stop ends every agent and closes the fleet's connections.
func (f *fleet) stop() {
	f.cancel()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	f.tr.CloseIdleConnections()
}

// waitFor polls cond every few milliseconds until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	end := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(end) || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}
