package redisstore

import (
	"context"
	"sync"
	"time"

	"github.com/orange-forge/forge/store"
)

// A task's end wakes its waiters (a WaitTask, a Dispatch with wait), and each
// then reads the task: one more round trip to Redis per task, for a record the
// report's function has just written and can answer. So a Report whose task
// someone on this replica waits for keeps the finished task it was answered,
// and the first GetTask of it takes that instead of reading Redis. A finished
// task's record no longer changes — only retention can drop it, which Reap
// here forgets the kept tasks for — so what is taken is what Redis holds, or
// held a moment before. Waiters on other replicas read Redis as before (the
// change they hear of through pub/sub carries no record: every replica would
// receive every task's).

// handOverFor is how long a finished task is kept for its waiter.
const handOverFor = 5 * time.Second

// handOvers holds finished tasks for their waiters' first read.
type handOvers struct {
	mu    sync.Mutex
	tasks map[string]handOver
}

type handOver struct {
	task  store.Task
	until time.Time
}

// handOver keeps the task a report finished, its record f as the report's
// function wrote it, when a watcher waits for it on this replica and the
// record holds all of the task: no output lists (f is empty then), and a
// fan-out task's payload in the content cache.
func (s *Store) handOver(ctx context.Context, id string, f map[string]string) {
	if len(f) == 0 || !s.hub.Watched(store.TaskKey(id)) {
		return
	}
	if f["cj"] == "1" && s.content.get(f["job"]) == nil {
		return
	}
	var head []store.OutputChunk
	if oi := f["oi"]; oi != "" {
		head = []store.OutputChunk{{Stream: store.Stream(oi[0] - '0'), Data: []byte(oi[1:])}}
	}
	ts := []store.Task{withOutput(decodeTask(id, f), f, head, nil)}
	if s.fillContent(ctx, ts, []map[string]string{f}) != nil { // from the cache: no read
		return
	}
	s.ended.put(id, ts[0])
}

func (h *handOvers) put(id string, t store.Task) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.tasks == nil {
		h.tasks = make(map[string]handOver)
	}
	for k, v := range h.tasks { // few: each is taken at once by its waiter
		if now.After(v.until) {
			delete(h.tasks, k)
		}
	}
	h.tasks[id] = handOver{task: t, until: now.Add(handOverFor)}
}

// take returns a kept task and forgets it.
func (h *handOvers) take(id string) (store.Task, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.tasks[id]
	if !ok {
		return store.Task{}, false
	}
	delete(h.tasks, id)
	if time.Now().After(v.until) {
		return store.Task{}, false
	}
	return v.task, true
}

// forget drops every kept task (retention may have dropped them).
func (h *handOvers) forget() {
	h.mu.Lock()
	h.tasks = nil
	h.mu.Unlock()
}
