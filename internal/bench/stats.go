package bench

import (
	"fmt"
	"slices"
	"time"
)

// dist is a sorted set of latency samples.
type dist []time.Duration

func newDist(s []time.Duration) dist {
	d := slices.Clone(s)
	slices.Sort(d)
	return d
}

// q returns the q-quantile (nearest rank); zero for an empty dist.
func (d dist) q(q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q*float64(len(d))+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func (d dist) p50() time.Duration { return d.q(0.50) }
func (d dist) p99() time.Duration { return d.q(0.99) }
func (d dist) max() time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[len(d)-1]
}

// us is a duration in microseconds, for JSON.
func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// fmtDur prints a latency with three significant digits in a fitting unit.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func ratio(d, floor time.Duration) float64 {
	if floor <= 0 {
		return 0
	}
	return float64(d) / float64(floor)
}
