// Package jitter gives the full-jitter retry delays that the agent and the Go
// control client both use, so a fleet or a set of callers that lost its server
// does not come back in step.
package jitter

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff counts failures in a row; its zero value has seen none.
type Backoff struct{ n int }

// Next counts one more failure and returns a random delay below a ceiling
// that doubles from lo with each failure in a row, up to hi (at least 1 ms).
func (b *Backoff) Next(lo, hi time.Duration) time.Duration {
	ceil := hi
	if b.n < 30 {
		ceil = min(lo<<b.n, hi)
		b.n++
	}
	return time.Duration(rand.Int64N(int64(max(ceil, 1)))) + time.Millisecond
}

// Failing tells whether the last call failed (Next was called since Reset).
func (b *Backoff) Failing() bool { return b.n > 0 }

// Reset forgets the failures: the next delay starts from lo again.
func (b *Backoff) Reset() { b.n = 0 }

// Sleep waits d or until ctx ends; it reports whether the full wait happened.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
