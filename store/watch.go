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
	C   <-chan struct{}
	c   chan struct{}
	hub *Hub
	// links are the watcher's places in the hub's list of each key it watches.
	links []watchLink
}

// watchLink is a watcher's place in the list of one key's watchers.
type watchLink struct {
	key        string
	w          *Watcher
	prev, next *watchLink
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
//
// Each key's watchers are a list linked through the watchers themselves, so
// watching and stopping cost no allocation beyond the watcher: every held
// Poll of a fleet watches its agent's key for up to a poll hold, and renews it
// every poll hold.
type Hub struct {
	mu       sync.Mutex
	watchers map[string]*watchLink // the first of each key's watchers
}

// NewHub returns an empty Hub.
func NewHub() *Hub { return &Hub{watchers: make(map[string]*watchLink)} }

// Watch registers a watcher for the keys.
func (h *Hub) Watch(keys ...string) *Watcher {
	c := make(chan struct{}, 1)
	w := &Watcher{C: c, c: c, hub: h, links: make([]watchLink, len(keys))}
	h.mu.Lock()
	for i, k := range keys {
		l := &w.links[i]
		l.key, l.w = k, w
		if first := h.watchers[k]; first != nil {
			l.next, first.prev = first, l
		}
		h.watchers[k] = l
	}
	h.mu.Unlock()
	return w
}

func (h *Hub) remove(w *Watcher) {
	h.mu.Lock()
	for i := range w.links {
		l := &w.links[i]
		switch {
		case l.prev != nil:
			l.prev.next = l.next
		case l.next != nil:
			h.watchers[l.key] = l.next
		default:
			delete(h.watchers, l.key)
		}
		if l.next != nil {
			l.next.prev = l.prev
		}
		l.prev, l.next = nil, nil
	}
	h.mu.Unlock()
}

// Watched tells whether any watcher waits for key now.
func (h *Hub) Watched(key string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.watchers[key] != nil
}

// Notify fires every watcher of the keys.
func (h *Hub) Notify(keys ...string) {
	h.mu.Lock()
	for _, k := range keys {
		for l := h.watchers[k]; l != nil; l = l.next {
			l.w.fire()
		}
	}
	h.mu.Unlock()
}

// NotifyAll fires every watcher, so each re-checks its state; used after a lost
// subscription, when notifications may have been missed.
func (h *Hub) NotifyAll() {
	h.mu.Lock()
	for _, first := range h.watchers {
		for l := first; l != nil; l = l.next {
			l.w.fire()
		}
	}
	h.mu.Unlock()
}
