package agent

import (
	"context"
	"time"

	"github.com/orange-forge/forge/internal/jitter"
)

const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 10 * time.Second
)

// backoff gives full-jitter delays (internal/jitter, as the control client's):
// a random duration below a ceiling that doubles from backoffMin to backoffMax
// with each failure, so a fleet that lost its server does not come back in step.
type backoff struct{ j jitter.Backoff }

func (b *backoff) next() time.Duration { return b.j.Next(backoffMin, backoffMax) }

// failing tells whether the last call failed.
func (b *backoff) failing() bool { return b.j.Failing() }

func (b *backoff) reset() { b.j.Reset() }

// sleep waits d or until ctx ends; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool { return jitter.Sleep(ctx, d) }
