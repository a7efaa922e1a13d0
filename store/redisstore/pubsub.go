package redisstore

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// Change notifications travel on sharded pub/sub: one channel per shard, named
// with the shard's hash tag ({P:sNN}:wake), so scripts SPUBLISH from inside the
// same slot as the change they make (Redis 7.0 allows that: a script may publish
// to a shard channel of its own slot) and the message is sent only within the
// shard's node, not broadcast across the cluster as PUBLISH is. Each process
// holds one SSUBSCRIBE per shard on a client of its own (rueidis multiplexes them
// on one connection per node), and feeds the messages — space-separated watch
// keys — to its Hub. A waiting Poll costs no Redis connection and no command.
//
// rueidis re-subscribes by itself after a dropped connection; the subscription
// hook sees the new confirmation and wakes every waiter, since messages sent in
// the gap are lost and each waiter must re-check what it waits for.

type subState struct {
	mu        sync.Mutex
	confirmed [NumShards]bool
	n         int
	ready     chan struct{}
}

func (s *Store) subscribe(ctx context.Context, shard int) {
	defer s.wg.Done()
	channel := s.k.wake(shard)
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		hookCtx := rueidis.WithOnSubscriptionHook(ctx, func(sub rueidis.PubSubSubscription) {
			if sub.Kind != "ssubscribe" || sub.Channel != channel {
				return
			}
			if s.sub.confirm(shard) {
				// A re-subscription: notifications may have been missed meanwhile.
				s.hub.NotifyAll()
			}
		})
		err := s.subs.Receive(hookCtx, s.subs.B().Ssubscribe().Channel(channel).Build(), func(m rueidis.PubSubMessage) {
			s.hub.Notify(strings.Fields(m.Message)...)
		})
		if ctx.Err() != nil {
			return
		}
		// The subscription ended (a slot moved, or the connection could not be
		// restored for a while): wake everyone and subscribe again.
		s.hub.NotifyAll()
		if err != nil {
			s.log.Warn("redis subscription lost; resubscribing", "channel", channel, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// confirm records a subscription confirmation for a shard and tells whether the
// shard had been confirmed before.
func (st *subState) confirm(shard int) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.confirmed[shard] {
		return true
	}
	st.confirmed[shard] = true
	st.n++
	if st.n == NumShards {
		close(st.ready)
	}
	return false
}

// waitSubscribed waits until every shard's subscription is confirmed, so that a
// Watch made right after Open hears every later change.
func (s *Store) waitSubscribed(ctx context.Context) error {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-s.sub.ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return errSubscribeTimeout
	}
}
