// Package agent is forge's embeddable agent. An Agent dials out to a forge server
// over HTTP/1.1, long-polls it for tasks, runs each with the Handler registered
// for its type, and reports the results, so the machine it runs on needs no open
// port. It keeps its identity in a state dir across restarts, heartbeats the
// attempts it runs, hears cancellations, survives server outages with jittered
// backoff (rotating among several servers), and drains cleanly on shutdown.
package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/internal/gzipcap"
	"github.com/orange-forge/forge/internal/outputcap"
	"github.com/orange-forge/forge/internal/tasksig"
	"github.com/orange-forge/forge/store"
)

// Config configures an Agent. Zero values get the defaults noted.
type Config struct {
	// Servers are the servers' base URLs, such as http://127.0.0.1:8080. With more
	// than one, the agent moves to the next on a connection failure or an
	// unavailable answer. At least one is required.
	Servers []string
	// EnrollToken is the enrollment token Register uses when StateDir holds no
	// identity (or there is no StateDir).
	EnrollToken string
	// Name is the agent's name; DefaultName(StateDir) when empty.
	Name string
	// Labels are the agent's labels, which selectors match.
	Labels map[string]string
	// StateDir, when set, keeps the agent's id and token (file mode 0600, dir
	// 0700) so a restart keeps the identity, and records the process groups of
	// running exec tasks so a restart after a crash ends them before taking work.
	// One running agent holds a StateDir at a time.
	StateDir string
	// Concurrency is the most handlers run at once; 4.
	Concurrency int
	// PollWait is how long the server may hold a Poll; zero means the server's default.
	PollWait time.Duration
	// DrainGrace is how long running handlers may finish after Run's context is
	// cancelled before their contexts are cancelled too; 30 s.
	DrainGrace time.Duration
	// MaxOutput caps the output a handler returns (reported with the result);
	// 1 MiB. A longer output keeps its head and tail with a marker line saying how
	// many bytes were cut. What handlers write to Task.Stdout and Task.Stderr is
	// streamed, and capped by the server (--max-output).
	MaxOutput int
	// MaxAnswer bounds what the agent reads of one answer, inflated: 256 MiB,
	// room for a Poll answer of 64 tasks whose payloads are as big as the
	// server's default body limit (4 MiB) lets a Dispatch make them. A larger
	// answer — or a gzip bomb from a party in the middle — is refused, as a
	// failed call, once that much has come; the agent never holds more.
	MaxAnswer int
	// HTTPClient makes the calls; by default the agent's own HTTP/1.1 transport,
	// with enough idle connections for poll, report and heartbeat at once. It must
	// have no Timeout: the agent sets a deadline on each call, and Poll is held.
	HTTPClient *http.Client
	// TLSConfig is used by the default transport, such as for a private CA.
	TLSConfig *tls.Config
	// Logger receives the agent's log; nil discards it. Tokens are never logged.
	Logger *slog.Logger
	// Version is the agent's software version, sent at Register.
	Version string
	// SigningKeys pin the server's task-signing public keys (give the old and
	// the new while rotating): the agent runs only tasks signed with them (see
	// package tasksig), whatever the server says at Register. Without them, the
	// agent trusts the keys the server gives at its first Register, keeps them
	// in its state dir, and from then on refuses unsigned tasks too; a later
	// Register answer can add keys, never drop one.
	SigningKeys []ed25519.PublicKey
}

// Defaults and timings.
const (
	defaultConcurrency = 4
	defaultDrainGrace  = 30 * time.Second
	defaultMaxOutput   = outputcap.Default
	defaultMaxAnswer   = 256 << 20
	defaultPollWait    = store.DefaultPollHold
	defaultHeartbeat   = 10 * time.Second
	// pollMargin is added to the poll's wait for its call deadline: the server
	// answers before the deadline it is sent, so the margin only covers transit.
	pollMargin = 10 * time.Second
	// callTimeout bounds every call that is not held.
	callTimeout = 15 * time.Second
	// reportDrainTimeout bounds the reports sent after the drain grace.
	reportDrainTimeout = 15 * time.Second
	// maxPollTasks is the server's default limit on max_tasks.
	maxPollTasks = 64
	// quickEmpty is how fast an empty Poll answer must come to look like a
	// misbehaving server (or another agent polling with the same identity).
	quickEmpty = 200 * time.Millisecond
)

// ErrRevoked is returned by Run when the server answers that the agent was
// revoked. The agent stops for good: it never enrolls again by itself, and with
// a state dir it records the revocation there, so a restart stops at once too.
// A server that refuses the token for another reason than "unknown agent" (an
// older server's answer) is taken the same way; the error then quotes it.
var ErrRevoked = errors.New("agent: the server revoked this agent; it stops for good and will not enroll again by itself " +
	"(to run an agent here again, enroll a new one with an empty state dir)")

// ErrUnknown is returned by Run when the server answers that it does not know
// the agent (it never registered there, or the server's state was lost) and no
// enrollment token was given to enroll again with. With one, the agent enrolls
// again by itself and Run goes on.
var ErrUnknown = errors.New("agent: the server does not know this agent (its state was lost?) and no enrollment token " +
	"was given to enroll again with")

// timedOutError is the cause given to a handler's context when the task's
// timeout passes, counted from when the agent received it.
type timedOutError struct{ after time.Duration }

func (e timedOutError) Error() string { return fmt.Sprintf("timed out after %v", e.after) }

// Causes given to a handler's context.
var (
	errCanceled  = errors.New("canceled by the server")
	errAbandoned = errors.New("abandoned: the attempt's lease is no longer held by this agent")
	errDrained   = errors.New("agent shutting down: drain grace ended")
	errStopNow   = errors.New("agent shutting down: stopped at once")
)

// Agent runs tasks for a forge server. Create it with New, register handlers with
// Handle, then call Run.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	servers  []string
	clients  []forgev1connect.AgentServiceClient
	hostname string

	mu        sync.Mutex
	handlers  map[string]Handler
	started   bool
	st        *stateDir // nil without Config.StateDir
	id, token string
	// gen counts the identities this Run has had: it grows each time the agent
	// enrolls again, so a refusal of an older token is not acted on twice.
	gen uint64
	// keys verify signed tasks; when empty (the server does not sign, and no
	// key is pinned) tasks are taken as they come.
	keys   map[string]ed25519.PublicKey
	pinned bool // keys are Config.SigningKeys: Register's change nothing
	// guard refuses a signed task accepted before (replays), across restarts
	// with a state dir.
	guard       *replayGuard
	cur         int // index of the server in use
	lastGood    int // index of the server that last answered; -1: none yet
	failLogged  time.Time
	pollWait    time.Duration
	hbInterval  time.Duration
	hbKnown     bool // hbInterval came from the server (Register or a Heartbeat answer)
	serverDrain bool // the server asked the agent to take no tasks
	draining    bool // Run's context ended
	running     map[refKey]*attempt
	newest      newestAttempts // the newest attempt taken of each recent task
	groups      groupRecorder
	changed     chan struct{} // a slot freed or the drain request changed
	beatNow     chan struct{} // a task arrived with little of its lease left
	stopNow     chan struct{} // closed by StopNow: a drain ends at once
	stopNowOnce sync.Once
}

// attempt is one task attempt the agent holds: from its Poll answer until it is
// reported (or abandoned).
type attempt struct {
	key       refKey
	cancel    context.CancelCauseFunc
	abandoned atomic.Bool
}

// refKey names one attempt of one task.
type refKey struct {
	id      string
	attempt int32
}

// New checks cfg and returns an Agent. It makes no call: Run does.
func New(cfg Config) (*Agent, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("agent: no server given")
	}
	var servers []string
	for _, s := range cfg.Servers {
		s = strings.TrimRight(strings.TrimSpace(s), "/")
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("agent: server %q is not an http(s) URL", s)
		}
		servers = append(servers, s)
	}
	if cfg.HTTPClient != nil && cfg.HTTPClient.Timeout != 0 {
		return nil, errors.New("agent: HTTPClient must have no Timeout (Poll is held; the agent sets per-call deadlines)")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = defaultConcurrency
	}
	if cfg.DrainGrace <= 0 {
		cfg.DrainGrace = defaultDrainGrace
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = defaultMaxOutput
	}
	if cfg.MaxAnswer <= 0 {
		cfg.MaxAnswer = defaultMaxAnswer
	}
	if cfg.PollWait < 0 {
		cfg.PollWait = 0
	}
	host, _ := os.Hostname()
	if cfg.Name == "" {
		cfg.Name = DefaultName(cfg.StateDir)
	}
	// The server refuses such a name at Register; refused here, the agent
	// says so at start instead of retrying a registration that cannot pass.
	if err := store.CheckAgentName(cfg.Name); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: SingleWrite(newTransport(cfg.TLSConfig))}
	}
	a := &Agent{
		cfg: cfg, log: log, servers: servers, hostname: host,
		handlers:   map[string]Handler{},
		lastGood:   -1,
		pollWait:   defaultPollWait,
		hbInterval: defaultHeartbeat,
		running:    map[refKey]*attempt{},
		changed:    make(chan struct{}, 1),
		beatNow:    make(chan struct{}, 1),
		stopNow:    make(chan struct{}),
	}
	if cfg.PollWait > 0 {
		a.pollWait = cfg.PollWait
	}
	a.guard = newReplayGuard()
	for _, k := range cfg.SigningKeys {
		if len(k) != ed25519.PublicKeySize {
			return nil, errors.New("agent: a signing key is not an ed25519 public key")
		}
		if a.keys == nil {
			a.keys = make(map[string]ed25519.PublicKey)
		}
		a.keys[tasksig.KeyID(k)] = k
		a.pinned = true
	}
	for _, s := range servers {
		a.clients = append(a.clients, forgev1connect.NewAgentServiceClient(hc, s,
			connect.WithReadMaxBytes(cfg.MaxAnswer), gzipcap.Client(cfg.MaxAnswer)))
	}
	return a, nil
}

// newTransport returns the agent's own HTTP/1.1 transport: one held Poll, a
// Heartbeat and several reports may be in flight at once, each on its own
// connection, and idle ones are kept for the next round.
func newTransport(tc *tls.Config) *http.Transport {
	var protos http.Protocols
	protos.SetHTTP1(true)
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		Protocols:             &protos,
	}
	if tc != nil {
		t.TLSClientConfig = tc.Clone()
	}
	return t
}

// Handle registers h for tasks of taskType, replacing any earlier one. Call it
// before Run: the types are sent to the server at Register.
func (a *Agent) Handle(taskType string, h Handler) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h == nil {
		delete(a.handlers, taskType)
		return
	}
	a.handlers[taskType] = h
}

// StopNow cuts Run's drain short: once Run's context has ended, the handlers
// still running have their contexts cancelled at once, as when DrainGrace runs
// out, their results are reported (for up to 15 s), and Run returns. Called
// before Run's context ends, it takes effect when the drain begins. A program
// calls it on a second interrupt (`forge agent` on a second Ctrl-C). It may be
// called more than once, from any goroutine.
func (a *Agent) StopNow() {
	a.stopNowOnce.Do(func() { close(a.stopNow) })
}

// ID returns the agent's id once Run has registered it or loaded it from the
// state dir, and "" before.
func (a *Agent) ID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// Run registers the agent (unless its state dir holds an identity), then polls for
// tasks and runs them until ctx is cancelled. Then it drains: it takes no more
// tasks, lets running handlers finish for up to DrainGrace (then cancels their
// contexts), reports their results, and returns nil. Server outages never end Run:
// it retries with backoff. It returns an error when the server refuses the
// enrollment token or the agent's token (ErrRevoked), or the state dir cannot be
// used. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.started {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	a.started = true
	a.mu.Unlock()

	var st *stateDir
	if a.cfg.StateDir != "" {
		var err error
		if st, err = openState(a.cfg.StateDir, a.log); err != nil {
			return err
		}
		defer st.close()
		st.endLeftovers()
		a.groups = st
		g, err := openReplayGuard(st.dir, time.Now())
		if err != nil {
			return err
		}
		defer g.close()
		a.mu.Lock()
		a.st, a.guard = st, g
		a.mu.Unlock()
	}
	if err := a.enroll(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped before it ever took work: nothing to drain
		}
		return err
	}
	return a.serve(ctx)
}

// client returns the server in use and its index.
func (a *Agent) client() (int, forgev1connect.AgentServiceClient) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cur, a.clients[a.cur]
}

// failover moves to the next server after a transport failure on server idx,
// unless another call moved already. The move is logged, at most every
// failoverLogEvery while servers keep failing, so an outage of all of them
// does not fill the log.
func (a *Agent) failover(idx int) {
	if len(a.clients) < 2 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cur != idx {
		return
	}
	a.cur = (idx + 1) % len(a.clients)
	if now := time.Now(); now.Sub(a.failLogged) >= failoverLogEvery {
		a.failLogged = now
		a.log.Warn("server unreachable; moving to the next server", "from", a.servers[idx], "to", a.servers[a.cur])
	}
}

// failoverLogEvery bounds how often failover logs while servers keep failing.
const failoverLogEvery = 30 * time.Second

// reachable notes that server idx answered, and says how to log it after calls
// failed: "server reachable again" for the server that answered last, "now
// using server" for another (one never used before, after a failover).
func (a *Agent) reachable(idx int) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	prev := a.lastGood
	a.lastGood = idx
	if prev == idx {
		return "server reachable again"
	}
	return "now using server"
}

// DefaultName is the name an agent gets when none is given: the hostname, so
// that one agent per machine is named after it; and, when the agent keeps a
// state dir other than the packaged service's (/var/lib/forge-agent, or any
// dir named forge-agent), the hostname, "-" and four characters derived from
// the state dir's absolute path, so that several agents on one machine, each
// with its own state dir, get names that differ, and each keeps its name
// across restarts.
func DefaultName(stateDir string) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "agent"
	}
	if stateDir == "" {
		return host
	}
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		abs = stateDir
	}
	abs = filepath.Clean(abs)
	if filepath.Base(abs) == "forge-agent" {
		return host
	}
	sum := sha256.Sum256([]byte(abs))
	const digits = "0123456789abcdefghjkmnpqrstvwxyz"
	suffix := make([]byte, 4)
	for i := range suffix {
		suffix[i] = digits[sum[i]%32]
	}
	return host + "-" + string(suffix)
}

// describe returns what the agent is, for its log: its identity, name, labels,
// task types, servers and limits.
func (a *Agent) describe() []any {
	a.mu.Lock()
	defer a.mu.Unlock()
	types := make([]string, 0, len(a.handlers))
	for t := range a.handlers {
		types = append(types, t)
	}
	sort.Strings(types)
	labels := make([]string, 0, len(a.cfg.Labels))
	for k, v := range a.cfg.Labels {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	attrs := []any{"agent", a.id, "name", a.cfg.Name, "labels", strings.Join(labels, ","),
		"task_types", strings.Join(types, ","), "servers", strings.Join(a.servers, ","),
		"concurrency", a.cfg.Concurrency, "signed_tasks", len(a.keys) > 0}
	if a.cfg.StateDir != "" {
		attrs = append(attrs, "state_dir", a.cfg.StateDir)
	}
	return attrs
}

// authed returns req with the agent's token, and the generation of the
// identity the token belongs to.
func authed[T any](a *Agent, msg *T) (*connect.Request[T], uint64) {
	req := connect.NewRequest(msg)
	a.mu.Lock()
	defer a.mu.Unlock()
	bearer.Set(req.Header(), a.token)
	return req, a.gen
}

// transient tells whether err may go away by itself (retry with backoff), as
// opposed to a refusal that repeating cannot change.
func transient(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeInvalidArgument,
		connect.CodeFailedPrecondition, connect.CodeNotFound, connect.CodeUnimplemented:
		return false
	}
	return true
}

// learnKeys adds keys the server gave (at Register, or kept in the state dir
// from one) to those the agent trusts, and returns them all, to keep. A key
// learned once is never dropped by a later answer: one without it (a party in
// the middle stripping keys, or a server that lost them) is logged. With keys
// pinned (Config.SigningKeys), what the server says changes nothing. The caller
// holds a.mu.
func (a *Agent) learnKeys(keys []signingKey) []signingKey {
	if a.pinned {
		for _, k := range keys {
			if a.keys[k.ID] == nil {
				a.log.Warn("the server offers a signing key that is not pinned; ignoring it", "key", k.ID)
			}
		}
		return nil
	}
	given := map[string]bool{}
	for _, k := range keys {
		given[k.ID] = true
		if len(k.PublicKey) != ed25519.PublicKeySize || k.ID != tasksig.KeyID(k.PublicKey) {
			a.log.Warn("the server offers a malformed signing key; ignoring it", "key", k.ID)
			continue
		}
		if a.keys == nil {
			a.keys = make(map[string]ed25519.PublicKey)
		}
		if a.keys[k.ID] == nil {
			a.keys[k.ID] = ed25519.PublicKey(k.PublicKey)
		}
	}
	out := make([]signingKey, 0, len(a.keys))
	var dropped []string
	for id, pub := range a.keys {
		if !given[id] {
			dropped = append(dropped, id)
		}
		out = append(out, signingKey{ID: id, PublicKey: pub})
	}
	if len(dropped) > 0 {
		sort.Strings(dropped)
		a.log.Warn("the server did not give signing keys this agent trusts; still trusting them (remove the state dir to forget them)", "keys", dropped)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// signed tells whether the agent checks tasks' signatures.
func (a *Agent) signed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.keys) > 0
}

// checkSigned verifies a task when the agent holds the server's keys. It returns
// err for a task to refuse (reported FAILED, never run), and replay for one
// accepted before (dropped: it ran, or runs, here already).
func (a *Agent) checkSigned(t *forgev1.Task) (replay, err error) {
	a.mu.Lock()
	keys, self := a.keys, tasksig.Self{ID: a.id, Name: a.cfg.Name, Labels: a.cfg.Labels}
	a.mu.Unlock()
	if len(keys) == 0 {
		return nil, nil
	}
	if err := tasksig.Verify(keys, self, t, time.Now()); err != nil {
		return nil, err
	}
	return a.guard.check(t), nil
}
