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
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// Options tune a Store beyond store.Config.
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
}

// Store is a store.Store on Redis.
type Store struct {
	cfg    store.Config
	log    *slog.Logger
	k      *keys
	client rueidis.Client // commands and scripts
	subs   rueidis.Client // the pub/sub subscription only, so losing it cannot fail a call
	hub    *store.Hub
	jobs   jobCache // the fixed part of jobs seen lately
	clock  store.Clock
	rclock *redisClock // nil when the caller gave a clock

	newAgentID func() string // store.NewAgentID; tests make ids collide

	sub subState

	cancel context.CancelFunc
	wg     sync.WaitGroup

	closeOnce sync.Once
}

var _ store.Store = (*Store)(nil)

// Open connects to Redis at url (redis://[user:pass@]host:port/db; a cluster is
// named by one or more of its nodes, as redis://host:port?addr=host2:port2), loads
// the scripts on every node, subscribes to change notifications and returns the
// Store. It fails with KindUnavailable if Redis cannot be reached.
func Open(ctx context.Context, url string, cfg store.Config, opts Options) (*Store, error) {
	copt, err := rueidis.ParseURL(url)
	if err != nil {
		return nil, store.Errorf(store.KindInvalid, "redis url: %v", err)
	}
	copt.DisableCache = true
	if copt.ConnWriteTimeout == 0 {
		copt.ConnWriteTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Prefix == "" {
		opts.Prefix = "forge"
	}
	if opts.ClockResync <= 0 {
		opts.ClockResync = 30 * time.Second
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
		return nil, store.Wrap(store.KindUnavailable, err, "redis is unavailable")
	}
	subs, err := rueidis.NewClient(subsOpt)
	if err != nil {
		client.Close()
		return nil, store.Wrap(store.KindUnavailable, err, "redis is unavailable")
	}
	userClock := cfg.Clock
	cfg = cfg.WithDefaults()
	s := &Store{cfg: cfg, log: opts.Logger, k: newKeys(opts.Prefix), client: client, subs: subs, hub: store.NewHub(),
		newAgentID: store.NewAgentID}
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
	bg, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for shard := 0; shard < NumShards; shard++ {
		s.wg.Add(1)
		go s.subscribe(bg, shard)
	}
	if err := s.waitSubscribed(ctx); err != nil {
		s.Close()
		return nil, s.wrap(ctx, err)
	}
	if s.rclock != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.rclock.run(bg, opts.ClockResync)
		}()
	}
	return s, nil
}

// loadScripts loads every script on every node, so the first EVALSHA of each
// finds it; rueidis still falls back to EVAL after a SCRIPT FLUSH or a failover.
func (s *Store) loadScripts(ctx context.Context) error {
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
	s.client.Close()
	s.subs.Close()
}

// Watch implements store.Store.
func (s *Store) Watch(keys ...string) *store.Watcher { return s.hub.Watch(keys...) }

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Do(ctx, s.client.B().Ping().Build()).Error(); err != nil {
		return s.wrap(ctx, err)
	}
	return nil
}

func (s *Store) now() time.Time { return s.clock.Now() }

func (s *Store) nowMS() int64 { return s.clock.Now().UnixMilli() }

// run executes a script and returns its answer (the leading 'OK' or other status
// included), or the store error it reported.
func (s *Store) run(ctx context.Context, sc *script, keys, args []string) ([]rueidis.RedisMessage, error) {
	return s.answer(ctx, sc.lua.Exec(ctx, s.client, sc.keys(keys, args), args))
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
// the node owning its slot), falling back to EVAL for calls whose node lost the
// script.
func (s *Store) runMulti(ctx context.Context, sc *script, execs []rueidis.LuaExec) []rueidis.RedisResult {
	if len(execs) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(execs))
	keys := make([][]string, len(execs))
	for i, e := range execs {
		keys[i] = sc.keys(e.Keys, e.Args)
		cmds[i] = s.client.B().Evalsha().Sha1(sc.sha).Numkeys(int64(len(keys[i]))).Key(keys[i]...).Arg(e.Args...).Build()
	}
	res := s.client.DoMulti(ctx, cmds...)
	for i, r := range res {
		if rerr, ok := rueidis.IsRedisErr(r.Error()); ok && rerr.IsNoScript() {
			res[i] = sc.lua.Exec(ctx, s.client, keys[i], execs[i].Args)
		}
	}
	return res
}

// shardArgs returns the three ARGV every shard script starts with.
func (s *Store) shardArgs(tag string, now int64, more ...string) []string {
	args := make([]string, 0, 3+len(more))
	args = append(args, tag, strconv.FormatInt(now, 10), strconv.FormatInt(s.cfg.Retention.Milliseconds(), 10))
	return append(args, more...)
}

var errSubscribeTimeout = errors.New("redisstore: subscribing to change notifications timed out")
