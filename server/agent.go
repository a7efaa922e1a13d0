package server

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/outputcap"
	"github.com/orange-forge/forge/internal/tasksig"
	"github.com/orange-forge/forge/internal/termsafe"
	"github.com/orange-forge/forge/store"
)

// agentService implements forgev1connect.AgentServiceHandler.
type agentService struct{ s *Server }

// Register enrolls a new agent (or updates one calling with its own token).
// The agent's connection then holds its Polls, and its goroutine keeps the
// stack the deepest call on it needed, so the work is split into calls that
// are not on the stack together (see agentService.Poll).
func (a *agentService) Register(ctx context.Context, req *connect.Request[forgev1.RegisterRequest]) (*connect.Response[forgev1.RegisterResponse], error) {
	if err := a.s.checkRegister(req.Msg); err != nil {
		return nil, err
	}
	if p := principalFrom(ctx); p.kind == principalAgent {
		return a.reRegister(ctx, req, p.cred)
	}
	ag, secret, err := a.s.registerAgent(ctx, req)
	if err != nil {
		return nil, err
	}
	return a.s.registered(ctx, req, ag, secret), nil
}

// registerAgent stores a new agent with a fresh secret.
//
//go:noinline
func (s *Server) registerAgent(ctx context.Context, req *connect.Request[forgev1.RegisterRequest]) (*store.Agent, string, error) {
	m := req.Msg
	p := principalFrom(ctx)
	secret := store.NewSecret()
	// Timed here rather than through timedStore's wrapper, whose frame would
	// sit on this connection's stack too.
	start := time.Now()
	ag, err := s.store.Store.RegisterAgent(ctx, store.RegisterParams{
		Name: m.Name, Hostname: m.Hostname, Version: m.Version, Labels: m.Labels, TaskTypes: m.TaskTypes,
		SecretHash: HashSecret(secret), Enrollment: p.enroll, RemoteAddr: req.Peer().Addr,
		RequestKey: store.EnrollRequestKey(p.scope, m.IdempotencyKey),
	})
	s.metrics.storeCall("RegisterAgent", start, err)
	if err != nil {
		return nil, "", s.storeError(ctx, err)
	}
	return &ag, secret, nil
}

// registered logs a new agent and makes Register's answer.
//
//go:noinline
func (s *Server) registered(ctx context.Context, req *connect.Request[forgev1.RegisterRequest], ag *store.Agent, secret string) *connect.Response[forgev1.RegisterResponse] {
	m, p := req.Msg, principalFrom(ctx)
	if m.PreviousAgentId != "" {
		s.metrics.reenrolled.Inc()
		s.log.Info("audit: agent enrolled again: the server no longer knew it (state lost)", "by", p.by, "from", req.Peer().Addr,
			"agent", ag.ID, "previous_agent", m.PreviousAgentId, "name", ag.Name, "hostname", ag.Hostname)
	} else {
		s.log.Info("audit: agent registered", "by", p.by, "from", req.Peer().Addr, "agent", ag.ID, "name", ag.Name, "hostname", ag.Hostname)
	}
	return closeAfter(connect.NewResponse(&forgev1.RegisterResponse{
		AgentId:           ag.ID,
		AgentToken:        PrefixAgent + ag.ID + "_" + secret,
		PollWait:          durationpb.New(s.cfg.PollHold),
		HeartbeatInterval: durationpb.New(s.heartbeatInterval()),
		SigningKeys:       s.signingKeys(),
	}))
}

// closeAfter asks for the connection to be closed once the answer is sent
// (Connection: close). Register does it: an agent calls it once, then holds a
// Poll on a connection for as long as it runs, and the goroutine serving a
// connection keeps the largest stack any of its calls needed. Register's store
// work needs more than a Poll does; on a fresh connection the agent's Polls
// keep a stack half the size (docs/performance.md, "Idle").
func closeAfter[T any](res *connect.Response[T]) *connect.Response[T] {
	res.Header().Set("Connection", "close")
	return res
}

// reRegister answers a Register made with an agent's own token: the agent
// started again with its saved identity, and what it gives (name, labels,
// hostname, version, task types) replaces what the store held. The answer
// names the same identity and carries no token: the agent keeps its own.
func (a *agentService) reRegister(ctx context.Context, req *connect.Request[forgev1.RegisterRequest], cred store.Cred) (*connect.Response[forgev1.RegisterResponse], error) {
	s := a.s
	m := req.Msg
	if m.PreviousAgentId != "" {
		return nil, invalid("previous_agent_id", "is for an agent enrolling again with an enrollment token, not one calling with its own token")
	}
	if m.IdempotencyKey != "" {
		return nil, invalid("idempotency_key", "is for an agent enrolling with an enrollment token, not one calling with its own token")
	}
	was, err := s.store.UpdateAgent(ctx, cred, store.RegisterParams{
		Name: m.Name, Hostname: m.Hostname, Version: m.Version, Labels: m.Labels, TaskTypes: m.TaskTypes,
	})
	if err != nil {
		return nil, s.agentError(ctx, err)
	}
	attrs := []any{"agent", cred.AgentID, "from", req.Peer().Addr, "name", m.Name}
	if changed := agentChanges(was, m); len(changed) > 0 {
		s.log.Info("audit: agent started again with its saved identity; updated", append(attrs, "changed", strings.Join(changed, "; "))...)
	} else {
		s.log.Info("agent started again with its saved identity", attrs...)
	}
	return closeAfter(connect.NewResponse(&forgev1.RegisterResponse{
		AgentId:           cred.AgentID,
		PollWait:          durationpb.New(s.cfg.PollHold),
		HeartbeatInterval: durationpb.New(s.heartbeatInterval()),
		SigningKeys:       s.signingKeys(),
	})), nil
}

// agentChanges describes what a Register with a saved identity changes of the
// agent as it was: `name "a" -> "b"`, `labels +env=prod -role=web`, and so on.
func agentChanges(was store.Agent, m *forgev1.RegisterRequest) []string {
	var out []string
	for _, f := range []struct{ name, old, new string }{
		{"name", was.Name, m.Name}, {"hostname", was.Hostname, m.Hostname}, {"version", was.Version, m.Version},
	} {
		if f.old != f.new {
			out = append(out, fmt.Sprintf("%s %q -> %q", f.name, f.old, f.new))
		}
	}
	var labels []string
	for _, k := range slices.Sorted(maps.Keys(was.Labels)) {
		if v, ok := m.Labels[k]; !ok {
			labels = append(labels, "-"+k+"="+was.Labels[k])
		} else if v != was.Labels[k] {
			labels = append(labels, k+"="+was.Labels[k]+"->"+v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		if _, ok := was.Labels[k]; !ok {
			labels = append(labels, "+"+k+"="+m.Labels[k])
		}
	}
	if len(labels) > 0 {
		out = append(out, "labels "+strings.Join(labels, " "))
	}
	oldTypes, newTypes := slices.Sorted(slices.Values(was.TaskTypes)), slices.Sorted(slices.Values(m.TaskTypes))
	if !slices.Equal(oldTypes, newTypes) {
		out = append(out, fmt.Sprintf("task types [%s] -> [%s]", strings.Join(oldTypes, " "), strings.Join(newTypes, " ")))
	}
	return out
}

func (s *Server) signingKeys() []*forgev1.SigningKey {
	var out []*forgev1.SigningKey
	for _, k := range s.cfg.SigningKeys {
		pub := k.Public().(ed25519.PublicKey)
		out = append(out, &forgev1.SigningKey{Id: tasksig.KeyID(pub), PublicKey: pub})
	}
	return out
}

func (s *Server) heartbeatInterval() time.Duration { return s.cfg.Lease / 3 }

func (s *Server) checkRegister(m *forgev1.RegisterRequest) error {
	l := s.cfg.Limits
	for field, v := range map[string]string{"name": m.Name, "hostname": m.Hostname, "version": m.Version} {
		if len(v) > l.MaxName {
			return invalid(field, "%d bytes is over the limit of %d", len(v), l.MaxName)
		}
		if field != "name" && !nameText(v) {
			return invalid(field, "must be printable UTF-8 without control, bidi or zero-width characters, "+
				"no space at either end and no space but U+0020")
		}
	}
	// An agent's name is matched by --agent and name patterns: the stores'
	// rule, checked here first so the caller hears it before any store work.
	if err := store.CheckAgentName(m.Name); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New(err.Error()))
	}
	if m.PreviousAgentId != "" && !store.ValidID(m.PreviousAgentId, 'a') {
		return invalid("previous_agent_id", "%.80q is not an agent id", m.PreviousAgentId)
	}
	if len(m.IdempotencyKey) > store.MaxIdempotencyKey || !printable(m.IdempotencyKey) {
		return invalid("idempotency_key", "must be at most %d bytes of printable UTF-8", store.MaxIdempotencyKey)
	}
	if len(m.Labels) > l.MaxLabels {
		return invalid("labels", "%d labels is over the limit of %d", len(m.Labels), l.MaxLabels)
	}
	for k, v := range m.Labels {
		if k == "" || len(k) > l.MaxLabelKey || !labelText(k) {
			return invalid("labels", "key %.80q must be 1 to %d of [A-Za-z0-9._/:-]", k, l.MaxLabelKey)
		}
		if len(v) > l.MaxLabelValue || !labelText(v) {
			return invalid("labels", "value of %q must be at most %d of [A-Za-z0-9._/:-]", k, l.MaxLabelValue)
		}
	}
	if len(m.TaskTypes) > l.MaxLabels {
		return invalid("task_types", "%d types is over the limit of %d", len(m.TaskTypes), l.MaxLabels)
	}
	for _, t := range m.TaskTypes {
		if t == "" || len(t) > l.MaxName || !nameText(t) {
			return invalid("task_types", "each type must be 1 to %d bytes of printable UTF-8, spaced only inside and by U+0020", l.MaxName)
		}
	}
	return nil
}

// printable tells whether s is valid UTF-8 without control, bidi or zero-width
// characters, so it is safe to show on an operator's terminal and two names
// that look alike are alike (termsafe.Safe).
func printable(s string) bool { return termsafe.Safe(s) }

// nameText tells whether s can name what an operator picks from a list (an
// agent, its host, a task type): store.PrintableName, the one rule.
func nameText(s string) bool { return store.PrintableName(s) }

// labelText tells whether s uses only the characters selectors can name.
func labelText(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._/:-", c) >= 0) {
			return false
		}
	}
	return true
}

func (a *agentService) Heartbeat(ctx context.Context, req *connect.Request[forgev1.HeartbeatRequest]) (*connect.Response[forgev1.HeartbeatResponse], error) {
	s := a.s
	if len(req.Msg.Running) > 10*s.cfg.Limits.MaxTasks {
		return nil, invalid("running", "%d attempts is over the limit of %d", len(req.Msg.Running), 10*s.cfg.Limits.MaxTasks)
	}
	cred := principalFrom(ctx).cred
	res, err := s.store.Heartbeat(ctx, store.HeartbeatParams{
		Cred: cred, Running: refsFromProto(req.Msg.Running),
		Lease: s.cfg.Lease, Draining: req.Msg.Draining, Stopped: req.Msg.Stopped,
	})
	if err != nil {
		return nil, s.agentError(ctx, err)
	}
	if req.Msg.Stopped {
		s.log.Info("agent stopped: offline now", "agent", cred.AgentID, "running", len(req.Msg.Running))
	}
	return connect.NewResponse(&forgev1.HeartbeatResponse{
		Cancel: refsToProto(res.Cancel), Abandon: refsToProto(res.Abandon), Drain: res.Drain,
		HeartbeatInterval: durationpb.New(s.heartbeatInterval()),
	}), nil
}

// ReturnTasks hands back attempts the agent will not run (store.ReturnTasks).
func (a *agentService) ReturnTasks(ctx context.Context, req *connect.Request[forgev1.ReturnTasksRequest]) (*connect.Response[forgev1.ReturnTasksResponse], error) {
	s := a.s
	if len(req.Msg.Tasks) > s.cfg.Limits.MaxTasks {
		return nil, invalid("tasks", "%d attempts is over the limit of %d", len(req.Msg.Tasks), s.cfg.Limits.MaxTasks)
	}
	for _, r := range req.Msg.Tasks {
		if !store.ValidTaskID(r.GetTaskId()) {
			return nil, invalid("tasks", "%.80q is not a task id", r.GetTaskId())
		}
	}
	got, err := s.store.ReturnTasks(ctx, store.ReturnParams{Cred: principalFrom(ctx).cred, Tasks: refsFromProto(req.Msg.Tasks)})
	if err != nil {
		return nil, s.agentError(ctx, err)
	}
	if len(got) > 0 {
		s.log.Info("agent handed back attempts it will not run", "agent", principalFrom(ctx).cred.AgentID, "attempts", len(got))
	}
	return connect.NewResponse(&forgev1.ReturnTasksResponse{Returned: refsToProto(got)}), nil
}

// agentError maps a store error on an agent call; a credential that stopped
// working (revoked, or unknown since the store lost its state) also leaves the
// token cache.
func (s *Server) agentError(ctx context.Context, err error) error {
	if store.KindOf(err) == store.KindUnauthenticated {
		id := principalFrom(ctx).cred.AgentID
		s.agents.forget(id)
		return s.agentRefused(id, err)
	}
	return s.storeError(ctx, err)
}

// Poll holds the agent's call until it has tasks or cancellations, or its wait
// ends. A held Poll is parked in this call chain for up to the poll hold, on
// every connection of the fleet, so the chain is kept shallow: each function
// on it keeps only what the wait needs in its frame (the request's checks and
// the answer's making are calls of their own, done before and after), and the
// connection's goroutine stack can stay small. See docs/performance.md, "Idle".
func (a *agentService) Poll(ctx context.Context, req *connect.Request[forgev1.PollRequest]) (*connect.Response[forgev1.PollResponse], error) {
	res, err := a.s.pollWait(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return a.s.pollAnswer(ctx, res), nil
}

// pollParams checks a Poll request and says what to lease and until when.
//
//go:noinline
func (s *Server) pollParams(ctx context.Context, m *forgev1.PollRequest) (store.LeaseParams, time.Time, error) {
	max := 1
	if m.MaxTasks != nil {
		max = int(*m.MaxTasks)
	}
	if max < 0 || max > s.cfg.Limits.MaxTasks {
		return store.LeaseParams{}, time.Time{}, invalid("max_tasks", "%d is outside 0..%d", max, s.cfg.Limits.MaxTasks)
	}
	wait, err := waitFor("wait", m.Wait, s.cfg.PollHold, s.cfg.PollHold)
	if err != nil {
		return store.LeaseParams{}, time.Time{}, err
	}
	end := holdEnd(ctx, wait)
	return store.LeaseParams{Cred: principalFrom(ctx).cred, Max: max, Lease: s.cfg.Lease, Hold: time.Until(end)}, end, nil
}

// pollWait leases what is ready for the agent, holding until something is or
// the wait ends (s.hold).
func (s *Server) pollWait(ctx context.Context, m *forgev1.PollRequest) (store.LeaseResult, error) {
	p, end, err := s.pollParams(ctx, m)
	if err != nil {
		return store.LeaseResult{}, err
	}
	var res store.LeaseResult
	err = s.hold(ctx, hold{Keys: []string{store.AgentKey(p.Cred.AgentID)}, End: end, Waiting: s.pollHeld}, func() (bool, error) {
		return s.pollCheck(ctx, &p, &res)
	})
	if err != nil {
		return res, s.agentError(ctx, err)
	}
	return res, nil
}

// pollCheck is a held Poll's check: one Lease.
//
//go:noinline
func (s *Server) pollCheck(ctx context.Context, p *store.LeaseParams, res *store.LeaseResult) (bool, error) {
	// Timed here rather than through timedStore's wrapper, whose frame would
	// sit on the held Poll's stack too.
	start := time.Now()
	r, err := s.store.Store.Lease(ctx, *p)
	s.metrics.storeCall("Lease", start, err)
	if err != nil {
		return false, err
	}
	*res = r
	p.Gen = r.Gen
	return r.Superseded || len(r.Tasks) > 0 || len(r.Cancels) > 0, nil
}

// pollAnswer makes a Poll's answer from what it leased, signing each task when
// the server has signing keys.
//
//go:noinline
func (s *Server) pollAnswer(ctx context.Context, res store.LeaseResult) *connect.Response[forgev1.PollResponse] {
	cred := principalFrom(ctx).cred
	out := &forgev1.PollResponse{Cancels: refsToProto(res.Cancels)}
	s.metrics.leased(res.Tasks)
	for _, t := range res.Tasks {
		pt := leasedToProto(t)
		if len(s.cfg.SigningKeys) > 0 && len(t.JobSig.Sig) > 0 {
			// The job's signature, made at Dispatch and kept with it, and this
			// lease's, bound to it. A task of a job dispatched unsigned goes
			// unsigned: an agent holding keys refuses it.
			pt.JobSignature = &forgev1.JobSignature{KeyId: t.JobSig.KeyID, Signature: t.JobSig.Sig,
				CreatedAt: ts(t.JobSig.CreatedAt), NotAfter: ts(t.JobSig.NotAfter), MaxAttempts: t.MaxAttempts,
				Target: tasksig.TargetText(t.Target)}
			tasksig.SignLease(s.cfg.SigningKeys[0], cred.AgentID, pt)
		}
		out.Tasks = append(out.Tasks, pt)
	}
	return connect.NewResponse(out)
}

// pollHeld counts a Poll in the held-polls gauge and HeldPolls while it waits.
func (s *Server) pollHeld() (done func()) {
	s.metrics.heldPolls.Inc()
	s.held.Add(1)
	return func() { s.metrics.heldPolls.Dec(); s.held.Add(-1) }
}

func (a *agentService) ReportResult(ctx context.Context, req *connect.Request[forgev1.ReportResultRequest]) (*connect.Response[forgev1.ReportResultResponse], error) {
	s := a.s
	m := req.Msg
	if !store.ValidTaskID(m.TaskId) {
		return nil, invalid("task_id", "%.80q is not a task id", m.TaskId)
	}
	if m.Attempt <= 0 {
		return nil, invalid("attempt", "must be at least 1")
	}
	if m.Outcome != forgev1.Outcome_OUTCOME_SUCCEEDED && m.Outcome != forgev1.Outcome_OUTCOME_FAILED {
		return nil, invalid("outcome", "must be OUTCOME_SUCCEEDED or OUTCOME_FAILED")
	}
	if len(m.Error) > 64<<10 {
		m.Error = m.Error[:64<<10]
	}
	out, truncated, size := outputcap.Cut(m.Output, s.cfg.Limits.MaxOutput)
	if m.OutputTruncated {
		truncated = true
	}
	if m.OutputSize > size {
		size = m.OutputSize
	}
	st, err := s.store.Report(ctx, store.ReportParams{
		Cred: principalFrom(ctx).cred, TaskID: m.TaskId, Attempt: m.Attempt, Outcome: store.Outcome(m.Outcome),
		Output: out, ExitCode: m.ExitCode, Error: m.Error, OutputTruncated: truncated, OutputSize: size,
		TimedOut: m.TimedOut, Cap: int64(s.cfg.Limits.MaxOutput),
	})
	if err != nil {
		return nil, s.agentError(ctx, err)
	}
	s.metrics.results.WithLabelValues(st.String()).Inc()
	s.metrics.reported(m.TaskId, st)
	return connect.NewResponse(&forgev1.ReportResultResponse{State: forgev1.TaskState(st)}), nil
}

func (a *agentService) RotateToken(ctx context.Context, req *connect.Request[forgev1.RotateTokenRequest]) (*connect.Response[forgev1.RotateTokenResponse], error) {
	s := a.s
	cred := principalFrom(ctx).cred
	secret := store.NewSecret()
	if err := s.store.RotateAgentToken(ctx, cred, HashSecret(secret)); err != nil {
		return nil, s.agentError(ctx, err)
	}
	s.log.Info("audit: agent token rotated", "by", principalFrom(ctx).by, "from", req.Peer().Addr, "agent", cred.AgentID)
	return connect.NewResponse(&forgev1.RotateTokenResponse{AgentToken: PrefixAgent + cred.AgentID + "_" + secret}), nil
}
