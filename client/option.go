package client

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"

	"github.com/orange-forge/forge/store"
)

// Defaults of the options.
const (
	// DefaultGiveUpAfter is how long a call keeps retrying transient errors.
	DefaultGiveUpAfter = time.Minute
	// DefaultCallTimeout bounds one try of a call that is not held.
	DefaultCallTimeout = 30 * time.Second
	// DefaultHold is how long each held call (WaitJob, WaitTask, ReadOutput) asks
	// the server to hold: the server's own default, under the idle timeouts of
	// common load balancers (30–60 s). Longer waits are made of several holds.
	DefaultHold = store.DefaultPollHold
	// DefaultMaxAnswer bounds the size of one answer the Client reads (after
	// decompression), so a broken or hostile server cannot make it allocate
	// without bound: far above what forge sends (a page of tasks with their
	// capped outputs), as the Go agent's own bound.
	DefaultMaxAnswer = 256 << 20
)

// An Option configures a Client.
type Option func(*options)

type options struct {
	httpClient  *http.Client
	tlsConfig   *tls.Config
	logger      *slog.Logger
	giveUpAfter time.Duration
	callTimeout time.Duration
	hold        time.Duration
	backoffMin  time.Duration
	backoffMax  time.Duration
	onRetry     func(Retry)
	maxAnswer   int
}

func defaultOptions() options {
	return options{
		giveUpAfter: DefaultGiveUpAfter,
		callTimeout: DefaultCallTimeout,
		hold:        DefaultHold,
		backoffMin:  100 * time.Millisecond,
		backoffMax:  5 * time.Second,
		maxAnswer:   DefaultMaxAnswer,
	}
}

// WithHTTPClient makes the Client send its calls through hc. hc must have no
// Timeout: held calls last up to DefaultHold and the Client puts a deadline on
// each call itself. Without it, the Client makes its own, keeping enough idle
// connections per server for many held calls at once.
func WithHTTPClient(hc *http.Client) Option {
	return func(o *options) { o.httpClient = hc }
}

// WithTLSConfig sets the TLS configuration of the Client's own HTTP client,
// such as RootCAs to trust a private CA. It is ignored with WithHTTPClient.
func WithTLSConfig(c *tls.Config) Option {
	return func(o *options) { o.tlsConfig = c }
}

// WithLogger makes the Client log its retries and its moves between servers;
// by default it logs nothing.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithGiveUpAfter sets how long a call keeps retrying transient errors before
// it returns the last one (DefaultGiveUpAfter). The clock starts at the call's
// first failure, and each call counts on its own, so a Wait of an hour that
// meets a short outage keeps going. Negative: retry until the context ends.
func WithGiveUpAfter(d time.Duration) Option {
	return func(o *options) {
		if d != 0 {
			o.giveUpAfter = d
		}
	}
}

// WithCallTimeout bounds each try of a call that is not held
// (DefaultCallTimeout); a try that runs out is retried as a transient error.
// Held calls get their hold plus a margin instead.
func WithCallTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.callTimeout = d
		}
	}
}

// WithHold sets how long each held call asks the server to hold (DefaultHold).
// Keep it under the idle timeout of any proxy between the Client and forge.
func WithHold(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.hold = d
		}
	}
}

// WithBackoff sets the bounds of the delay between retries: the ceiling
// doubles from min to max with each failure in a row, and each delay is drawn
// at random below it, so many clients that lost a server do not come back in
// step. The defaults are 100 ms and 5 s.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) {
		if min > 0 && max >= min {
			o.backoffMin, o.backoffMax = min, max
		}
	}
}

// WithMaxAnswer bounds the bytes of one answer the Client reads, decompressed
// (DefaultMaxAnswer). A larger answer fails the call with
// connect.CodeResourceExhausted, not retried.
func WithMaxAnswer(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.maxAnswer = n
		}
	}
}

// OnRetry makes the Client call f before each retry, from the goroutine of
// the call being retried: a command line tool says at once that the server
// cannot be reached, rather than seeming to hang until it gives up.
func OnRetry(f func(Retry)) Option {
	return func(o *options) { o.onRetry = f }
}
