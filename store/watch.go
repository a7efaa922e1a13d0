package store

import "sync"

// Keys that Watch and Hub understand. A change to an agent's queue or to the
// cancellations it should hear fires AgentKey; a task reaching a new state fires
// TaskKey; output appended to a task fires OutputKey; any change to a job's tasks
// fires JobKey.
func AgentKey(id string) string { return "a:" + id }

// TaskKey is the watch key of a task.
func TaskKey(id string) string { return "t:" + id }

// OutputKey is the watch key of a task's output.
func OutputKey(id string) string { return "o:" + id }

// JobKey is the watch key of a job.
func JobKey(id string) string { return "j:" + id }

// Watcher fires (a value on C) after a change to any key it watches. A fire may be
// spurious: the watcher re-reads the state it cares about. Fires are coalesced: one
// pending value at most. Stop it when done.
type Watcher struct {
	C    <-chan struct{}
	c    chan struct{}
	hub  *Hub
	keys []string
}

// Stop unregisters the watcher. It is safe to call more than once.
func (w *Watcher) Stop() {
	if w.hub != nil {
		w.hub.remove(w)
		w.hub = nil
	}
}

func (w *Watcher) fire() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// Hub fans change notifications out to the watchers of one process. Stores embed
// one: memstore notifies it directly; redisstore feeds it from one pub/sub
// subscription per process, so a waiting agent costs no Redis connection.
type Hub struct {
	mu       sync.Mutex
	watchers map[string]map[*Watcher]struct{}
}

// NewHub returns an empty Hub.
func NewHub() *Hub { return &Hub{watchers: make(map[string]map[*Watcher]struct{})} }

// Watch registers a watcher for the keys.
func (h *Hub) Watch(keys ...string) *Watcher {
	c := make(chan struct{}, 1)
	w := &Watcher{C: c, c: c, hub: h, keys: keys}
	h.mu.Lock()
	for _, k := range keys {
		set := h.watchers[k]
		if set == nil {
			set = make(map[*Watcher]struct{}, 1)
			h.watchers[k] = set
		}
		set[w] = struct{}{}
	}
	h.mu.Unlock()
	return w
}

func (h *Hub) remove(w *Watcher) {
	h.mu.Lock()
	for _, k := range w.keys {
		if set := h.watchers[k]; set != nil {
			delete(set, w)
			if len(set) == 0 {
				delete(h.watchers, k)
			}
		}
	}
	h.mu.Unlock()
}

// Watched tells whether any watcher waits for key now.
func (h *Hub) Watched(key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.watchers[key]) > 0
}

// Notify fires every watcher of the keys.
func (h *Hub) Notify(keys ...string) {
	h.mu.Lock()
	for _, k := range keys {
		for w := range h.watchers[k] {
			w.fire()
		}
	}
	h.mu.Unlock()
}

// NotifyAll fires every watcher, so each re-checks its state; used after a lost
// subscription, when notifications may have been missed.
func (h *Hub) NotifyAll() {
	h.mu.Lock()
	for _, set := range h.watchers {
		for w := range set {
			w.fire()
		}
	}
	h.mu.Unlock()
}
