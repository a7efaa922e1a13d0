package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/jitter"
)

// holdMargin is how long past its hold a held call may take to answer before
// the Client gives up on that try: the server's own work (a Dispatch before its
// wait) and the answer's trip. The server ends its hold before the caller's
// deadline (it reads it from Connect-Timeout-Ms), so a live server never hits it.
const holdMargin = 10 * time.Second

// Retry describes a call about to be tried again after a transient error; see
// OnRetry.
type Retry struct {
	// Procedure is the RPC, such as /forge.v1.ControlService/WaitJob.
	Procedure string
	// Server is the base URL that failed; Next the one the next try goes to
	// (another one when the Client has several).
	Server, Next string
	// Err is what failed; connect.CodeOf(Err) tells its code.
	Err error
	// Attempt counts the retries of this call: 1 for the first.
	Attempt int
	// Failing is how long the call has been failing, since its first failure.
	Failing time.Duration
	// Wait is the pause before the next try.
	Wait time.Duration
}

// Transient tells whether err may go away by itself, so that the same call
// made again may succeed: the server or a proxy in front of it is unavailable
// (a refused connection, a replica going away, a store that cannot be
// reached, a 502/503/504, an answer cut off), a try ran out of time, or the
// call was aborted.
// The Client retries these with backoff; every other code is an answer
// (invalid_argument, not_found, failed_precondition, resource_exhausted …)
// that repeating cannot change.
func Transient(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeAborted:
		return true
	case connect.CodeUnknown, connect.CodeCanceled:
		// A connection cut by a replica that went away is "unknown" (an
		// answer cut off mid-way) or, for a reset, "canceled" (connect-go
		// reads a reset as the peer giving up) with the transport's own
		// error; the server never answers either, and a caller's own cancel
		// wraps context.Canceled.
		return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
			errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	}
	return false
}

// method is a ControlService method, as a method expression of the generated
// interface (forgev1connect.ControlServiceClient.GetJob).
type method[Req, Res any] func(forgev1connect.ControlServiceClient, context.Context, *connect.Request[Req]) (*connect.Response[Res], error)

// invoke makes one call, retrying transient errors with backoff (moving to the
// next server when the Client has several) until it succeeds, fails for good,
// ctx ends or the call has failed for giveUpAfter. Each try has a deadline of
// its own: the hold the request asks for plus holdMargin, or callTimeout. It
// returns how many tries it made.
func invoke[Req, Res any](ctx context.Context, c *Client, req *connect.Request[Req], m method[Req, Res]) (*connect.Response[Res], int, error) {
	timeout := c.tryTimeout(req.Msg)
	var (
		b     jitter.Backoff
		first time.Time
	)
	for tries := 1; ; tries++ {
		idx, cl := c.current()
		try := connect.NewRequest(req.Msg)
		for k, v := range req.Header() {
			try.Header()[k] = v
		}
		start := time.Now()
		tctx, cancel := context.WithTimeout(ctx, timeout)
		res, err := m(cl, tctx, try)
		cancel()
		if err == nil {
			return res, tries, nil
		}
		if ctx.Err() != nil || !Transient(err) {
			return nil, tries, err
		}
		now := time.Now()
		if first.IsZero() {
			// A try that hung until its deadline was failing all along; one
			// cut off mid-hold was working until then.
			first = now
			if connect.CodeOf(err) == connect.CodeDeadlineExceeded {
				first = start
			}
		}
		failing := now.Sub(first)
		proc := try.Spec().Procedure
		if g := c.opts.giveUpAfter; g > 0 && failing >= g {
			return nil, tries, fmt.Errorf("forge: %s: gave up after %d tries in %s: %w", proc, tries, failing.Round(time.Millisecond), err)
		}
		next := c.failover(idx)
		wait := b.Next(c.opts.backoffMin, c.opts.backoffMax)
		if g := c.opts.giveUpAfter; g > 0 {
			wait = min(wait, g-failing) // one last try at the bound, not a sleep past it
		}
		c.log.Warn("forge call failed; retrying", "procedure", proc, "server", c.servers[idx].url,
			"next", c.servers[next].url, "err", err, "retry", tries, "wait", wait)
		if f := c.opts.onRetry; f != nil {
			f(Retry{Procedure: proc, Server: c.servers[idx].url, Next: c.servers[next].url, Err: err,
				Attempt: tries, Failing: failing, Wait: wait})
		}
		if !jitter.Sleep(ctx, wait) {
			return nil, tries, err
		}
	}
}

// tryTimeout is the deadline of one try of a call with request msg.
func (c *Client) tryTimeout(msg any) time.Duration {
	w, ok := msg.(interface{ GetWait() *durationpb.Duration })
	if !ok {
		return c.opts.callTimeout
	}
	d := w.GetWait()
	if d == nil {
		if _, ok := msg.(*forgev1.DispatchRequest); ok {
			return c.opts.callTimeout // a Dispatch without wait is not held
		}
		// The server's default hold; the Client's Wait loops always say theirs.
		return DefaultHold + holdMargin
	}
	return max(d.AsDuration(), 0) + holdMargin
}
