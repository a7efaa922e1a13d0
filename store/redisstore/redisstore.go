// Package redisstore is the Redis Store: any number of forge server replicas share
// it. It runs on a single Redis node or on Redis Cluster unchanged (rueidis finds
// out which). Every atomic operation is one Lua script over keys of one hash slot
// (see keys.go and scripts.go); waiting is served from one sharded pub/sub
// subscription per process feeding an in-process store.Hub.
//
// The lifecycle rules are package store's: the scripts get them from prelude.lua,
// generated from that package. The operations are split by concept as memstore's
// are — agents.go, tasks.go, jobs.go, enroll.go, reap.go — beside the plumbing:
// keys.go (every key), scripts.go (every script), errors.go (script error codes),
// decode.go (records), pubsub.go (wake-ups), clock.go, jobcache.go.
package redisstore

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// Options tune a Store beyond store.Config. The zero value works.
type Options struct {
	// Logger receives what the store has to say (lost subscriptions, clock
	// offsets); nil discards it.
	Logger *slog.Logger
	// Prefix namespaces every key, so several forge installations (or tests) can
	// share one Redis; empty means "forge".
	Prefix string
	// ClockResync is how often the default clock re-measures its offset from
	// Redis' TIME; zero means 30 s.
	ClockResync time.Duration

	// TLS, when not nil, is used for every connection to Redis (and to the
	// sentinels): it turns TLS on whatever the URL's scheme says. Set RootCAs to
	// trust a private CA, Certificates for mutual TLS, ServerName for the name
	// Redis' certificate carries (empty: the URL's host, as with rediss://).
	// Without it a rediss:// URL verifies against the system's roots.
	TLS *tls.Config
	// Username and Password, when not empty, replace the URL's, so a password
	// read from a file never needs to be written into a URL.
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the sentinels, when
	// they require it (the URL's user and password are the master's).
	SentinelUsername, SentinelPassword string
	// WaitReplicas, when above zero, makes every write wait (Redis' WAIT) until
	// that many replicas have it, so a failover cannot lose a write forge has
	// answered; a write not confirmed within WaitTimeout (zero: 1 s) fails as
	// unavailable. For one master with replicas (Sentinel), not a cluster. See
	// replicas.go.
	WaitReplicas int
	WaitTimeout  time.Duration
	// ClientOption, when not nil, is called with the rueidis options Open built
	// from the URL and the fields above, just before it connects: the place for
	// anything else rueidis offers (a dialer, a credentials provider, a client
	// name).
	ClientOption func(*rueidis.ClientOption)
}

// Store is a store.Store on Redis.
type Store struct {
	cfg     store.Config
	log     *slog.Logger
	k       *keys
	client  rueidis.Client // commands and scripts
	subs    rueidis.Client // the pub/sub subscription only, so losing it cannot fail a call
	owned   bool           // Close closes client and subs
	hub     *store.Hub
	jobs    jobCache     // the fixed part of jobs seen lately
	content contentCache // fan-out payloads by job (content.go)
	ended   handOvers    // tasks a report just finished, for their waiters (handover.go)
	clock   store.Clock
	rclock  *redisClock // nil when the caller gave a clock

	newAgentID func() string // store.NewAgentID; tests make ids collide

	conn    conn        // how it connects, to explain failures
	opened  atomic.Bool // Open has returned it
	refused refusals    // the last permission or credential refusal, for Ping

	sub subState

	// functions is set while the store's library is loaded (functions.go): its
	// scripts are then called with FCALL, else with EVALSHA.
	functions atomic.Bool

	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to Redis at url, loads the scripts on every node, subscribes to
// change notifications and returns the Store. The URL names one node
// (redis://[user:password@]host:port/db, rediss:// for TLS), a cluster by one or
// more of its nodes (redis://host:port?addr=host2:port2), or a master through
// its sentinels (redis://s1:port/db?addr=s2:port&master_set=NAME); see
// connect.go. If Redis cannot be used it fails with KindUnavailable and a
// message that names the cause (CauseOf tells which); a URL that does not parse
// is KindInvalid. No error ever holds the URL's password. ctx bounds the
// opening only: the store runs until Close.
func Open(ctx context.Context, url string, cfg store.Config, opts Options) (*Store, error) {
	copt, cn, err := clientOption(url, opts)
	if err != nil {
		return nil, err
	}
	subsOpt := copt
	// rueidis retries read-only commands on network errors until the context
	// ends, which for a held call is many seconds: fail fast instead (a few quick
	// retries ride over a reconnect), so callers hear KindUnavailable at once.
	copt.RetryDelay = func(attempts int, _ rueidis.Completed, _ error) time.Duration {
		if attempts > 3 {
			return -1
		}
		return time.Duration(attempts) * 20 * time.Millisecond
	}
	client, err := rueidis.NewClient(copt)
	if err != nil {
		return nil, cn.wrap(ctx, err, true)
	}
	subs, err := rueidis.NewClient(subsOpt)
	if err != nil {
		client.Close()
		return nil, cn.wrap(ctx, err, true)
	}
	if opts.WaitReplicas > 0 {
		if client.Mode() == rueidis.ClientModeCluster {
			client.Close()
			subs.Close()
			return nil, store.Errorf(store.KindInvalid, "redisstore: WaitReplicas is for one master with replicas (Sentinel), not a cluster")
		}
		if opts.WaitTimeout <= 0 {
			opts.WaitTimeout = time.Second
		}
		client = &waitClient{Client: client, replicas: int64(opts.WaitReplicas), timeout: opts.WaitTimeout}
	}
	return open(ctx, client, subs, true, cn, cfg, opts)
}

// OpenClient returns a Store on a rueidis client the caller made and keeps:
// Close leaves it open. The store sends its commands and holds its subscription
// on it, and inherits its retry policy (Open's own clients stop retrying a
// failing call after a few quick tries, so held calls hear of an outage at
// once). Build the client with DisableCache: the store does not use
// client-side caching. The TLS, credential and ClientOption fields of opts are
// not used.
func OpenClient(ctx context.Context, client rueidis.Client, cfg store.Config, opts Options) (*Store, error) {
	if client == nil {
		return nil, store.Errorf(store.KindInvalid, "redisstore: OpenClient needs a client")
	}
	return open(ctx, client, client, false, conn{ready: true}, cfg, opts)
}

func open(ctx context.Context, client, subs rueidis.Client, owned bool, cn conn, cfg store.Config, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Prefix == "" {
		opts.Prefix = "forge"
	}
	if opts.ClockResync <= 0 {
		opts.ClockResync = 30 * time.Second
	}
	userClock := cfg.Clock
	cfg = cfg.WithDefaults()
	s := &Store{cfg: cfg, log: opts.Logger, k: newKeys(opts.Prefix), client: client, subs: subs, owned: owned,
		hub: store.NewHub(), newAgentID: store.NewAgentID, conn: cn, refused: refusals{keep: time.Minute}}
	s.sub.ready = make(chan struct{})
	if userClock == nil {
		s.rclock = &redisClock{client: client, log: s.log}
		if err := s.rclock.sync(ctx); err != nil {
			s.closeClients()
			return nil, s.wrap(ctx, err)
		}
		s.clock = s.rclock
	} else {
		s.clock = userClock
	}
	if err := s.loadScripts(ctx); err != nil {
		s.closeClients()
		return nil, s.wrap(ctx, err)
	}
	s.checkEviction(ctx)
	// The subscriptions and the clock's resync live as long as the store, not
	// as long as ctx, which bounds the opening (a start-up deadline, a test's
	// context): they keep ctx's values, not its end, and Close ends them.
	life, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	for shard := 0; shard < NumShards; shard++ {
		s.wg.Add(1)
		go s.subscribe(life, shard)
	}
	if err := s.waitSubscribed(ctx); err != nil {
		s.Close()
		return nil, s.wrap(ctx, err)
	}
	if s.rclock != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.rclock.run(life, opts.ClockResync)
		}()
	}
	s.opened.Store(true)
	return s, nil
}

// loadScripts loads the store's function library on every node (functions.go)
// and, for calls made where it cannot be used, every script, so the first
// EVALSHA of each finds it; EVALSHA still falls back to EVAL after a SCRIPT
// FLUSH or a failover.
func (s *Store) loadScripts(ctx context.Context) error {
	ok, err := s.loadLibrary(ctx)
	if err != nil {
		return err
	}
	s.functions.Store(ok)
	for _, node := range s.client.Nodes() {
		cmds := make(rueidis.Commands, 0, len(allScripts))
		for _, sc := range allScripts {
			cmds = append(cmds, node.B().ScriptLoad().Script(sc.text).Build())
		}
		for _, r := range node.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil {
				return err
			}
		}
	}
	return nil
}

// Close implements store.Store: it stops the subscription, wakes every waiter and
// closes the connections. Later calls fail with KindUnavailable.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.closeClients()
		s.wg.Wait()
		s.hub.NotifyAll()
	})
	return nil
}

func (s *Store) closeClients() {
	if !s.owned {
		return
	}
	s.client.Close()
	s.subs.Close()
}

// Watch implements store.Store.
func (s *Store) Watch(keys ...string) *store.Watcher { return s.hub.Watch(keys...) }

// Ping implements store.Store: it fails when Redis does not answer PING, and
// also, for a minute after, when a call was refused for a missing permission or
// for its credentials (a user may be allowed PING and nothing else). Its error
// names the cause.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Do(ctx, s.client.B().Ping().Build()).Error(); err != nil {
		return s.wrap(ctx, err)
	}
	return s.refused.recent()
}

// emptyScript does nothing: ScriptRoundTrip's floor.
var emptyScript = rueidis.NewLuaScript("return 1")

// ScriptRoundTrip runs an empty Lua script (EVALSHA) through the store's own
// client: the least any script call of the store costs, which benchmarks print
// beside the operations that make such calls.
func (s *Store) ScriptRoundTrip(ctx context.Context) error {
	if err := emptyScript.Exec(ctx, s.client, nil, nil).Error(); err != nil {
		return s.wrap(ctx, err)
	}
	return nil
}

func (s *Store) now() time.Time { return s.clock.Now() }

func (s *Store) nowMS() int64 { return s.clock.Now().UnixMilli() }

// run executes a script and returns its answer (the leading 'OK' or other status
// included), or the store error it reported. It is exec written out, one frame
// fewer on the stack while the call waits for Redis: an idle agent's Poll waits
// here deep in its connection's goroutine (see Lease).
func (s *Store) run(ctx context.Context, sc *script, keys, args []string) ([]rueidis.RedisMessage, error) {
	r := s.client.Do(ctx, s.call(sc, keys, args))
	return s.answer(ctx, s.recover(ctx, sc, keys, args, r))
}

func (s *Store) answer(ctx context.Context, r rueidis.RedisResult) ([]rueidis.RedisMessage, error) {
	arr, err := r.ToArray()
	if err != nil {
		return nil, s.wrap(ctx, err)
	}
	if len(arr) == 0 {
		return nil, store.Errorf(store.KindInternal, "internal store error: empty script answer")
	}
	if head, _ := arr[0].ToString(); head == "E" {
		return nil, s.scriptError(arr[1:])
	}
	return arr, nil
}

// runMulti executes many calls of one script, pipelined (rueidis sends each to
// the node owning its slot), recovering calls whose node lost the script or the
// library.
func (s *Store) runMulti(ctx context.Context, sc *script, execs []rueidis.LuaExec) []rueidis.RedisResult {
	if len(execs) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(execs))
	for i, e := range execs {
		cmds[i] = s.call(sc, e.Keys, e.Args)
	}
	res := s.client.DoMulti(ctx, cmds...)
	for i, r := range res {
		res[i] = s.recover(ctx, sc, execs[i].Keys, execs[i].Args, r)
	}
	return res
}

// shardArgs returns the three ARGV every shard script starts with.
func (s *Store) shardArgs(tag string, now int64, more ...string) []string {
	args := make([]string, 0, 3+len(more))
	ret := strconv.FormatInt(s.cfg.Retention.Milliseconds(), 10)
	if s.cfg.KeepPerAgent > 0 {
		ret += ":" + strconv.Itoa(s.cfg.KeepPerAgent) // shardLib's KEEP
	}
	args = append(args, tag, strconv.FormatInt(now, 10), ret)
	return append(args, more...)
}

var errSubscribeTimeout = errors.New("redisstore: subscribing to change notifications timed out")
