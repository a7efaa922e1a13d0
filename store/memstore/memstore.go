// Package memstore is the in-memory Store: the embedded default of `forge server`,
// with the same semantics as the Redis store (both pass store/storetest). State is
// lost when the process exits.
//
// The lifecycle rules — reasons, what a report or an expired lease does, what
// counts as a failure, agent status — are package store's; this package only keeps
// the state. Files follow redisstore's: agents.go, tasks.go, jobs.go, enroll.go,
// reap.go.
package memstore

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/orange-forge/forge/store"
)

// Store is an in-memory store.Store. One mutex guards everything: every operation
// is short, and waiting is done outside it through the Hub.
type Store struct {
	cfg store.Config
	hub *store.Hub

	mu     sync.Mutex
	agents map[string]*agent
	tasks  map[string]*task
	live   map[string]*task // PENDING and RUNNING tasks, for Reap
	jobs   map[string]*job
	idem   map[string]string // idempotency key -> job id
	enroll map[string]*store.EnrollmentToken
	// replays maps registration request keys to the agent each made, for
	// RegisterAgent's replay window; replayOrder lists them oldest first, so
	// expired ones are dropped from its front.
	replays     map[string]replay
	replayOrder []string
	closed      bool
	// byState counts the retained tasks by state, and leasesExpired the leases
	// that ran out, for Stats.
	byState       [store.StateLost + 1]int
	leasesExpired int64
	feed          exportFeed // finished tasks, for export (export.go)
	// ended lists finished task ids in the order they ended, and jobOrder job
	// ids in the order they were made: retention drops from their fronts, so
	// a Reap pass reads what it drops, not the whole history (dropExpired).
	ended    []string
	jobOrder []string
	// finJobs lists finished job ids in the order they finished, for the
	// count of jobs kept (Config.KeepJobs; only then); finKept counts the
	// finished jobs kept. jobsUpTo is the newest creation time of a job that
	// count dropped (store.Dropped).
	finJobs  []string
	finKept  int
	jobsUpTo time.Time
	// nextAgentSweep is when Reap next looks for agents past retention: once an
	// hour at most, so a pass does not read every agent.
	nextAgentSweep time.Time
}

type agent struct {
	store.Agent
	cur, next []byte
	queue     []*task          // released PENDING tasks, oldest first
	running   map[string]*task // RUNNING tasks by id
	tasks     []string         // every retained task id, oldest first
	gen       int64            // poll generation
	pollUntil time.Time        // when the newest Poll's hold ends
	stopped   bool             // its last call was a Heartbeat saying it stopped
	// keptUpTo is the creation time of the newest of its tasks the count kept
	// per agent (Config.KeepPerAgent) dropped, for not_found answers.
	keptUpTo time.Time
}

type task struct {
	store.Task
	cancelDelivered bool
	reported        store.Outcome // the outcome of the report that ended the task, if one did
	out             outputLog
	// What the report said of output the store never saw (cut or dropped by the agent).
	reportedTruncated bool
	reportedSize      int64
	feedSeq           int64 // its number in the export feed, once it ended
}

type job struct {
	store.Job
	held     []*task // tasks waiting for a concurrency slot, in order
	dropped  int     // of its tasks, how many retention dropped
	active   int     // released, not yet terminal
	live     int     // not yet terminal, held or not
	made     bool    // Dispatch made all its tasks
	finished bool    // made, and every task of it ended
	failures int
}

var _ store.Store = (*Store)(nil)

// New returns an empty Store.
func New(cfg store.Config) *Store {
	return &Store{
		cfg:     cfg.WithDefaults(),
		hub:     store.NewHub(),
		agents:  make(map[string]*agent),
		tasks:   make(map[string]*task),
		live:    make(map[string]*task),
		jobs:    make(map[string]*job),
		idem:    make(map[string]string),
		enroll:  make(map[string]*store.EnrollmentToken),
		replays: make(map[string]replay),
	}
}

// locked runs fn with the store locked and the time read, unless ctx is done or
// the store is closed: the preamble of every operation.
func locked[T any](ctx context.Context, s *Store, fn func(now time.Time) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, store.Wrap(store.KindUnavailable, err, "request cancelled")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return zero, store.Errorf(store.KindUnavailable, "store is closed")
	}
	return fn(s.cfg.Clock.Now())
}

// lockedDo is locked for operations that answer only an error.
func lockedDo(ctx context.Context, s *Store, fn func(now time.Time) error) error {
	_, err := locked(ctx, s, func(now time.Time) (struct{}, error) { return struct{}{}, fn(now) })
	return err
}

// find returns m[id], or the error notFound makes of id.
func find[V any](m map[string]*V, id string, notFound func(string) error) (*V, error) {
	if v := m[id]; v != nil {
		return v, nil
	}
	return nil, notFound(id)
}

// gone is what retention dropped, for not_found answers.
func (s *Store) gone() store.Dropped {
	return store.Dropped{Retention: s.cfg.Retention, KeepJobs: s.cfg.KeepJobs, KeepPerAgent: s.cfg.KeepPerAgent, JobsUpTo: s.jobsUpTo}
}

// goneTask is gone for task id: with what the count kept per agent dropped
// of its agent's tasks too.
func (s *Store) goneTask(id string) store.Dropped {
	d := s.gone()
	if aid, ok := store.AgentOfTask(id); ok && s.cfg.KeepPerAgent > 0 {
		if a := s.agents[aid]; a != nil {
			d.AgentUpTo = a.keptUpTo
		}
	}
	return d
}

// Watch implements store.Store.
func (s *Store) Watch(keys ...string) *store.Watcher { return s.hub.Watch(keys...) }

// Ping implements store.Store.
func (s *Store) Ping(ctx context.Context) error {
	return lockedDo(ctx, s, func(time.Time) error { return nil })
}

// Close implements store.Store. Later calls fail with KindUnavailable.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.hub.NotifyAll()
	return nil
}

func (t *task) clone() store.Task {
	v := t.Task
	v.Payload = slices.Clone(t.Payload)
	v.Output, v.Stderr = store.OutputViews(t.out.meta, t.out.head, t.out.tail)
	v.OutputTruncated, v.OutputSize = store.OutputSummary(t.out.meta, t.reportedTruncated, t.reportedSize)
	v.History = slices.Clone(t.History)
	return v
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
