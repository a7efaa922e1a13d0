package server

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/store"
)

// A hold is one held call: Poll, WaitTask, WaitJob, Dispatch with wait. It
// re-checks a condition each time one of its watch keys fires, until the
// condition holds, the hold ends, the caller goes away or the server closes.
type hold struct {
	// Keys are the store's watch keys (store.AgentKey, TaskKey, JobKey) whose
	// changes can make the condition true.
	Keys []string
	// End is when the call answers whatever it has (see holdEnd).
	End time.Time
	// Waiting, when set, is called as the call first waits (after a check that
	// did not hold), and the function it returns when the hold is over: Poll counts
	// its held calls this way.
	Waiting func() (done func())
}

// hold runs check at once and again after each change to h.Keys, until check
// reports done or fails, h.End passes, ctx ends or the server closes. It returns
// check's error, or nil; the caller answers with what its last check saw. A hold
// whose end has already passed runs check once and watches nothing.
func (s *Server) hold(ctx context.Context, h hold, check func() (done bool, err error)) error {
	if ctx.Err() != nil {
		// The caller has gone (an agent that stopped, a client that gave up):
		// a Poll's check would lease tasks into an answer nobody reads and
		// count as a call an agent that may have signed off since.
		return store.Errorf(store.KindUnavailable, "server: the caller has gone")
	}
	if !time.Now().Before(h.End) {
		_, err := check()
		return err
	}
	extendDeadlines(ctx, h.End)
	// Watch before the first check, so a change between the two is not missed.
	w := s.store.Watch(h.Keys...)
	defer w.Stop()
	if done, err := check(); done || err != nil {
		return err
	}
	left := time.Until(h.End)
	if left <= 0 || ctx.Err() != nil || s.isClosing() {
		return nil
	}
	timer := time.NewTimer(left)
	defer timer.Stop()
	if h.Waiting != nil {
		defer h.Waiting()()
	}
	return s.wait(ctx, h.End, w.C, timer.C, check)
}

// wait is the loop of a hold that waits: it re-checks after each fire of the
// watcher until check is done or fails, the timer fires, ctx ends or the
// server closes. It is a function of its own so that the frame a held call
// keeps while parked here is small (see agentService.Poll).
func (s *Server) wait(ctx context.Context, end time.Time, fired <-chan struct{}, timeout <-chan time.Time, check func() (bool, error)) error {
	for {
		select {
		case <-fired:
			// A caller gone while we waited must not have a task leased into
			// its closed connection (the lease would bring it back, but late).
			if ctx.Err() != nil || s.isClosing() {
				return nil
			}
		case <-timeout:
			return nil
		case <-ctx.Done():
			return nil
		case <-s.closing:
			return nil
		}
		done, err := check()
		if done || err != nil {
			return err
		}
		if time.Until(end) <= 0 || ctx.Err() != nil || s.isClosing() {
			return nil
		}
	}
}

// answerSlack is how long a held call's answer may take to be written once its
// hold ends.
const answerSlack = 30 * time.Second

// extendDeadlines moves the read and write deadlines of a held call's
// connection past the hold's end. The http.Server forge is mounted on may be
// an application's own, with a ReadTimeout or WriteTimeout shorter than a hold:
// without this, the answer of a Poll held past them could not be written (a
// task leased into it would come back only when its lease ran out). A writer
// that cannot set deadlines (a wrapper without Unwrap) keeps its own.
func extendDeadlines(ctx context.Context, end time.Time) {
	c, _ := ctx.Value(callKey{}).(*call)
	if c == nil {
		return
	}
	_ = c.conn.SetReadDeadline(end.Add(answerSlack))
	_ = c.conn.SetWriteDeadline(end.Add(answerSlack))
}

// heldContext bounds the store calls of a call held until end to the deadlines
// its hold gives its connection (extendDeadlines), less a margin for the
// answer: a store too slow to answer in time (a Redis with a long queue) makes
// the call answer an error, where the connection would otherwise be closed
// unanswered and the caller see only an unexpected EOF. A call whose end has
// passed before its hold starts (a Dispatch with wait that took longer than
// its wait) keeps the server's own deadlines, which extendDeadlines leaves.
func heldContext(ctx context.Context, end time.Time) (context.Context, context.CancelFunc) {
	if !time.Now().Before(end) {
		return ctx, func() {}
	}
	return context.WithDeadline(ctx, end.Add(answerSlack-answerMargin))
}

// answerMargin is what heldContext keeps of answerSlack for writing the answer.
const answerMargin = 5 * time.Second

func (s *Server) isClosing() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// holdEnd returns when a held call must answer: after wait, but before the
// caller's own deadline (Connect-Timeout-Ms) with a margin for the answer to travel.
func holdEnd(ctx context.Context, wait time.Duration) time.Time {
	end := time.Now().Add(wait)
	if dl, ok := ctx.Deadline(); ok {
		margin := min(max(time.Until(dl)/10, 50*time.Millisecond), time.Second)
		if e := dl.Add(-margin); e.Before(end) {
			end = e
		}
	}
	return end
}

// waitFor parses a request's wait: omitted gives def, above limit it is clamped.
func waitFor(field string, d *durationpb.Duration, def, limit time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	w, err := checkDuration(field, d)
	return min(w, limit), err
}

// optDuration parses an optional duration: omitted or zero gives def.
func optDuration(field string, d *durationpb.Duration, def time.Duration) (time.Duration, error) {
	if d == nil {
		return def, nil
	}
	v, err := checkDuration(field, d)
	if err == nil && v == 0 {
		return def, nil
	}
	return v, err
}

// checkDuration returns a request's duration, refusing malformed and negative ones.
func checkDuration(field string, d *durationpb.Duration) (time.Duration, error) {
	if err := d.CheckValid(); err != nil {
		return 0, invalid(field, "%v", err)
	}
	v := d.AsDuration()
	if v < 0 {
		return 0, invalid(field, "must not be negative")
	}
	return v, nil
}
