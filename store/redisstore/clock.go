package redisstore

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/rueidis"
)

// redisClock is the default clock: local time plus an offset measured from
// Redis' TIME (taken at the middle of the round trip), re-measured periodically.
// Every replica thus reads one clock — Redis' — and replicas whose own clocks
// disagree still agree on lease expiries and deadlines, to within half a round
// trip plus drift between measurements. Local time is read per call (no round
// trip), and Go's monotonic clock keeps it steady between measurements.
type redisClock struct {
	client rueidis.Client
	log    *slog.Logger
	mu     sync.Mutex
	offset time.Duration
}

func (c *redisClock) Now() time.Time {
	c.mu.Lock()
	off := c.offset
	c.mu.Unlock()
	return time.Now().Add(off)
}

func (c *redisClock) sync(ctx context.Context) error {
	t0 := time.Now()
	arr, err := c.client.Do(ctx, c.client.B().Time().Build()).AsStrSlice()
	t1 := time.Now()
	if err != nil {
		return err
	}
	if len(arr) != 2 {
		return errors.New("redisstore: unexpected TIME reply")
	}
	sec, err1 := strconv.ParseInt(arr[0], 10, 64)
	usec, err2 := strconv.ParseInt(arr[1], 10, 64)
	if err1 != nil || err2 != nil {
		return errors.New("redisstore: unexpected TIME reply")
	}
	server := time.Unix(sec, usec*1000)
	mid := t0.Add(t1.Sub(t0) / 2)
	off := server.Sub(mid)
	c.mu.Lock()
	old := c.offset
	c.offset = off
	c.mu.Unlock()
	if d := off - old; d > time.Second || d < -time.Second {
		c.log.Info("redis clock offset", "offset", off.String(), "rtt", t1.Sub(t0).String())
	}
	return nil
}

func (c *redisClock) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.sync(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("measuring the redis clock offset failed; keeping the last one", "err", err)
			}
		}
	}
}
