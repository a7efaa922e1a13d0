// Package store defines forge's domain types and the Store interface that holds
// agents, jobs and tasks. Implementations live in subpackages: memstore (the
// embedded default) and redisstore (shared by any number of server replicas). Both
// must pass the conformance suite in storetest, so the server can treat them alike.
package store

import (
	"context"
	"time"
)

// Store holds forge's state. Every method is safe for concurrent use and each is
// atomic: a caller never sees half of an operation, and the checks that guard an
// operation (the agent's credential, the attempt) happen inside it.
//
// Methods that act for an agent take its Cred and fail with an error of kind
// KindUnauthenticated when the credential is unknown, wrong or revoked. Tasks and
// agents the caller may not see are reported as KindNotFound.
type Store interface {
	// RegisterAgent creates a new agent with a fresh id. When p.Enrollment names a
	// stored enrollment token, one of its uses is consumed in the same operation and
	// the registration fails with KindUnauthenticated if the token is unknown,
	// revoked, expired or used up.
	//
	// With p.RequestKey, a registration with the same key within
	// EnrollReplayWindow of the first is a replay (the agent retrying a
	// Register whose answer it never got): it names the first one's agent, whose
	// token is replaced by p.SecretHash (the token of the first answer stops
	// working), and consumes no enrollment use (CheckEnrollmentReplay). A replay
	// of an agent since revoked fails with ErrRevokedAgent.
	RegisterAgent(ctx context.Context, p RegisterParams) (Agent, error)
	// UpdateAgent replaces the name, hostname, version, labels and task types of
	// the agent c proves with p's (p's other fields are not used), as an agent
	// that starts again with its saved identity gives them, and records it seen
	// (online). It returns the agent as it was before.
	UpdateAgent(ctx context.Context, c Cred, p RegisterParams) (Agent, error)
	// AuthenticateAgent checks an agent credential without doing anything else. A
	// credential matching the agent's next token (see RotateAgentToken) promotes it.
	AuthenticateAgent(ctx context.Context, c Cred) error
	// RotateAgentToken stores newSecretHash as the agent's next token. Both the
	// current and the next token work until the next one is first used.
	RotateAgentToken(ctx context.Context, c Cred, newSecretHash []byte) error
	// Lease records that the agent is polling (its last-seen time), and leases up
	// to p.Max of its ready tasks, oldest first, each as a new attempt; it also
	// returns the cancellations of its running attempts not yet delivered by a
	// Lease. It never blocks: long-polling is built on Watch.
	Lease(ctx context.Context, p LeaseParams) (LeaseResult, error)
	// Heartbeat extends the leases of the attempts the agent names and holds,
	// and answers which of them to cancel and which it does not hold (abandon).
	// Naming attempts the agent does not hold changes nothing for their holder.
	// With p.Stopped the agent is offline at once (see HeartbeatParams).
	Heartbeat(ctx context.Context, p HeartbeatParams) (HeartbeatResult, error)
	// ReturnTasks hands back attempts the agent holds but will not run: each
	// ends as ReturnEnd says — back in the agent's queue as if never leased, to
	// be leased again by its next Lease, or ended when it was asked to stop.
	// Attempts the agent does not hold are left alone. It returns the attempts
	// it handed back.
	ReturnTasks(ctx context.Context, p ReturnParams) ([]TaskRef, error)
	// Report ends an attempt. The identical report again returns the same state;
	// a report for another attempt, or a different outcome for an attempt already
	// reported, fails with KindPrecondition.
	Report(ctx context.Context, p ReportParams) (TaskState, error)
	// AppendOutput adds a chunk of the output of the agent's running attempt,
	// kept under p.Cap as output.go describes, and returns how many bytes of the
	// chunk's stream the store holds for the attempt: the next chunk's offset.
	// CheckAppend says which chunks are refused; one sent again is stored once.
	AppendOutput(ctx context.Context, p AppendParams) (int64, error)
	// ReadOutput returns a task's output from p.Cursor (see ReadFrom), with the
	// task's state. It never blocks: waiting is built on Watch (OutputKey).
	ReadOutput(ctx context.Context, p ReadParams) (OutputRead, error)

	// Dispatch creates a job and one task per agent its target matches. A spec
	// with an idempotency key already used returns that job and creates nothing.
	// A target matching no agent fails with KindNotFound (agent id) or creates an
	// empty, finished job (selector, all); one matching more than
	// Config.MaxTargets fails with ErrTooManyTargets and creates nothing. A
	// dispatch is all or nothing: one that fails part way fails with
	// ErrDispatchIncomplete, and either none of its tasks ever runs, or (with an
	// idempotency key) a retry completes the same job — the error says which.
	Dispatch(ctx context.Context, spec JobSpec) (Job, error)
	// GetJob returns a job with its counts.
	GetJob(ctx context.Context, id string) (Job, error)
	// ListJobs pages through jobs, newest first.
	ListJobs(ctx context.Context, page Page) ([]Job, string, error)
	// CancelJob cancels every live task of the job (as CancelTask does) and
	// starts no more. Cancelling a finished job changes nothing.
	CancelJob(ctx context.Context, id, reason string) (Job, error)
	// GetTask returns a task.
	GetTask(ctx context.Context, id string) (Task, error)
	// ListTasks pages through tasks matching f, newest first.
	ListTasks(ctx context.Context, f TaskFilter) ([]Task, string, error)
	// CancelTask ends a PENDING task CANCELED at once; on a RUNNING one it records
	// the request and wakes the agent, and the task ends CANCELED when the agent
	// reports or its lease runs out. On a finished task it fails with KindPrecondition.
	CancelTask(ctx context.Context, id, reason string) (Task, error)

	// GetAgent returns an agent with its status and running attempts.
	GetAgent(ctx context.Context, id string) (Agent, error)
	// ListAgents pages through agents matching f, ordered by id.
	ListAgents(ctx context.Context, f AgentFilter) ([]Agent, string, error)
	// RevokeAgent makes the agent's tokens fail from the next call on, wakes its
	// held Poll, and ends its pending and running tasks CANCELED with the reason.
	// Revoking a revoked agent changes nothing.
	RevokeAgent(ctx context.Context, id, reason string) (Agent, error)

	// CreateEnrollmentToken stores an enrollment token (its id and secret hash),
	// created now and expiring p.TTL later by the store's clock. An id already
	// stored fails with KindPrecondition.
	CreateEnrollmentToken(ctx context.Context, p EnrollmentParams) (EnrollmentToken, error)
	// ListEnrollmentTokens lists stored enrollment tokens in order of creation
	// (ties by id).
	ListEnrollmentTokens(ctx context.Context) ([]EnrollmentToken, error)
	// RevokeEnrollmentToken stops an enrollment token.
	RevokeEnrollmentToken(ctx context.Context, id string) (EnrollmentToken, error)
	// CheckEnrollmentToken tells whether a stored enrollment token would let an
	// agent register now, without consuming a use.
	CheckEnrollmentToken(ctx context.Context, id string, secretHash []byte) error

	// Reap does one pass of time-driven work: tasks past their delivery TTL end
	// EXPIRED, running attempts past their timeout are asked to stop, expired leases
	// are requeued (or end LOST, CANCELED or TIMED_OUT), jobs with rollout limits
	// start their next tasks, records past retention are removed, and so are
	// agents unseen for Config.AgentRetention (AgentExpired), with their tokens —
	// their live tasks end CANCELED (ReasonAgentRemoved). No pass reads every
	// agent. Any number of
	// replicas may call it at once; each change happens exactly once.
	Reap(ctx context.Context) error
	// Stats counts agents by status and tasks by state, finds the oldest
	// pending task and reads the expired-lease counter (see Stats). Its cost
	// does not grow with the tasks retained.
	Stats(ctx context.Context) (Stats, error)
	// Watch returns a Watcher that fires after any change to the given keys
	// (AgentKey, TaskKey, JobKey), on this replica or another.
	Watch(keys ...string) *Watcher
	// Ping tells whether the store is reachable.
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close() error
}

// Cred is an agent's credential: its id and the SHA-256 hash of its token's secret.
type Cred struct {
	AgentID    string
	SecretHash []byte
}

// RegisterParams describes an agent being registered.
type RegisterParams struct {
	Name      string
	Hostname  string
	Version   string
	Labels    map[string]string
	TaskTypes []string
	// SecretHash is the hash of the new agent token's secret.
	SecretHash []byte
	// Enrollment names the stored enrollment token used, if any (tokens given to
	// the server by flag are checked by the server and leave this empty).
	Enrollment *EnrollmentUse
	// RemoteAddr is where the registration came from, for the record.
	RemoteAddr string
	// RequestKey makes the registration idempotent across the caller's retries
	// (see RegisterAgent); the server builds it with EnrollRequestKey. Empty:
	// every registration creates a new agent.
	RequestKey string
}

// EnrollmentUse names a stored enrollment token and the hash of the secret presented.
type EnrollmentUse struct {
	ID         string
	SecretHash []byte
}

// LeaseParams asks for tasks for one agent.
type LeaseParams struct {
	Cred Cred
	// Max is how many tasks to lease at most; 0 leases none but still returns cancels.
	Max int
	// Lease is how long each new lease lasts.
	Lease time.Duration
	// Hold is how long the caller intends to hold the Poll, for liveness.
	Hold time.Duration
	// Gen is zero for the first Lease of a Poll, which starts a new poll generation
	// for the agent (superseding any older held Poll); later Leases of the same Poll
	// pass the Gen they were given and get Superseded if a newer Poll started.
	Gen int64
}

// LeaseResult is what a Lease took.
type LeaseResult struct {
	Tasks   []Task
	Cancels []TaskRef
	// Gen is the poll generation this Lease belongs to.
	Gen int64
	// Superseded is true when a newer Poll of the same agent started; nothing was leased.
	Superseded bool
}

// HeartbeatParams names the attempts an agent holds.
type HeartbeatParams struct {
	Cred     Cred
	Running  []TaskRef
	Lease    time.Duration
	Draining bool
	// Stopped says this is the agent's last call: it is stopping cleanly. It is
	// OFFLINE from now on (StatusAt), so selectors stop matching it, until its
	// next Lease, Heartbeat or Report.
	Stopped bool
}

// HeartbeatResult tells the agent what to do with the attempts it named.
type HeartbeatResult struct {
	Cancel  []TaskRef
	Abandon []TaskRef
	Drain   bool
}

// ReturnParams names attempts an agent hands back unstarted.
type ReturnParams struct {
	Cred  Cred
	Tasks []TaskRef
}

// ReportParams is an agent's report of one attempt.
type ReportParams struct {
	Cred    Cred
	TaskID  string
	Attempt int32
	Outcome Outcome
	// Output is what the handler returned: it is added to the attempt's stdout,
	// after what was streamed, under Cap.
	Output   []byte
	ExitCode int32
	Error    string
	// OutputTruncated and OutputSize say the agent cut or dropped output before
	// the store saw it, and the full size of the attempt's output.
	OutputTruncated bool
	OutputSize      int64
	// TimedOut says the agent stopped the attempt at its timeout, counted from
	// when it received it: the attempt ends TIMED_OUT (ReportEnd).
	TimedOut bool
	// Cap bounds the bytes kept of the attempt's output, as in AppendParams.
	Cap int64
}

// Page asks for one page of a list.
type Page struct {
	// Size is how many items to return at most; see PageSize.
	Size  int
	Token string
}

// Page sizes: what a list returns when asked for none, and the most it returns.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// PageSize returns the size of the page a list returns when n items are asked
// for: DefaultPageSize for zero (or less), at most MaxPageSize.
func PageSize(n int) int {
	switch {
	case n <= 0:
		return DefaultPageSize
	case n > MaxPageSize:
		return MaxPageSize
	}
	return n
}

// TaskFilter selects tasks for ListTasks; zero fields match everything.
type TaskFilter struct {
	AgentID string
	JobID   string
	State   TaskState
	Page
}

// AgentFilter selects agents for ListAgents; zero fields match everything.
type AgentFilter struct {
	Selector Selector
	Status   AgentStatus
	// Name, when its text is not empty, keeps the agents whose name it matches.
	Name NamePattern
	Page
}

// MatchesName tells whether an agent's name passes the filter's Name.
func (f AgentFilter) MatchesName(name string) bool {
	return f.Name.String() == "" || f.Name.Matches(name)
}

// Clock tells the time; tests inject one they can move.
type Clock interface {
	Now() time.Time
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns the current time.
func (SystemClock) Now() time.Time { return time.Now() }

// Config holds the settings every Store implementation takes. Zero values get
// the defaults noted.
type Config struct {
	// Clock tells the time; nil means the system clock.
	Clock Clock
	// OnlineWindow is how long after its last call an agent still counts as
	// online; zero means 50 s (two default poll holds).
	OnlineWindow time.Duration
	// Retention is how long finished tasks and jobs are kept; zero means 7 days.
	Retention time.Duration
	// KeepPerAgent, when positive, bounds the tasks kept per agent: once an
	// agent has more, each task of it that ends drops up to four of its oldest
	// finished tasks, before their retention. While an export runs, only tasks
	// it has written go (see ExportHold). Zero: no bound.
	KeepPerAgent int
	// KeepJobs, when positive, bounds the finished jobs kept: past it, Reap
	// drops the oldest finished jobs (in the order they finished) with their
	// tasks, before their retention, a bounded number a pass. A job with a
	// live task is never dropped; while an export runs, neither is a task it
	// has not written (see ExportHold). Zero: no bound.
	KeepJobs int
	// MaxPendingPerAgent bounds an agent's queue; zero means 10,000.
	MaxPendingPerAgent int
	// MaxTargets bounds the agents one Dispatch reaches (CheckTargets); zero
	// means DefaultMaxTargets, negative no limit.
	MaxTargets int
	// AgentRetention is how long an agent may go unseen before Reap removes it
	// with its tokens (AgentExpired); zero means 30 days, negative never.
	AgentRetention time.Duration
}

// DefaultAgentRetention is how long an agent may go unseen before it is removed,
// unless Config.AgentRetention says otherwise.
const DefaultAgentRetention = 30 * 24 * time.Hour

// ExportHold is how long after an export last committed (or, with nothing
// committed, claimed the feed) retention still holds back the finished tasks
// it has not written (age and count retention alike): an export that stops
// stops holding retention back this long after; one that goes on claiming
// holds it as long.
const ExportHold = 24 * time.Hour

// DefaultPollHold is how long a Poll, or another held call, is held when the
// caller names no wait: under the idle timeouts of common load balancers
// (30–60 s). The server's default (--poll-hold), the Go agent's Poll wait and
// the Go client's hold are this one value.
const DefaultPollHold = 25 * time.Second

// DefaultMaxTargets is how many agents one Dispatch may reach unless
// Config.MaxTargets says otherwise.
const DefaultMaxTargets = 10000

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.OnlineWindow <= 0 {
		c.OnlineWindow = 50 * time.Second
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.MaxPendingPerAgent <= 0 {
		c.MaxPendingPerAgent = 10000
	}
	if c.MaxTargets == 0 {
		c.MaxTargets = DefaultMaxTargets
	}
	if c.AgentRetention == 0 {
		c.AgentRetention = DefaultAgentRetention
	}
	return c
}
