package store

import (
	"fmt"
	"testing"
)

// fired tells whether w has a fire pending, and takes it.
func fired(w *Watcher) bool {
	select {
	case <-w.C:
		return true
	default:
		return false
	}
}

// TestHubWatchers: a key's watchers all fire, stopped ones never again, in
// any order of stopping (first, middle, last of a key's list, a watcher of
// several keys, one naming a key twice), and the hub keeps nothing of a key
// once its last watcher stopped.
func TestHubWatchers(t *testing.T) {
	t.Parallel()
	h := NewHub()
	a := make([]*Watcher, 5)
	for i := range a {
		a[i] = h.Watch("a")
	}
	both := h.Watch("a", "b")
	twice := h.Watch("b", "b")
	h.Notify("a")
	for i, w := range append(a, both) {
		if !fired(w) {
			t.Errorf("watcher %d of a did not fire", i)
		}
	}
	if fired(twice) {
		t.Error("a watcher of b fired for a")
	}
	h.Notify("a", "a") // coalesced: one pending fire
	fired(a[0])
	if fired(a[0]) {
		t.Error("two fires pending on one watcher")
	}
	for _, w := range a {
		fired(w)
	}
	fired(both)

	// Stop the newest (first in the list), one in the middle and the oldest (last).
	for _, i := range []int{4, 2, 0} {
		a[i].Stop()
	}
	a[2].Stop() // again: no effect
	h.Notify("a")
	for i, w := range a {
		if got, want := fired(w), i == 1 || i == 3; got != want {
			t.Errorf("after stops, watcher %d fired %v, want %v", i, got, want)
		}
	}
	if !fired(both) {
		t.Error("the watcher of a and b did not fire for a")
	}
	h.Notify("b")
	if !fired(both) || !fired(twice) {
		t.Error("watchers of b did not fire")
	}
	both.Stop()
	h.NotifyAll()
	if fired(both) {
		t.Error("a stopped watcher fired on NotifyAll")
	}
	if !fired(a[1]) || !fired(a[3]) || !fired(twice) {
		t.Error("NotifyAll missed a watcher")
	}
	twice.Stop()
	a[1].Stop()
	a[3].Stop()
	if len(h.watchers) != 0 {
		t.Errorf("the hub keeps %d keys after every watcher stopped: %v", len(h.watchers), h.watchers)
	}
}

// TestHubManyWatchers: watchers of many keys started and stopped in an
// interleaved order leave the hub empty, and each fires only for its keys.
func TestHubManyWatchers(t *testing.T) {
	t.Parallel()
	h := NewHub()
	var ws []*Watcher
	for i := range 300 {
		ws = append(ws, h.Watch(fmt.Sprint("k", i%7), fmt.Sprint("j", i%3)))
	}
	for i := 0; i < len(ws); i += 2 {
		ws[i].Stop()
	}
	h.Notify("k3")
	for i, w := range ws {
		if got, want := fired(w), i%2 == 1 && i%7 == 3; got != want {
			t.Fatalf("watcher %d fired %v for k3, want %v", i, got, want)
		}
	}
	for i := len(ws) - 1; i >= 1; i -= 2 {
		ws[i].Stop()
	}
	if len(h.watchers) != 0 {
		t.Errorf("the hub keeps %d keys after every watcher stopped", len(h.watchers))
	}
}

// BenchmarkHubWatchStop is a held Poll's share of the hub: watch its agent's
// key among 10,000 others, then stop.
func BenchmarkHubWatchStop(b *testing.B) {
	h := NewHub()
	for i := range 10000 {
		defer h.Watch(fmt.Sprint("a:", i)).Stop()
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.Watch("a:x").Stop()
	}
}
