package server

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"connectrpc.com/connect"
)

// rateLimiter is a token bucket per caller (per agent, per operator token, per
// enrollment token), checked in the gate before the body is read. A nil
// rateLimiter allows everything.
type rateLimiter struct {
	rate  float64 // tokens per second
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if rate <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(rate))
	}
	return &rateLimiter{rate: rate, burst: float64(burst), buckets: make(map[string]*bucket)}
}

var errRateLimited = connect.NewError(connect.CodeResourceExhausted, errors.New("rate limit for this token exceeded (--rate-limit); slow down and retry"))

// Default limits on Register (Config.RegisterRate, Config.RegisterRatePerAddr):
// enough for a fleet enrolling at once (5,000 agents in about four minutes, each
// retrying with backoff), far from what a leaked enrollment token would need to
// flood the agent list.
const (
	DefaultRegisterRate        = 20
	DefaultRegisterRatePerAddr = 5
)

var (
	errRegisterRate = connect.NewError(connect.CodeResourceExhausted,
		errors.New("too many registrations with this enrollment token (--register-rate); retry later"))
	errRegisterRateAddr = connect.NewError(connect.CodeResourceExhausted,
		errors.New("too many registrations from this address (--register-rate-per-addr); retry later"))
)

// allowRegister takes a token from the Register buckets of the enrollment
// token and of the source address; both must have one. A call refused by the
// second still spent from the first: a flood is slowed either way.
func (s *Server) allowRegister(p principal, remoteAddr string, now time.Time) error {
	if !s.regToken.allow(p.by, now) {
		return errRegisterRate
	}
	if !s.regAddr.allow(addrKey(remoteAddr), now) {
		return errRegisterRateAddr
	}
	return nil
}

// addrKey is whose bucket a source address spends from: its IPv4 address, or
// the /64 of its IPv6 address — a single host is commonly given a whole /64,
// and would otherwise have 2^64 buckets to pick from.
func addrKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p.String()
}

// allow takes one token from who's bucket.
func (l *rateLimiter) allow(who string, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) > time.Minute { // forget callers idle long enough to have a full bucket
		for k, b := range l.buckets {
			if now.Sub(b.last).Seconds()*l.rate >= l.burst {
				delete(l.buckets, k)
			}
		}
		l.swept = now
	}
	b := l.buckets[who]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[who] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
