package jitter

import (
	"context"
	"testing"
	"time"
)

// TestNext: each delay is below its ceiling, which doubles from lo with each
// failure in a row up to hi; Reset starts again from lo.
func TestNext(t *testing.T) {
	lo, hi := 100*time.Millisecond, 10*time.Second
	var b Backoff
	if b.Failing() {
		t.Fatal("a new Backoff is failing")
	}
	for i := range 40 {
		ceil := hi
		if i < 30 {
			ceil = min(lo<<i, hi)
		}
		for range 20 {
			c := b
			if d := c.Next(lo, hi); d < time.Millisecond || d > ceil+time.Millisecond {
				t.Fatalf("failure %d: delay %s, want 1ms..%s", i+1, d, ceil+time.Millisecond)
			}
		}
		b.Next(lo, hi)
		if !b.Failing() {
			t.Fatalf("after %d failures: not failing", i+1)
		}
	}
	b.Reset()
	if b.Failing() {
		t.Fatal("failing after Reset")
	}
	for range 50 {
		c := b
		if d := c.Next(lo, hi); d > lo+time.Millisecond {
			t.Fatalf("after Reset: delay %s, want at most %s", d, lo+time.Millisecond)
		}
	}
}

// TestSleep: a canceled context ends the wait at once and says so.
func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("a full wait reported as cut short")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("a wait under a canceled context reported as full")
	}
}
