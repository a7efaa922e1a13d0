package store

import "time"

// TaskRef names one attempt of one task.
type TaskRef struct {
	TaskID  string
	Attempt int32
}

// StateChange is one entry of a task's history.
type StateChange struct {
	State   TaskState
	At      time.Time
	Reason  string
	Attempt int32
}

// JobSig is the server's signature over a job as the operator dispatched it
// (see internal/tasksig), made when Dispatch accepted it; stores keep it with
// the job and give it with each of the job's tasks. The zero JobSig: the job is
// not signed.
type JobSig struct {
	KeyID     string
	Sig       []byte
	CreatedAt time.Time
	NotAfter  time.Time
}

// Task is one unit of work for one agent.
type Task struct {
	ID      string
	JobID   string
	AgentID string
	Type    string
	Payload []byte
	// JobSig and Target are the job's signature and target, which an agent
	// checks the task against.
	JobSig      JobSig
	Target      Target
	State       TaskState
	Attempt     int32 // the current or last attempt; zero until first leased
	MaxAttempts int32
	Timeout     time.Duration // execution timeout of each attempt
	DeliveryTTL time.Duration
	// Held is true while a job's rollout limit keeps the task from its agent's queue.
	Held            bool
	CancelRequested bool
	CancelReason    string
	TimedOut        bool      // the server found the attempt past its timeout
	Deadline        time.Time // execution deadline of the current attempt
	LeaseExpiresAt  time.Time
	DeliverBy       time.Time // when a pending task expires; zero while held
	// Output and Stderr are the current (or last) attempt's stdout (with what
	// its handler returned) and stderr, as kept under the cap (OutputViews).
	Output          []byte
	Stderr          []byte
	OutputTruncated bool
	OutputSize      int64
	ExitCode        int32
	Error           string
	CreatedAt       time.Time
	UpdatedAt       time.Time
	History         []StateChange
}

// Ref returns the task's current attempt.
func (t Task) Ref() TaskRef { return TaskRef{TaskID: t.ID, Attempt: t.Attempt} }

// Agent is a registered agent.
type Agent struct {
	ID           string
	Name         string
	Hostname     string
	Version      string
	Labels       map[string]string
	TaskTypes    []string
	Status       AgentStatus
	RegisteredAt time.Time
	LastSeenAt   time.Time
	RevokedAt    time.Time
	Running      []TaskRef
	Pending      int
}

// Target says which agents a job goes to; exactly one of AgentID, Selector,
// AgentName or All is set.
//
// Its JSON (how the Redis store keeps it in the job record) leaves out empty
// fields, so a job record of small values stays small.
type Target struct {
	AgentID  string `json:",omitempty"`
	Selector string `json:",omitempty"` // parsed with ParseSelector
	All      bool   `json:",omitempty"`
	// IncludeOffline extends Selector, AgentName and All to agents not online now.
	IncludeOffline bool `json:",omitempty"`
	// AgentName is a name or a glob over names, parsed with ParseNamePattern.
	AgentName string `json:",omitempty"`
}

// String describes the target as operators write it.
func (t Target) String() string {
	switch {
	case t.AgentID != "":
		return "agent " + t.AgentID
	case t.AgentName != "":
		return "agents named " + t.AgentName
	case t.All:
		return "all"
	default:
		return t.Selector
	}
}

// Matcher returns the rule a fan-out target (Selector, AgentName or All) picks
// agents by; every store applies it to each non-revoked agent, online unless
// IncludeOffline. A malformed selector or name pattern is KindInvalid.
func (t Target) Matcher() (AgentMatcher, error) {
	if t.AgentName != "" {
		p, err := ParseNamePattern(t.AgentName)
		return AgentMatcher{name: &p}, err
	}
	sel, err := ParseSelector(t.Selector)
	return AgentMatcher{sel: sel}, err
}

// AgentMatcher tells whether an agent is reached by a fan-out target.
type AgentMatcher struct {
	sel  Selector
	name *NamePattern
}

// Matches tells whether the agent with this name and these labels is reached.
func (m AgentMatcher) Matches(name string, labels map[string]string) bool {
	if m.name != nil {
		return m.name.Matches(name)
	}
	return m.sel.Matches(labels)
}

// JobSpec describes a job to dispatch. The server fills in defaults, so every
// duration and MaxAttempts is positive.
type JobSpec struct {
	// ID is the job's id when the caller chose it (it signs it: Sig); empty, the
	// store chooses one. A job found by its idempotency key keeps its own.
	ID             string
	Type           string
	Payload        []byte
	Target         Target
	Timeout        time.Duration
	DeliveryTTL    time.Duration
	MaxAttempts    int32
	MaxConcurrency int32 // zero: no limit
	MaxFailures    int32 // zero: no limit
	IdempotencyKey string
	// CreatedBy names who dispatched, for the record.
	CreatedBy string
	// Sig is the server's signature over the job (zero: unsigned), kept with it.
	Sig JobSig
	// Queue creates the tasks even when no agent the target matched handles
	// Type (CheckTaskType), for agents that will when they start again.
	Queue bool
}

// Counts counts tasks by state.
type Counts struct {
	Pending, Running, Succeeded, Failed, Canceled, TimedOut, Expired, Lost int
}

// Total is the number of tasks counted.
func (c Counts) Total() int {
	return c.Pending + c.Running + c.Succeeded + c.Failed + c.Canceled + c.TimedOut + c.Expired + c.Lost
}

// Done tells whether every counted task is terminal.
func (c Counts) Done() bool { return c.Pending == 0 && c.Running == 0 }

// Add counts n more tasks in state s.
func (c *Counts) Add(s TaskState, n int) {
	switch s {
	case StatePending:
		c.Pending += n
	case StateRunning:
		c.Running += n
	case StateSucceeded:
		c.Succeeded += n
	case StateFailed:
		c.Failed += n
	case StateCanceled:
		c.Canceled += n
	case StateTimedOut:
		c.TimedOut += n
	case StateExpired:
		c.Expired += n
	case StateLost:
		c.Lost += n
	}
}

// Job is one dispatch: a spec and the tasks it created.
type Job struct {
	ID        string
	Spec      JobSpec
	TaskIDs   []string // in creation order
	Counts    Counts
	Canceled  bool // cancelled by an operator or stopped by MaxFailures
	CreatedAt time.Time
	// Existing is true when Dispatch returned a job created earlier with the same
	// idempotency key.
	Existing bool
}

// EnrollmentParams describes an enrollment token to store.
type EnrollmentParams struct {
	ID          string
	SecretHash  []byte
	Description string
	MaxUses     int           // zero: unlimited
	TTL         time.Duration // zero: never expires
}

// EnrollmentToken is a stored enrollment token; the secret itself is never kept.
type EnrollmentToken struct {
	ID          string
	SecretHash  []byte
	Description string
	MaxUses     int // zero: unlimited
	Uses        int
	ExpiresAt   time.Time // zero: never
	CreatedAt   time.Time
	RevokedAt   time.Time // zero: not revoked
}
