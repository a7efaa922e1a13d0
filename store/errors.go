package store

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Kind classifies a store error; the server maps each kind to one Connect code.
// The values are part of the Redis store's contract with its scripts, which
// answer errors by kind (see store/redisstore/prelude.lua): do not renumber them.
type Kind int

// Error kinds.
const (
	KindInternal        Kind = iota // a bug or an unexpected reply; details stay in the log
	KindNotFound                    // no such thing, or not the caller's to see
	KindUnauthenticated             // credential unknown, wrong or revoked
	KindPrecondition                // stale attempt, finished task, conflicting report
	KindExhausted                   // a limit was reached
	KindInvalid                     // the request is malformed
	KindUnavailable                 // the backing store cannot be reached
	KindExists                      // what the caller would create exists already
)

// Error is an error with a Kind and a message meant for the caller.
type Error struct {
	Kind Kind
	Msg  string
	Err  error // the cause, for logs; never shown to callers
}

func (e *Error) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrNotFound) and friends match any error of the same kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Err == nil && t.Kind == e.Kind
}

// Sentinels to test kinds with errors.Is.
var (
	ErrNotFound        = &Error{Kind: KindNotFound}
	ErrUnauthenticated = &Error{Kind: KindUnauthenticated}
	ErrPrecondition    = &Error{Kind: KindPrecondition}
	ErrExhausted       = &Error{Kind: KindExhausted}
	ErrInvalid         = &Error{Kind: KindInvalid}
	ErrUnavailable     = &Error{Kind: KindUnavailable}
)

// Errorf returns an *Error of the given kind with a formatted message.
func Errorf(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of the given kind that keeps err as its cause.
func Wrap(kind Kind, err error, msg string) error {
	return &Error{Kind: kind, Msg: msg, Err: err}
}

// KindOf returns the kind of err, or KindInternal if it has none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// Messages of the errors every Store returns. Those with a %s take the id quoted
// (Quote), except the enrollment ones, which name the token id as it is. Like the
// reasons, they use only %d and %s, so the Redis store's scripts format the same
// texts from the same strings.
const (
	// MsgUnknownAgent and MsgAgentRevoked are the two answers to an agent
	// credential that does not work (CheckAgentCred): agents act on them — the
	// Go agent enrolls again on the first and stops for good on the second — so
	// they are part of the API (DESIGN.md, "Agent lifecycle rules").
	MsgUnknownAgent = "unknown agent"
	MsgAgentRevoked = "agent revoked"
	MsgEnrollToken  = "enrollment token is not valid"
	MsgBadOutcome   = "outcome must be OUTCOME_SUCCEEDED or OUTCOME_FAILED"
	MsgBadStream    = "stream must be STREAM_STDOUT or STREAM_STDERR"
	MsgBadOffset    = "offset must not be negative"

	FmtAgentNotFound = "agent %s not found"
	FmtTaskNotFound  = "task %s not found"
	// FmtTaskAgedOut is not_found for a task old enough to have been dropped
	// after the retention: its id, how long ago it was made, the retention.
	FmtTaskAgedOut = "task %s not found: it was created %s ago, and finished tasks are kept for %s (--retention); it has aged out, or never existed"
	FmtJobNotFound = "job %s not found"
	// FmtJobAgedOut is not_found for a job old enough to have been dropped
	// after the retention: its id, how long ago it was made, the retention.
	FmtJobAgedOut = "job %s not found: it was created %s ago, and finished jobs are kept for %s (--retention); it has aged out, or never existed"
	// FmtJobCountedOut and FmtTaskCountedOut are not_found for a job, or a
	// task, made no later than a job the count retention dropped: the id, the
	// count kept.
	FmtJobCountedOut  = "job %s not found: only the newest %d finished jobs are kept (--retention-jobs), and older ones have gone; it has aged out, or never existed"
	FmtTaskCountedOut = "task %s not found: only the newest %d finished jobs are kept (--retention-jobs), and older ones have gone with their tasks; it has aged out, or never existed"
	// FmtTaskAgentCountedOut is not_found for a task made no later than a task
	// of its agent the count kept per agent dropped: the id, the count kept.
	FmtTaskAgentCountedOut = "task %s not found: only the newest %d tasks of each agent are kept (--retention-per-agent), and older ones have gone; it has been dropped, or never existed"
	// FmtJobIDNotNew refuses a Dispatch given a job id (JobSpec.ID) that is
	// not the shape NewJobID makes, or (memory store) one already taken.
	FmtJobIDNotNew = "job id %s is not a new job id"
	// FmtJobExists refuses a Dispatch given a job id (JobSpec.ID) that names a
	// job already: a repeat is recognised by its idempotency key, not its id.
	FmtJobExists      = "job %s exists already; a dispatch is repeated with the same idempotency_key, not the same job id"
	FmtEnrollNotFound = "enrollment token %s not found"

	FmtAgentIsRevoked = "agent %s is revoked"
	FmtAgentQueueFull = "agent %s already has %d pending tasks (the limit)"
	// FmtTypeUnhandled refuses a dispatch whose type no agent its target matched
	// handles (CheckTaskType): the type, how many agents matched, their types.
	FmtTypeUnhandled = "no agent the target matched handles task type %s (agents matched: %d; their task types: %s); " +
		"set queue to dispatch it anyway, for agents that will handle it when they start again"
	FmtTaskEnded  = "task %s already ended %s"
	FmtStaleEnded = "attempt %d of task %s is stale: the task ended %s at attempt %d"
	FmtStale      = "attempt %d of task %s is stale: the current attempt is %d (%s)"
	// FmtOutputGap names the stream, the chunk's offset, its attempt, the task
	// and the offset expected: what the store holds of the stream.
	FmtOutputGap    = "%s offset %d of attempt %d of task %s leaves a gap: expected offset %d"
	FmtOutputCursor = "offset %d is past the end of the output of task %s (%d)"

	FmtEnrollRevoked = "enrollment token %s is revoked"
	FmtEnrollExpired = "enrollment token %s has expired"
	FmtEnrollUsedUp  = "enrollment token %s is used up (%d uses)"
	FmtEnrollExists  = "enrollment token %s exists"
)

// FmtNoteAttempt is the note a read gives where a new attempt's output starts
// (see NoteAttempt); like the cut marker it is a line of its own.
const FmtNoteAttempt = "\n... [forge: output of attempt %d] ...\n"

// Messages of the errors of a Dispatch: too many targets, and one that could not
// complete (KindUnavailable), each saying what the caller may do.
const (
	FmtTooManyTargets = "the target matches more than %d agents, the most one dispatch may reach (--max-targets): narrow it, or raise the limit"

	// MsgStoreFull is the answer to a call that would add data to a full store
	// (Redis at its maxmemory): it takes new work again once finished tasks
	// age out or it is given more memory.
	MsgStoreFull           = "the store is full: it takes no new work until finished tasks age out or it is given more memory"
	MsgDispatchNotAccepted = "the dispatch did not complete and none of its tasks will run; retry it"
	FmtDispatchResume      = "the dispatch of job %s did not complete; retry it with the same idempotency_key to complete the same job"
	FmtDispatchUnknown     = "the dispatch of job %s did not complete and may yet run; check it with GetJob before dispatching again (an idempotency_key makes retries safe)"

	// retryNow is how MsgDispatchNotAccepted and FmtDispatchResume say to retry;
	// retryWhenRoom replaces it when the store is full, where retrying at once
	// cannot help.
	retryNow      = "retry it"
	retryWhenRoom = "retry it once the store has room"
)

// ErrTooManyTargets is the error of a dispatch whose target matches more than
// max agents.
func ErrTooManyTargets(max int) error { return Errorf(KindExhausted, FmtTooManyTargets, max) }

// CheckTargets refuses a dispatch that reaches n agents when at most max may be
// reached (max zero or negative: no limit).
func CheckTargets(n, max int) error {
	if max > 0 && n > max {
		return ErrTooManyTargets(max)
	}
	return nil
}

// incomplete marks the cause of an error that says what became of a Dispatch
// that could not complete.
type incomplete struct{ err error }

func (e *incomplete) Error() string {
	if e.err == nil {
		return "dispatch incomplete"
	}
	return e.err.Error()
}
func (e *incomplete) Unwrap() error { return e.err }

// ErrDispatchIncomplete is the error of a Dispatch that could not complete:
// msg (MsgDispatchNotAccepted, FmtDispatchResume, FmtDispatchUnknown) tells the
// caller what became of it and what to do; cause is for the log. Its kind is
// KindUnavailable, or KindExhausted when the cause was the store being full (a
// retry cannot help until it is not; the message then says so first, and asks
// for the retry once the store has room).
func ErrDispatchIncomplete(msg string, cause error) error {
	kind := KindUnavailable
	if KindOf(cause) == KindExhausted {
		kind = KindExhausted
		if cause.Error() == MsgStoreFull {
			msg = MsgStoreFull + "; " + strings.Replace(msg, retryNow, retryWhenRoom, 1)
		}
	}
	return &Error{Kind: kind, Msg: msg, Err: &incomplete{cause}}
}

// IsDispatchIncomplete tells whether err is an ErrDispatchIncomplete, whose
// message is meant for the caller.
func IsDispatchIncomplete(err error) bool {
	var i *incomplete
	return errors.As(err, &i)
}

// Quote returns an id in double quotes, as it appears in error messages.
func Quote(id string) string { return strconv.Quote(id) }

func newError(kind Kind, msg string) error { return &Error{Kind: kind, Msg: msg} }

// ErrUnknownAgent is the error of an agent credential the store does not know:
// its agent does not exist (never did, or the store's state was lost) or its
// secret is neither of the agent's tokens.
func ErrUnknownAgent() error { return newError(KindUnauthenticated, MsgUnknownAgent) }

// ErrRevokedAgent is the error of a credential of a revoked agent.
func ErrRevokedAgent() error { return newError(KindUnauthenticated, MsgAgentRevoked) }

// IsUnknownAgent tells whether err is ErrUnknownAgent.
func IsUnknownAgent(err error) bool {
	return KindOf(err) == KindUnauthenticated && err.Error() == MsgUnknownAgent
}

// IsRevokedAgent tells whether err is ErrRevokedAgent.
func IsRevokedAgent(err error) bool {
	return KindOf(err) == KindUnauthenticated && err.Error() == MsgAgentRevoked
}

// ErrEnrollmentToken is the error of an enrollment token unknown or with the wrong secret.
func ErrEnrollmentToken() error { return newError(KindUnauthenticated, MsgEnrollToken) }

// ErrAgentNotFound is the error of an agent that does not exist.
func ErrAgentNotFound(id string) error { return Errorf(KindNotFound, FmtAgentNotFound, Quote(id)) }

// ErrTaskNotFound is the error of a task that does not exist or is not the caller's.
func ErrTaskNotFound(id string) error { return Errorf(KindNotFound, FmtTaskNotFound, Quote(id)) }

// idEpoch is before any id forge made: an id dated earlier is made up.
var idEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// ErrTaskNotFoundAt is the error of a task id the store does not hold at now:
// ErrTaskNotFound, or FmtTaskAgedOut when the id was made longer than the
// retention ago (so the task may have finished and been dropped). The id's
// time is when a server made it; clocks a little apart change nothing here.
func ErrTaskNotFoundAt(id string, now time.Time, retention time.Duration) error {
	return ErrTaskGone(id, now, Dropped{Retention: retention})
}

// ErrJobNotFound is the error of a job that does not exist.
func ErrJobNotFound(id string) error { return Errorf(KindNotFound, FmtJobNotFound, Quote(id)) }

// Dropped is what a store tells of what retention dropped, without keeping a
// record of each: its settings, the creation time of the newest job (or task
// of it) the count of jobs (Config.KeepJobs) dropped, and for a task, that of
// the newest task of its agent the count per agent (Config.KeepPerAgent)
// dropped.
type Dropped struct {
	Retention    time.Duration
	KeepJobs     int
	KeepPerAgent int
	// JobsUpTo is the newest creation time of a job or task dropped by
	// KeepJobs; zero when none was.
	JobsUpTo time.Time
	// AgentUpTo is the newest creation time of a task of the asked task's
	// agent dropped by KeepPerAgent; zero when none was (or not asked).
	AgentUpTo time.Time
}

// agedOut returns how long ago id was made, when it was made longer than
// the retention ago (so it may have finished and been dropped).
func (d Dropped) agedOut(id string, now time.Time) (time.Duration, bool) {
	made, ok := CreatedAt(id)
	if !ok || now.Sub(made) <= d.Retention || made.Before(idEpoch) {
		return 0, false
	}
	age := now.Sub(made).Truncate(time.Hour)
	if age < time.Hour {
		age = now.Sub(made).Truncate(time.Second)
	}
	return age, true
}

// countedOut tells whether id was made no later than a job the count
// retention dropped.
func (d Dropped) countedOut(id string) bool {
	made, ok := CreatedAt(id)
	return ok && d.KeepJobs > 0 && !d.JobsUpTo.IsZero() && !made.After(d.JobsUpTo) && !made.Before(idEpoch)
}

// agentCountedOut tells whether task id was made no later than a task of its
// agent the count kept per agent dropped.
func (d Dropped) agentCountedOut(id string) bool {
	made, ok := CreatedAt(id)
	return ok && d.KeepPerAgent > 0 && !d.AgentUpTo.IsZero() && !made.After(d.AgentUpTo) && !made.Before(idEpoch)
}

// ErrTaskGone is the error of a task id the store does not hold at now:
// FmtTaskAgedOut when it was made longer than the retention ago,
// FmtTaskAgentCountedOut when made no later than a task of its agent the
// count per agent dropped, FmtTaskCountedOut when made no later than a job
// the count of jobs dropped, otherwise ErrTaskNotFound.
func ErrTaskGone(id string, now time.Time, d Dropped) error {
	if !ValidTaskID(id) {
		return ErrTaskNotFound(id)
	}
	if age, ok := d.agedOut(id, now); ok {
		return Errorf(KindNotFound, FmtTaskAgedOut, Quote(id), age, d.Retention)
	}
	if d.agentCountedOut(id) {
		return Errorf(KindNotFound, FmtTaskAgentCountedOut, Quote(id), d.KeepPerAgent)
	}
	if d.countedOut(id) {
		return Errorf(KindNotFound, FmtTaskCountedOut, Quote(id), d.KeepJobs)
	}
	return ErrTaskNotFound(id)
}

// ErrJobGone is ErrTaskGone for a job id: FmtJobAgedOut, FmtJobCountedOut,
// or ErrJobNotFound.
func ErrJobGone(id string, now time.Time, d Dropped) error {
	if !ValidJobID(id) {
		return ErrJobNotFound(id)
	}
	if age, ok := d.agedOut(id, now); ok {
		return Errorf(KindNotFound, FmtJobAgedOut, Quote(id), age, d.Retention)
	}
	if d.countedOut(id) {
		return Errorf(KindNotFound, FmtJobCountedOut, Quote(id), d.KeepJobs)
	}
	return ErrJobNotFound(id)
}

// ErrJobIDNotNew is the error of a Dispatch given a job id it cannot take.
func ErrJobIDNotNew(id string) error { return Errorf(KindInvalid, FmtJobIDNotNew, Quote(id)) }

// ErrJobExists is the error of a Dispatch given a job id that is taken.
func ErrJobExists(id string) error { return Errorf(KindExists, FmtJobExists, Quote(id)) }

// ErrEnrollmentNotFound is the error of an enrollment token id that does not exist.
func ErrEnrollmentNotFound(id string) error {
	return Errorf(KindNotFound, FmtEnrollNotFound, Quote(id))
}

// ErrAgentRevoked is the error of a dispatch to a revoked agent.
func ErrAgentRevoked(id string) error {
	return Errorf(KindPrecondition, FmtAgentIsRevoked, Quote(id))
}

// ErrAgentQueueFull is the error of a dispatch to one agent whose queue holds
// pending tasks, the limit.
func ErrAgentQueueFull(id string, pending int) error {
	return Errorf(KindExhausted, FmtAgentQueueFull, Quote(id), pending)
}

// ErrTaskEnded is the error of a cancel of a task that already ended in state st.
func ErrTaskEnded(id string, st TaskState) error {
	return Errorf(KindPrecondition, FmtTaskEnded, Quote(id), st)
}

// ErrEnrollmentExists is the error of creating an enrollment token whose id is taken.
func ErrEnrollmentExists(id string) error {
	return Errorf(KindPrecondition, FmtEnrollExists, id)
}
