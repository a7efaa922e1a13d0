package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"
)

// This file is the lifecycle of tasks and agents, written once: the states, what
// moves a task from one to the next and the reason each move records (reasons.go),
// and the rules around them — what counts as a failure, what a cancel does, how a
// report or an expired lease ends an attempt, when an agent is online. memstore
// calls these functions. redisstore's Lua scripts, which must make the same moves
// atomically inside Redis, get the same constants and rules from a prelude
// generated from this package (store/redisstore/prelude.lua), and a test runs that
// Lua in a real Redis against these functions.

// TaskState is where a task is in its life; the values match forge.v1.TaskState.
type TaskState int32

// Task states. PENDING and RUNNING are live; the others are terminal.
const (
	StateUnspecified TaskState = 0
	StatePending     TaskState = 1
	StateRunning     TaskState = 2
	StateSucceeded   TaskState = 3
	StateFailed      TaskState = 4
	StateCanceled    TaskState = 5
	StateTimedOut    TaskState = 6
	StateExpired     TaskState = 7
	StateLost        TaskState = 8
)

var stateNames = [...]string{"UNSPECIFIED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED", "TIMED_OUT", "EXPIRED", "LOST"}

// String returns the state's name, such as "RUNNING".
func (s TaskState) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "UNKNOWN"
}

// Terminal tells whether the state is final.
func (s TaskState) Terminal() bool { return s >= StateSucceeded && s <= StateLost }

// Failure tells whether a task that ended in state s counts toward its job's
// max_failures: FAILED, TIMED_OUT, LOST and EXPIRED do; SUCCEEDED and CANCELED
// do not.
func (s TaskState) Failure() bool {
	switch s {
	case StateFailed, StateTimedOut, StateLost, StateExpired:
		return true
	}
	return false
}

// Outcome is an agent's report of an attempt; the values match forge.v1.Outcome.
type Outcome int32

// Outcomes.
const (
	OutcomeUnspecified Outcome = 0
	OutcomeSucceeded   Outcome = 1
	OutcomeFailed      Outcome = 2
)

// AgentStatus is an agent's liveness; the values match forge.v1.AgentStatus.
type AgentStatus int32

// Agent statuses.
const (
	AgentUnspecified AgentStatus = 0
	AgentOnline      AgentStatus = 1
	AgentOffline     AgentStatus = 2
	AgentRevoked     AgentStatus = 3
)

// StatusAt returns an agent's status at now: REVOKED once revoked; OFFLINE once
// it stopped (its last call said it was stopping cleanly: a Heartbeat with
// Stopped); ONLINE while its last call (lastSeen) is less than window ago, or
// while a Poll it started is still held (pollUntil is when that hold ends);
// OFFLINE otherwise.
func StatusAt(revoked, stopped bool, lastSeen, pollUntil, now time.Time, window time.Duration) AgentStatus {
	switch {
	case revoked:
		return AgentRevoked
	case stopped:
		return AgentOffline
	case now.Sub(lastSeen) < window || now.Before(pollUntil):
		return AgentOnline
	default:
		return AgentOffline
	}
}

// CheckAgentCred decides what an agent credential proves, from what the store
// holds of its agent: whether a record exists, whether it is revoked, and
// whether the secret matched one of its token hashes (checked only when it is
// not revoked). No record is ErrUnknownAgent: never registered, or the state
// that held it was lost — an agent told so may enroll again. A revoked one is
// ErrRevokedAgent: revoked agents keep their record for this answer, so a
// revoked agent is never told it is unknown. A secret that matches neither token
// is ErrUnknownAgent too: it is a token the store has never known.
func CheckAgentCred(exists, revoked, matched bool) error {
	switch {
	case !exists:
		return ErrUnknownAgent()
	case revoked:
		return ErrRevokedAgent()
	case !matched:
		return ErrUnknownAgent()
	}
	return nil
}

// AgentExpired tells whether an agent last seen at lastSeen (its last call, or
// its registration) is to be removed at now under retention: when it has not
// been seen for that long. A retention of zero or less never removes one.
// Revoked agents are removed the same way, their revocation going with them.
func AgentExpired(lastSeen, now time.Time, retention time.Duration) bool {
	return retention > 0 && now.Sub(lastSeen) >= retention
}

// DropMark is an agent's drop mark (Dropped.AgentUpTo: the creation time of
// the newest of its tasks the count kept per agent, Config.KeepPerAgent,
// dropped; zero: none) after that count dropped task id: it moves forward to
// id's creation time and never back; an id with no creation time leaves it.
func DropMark(mark time.Time, id string) time.Time {
	if made, ok := CreatedAt(id); ok && made.After(mark) {
		return made
	}
	return mark
}

// CheckReport decides what an agent's report p does to task t, whose current (or
// last) attempt is t.Attempt. reported is the outcome of the report that ended
// t.Attempt, or OutcomeUnspecified if no report did. It answers repeat when p is
// the identical report of an attempt already ended by it (the caller answers
// t.State and changes nothing), nil when p ends t's RUNNING attempt (see
// ReportEnd), and otherwise an error: KindInvalid for a missing outcome,
// KindPrecondition for another attempt or a different report of an ended one.
// The task's existence and owner are the caller's to check first.
func CheckReport(t Task, reported Outcome, p ReportParams) (repeat bool, err error) {
	if p.Outcome != OutcomeSucceeded && p.Outcome != OutcomeFailed {
		return false, newError(KindInvalid, MsgBadOutcome)
	}
	if t.State.Terminal() {
		if reported != OutcomeUnspecified && t.Attempt == p.Attempt && reported == p.Outcome && t.ExitCode == p.ExitCode {
			return true, nil
		}
		if t.Attempt != p.Attempt {
			return false, Errorf(KindPrecondition, FmtStaleEnded, p.Attempt, Quote(t.ID), t.State, t.Attempt)
		}
		return false, Errorf(KindPrecondition, FmtTaskEnded, Quote(t.ID), t.State)
	}
	if t.State != StateRunning || t.Attempt != p.Attempt {
		return false, Errorf(KindPrecondition, FmtStale, p.Attempt, Quote(t.ID), t.Attempt, t.State)
	}
	return false, nil
}

// ReportEnd returns the state a RUNNING attempt of t ends in when its agent
// reports p at now, and the reason recorded. A timeout ends TIMED_OUT wherever it
// is found: when the server had found the attempt past its timeout (t.TimedOut),
// when the report comes at or after the attempt's deadline (before the reaper
// flagged it), or when the agent says it stopped the attempt at its own count of
// the timeout (p.TimedOut), whatever the outcome; the reason is the timeout's
// (ReasonTimedOut, as the reaper records it) with what ended it. Otherwise a
// requested cancel ends it CANCELED (whatever the outcome), else SUCCEEDED or
// FAILED as reported.
func ReportEnd(t Task, p ReportParams, now time.Time) (TaskState, string) {
	st, why := StateSucceeded, ReasonSucceeded
	if p.Outcome == OutcomeFailed {
		st, why = StateFailed, ReasonFailed
	}
	switch {
	case t.TimedOut:
		return StateTimedOut, fmt.Sprintf(FmtCause, t.CancelReason, why)
	case p.TimedOut || (!t.Deadline.IsZero() && !now.Before(t.Deadline)):
		return StateTimedOut, fmt.Sprintf(FmtCause, ReasonTimedOut(t.Timeout), why)
	case t.CancelRequested:
		return StateCanceled, fmt.Sprintf(FmtCause, t.CancelReason, why)
	}
	return st, why
}

// LeaseExpiryEnd returns what becomes of a RUNNING attempt of t whose lease ran
// out, and the reason recorded: TIMED_OUT if it was past its timeout, CANCELED if
// a cancel was requested, LOST if it was the last attempt allowed, else PENDING:
// the task goes back to its agent's queue for the next attempt.
func LeaseExpiryEnd(t Task) (TaskState, string) {
	switch {
	case t.TimedOut:
		return StateTimedOut, fmt.Sprintf(FmtCause, t.CancelReason, ReasonLeaseExpired)
	case t.CancelRequested:
		return StateCanceled, fmt.Sprintf(FmtCause, t.CancelReason, ReasonLeaseExpired)
	case t.Attempt >= t.MaxAttempts:
		return StateLost, fmt.Sprintf(FmtLost, t.Attempt)
	}
	return StatePending, fmt.Sprintf(FmtRequeued, t.Attempt)
}

// DeliveryExpiryEnd returns the state a PENDING task t ends in when it was not
// leased before its deliver_by, and the reason recorded: EXPIRED when no attempt
// of it was ever leased (Attempt 0: a handed-back attempt does not count, see
// ReturnEnd), else LOST — it was picked up, its agent stopped answering, the
// lease ran out and the requeued task was not picked up again in time, so
// "never picked up" would be untrue.
func DeliveryExpiryEnd(t Task) (TaskState, string) {
	if t.Attempt > 0 {
		return StateLost, ReasonLostUnpicked(t.DeliveryTTL)
	}
	return StateExpired, ReasonExpired(t.DeliveryTTL)
}

// ReturnEnd returns what becomes of a RUNNING attempt of t that its agent hands
// back unstarted (it took more tasks than it runs at once), and the reason
// recorded: TIMED_OUT or CANCELED as LeaseExpiryEnd says when the attempt was
// asked to stop, else PENDING: the task goes back to its agent's queue as if
// never leased — its attempt number back to t.Attempt-1, so a handed-back
// attempt does not count toward max_attempts — to be leased again at once.
func ReturnEnd(t Task) (TaskState, string) {
	why := ReasonReturned(t.Attempt)
	switch {
	case t.TimedOut:
		return StateTimedOut, fmt.Sprintf(FmtCause, t.CancelReason, why)
	case t.CancelRequested:
		return StateCanceled, fmt.Sprintf(FmtCause, t.CancelReason, why)
	}
	return StatePending, why
}

// CancelMode says what a cancel does to each task it names.
type CancelMode int

// Cancel modes.
const (
	// CancelModeTask is CancelTask: a pending task ends, a running one is asked
	// to stop, and a finished one is an error.
	CancelModeTask CancelMode = 1
	// CancelModeJob is CancelJob: pending tasks end, running ones are asked to
	// stop, finished ones are left alone.
	CancelModeJob CancelMode = 2
	// CancelModeStop stops a job that reached max_failures: pending tasks end,
	// running ones finish.
	CancelModeStop CancelMode = 3
)

// CancelAction is what a cancel does to one task.
type CancelAction int

// Cancel actions.
const (
	CancelSkip    CancelAction = 0 // leave the task alone
	CancelEnd     CancelAction = 1 // end it CANCELED now
	CancelRequest CancelAction = 2 // record the request and wake its agent
	CancelRefuse  CancelAction = 3 // fail with KindPrecondition (ErrTaskEnded)
)

// Action returns what cancel mode m does to a task in state st.
func (m CancelMode) Action(st TaskState) CancelAction {
	switch {
	case st == StatePending:
		return CancelEnd
	case st == StateRunning && m != CancelModeStop:
		return CancelRequest
	case st.Terminal() && m == CancelModeTask:
		return CancelRefuse
	}
	return CancelSkip
}

// CheckEnrollment tells whether stored enrollment token t lets an agent register
// at now; the secret is the caller's to compare first (ErrEnrollmentToken when it
// does not match or the token is unknown). A revoked, expired or used-up token
// fails with KindUnauthenticated, saying which.
func CheckEnrollment(t EnrollmentToken, now time.Time) error {
	switch {
	case !t.RevokedAt.IsZero():
		return Errorf(KindUnauthenticated, FmtEnrollRevoked, t.ID)
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return Errorf(KindUnauthenticated, FmtEnrollExpired, t.ID)
	case t.MaxUses > 0 && t.Uses >= t.MaxUses:
		return Errorf(KindUnauthenticated, FmtEnrollUsedUp, t.ID, t.MaxUses)
	}
	return nil
}

// CheckEnrollmentReplay is CheckEnrollment for a replayed registration (see
// Store.RegisterAgent): the token must still be valid, but the use the replay
// stands for was counted by the registration it repeats, so a token that the
// first one used up still lets its replay through.
func CheckEnrollmentReplay(t EnrollmentToken, now time.Time) error {
	t.Uses = max(t.Uses-1, 0)
	return CheckEnrollment(t, now)
}

// EnrollReplayWindow is how long after a registration a retry with the same
// request key names the same agent (Store.RegisterAgent). It outlasts any
// agent's Register retries (a call timeout plus backoff), and is short enough
// that a key kept by mistake cannot pin an identity for long.
const EnrollReplayWindow = 10 * time.Minute

// MaxIdempotencyKey is the longest idempotency_key a Register may carry, in bytes.
const MaxIdempotencyKey = 128

// EnrollRequestKey is the store's key for a registration's idempotency key,
// scoped to the enrollment token used (by names it: a stored token's id, or a
// fingerprint of a token given by flag), so two tokens' agents never share one.
func EnrollRequestKey(by, idempotencyKey string) string {
	if idempotencyKey == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(by + "\x00" + idempotencyKey))
	return hex.EncodeToString(sum[:16])
}

// HandlesType tells whether an agent that said it handles types (at Register)
// takes tasks of type typ. One that named no type said nothing, and may handle
// any.
func HandlesType(types []string, typ string) bool {
	return len(types) == 0 || slices.Contains(types, typ)
}

// CheckTaskType decides whether a job of type typ may be dispatched to the
// agents its target matched, given the task types each said it handles
// (types, one list per agent): it may unless none of them handles it
// (HandlesType), which fails with KindPrecondition naming the type and the
// types the agents handle. A target that matched nobody makes an empty job, as
// before: there is nothing to check. A Dispatch with queue (JobSpec.Queue)
// skips the check: an agent may be started again with a handler for the type,
// and a task queued for it waits for it within its delivery TTL.
func CheckTaskType(typ string, types [][]string) error {
	if len(types) == 0 {
		return nil
	}
	var all []string
	for _, ts := range types {
		if HandlesType(ts, typ) {
			return nil
		}
		all = append(all, ts...)
	}
	slices.Sort(all)
	return Errorf(KindPrecondition, FmtTypeUnhandled, Quote(typ), len(types), strings.Join(slices.Compact(all), ", "))
}
