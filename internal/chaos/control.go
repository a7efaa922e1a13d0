//go:build linux

package chaos

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// control calls ControlService on whichever replica answers, moving to the next
// on a transport failure or an unavailable answer, and retrying transient
// failures for up to a bound, as an operator's client would.
type control struct {
	clients []forgev1connect.ControlServiceClient
	mu      sync.Mutex
	cur     int
	// retries counts calls repeated after a transient failure.
	retries int
}

func newControl(urls []string, token string) *control {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	c := &control{}
	auth := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	})
	for _, u := range urls {
		c.clients = append(c.clients, forgev1connect.NewControlServiceClient(hc, u, connect.WithInterceptors(auth)))
	}
	return c
}

// transient tells whether a failed call may succeed if repeated.
func transient(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeUnknown, connect.CodeInternal, connect.CodeAborted,
		connect.CodeCanceled: // a connection reset by a replica killed mid-call reads as canceled
		return true
	}
	return false
}

// call runs fn against a replica, retrying transient failures until bound has
// passed (each try has its own deadline) or ctx ends.
func (c *control) call(ctx context.Context, bound time.Duration, fn func(ctx context.Context, cl forgev1connect.ControlServiceClient) error) error {
	deadline := time.Now().Add(bound)
	delay := 50 * time.Millisecond
	for {
		c.mu.Lock()
		i := c.cur
		cl := c.clients[i]
		c.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := fn(cctx, cl)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil {
			return err
		}
		c.mu.Lock()
		if c.cur == i {
			c.cur = (i + 1) % len(c.clients)
		}
		c.retries++
		c.mu.Unlock()
		if time.Now().Add(delay).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(delay*2, time.Second)
	}
}
