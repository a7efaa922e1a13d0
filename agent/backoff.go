package agent

import (
	"context"
	"math/rand/v2"
	"time"
)

const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 10 * time.Second
)

// backoff gives full-jitter delays: a random duration below a ceiling that
// doubles from backoffMin to backoffMax with each failure, so a fleet that lost
// its server does not come back in step.
type backoff struct{ n int }

func (b *backoff) next() time.Duration {
	ceil := backoffMax
	if b.n < 20 {
		ceil = min(backoffMin<<b.n, backoffMax)
		b.n++
	}
	return time.Duration(rand.Int64N(int64(ceil))) + time.Millisecond
}

// failing tells whether the last call failed.
func (b *backoff) failing() bool { return b.n > 0 }

func (b *backoff) reset() { b.n = 0 }

// sleep waits d or until ctx ends; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
