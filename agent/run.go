package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/outputcap"
)

// session is one Run after enrollment.
type session struct {
	base       context.Context // Run's context without its cancellation: handlers outlive it by the drain grace
	reportCtx  context.Context // ends when reports must give up
	tasks      sync.WaitGroup  // attempts until reported
	revoked    chan struct{}
	revokeOnce sync.Once
	revokedBy  error       // the refusal that closed revoked
	unknown    chan uint64 // identity generations the server answered "unknown agent"
}

// revoke ends the session for good: the server refused the agent's token
// (cause) other than as unknown.
func (s *session) revoke(cause error) {
	s.revokeOnce.Do(func() {
		s.revokedBy = cause
		close(s.revoked)
	})
}

// refused acts on a refusal of the token of identity generation gen: the poll
// loop enrolls again on "unknown agent"; anything else ends the session.
func (s *session) refused(err error, gen uint64) {
	if refusalOf(err) == refusedUnknown {
		select {
		case s.unknown <- gen:
		default: // one is waiting already; the poll loop re-checks the generation
		}
		return
	}
	s.revoke(err)
}

func (a *Agent) serve(ctx context.Context) error {
	base := context.WithoutCancel(ctx)
	reportCtx, stopReports := context.WithCancel(base)
	defer stopReports()
	s := &session{base: base, reportCtx: reportCtx, revoked: make(chan struct{}), unknown: make(chan uint64, 1)}

	hbCtx, stopHeartbeats := context.WithCancel(base)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		a.heartbeatLoop(hbCtx, s)
	}()
	defer func() {
		stopHeartbeats()
		<-hbDone
	}()

	a.log.Info("agent ready; waiting for tasks", a.describe()...)
	err := a.pollLoop(ctx, s)

	a.mu.Lock()
	a.draining = true
	n := len(a.running)
	a.mu.Unlock()
	switch {
	case errors.Is(err, ErrRevoked):
		a.log.Error("the server revoked this agent; stopping for good", "agent", a.ID(), "err", err)
		if err == ErrRevoked {
			a.recordRevoked()
		}
		a.cancelAll(ErrRevoked)
		stopReports()
	case err != nil:
		a.cancelAll(err)
		stopReports()
	default:
		if n > 0 {
			a.log.Info("draining", "running", n, "grace", a.cfg.DrainGrace)
		}
	}
	// The running handlers may go on for DrainGrace on a clean stop (after an
	// error they were cancelled already), or until StopNow; their results are
	// then reported for up to reportDrainTimeout, and Run gives up waiting 5 s
	// after that.
	grace := a.cfg.DrainGrace
	var stopNow <-chan struct{} = a.stopNow
	done := make(chan struct{})
	go func() {
		s.tasks.Wait()
		close(done)
	}()
	end := time.NewTimer(grace)
	defer end.Stop()
	reports := time.NewTimer(grace + reportDrainTimeout)
	defer reports.Stop()
	giveUp := time.NewTimer(grace + reportDrainTimeout + 5*time.Second)
	defer giveUp.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-stopNow:
			stopNow = nil
			if end.Stop() {
				if n := a.runningCount(); n > 0 {
					a.log.Info("stopping at once: cancelling the running tasks", "running", n)
				}
				a.cancelAll(errStopNow)
				reports.Reset(reportDrainTimeout)
				giveUp.Reset(reportDrainTimeout + 5*time.Second)
			}
		case <-end.C:
			if err == nil {
				a.cancelAll(errDrained)
			}
		case <-reports.C:
			stopReports()
		case <-giveUp.C:
			a.log.Error("handlers did not return after their contexts were cancelled; leaving them", "running", a.runningCount())
			break wait
		}
	}
	if err == nil {
		// The sign-off must be the agent's last call: a heartbeat after it would
		// count as a call and end the stop.
		stopHeartbeats()
		<-hbDone
		a.signOff(base)
		a.log.Info("stopped")
	}
	return err
}

// signOffTimeout bounds the last call of a clean stop.
const signOffTimeout = 5 * time.Second

// signOff tells the server the agent stops (a last Heartbeat with stopped), so
// it is offline at once rather than when its online window ends. It names no
// attempt: any still running are left to their leases. One try: a stop does not
// wait for a server that cannot be reached.
func (a *Agent) signOff(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, signOffTimeout)
	defer cancel()
	idx, c := a.client()
	req, _ := authed(a, &forgev1.HeartbeatRequest{Draining: true, Stopped: true})
	if _, err := c.Heartbeat(ctx, req); err != nil {
		a.log.Warn("could not tell the server this agent stopped; it counts as online until its online window ends",
			"server", a.servers[idx], "err", err)
		return
	}
	a.log.Debug("told the server this agent stopped", "server", a.servers[idx])
}

// pollResult is the answer to one Poll.
type pollResult struct {
	seq  uint64
	gen  uint64 // the identity generation whose token it was sent with
	idx  int
	res  *forgev1.PollResponse
	err  error
	took time.Duration
	// probe: sent with wait 0 after calls failed, so the agent learns at once
	// that the server answers (and says so) rather than after a hold.
	probe bool
}

// pollLoop keeps a Poll held until ctx ends (nil) or the token is refused for
// good (ErrRevoked). When the server answers "unknown agent", to a Poll or to
// any other call, it enrolls again (reenroll) and goes on. A Poll asks for as many tasks as there are free slots; when none
// are free it still holds one with max_tasks 0 to hear cancels at once, and when a
// slot frees it sends a new Poll, which makes the server answer the held one.
func (a *Agent) pollLoop(ctx context.Context, s *session) error {
	results := make(chan pollResult)
	inflight := 0
	defer func() {
		for ; inflight > 0; inflight-- {
			<-results // their contexts are ctx's: they end now
		}
	}()
	var (
		seq       uint64
		newestMax int32 = -1 // max_tasks of the newest Poll in flight; -1: none
		bo        backoff
		retry     <-chan time.Time
		quick     int
	)
	for {
		want := a.wantTasks()
		if retry == nil && ctx.Err() == nil && (newestMax < 0 || (newestMax == 0 && want > 0)) {
			seq++
			newestMax = want
			inflight++
			go a.poll(ctx, seq, want, bo.failing(), results)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.revoked:
			return revokedError(s.revokedBy)
		case gen := <-s.unknown:
			if err := a.reenroll(ctx, gen); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		case <-a.changed:
		case <-retry:
			retry = nil
		case r := <-results:
			inflight--
			if r.seq != seq { // an older Poll the newer one superseded
				if r.err == nil {
					a.accept(s, r.res)
				}
				continue
			}
			newestMax = -1
			if r.err != nil {
				if ctx.Err() != nil {
					return nil
				}
				switch refusalOf(r.err) {
				case refusedRevoked:
					s.revoke(r.err)
					return revokedError(r.err)
				case refusedUnknown:
					if err := a.reenroll(ctx, r.gen); err != nil {
						if ctx.Err() != nil {
							return nil
						}
						return err
					}
					bo.reset()
					continue
				}
				if !bo.failing() {
					a.log.Warn("cannot poll; retrying with backoff", "server", a.servers[r.idx], "err", r.err)
				}
				if transient(r.err) {
					a.failover(r.idx)
				}
				retry = time.After(bo.next())
				continue
			}
			if msg := a.reachable(r.idx); bo.failing() {
				a.log.Info(msg+"; waiting for tasks", "server", a.servers[r.idx])
				bo.reset()
			}
			a.accept(s, r.res)
			if len(r.res.Tasks) == 0 && len(r.res.Cancels) == 0 && r.took < quickEmpty && !r.probe {
				// Answered empty at once: the server is closing, or another
				// process polls with this identity. Do not spin.
				if quick == 0 {
					a.log.Warn("polls are answered empty at once (server closing, or another agent polling with this identity?); slowing down", "agent", a.ID())
				}
				quick++
				retry = time.After(time.Duration(rand.Int64N(int64(min(backoffMin<<min(quick, 6), 5*time.Second)))))
				continue
			}
			quick = 0
		}
	}
}

// wantTasks returns how many tasks the next Poll may take.
func (a *Agent) wantTasks() int32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.serverDrain || a.draining {
		return 0
	}
	return int32(min(max(a.cfg.Concurrency-len(a.running), 0), maxPollTasks))
}

func (a *Agent) poll(ctx context.Context, seq uint64, maxTasks int32, probe bool, out chan<- pollResult) {
	idx, c := a.client()
	a.mu.Lock()
	wait := a.pollWait
	a.mu.Unlock()
	req := &forgev1.PollRequest{MaxTasks: proto.Int32(maxTasks)}
	if a.cfg.PollWait > 0 {
		req.Wait = durationpb.New(a.cfg.PollWait)
	}
	if probe {
		req.Wait = durationpb.New(0)
	}
	cctx, cancel := context.WithTimeout(ctx, wait+pollMargin)
	start := time.Now()
	areq, gen := authed(a, req)
	res, err := c.Poll(cctx, areq)
	cancel()
	r := pollResult{seq: seq, gen: gen, idx: idx, err: err, took: time.Since(start), probe: probe}
	if err == nil {
		r.res = res.Msg
	}
	out <- r
}

// accept acts on a Poll answer: cancels first, then new tasks.
func (a *Agent) accept(s *session, res *forgev1.PollResponse) {
	for _, ref := range res.Cancels {
		a.cancelAttempt(ref, errCanceled)
	}
	// Never more than Concurrency at once: the agent asks for no more than its
	// free slots, but a Poll answer (a hostile server, or one in the middle)
	// may bring more. Those are handed back at once, to be leased again.
	a.mu.Lock()
	free := a.cfg.Concurrency - len(a.running)
	if a.serverDrain || a.draining {
		free = 0
	}
	a.mu.Unlock()
	var run, back []*forgev1.Task
	for _, t := range res.Tasks {
		replay, err := a.checkSigned(t)
		switch {
		case replay != nil:
			a.log.Warn("signed task refused: "+replay.Error(), "task", t.Id, "attempt", t.Attempt)
		case err != nil:
			a.log.Error("task refused", "task", t.Id, "attempt", t.Attempt, "err", err)
			req := &forgev1.ReportResultRequest{TaskId: t.Id, Attempt: t.Attempt,
				Outcome: forgev1.Outcome_OUTCOME_FAILED, Error: "refused by the agent: " + err.Error()}
			s.tasks.Add(1)
			go func() { defer s.tasks.Done(); a.report(s, req, time.Time{}) }()
		case free <= 0:
			back = append(back, t)
		default:
			free--
			run = append(run, t)
		}
	}
	// What is run or handed back is on record (in the state dir, synced) before
	// anything starts, so no replay can run it again, even after a restart.
	if a.signed() {
		if err := a.guard.record(run, back); err != nil {
			a.log.Error("cannot record the tasks accepted; handing them back rather than running them unrecorded", "err", err)
			back, run = append(back, run...), nil
		}
	}
	for _, t := range run {
		a.start(s, t)
		a.beatSoonIfDue(t)
	}
	if len(back) > 0 {
		a.log.Warn("a Poll answer brought more tasks than free slots; handing the rest back", "tasks", len(res.Tasks), "handed_back", len(back), "concurrency", a.cfg.Concurrency)
		refs := make([]*forgev1.TaskRef, len(back))
		for i, t := range back {
			refs[i] = &forgev1.TaskRef{TaskId: t.Id, Attempt: t.Attempt}
		}
		s.tasks.Add(1)
		go func() { defer s.tasks.Done(); a.returnTasks(s, refs) }()
	}
}

// returnTasks hands attempts back to the server (AgentService.ReturnTasks),
// retrying transient failures like a report. A server without the call, or one
// that refuses it, leaves them to their leases: they are requeued when those
// run out.
func (a *Agent) returnTasks(s *session, refs []*forgev1.TaskRef) {
	var bo backoff
	for {
		idx, c := a.client()
		cctx, cancel := context.WithTimeout(s.reportCtx, callTimeout)
		req, _ := authed(a, &forgev1.ReturnTasksRequest{Tasks: refs})
		_, err := c.ReturnTasks(cctx, req)
		cancel()
		if err == nil {
			return
		}
		if !transient(err) {
			a.log.Warn("cannot hand tasks back; they return when their leases run out", "tasks", len(refs), "err", err)
			return
		}
		a.failover(idx)
		if !sleep(s.reportCtx, bo.next()) {
			return
		}
	}
}

// beatSoonIfDue asks for a heartbeat at once when t's lease ends before the next
// one would go out, as when a Poll answer waited while the agent was frozen. The
// lease expiry is the server's time; a skewed clock costs an early heartbeat, or
// nothing more than without this.
func (a *Agent) beatSoonIfDue(t *forgev1.Task) {
	if t.LeaseExpiresAt == nil {
		return
	}
	a.mu.Lock()
	d := a.hbInterval
	a.mu.Unlock()
	if time.Until(t.LeaseExpiresAt.AsTime()) < d {
		select {
		case a.beatNow <- struct{}{}:
		default:
		}
	}
}

// start runs one leased attempt in its own goroutine.
func (a *Agent) start(s *session, t *forgev1.Task) {
	received := time.Now()
	key := refKey{t.Id, t.Attempt}
	task := &Task{ID: t.Id, JobID: t.JobId, Type: t.Type, Attempt: t.Attempt, Payload: t.Payload}
	hctx, cancel := context.WithCancelCause(s.base)
	stop := func() { cancel(nil) }
	if d := t.Timeout.AsDuration(); t.Timeout != nil && d > 0 {
		// Counted from receipt, so clock skew with the server does not matter.
		task.Timeout = d
		task.Deadline = received.Add(d)
		var cancelT context.CancelFunc
		hctx, cancelT = context.WithDeadlineCause(hctx, task.Deadline, timedOutError{d})
		stop = func() { cancelT(); cancel(nil) }
	} else if t.Deadline != nil {
		task.Deadline = t.Deadline.AsTime()
	}
	te := &taskEnv{maxOutput: a.cfg.MaxOutput, groups: a.groups}
	hctx = withTaskEnv(hctx, te)
	at := &attempt{key: key, cancel: cancel}

	a.mu.Lock()
	if _, dup := a.running[key]; dup {
		a.mu.Unlock()
		stop()
		return // the same attempt delivered twice: it runs once
	}
	// The server leases attempt N+1 of a task only once attempt N's lease has
	// expired, so an older attempt than one already taken is stale. A Poll answer
	// that reached a frozen or cut-off agent late can bring both: run the newest
	// only, and stop an older one still running (it is not reported).
	if newest := a.newest.get(t.Id); newest > t.Attempt {
		a.mu.Unlock()
		stop()
		a.log.Warn("stale attempt dropped: a newer attempt of the task was received", "task", t.Id, "attempt", t.Attempt, "newest", newest)
		return
	}
	for k, older := range a.running {
		if k.id == t.Id && k.attempt < t.Attempt {
			a.log.Warn("stopping a stale attempt: a newer attempt of the task was received", "task", t.Id, "attempt", k.attempt, "newest", t.Attempt)
			older.abandoned.Store(true)
			older.cancel(errAbandoned)
		}
	}
	a.newest.put(t.Id, t.Attempt, received)
	a.running[key] = at
	a.mu.Unlock()

	s.tasks.Add(1)
	go func() {
		defer s.tasks.Done()
		defer a.finish(key)
		defer stop()
		st := newStreamer(s.reportCtx, a, task)
		task.Stdout, task.Stderr = streamWriter{st, 0}, streamWriter{st, 1}
		attrs := []any{"task", t.Id, "attempt", t.Attempt, "type", t.Type, "job", t.JobId}
		if task.Timeout > 0 {
			attrs = append(attrs, "timeout", task.Timeout)
		}
		a.log.Info("task started", attrs...)
		out, err := a.runHandler(hctx, task)
		if at.abandoned.Load() {
			st.stop()
			a.log.Info("task abandoned; not reporting", "task", t.Id, "attempt", t.Attempt)
			return
		}
		// The output goes out before the result: once the task has ended, the
		// server takes no more of it.
		a.report(s, a.result(hctx, task, out, err, te, st.close(s.reportCtx)), received)
	}()
}

// runHandler runs the handler for t's type, turning a panic into an error.
func (a *Agent) runHandler(ctx context.Context, t *Task) (out []byte, err error) {
	a.mu.Lock()
	h := a.handlers[t.Type]
	a.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("no handler for task type %s", t.Type)
	}
	defer func() {
		if r := recover(); r != nil {
			a.log.Error("handler panicked", "task", t.ID, "type", t.Type, "panic", r, "stack", string(debug.Stack()))
			out, err = nil, fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h(ctx, t)
}

// result builds the report of an attempt from what the handler returned (out,
// err) and what became of what it wrote to its streams (so).
func (a *Agent) result(ctx context.Context, t *Task, out []byte, err error, te *taskEnv, so streamed) *forgev1.ReportResultRequest {
	req := &forgev1.ReportResultRequest{TaskId: t.ID, Attempt: t.Attempt, Outcome: forgev1.Outcome_OUTCOME_SUCCEEDED}
	size := int64(len(out))
	if te.truncated && te.size > size {
		size = te.size
	}
	if so.fallback != nil { // the server took none of it live: it goes with the result
		out = append(so.fallback, out...)
	}
	capped, truncated, _ := outputcap.Cut(out, a.cfg.MaxOutput)
	req.Output = capped
	if truncated || te.truncated || so.cut {
		req.OutputTruncated = true
		req.OutputSize = size + so.written
	}
	// Stopped at its timeout (or finished past it): the server records TIMED_OUT.
	var tmo timedOutError
	req.TimedOut = ctx.Err() != nil && errors.As(context.Cause(ctx), &tmo)
	if err != nil {
		req.Outcome = forgev1.Outcome_OUTCOME_FAILED
		msg := err.Error()
		if cause := context.Cause(ctx); ctx.Err() != nil && cause != nil && !strings.Contains(msg, cause.Error()) {
			msg += " (" + cause.Error() + ")"
		}
		req.Error = msg
		var ee *ExitError
		if errors.As(err, &ee) {
			req.ExitCode = int32(ee.Code)
		}
	}
	return req
}

// finish forgets a reported attempt and wakes the poll loop for its slot.
func (a *Agent) finish(key refKey) {
	a.mu.Lock()
	delete(a.running, key)
	a.mu.Unlock()
	a.wake()
}

func (a *Agent) wake() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) runningCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.running)
}

// cancelAttempt cancels the handler of the attempt ref names; attempt 0 names
// every attempt of the task.
func (a *Agent) cancelAttempt(ref *forgev1.TaskRef, cause error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, at := range a.running {
		if k.id == ref.GetTaskId() && (ref.GetAttempt() == 0 || k.attempt == ref.GetAttempt()) {
			if cause == errAbandoned {
				at.abandoned.Store(true)
			}
			at.cancel(cause)
		}
	}
}

func (a *Agent) cancelAll(cause error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.running {
		at.cancel(cause)
	}
}

// report sends an attempt's result, retrying transient failures with backoff
// until it is accepted, refused, or the session's report context ends. It logs
// how the task ended; started is when the attempt was received (zero for one
// refused unrun).
func (a *Agent) report(s *session, req *forgev1.ReportResultRequest, started time.Time) {
	log := a.log.With("task", req.TaskId, "attempt", req.Attempt)
	var bo backoff
	for {
		idx, c := a.client()
		cctx, cancel := context.WithTimeout(s.reportCtx, callTimeout)
		areq, gen := authed(a, req)
		res, err := c.ReportResult(cctx, areq)
		cancel()
		if err == nil {
			attrs := []any{"state", strings.TrimPrefix(res.Msg.State.String(), "TASK_STATE_")}
			if !started.IsZero() {
				attrs = append(attrs, "took", time.Since(started).Round(time.Millisecond))
			}
			if req.Outcome != forgev1.Outcome_OUTCOME_SUCCEEDED {
				attrs = append(attrs, "exit_code", req.ExitCode, "error", req.Error)
			}
			log.Info("task ended", attrs...)
			return
		}
		switch connect.CodeOf(err) {
		case connect.CodeFailedPrecondition, connect.CodeNotFound:
			log.Warn("result refused: this attempt is no longer current", "err", err)
			return
		case connect.CodeUnauthenticated:
			if refusalOf(err) == refusedUnknown {
				// The identity the attempt was leased to is gone with the
				// server's state: nobody can take this result any more.
				log.Warn("result dropped: the server no longer knows the agent this attempt was leased to", "err", err)
			} else {
				log.Error("result refused: agent token not accepted", "err", err)
			}
			s.refused(err, gen)
			return
		case connect.CodeResourceExhausted:
			if len(req.Output) > 64<<10 {
				log.Warn("result too large for the server; sending less output", "err", err)
				if !req.OutputTruncated {
					req.OutputSize = int64(len(req.Output))
				}
				req.Output, _, _ = outputcap.Cut(req.Output, 64<<10)
				req.OutputTruncated = true
				continue
			}
		}
		if !transient(err) {
			log.Error("result refused", "err", err)
			return
		}
		if !bo.failing() {
			log.Warn("cannot report; retrying with backoff", "server", a.servers[idx], "err", err)
		}
		a.failover(idx)
		if !sleep(s.reportCtx, bo.next()) {
			log.Error("gave up reporting the result", "err", err)
			return
		}
	}
}

// heartbeatLoop extends the leases of the attempts the agent holds, every
// heartbeat interval while any is held, and acts on the answers.
func (a *Agent) heartbeatLoop(ctx context.Context, s *session) {
	var bo backoff
	for first := true; ; first = false {
		a.mu.Lock()
		d := a.hbInterval
		if first && !a.hbKnown {
			// Started from a saved identity, the agent has not heard the server's
			// interval (Register tells it): ask at once rather than wait the
			// default, which may outlast the lease of the first task it takes.
			d = 0
		}
		a.mu.Unlock()
		if bo.failing() {
			d = min(d, bo.next()+time.Second)
		}
		timer := time.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-a.beatNow:
			timer.Stop()
		}
		a.mu.Lock()
		refs := make([]*forgev1.TaskRef, 0, len(a.running))
		for k := range a.running {
			refs = append(refs, &forgev1.TaskRef{TaskId: k.id, Attempt: k.attempt})
		}
		// While drained, heartbeats tell when it ends; until the interval is
		// known, a heartbeat learns it.
		need := len(refs) > 0 || a.serverDrain || !a.hbKnown
		draining := a.draining || a.serverDrain
		a.mu.Unlock()
		if !need {
			continue
		}
		idx, c := a.client()
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		areq, gen := authed(a, &forgev1.HeartbeatRequest{Running: refs, Draining: draining})
		res, err := c.Heartbeat(cctx, areq)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if connect.CodeOf(err) == connect.CodeUnauthenticated {
				s.refused(err, gen)
				if refusalOf(err) == refusedRevoked {
					return
				}
				bo.next()
				continue
			}
			if !bo.failing() {
				a.log.Warn("cannot heartbeat", "server", a.servers[idx], "err", err)
			}
			bo.next()
			if transient(err) {
				a.failover(idx)
			}
			continue
		}
		bo.reset()
		m := res.Msg
		for _, ref := range m.Cancel {
			a.cancelAttempt(ref, errCanceled)
		}
		for _, ref := range m.Abandon {
			a.cancelAttempt(ref, errAbandoned)
		}
		a.mu.Lock()
		if d := m.HeartbeatInterval.AsDuration(); m.HeartbeatInterval != nil && d > 0 {
			a.hbInterval, a.hbKnown = d, true
		}
		changed := m.Drain != a.serverDrain
		a.serverDrain = m.Drain
		a.mu.Unlock()
		if changed {
			a.log.Info("server drain request changed", "drain", m.Drain)
			a.wake()
		}
	}
}
