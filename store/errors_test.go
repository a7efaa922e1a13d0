package store_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/orange-forge/forge/store"
)

// TestDispatchIncompleteFull: a Dispatch cut short by a full store says so
// first and never asks for a retry at once (it cannot help until the store has
// room); cut short by anything else, its message is the one it was given.
func TestDispatchIncompleteFull(t *testing.T) {
	t.Parallel()
	full := store.Errorf(store.KindExhausted, "%s", store.MsgStoreFull)
	down := store.Wrap(store.KindUnavailable, errors.New("connection refused"), "redis is unavailable")
	for _, msg := range []string{
		store.MsgDispatchNotAccepted,
		fmt.Sprintf(store.FmtDispatchResume, `"j1"`),
		fmt.Sprintf(store.FmtDispatchUnknown, `"j1"`),
	} {
		err := store.ErrDispatchIncomplete(msg, full)
		got := err.Error()
		if store.KindOf(err) != store.KindExhausted || !store.IsDispatchIncomplete(err) {
			t.Errorf("full store: kind %d, incomplete %t; want KindExhausted, incomplete", store.KindOf(err), store.IsDispatchIncomplete(err))
		}
		if !strings.HasPrefix(got, store.MsgStoreFull+"; ") {
			t.Errorf("full store: %q does not start by saying the store is full", got)
		}
		if n, room := strings.Count(got, "retry it"), strings.Count(got, "retry it once the store has room"); n != room {
			t.Errorf("full store: %q asks for a retry before the store has room", got)
		}
		if strings.Contains(msg, "retry it") && !strings.Contains(got, "retry it once the store has room") {
			t.Errorf("full store: %q no longer says when to retry", got)
		}
		err = store.ErrDispatchIncomplete(msg, down)
		if store.KindOf(err) != store.KindUnavailable || err.Error() != msg {
			t.Errorf("store down: %q (kind %d); want %q, KindUnavailable", err, store.KindOf(err), msg)
		}
	}
}
