package store

import (
	"fmt"
	"time"
)

// Reasons recorded in a task's history (StateChange.Reason); for a task that ends
// other than by its agent's report, the reason is also its Error. Every reason a
// Store records is one of these texts, or made by one of the functions below from
// the formats beside them. The formats use only the verbs %d and %s, which Go's
// fmt and Lua's string.format read alike, so the Redis store's scripts format the
// same texts from the same strings (see store/redisstore/prelude.lua).
const (
	ReasonDispatched    = "dispatched"
	ReasonAgentRevoked  = "agent revoked"
	ReasonAgentNotFound = "agent not found" // a fan-out's agent that vanished meanwhile
	ReasonJobCanceled   = "job canceled by operator"
	ReasonTaskCanceled  = "canceled by operator"
	ReasonLeaseExpired  = "lease expired"
	ReasonSucceeded     = "reported succeeded"
	ReasonFailed        = "reported failed"
	// ReasonDispatchIncomplete ends the tasks of a fan-out whose Dispatch never
	// completed; they never ran.
	ReasonDispatchIncomplete = "dispatch did not complete"
)

// Formats of reasons with a value in them.
const (
	FmtLeased      = "leased (attempt %d)"
	FmtRequeued    = "lease expired (attempt %d); requeued"
	FmtReturned    = "returned unstarted by the agent (attempt %d); requeued"
	FmtLost        = "lease expired %d times (max_attempts)"
	FmtTimedOut    = "timed out after %s"
	FmtExpired     = "not picked up within its delivery TTL (%s)"
	FmtMaxFailures = "job stopped: max_failures (%d) reached"
	FmtQueueFull   = "agent's queue is full (%d pending tasks, the limit)"
	FmtRevokedWhy  = "agent revoked: %s"
	FmtAgentGone   = "agent removed: not seen for %s"
	// FmtCause joins why an attempt was asked to stop (its cancel reason) and
	// what then ended it: "timed out after 1m0s (reported failed)".
	FmtCause = "%s (%s)"
	// FmtLostUnpicked ends a task that was leased, whose agent stopped answering
	// (the lease ran out and the task was requeued), and that no agent picked up
	// again within its delivery TTL: it ran, so it did not expire unpicked.
	FmtLostUnpicked = "its agent stopped answering and it was not picked up again within its delivery TTL (%s)"
)

// ReasonLeased is the reason of a task's move to RUNNING as attempt n.
func ReasonLeased(n int32) string { return fmt.Sprintf(FmtLeased, n) }

// ReasonReturned is the reason of attempt n's move back to PENDING when its
// agent handed it back unstarted (ReturnEnd).
func ReasonReturned(n int32) string { return fmt.Sprintf(FmtReturned, n) }

// ReasonTimedOut is the cancel reason of an attempt found past its timeout.
func ReasonTimedOut(timeout time.Duration) string { return fmt.Sprintf(FmtTimedOut, timeout) }

// ReasonExpired is the reason of a task that ends EXPIRED.
func ReasonExpired(ttl time.Duration) string { return fmt.Sprintf(FmtExpired, ttl) }

// ReasonLostUnpicked is the reason of a requeued task that ends LOST because it
// was not picked up again within its delivery TTL (DeliveryExpiryEnd).
func ReasonLostUnpicked(ttl time.Duration) string { return fmt.Sprintf(FmtLostUnpicked, ttl) }

// ReasonMaxFailures is the reason of the tasks a job stopped by max_failures ends.
func ReasonMaxFailures(n int32) string { return fmt.Sprintf(FmtMaxFailures, n) }

// ReasonQueueFull is the reason of a fan-out's task created CANCELED because its
// agent's queue held pending tasks, the limit.
func ReasonQueueFull(pending int) string { return fmt.Sprintf(FmtQueueFull, pending) }

// ReasonAgentRemoved is the reason of the live tasks of an agent removed after
// retention unseen (AgentExpired).
func ReasonAgentRemoved(retention time.Duration) string { return fmt.Sprintf(FmtAgentGone, retention) }

// ReasonRevoked is the reason of the tasks RevokeAgent ends, given the operator's
// reason (which may be empty).
func ReasonRevoked(why string) string {
	if why == "" {
		return ReasonAgentRevoked
	}
	return fmt.Sprintf(FmtRevokedWhy, why)
}

// OrDefault returns reason, or def when reason is empty: CancelTask and CancelJob
// record ReasonTaskCanceled and ReasonJobCanceled when the operator gave none.
func OrDefault(reason, def string) string {
	if reason == "" {
		return def
	}
	return reason
}
