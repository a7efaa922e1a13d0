package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/tasksig"
	"github.com/orange-forge/forge/store"
)

// controlService implements forgev1connect.ControlServiceHandler.
type controlService struct{ s *Server }

// audit logs a control-plane action with who did it and from where.
func (s *Server) audit(ctx context.Context, peer connect.Peer, action string, attrs ...any) {
	attrs = append([]any{"by", principalFrom(ctx).by, "from", peer.Addr}, attrs...)
	s.log.Info("audit: "+action, attrs...)
}

// maxTaskDuration bounds a task's timeout and delivery TTL.
const maxTaskDuration = 30 * 24 * time.Hour

// pageSize checks a requested page size; store.PageSize says what a page holds.
func pageSize(n int32) (int, error) {
	if n < 0 {
		return 0, invalid("page_size", "must not be negative")
	}
	return store.PageSize(int(n)), nil
}

func (c *controlService) Dispatch(ctx context.Context, req *connect.Request[forgev1.DispatchRequest]) (_ *connect.Response[forgev1.DispatchResponse], retErr error) {
	s := c.s
	m := req.Msg
	var job store.Job
	defer func() { s.auditDispatch(ctx, req.Peer(), m, job, retErr) }()
	spec, err := s.jobSpec(m)
	if err != nil {
		return nil, err
	}
	spec.CreatedBy = principalFrom(ctx).by
	s.signJob(&spec)
	var wait time.Duration
	if m.Wait != nil {
		if wait, err = waitFor("wait", m.Wait, s.cfg.PollHold, s.cfg.MaxWait); err != nil {
			return nil, err
		}
	}
	end := holdEnd(ctx, wait)
	job, err = s.store.Dispatch(ctx, spec)
	if err != nil {
		return nil, s.storeError(ctx, err)
	}
	if !job.Existing {
		s.metrics.dispatched.Add(float64(len(job.TaskIDs)))
	}
	res := &forgev1.DispatchResponse{JobId: job.ID, TaskIds: job.TaskIDs, Counts: countsToProto(job.Counts)}
	switch {
	case m.Wait == nil:
	case len(job.TaskIDs) == 1 && job.Spec.MaxConcurrency == 0 && job.Spec.MaxFailures == 0:
		// One task and no rollout: the job is its task. Wait for it as WaitTask
		// does, one store read per wake-up, and count it.
		t, err := s.waitTask(ctx, job.TaskIDs[0], end)
		if err != nil {
			return nil, err
		}
		var c store.Counts
		c.Add(t.State, 1)
		res.Counts = countsToProto(c)
		res.Tasks = taskInfos([]store.Task{t})
	default:
		job, tasks, _, err := s.waitJob(ctx, job.ID, end, store.Page{Size: 1000})
		if err != nil {
			return nil, err
		}
		res.Counts = countsToProto(job.Counts)
		res.Tasks = taskInfos(tasks)
	}
	return connect.NewResponse(res), nil
}

// waitTask holds until the task is terminal or end passes, and returns it.
func (s *Server) waitTask(ctx context.Context, id string, end time.Time) (store.Task, error) {
	sctx, cancel := heldContext(ctx, end)
	defer cancel()
	var t store.Task
	err := s.hold(sctx, hold{Keys: []string{store.TaskKey(id)}, End: end}, func() (bool, error) {
		var err error
		t, err = s.store.GetTask(sctx, id)
		return t.State.Terminal(), err
	})
	if err != nil {
		return t, s.storeError(ctx, err)
	}
	return t, nil
}

// signJob signs what the operator dispatched, with the job id it chooses for
// it, when the server has signing keys (see internal/tasksig). The store keeps
// the signature with the job; a job found by its idempotency key keeps the one
// made when it was first accepted.
func (s *Server) signJob(spec *store.JobSpec) {
	if len(s.cfg.SigningKeys) == 0 {
		return
	}
	spec.ID = store.NewJobID()
	created := time.Now().Truncate(time.Millisecond)
	j := tasksig.Job{ID: spec.ID, Type: spec.Type, Payload: spec.Payload, Timeout: spec.Timeout,
		MaxAttempts: spec.MaxAttempts, Target: tasksig.TargetText(spec.Target), CreatedAt: created,
		NotAfter: tasksig.NotAfter(created, spec.DeliveryTTL, spec.Timeout, s.cfg.Lease, spec.MaxAttempts, spec.MaxConcurrency > 0)}
	js := tasksig.SignJob(s.cfg.SigningKeys[0], j)
	spec.Sig = store.JobSig{KeyID: js.KeyId, Sig: js.Signature, CreatedAt: j.CreatedAt, NotAfter: j.NotAfter}
}

// auditDispatch logs one audit line for every Dispatch, whatever became of it:
// who, from where, what and to whom, and the job made (or found by its
// idempotency key), or the code and message the caller got.
func (s *Server) auditDispatch(ctx context.Context, peer connect.Peer, m *forgev1.DispatchRequest, job store.Job, err error) {
	attrs := []any{"type", m.GetType(), "target", requestTarget(m), "payload_bytes", len(m.GetPayload()),
		"idempotency_key", m.GetIdempotencyKey()}
	if err != nil {
		attrs = append(attrs, "outcome", connect.CodeOf(err).String(), "error", err.Error())
	} else {
		attrs = append(attrs, "outcome", "ok", "job", job.ID, "tasks", len(job.TaskIDs), "existing", job.Existing)
	}
	s.audit(ctx, peer, "dispatch", attrs...)
}

// requestTarget describes a Dispatch's target as the caller gave it, checked or not.
func requestTarget(m *forgev1.DispatchRequest) string {
	switch t := m.GetTarget().(type) {
	case *forgev1.DispatchRequest_AgentId:
		return "agent " + t.AgentId
	case *forgev1.DispatchRequest_AgentName:
		return "agent name " + t.AgentName
	case *forgev1.DispatchRequest_Selector:
		return "selector " + t.Selector
	case *forgev1.DispatchRequest_All:
		return fmt.Sprintf("all=%v", t.All)
	case nil:
		return "none"
	}
	return fmt.Sprintf("%T", m.GetTarget())
}

// jobSpec checks a DispatchRequest and fills in the server's defaults.
func (s *Server) jobSpec(m *forgev1.DispatchRequest) (store.JobSpec, error) {
	l := s.cfg.Limits
	spec := store.JobSpec{Type: m.Type, Payload: m.Payload, IdempotencyKey: m.IdempotencyKey,
		MaxConcurrency: m.MaxConcurrency, MaxFailures: m.MaxFailures, MaxAttempts: m.MaxAttempts, Queue: m.Queue}
	if m.Type == "" || len(m.Type) > l.MaxName || !nameText(m.Type) {
		return spec, invalid("type", "must be 1 to %d bytes of printable UTF-8, spaced only inside and by U+0020", l.MaxName)
	}
	if len(m.Payload) > l.MaxPayload {
		return spec, exhausted("payload: %d bytes is over the limit of %d bytes", len(m.Payload), l.MaxPayload)
	}
	if len(m.IdempotencyKey) > l.MaxName {
		return spec, invalid("idempotency_key", "%d bytes is over the limit of %d", len(m.IdempotencyKey), l.MaxName)
	}
	switch t := m.Target.(type) {
	case *forgev1.DispatchRequest_AgentId:
		if !store.ValidID(t.AgentId, 'a') {
			return spec, invalid("agent_id", "%.80q is not an agent id", t.AgentId)
		}
		spec.Target.AgentID = t.AgentId
	case *forgev1.DispatchRequest_Selector:
		if _, err := store.ParseSelector(t.Selector); err != nil {
			return spec, connect.NewError(connect.CodeInvalidArgument, err)
		}
		if strings.TrimSpace(t.Selector) == "" {
			return spec, invalid("selector", `must not be empty (use "all": true to target every agent)`)
		}
		spec.Target.Selector = t.Selector
	case *forgev1.DispatchRequest_All:
		if !t.All {
			return spec, invalid("all", "must be true when given")
		}
		spec.Target.All = true
	case *forgev1.DispatchRequest_AgentName:
		if _, err := store.ParseNamePattern(t.AgentName); err != nil {
			return spec, connect.NewError(connect.CodeInvalidArgument, err)
		}
		spec.Target.AgentName = t.AgentName
	default:
		return spec, invalid("target", "one of agent_id, agent_name, selector or all is required")
	}
	spec.Target.IncludeOffline = m.IncludeOffline
	var err error
	if spec.Timeout, err = optDuration("timeout", m.Timeout, s.cfg.TaskTimeout); err != nil {
		return spec, err
	}
	if spec.DeliveryTTL, err = optDuration("delivery_ttl", m.DeliveryTtl, s.cfg.DeliveryTTL); err != nil {
		return spec, err
	}
	if spec.Timeout > maxTaskDuration {
		return spec, invalid("timeout", "%s is over the limit of %s", spec.Timeout, maxTaskDuration)
	}
	if spec.DeliveryTTL > maxTaskDuration {
		return spec, invalid("delivery_ttl", "%s is over the limit of %s", spec.DeliveryTTL, maxTaskDuration)
	}
	switch {
	case m.MaxAttempts < 0 || m.MaxAttempts > 100:
		return spec, invalid("max_attempts", "%d is outside 0..100", m.MaxAttempts)
	case m.MaxAttempts == 0:
		spec.MaxAttempts = s.cfg.MaxAttempts
	}
	if m.MaxConcurrency < 0 {
		return spec, invalid("max_concurrency", "must not be negative")
	}
	if m.MaxFailures < 0 {
		return spec, invalid("max_failures", "must not be negative")
	}
	return spec, nil
}

// waitJob holds until every task of the job is terminal or end passes, then
// returns the job and one page of its tasks.
func (s *Server) waitJob(ctx context.Context, id string, end time.Time, page store.Page) (store.Job, []store.Task, string, error) {
	sctx, cancel := heldContext(ctx, end)
	defer cancel()
	var job store.Job
	err := s.hold(sctx, hold{Keys: []string{store.JobKey(id)}, End: end}, func() (bool, error) {
		var err error
		job, err = s.store.GetJob(sctx, id)
		return job.Counts.Done(), err
	})
	if err != nil {
		return job, nil, "", s.storeError(ctx, err)
	}
	tasks, next, err := s.store.ListTasks(sctx, store.TaskFilter{JobID: id, Page: page})
	if err != nil {
		return job, nil, "", s.storeError(ctx, err)
	}
	return job, tasks, next, nil
}

func (c *controlService) GetJob(ctx context.Context, req *connect.Request[forgev1.GetJobRequest]) (*connect.Response[forgev1.GetJobResponse], error) {
	size, err := pageSize(req.Msg.PageSize)
	if err != nil {
		return nil, err
	}
	job, tasks, next, err := c.s.waitJob(ctx, req.Msg.JobId, time.Now(), store.Page{Size: size, Token: req.Msg.PageToken})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&forgev1.GetJobResponse{Job: jobInfo(job), Tasks: taskInfos(tasks), NextPageToken: next}), nil
}

func (c *controlService) WaitJob(ctx context.Context, req *connect.Request[forgev1.WaitJobRequest]) (*connect.Response[forgev1.WaitJobResponse], error) {
	s := c.s
	size, err := pageSize(req.Msg.PageSize)
	if err != nil {
		return nil, err
	}
	wait, err := waitFor("wait", req.Msg.Wait, s.cfg.PollHold, s.cfg.MaxWait)
	if err != nil {
		return nil, err
	}
	job, tasks, next, err := s.waitJob(ctx, req.Msg.JobId, holdEnd(ctx, wait), store.Page{Size: size, Token: req.Msg.PageToken})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&forgev1.WaitJobResponse{Job: jobInfo(job), Tasks: taskInfos(tasks), NextPageToken: next}), nil
}

func (c *controlService) ListJobs(ctx context.Context, req *connect.Request[forgev1.ListJobsRequest]) (*connect.Response[forgev1.ListJobsResponse], error) {
	size, err := pageSize(req.Msg.PageSize)
	if err != nil {
		return nil, err
	}
	jobs, next, err := c.s.store.ListJobs(ctx, store.Page{Size: size, Token: req.Msg.PageToken})
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	res := &forgev1.ListJobsResponse{NextPageToken: next}
	for _, j := range jobs {
		res.Jobs = append(res.Jobs, jobInfo(j))
	}
	return connect.NewResponse(res), nil
}

func (c *controlService) CancelJob(ctx context.Context, req *connect.Request[forgev1.CancelJobRequest]) (*connect.Response[forgev1.CancelJobResponse], error) {
	job, err := c.s.store.CancelJob(ctx, req.Msg.JobId, req.Msg.Reason)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	c.s.audit(ctx, req.Peer(), "cancel job", "job", job.ID, "reason", req.Msg.Reason)
	return connect.NewResponse(&forgev1.CancelJobResponse{Job: jobInfo(job)}), nil
}

func (c *controlService) GetTask(ctx context.Context, req *connect.Request[forgev1.GetTaskRequest]) (*connect.Response[forgev1.GetTaskResponse], error) {
	t, err := c.s.store.GetTask(ctx, req.Msg.TaskId)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	return connect.NewResponse(&forgev1.GetTaskResponse{Task: taskInfo(t)}), nil
}

func (c *controlService) WaitTask(ctx context.Context, req *connect.Request[forgev1.WaitTaskRequest]) (*connect.Response[forgev1.WaitTaskResponse], error) {
	s := c.s
	wait, err := waitFor("wait", req.Msg.Wait, s.cfg.PollHold, s.cfg.MaxWait)
	if err != nil {
		return nil, err
	}
	t, err := s.waitTask(ctx, req.Msg.TaskId, holdEnd(ctx, wait))
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&forgev1.WaitTaskResponse{Task: taskInfo(t)}), nil
}

func (c *controlService) ListTasks(ctx context.Context, req *connect.Request[forgev1.ListTasksRequest]) (*connect.Response[forgev1.ListTasksResponse], error) {
	m := req.Msg
	size, err := pageSize(m.PageSize)
	if err != nil {
		return nil, err
	}
	if m.State < 0 || m.State > forgev1.TaskState_TASK_STATE_LOST {
		return nil, invalid("state", "unknown state %d", m.State)
	}
	tasks, next, err := c.s.store.ListTasks(ctx, store.TaskFilter{AgentID: m.AgentId, JobID: m.JobId,
		State: store.TaskState(m.State), Page: store.Page{Size: size, Token: m.PageToken}})
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	return connect.NewResponse(&forgev1.ListTasksResponse{Tasks: taskInfos(tasks), NextPageToken: next}), nil
}

func (c *controlService) CancelTask(ctx context.Context, req *connect.Request[forgev1.CancelTaskRequest]) (*connect.Response[forgev1.CancelTaskResponse], error) {
	t, err := c.s.store.CancelTask(ctx, req.Msg.TaskId, req.Msg.Reason)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	c.s.audit(ctx, req.Peer(), "cancel task", "task", t.ID, "reason", req.Msg.Reason)
	return connect.NewResponse(&forgev1.CancelTaskResponse{Task: taskInfo(t)}), nil
}

func (c *controlService) ListAgents(ctx context.Context, req *connect.Request[forgev1.ListAgentsRequest]) (*connect.Response[forgev1.ListAgentsResponse], error) {
	m := req.Msg
	size, err := pageSize(m.PageSize)
	if err != nil {
		return nil, err
	}
	sel, err := store.ParseSelector(m.Selector)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	if m.Status < 0 || m.Status > forgev1.AgentStatus_AGENT_STATUS_REVOKED {
		return nil, invalid("status", "unknown status %d", m.Status)
	}
	var name store.NamePattern
	if m.Name != "" {
		if name, err = store.ParseNamePattern(m.Name); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
	}
	agents, next, err := c.s.store.ListAgents(ctx, store.AgentFilter{Selector: sel, Status: store.AgentStatus(m.Status), Name: name,
		Page: store.Page{Size: size, Token: m.PageToken}})
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	res := &forgev1.ListAgentsResponse{NextPageToken: next}
	for _, a := range agents {
		res.Agents = append(res.Agents, agentInfo(a))
	}
	return connect.NewResponse(res), nil
}

func (c *controlService) GetAgent(ctx context.Context, req *connect.Request[forgev1.GetAgentRequest]) (*connect.Response[forgev1.GetAgentResponse], error) {
	a, err := c.s.store.GetAgent(ctx, req.Msg.AgentId)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	return connect.NewResponse(&forgev1.GetAgentResponse{Agent: agentInfo(a)}), nil
}

func (c *controlService) RevokeAgent(ctx context.Context, req *connect.Request[forgev1.RevokeAgentRequest]) (*connect.Response[forgev1.RevokeAgentResponse], error) {
	a, err := c.s.store.RevokeAgent(ctx, req.Msg.AgentId, req.Msg.Reason)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	c.s.agents.forget(a.ID)
	c.s.audit(ctx, req.Peer(), "revoke agent", "agent", a.ID, "reason", req.Msg.Reason)
	return connect.NewResponse(&forgev1.RevokeAgentResponse{Agent: agentInfo(a)}), nil
}

func (c *controlService) CreateEnrollmentToken(ctx context.Context, req *connect.Request[forgev1.CreateEnrollmentTokenRequest]) (*connect.Response[forgev1.CreateEnrollmentTokenResponse], error) {
	s := c.s
	m := req.Msg
	if len(m.Description) > s.cfg.Limits.MaxName {
		return nil, invalid("description", "%d bytes is over the limit of %d", len(m.Description), s.cfg.Limits.MaxName)
	}
	if !printable(m.Description) {
		return nil, invalid("description", "must be printable UTF-8 without control, bidi or zero-width characters")
	}
	if m.MaxUses < 0 {
		return nil, invalid("max_uses", "must not be negative")
	}
	ttl, err := optDuration("ttl", m.Ttl, 0)
	if err != nil {
		return nil, err
	}
	secret := store.NewSecret()
	t, err := s.store.CreateEnrollmentToken(ctx, store.EnrollmentParams{ID: store.NewEnrollmentTokenID(),
		SecretHash: HashSecret(secret), Description: m.Description, MaxUses: int(m.MaxUses), TTL: ttl})
	if err != nil {
		return nil, s.storeError(ctx, err)
	}
	s.audit(ctx, req.Peer(), "create enrollment token", "id", t.ID, "max_uses", t.MaxUses, "ttl", ttl)
	return connect.NewResponse(&forgev1.CreateEnrollmentTokenResponse{Token: PrefixEnroll + t.ID + "_" + secret, Info: enrollInfo(t)}), nil
}

func (c *controlService) ListEnrollmentTokens(ctx context.Context, req *connect.Request[forgev1.ListEnrollmentTokensRequest]) (*connect.Response[forgev1.ListEnrollmentTokensResponse], error) {
	list, err := c.s.store.ListEnrollmentTokens(ctx)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	res := &forgev1.ListEnrollmentTokensResponse{}
	for _, t := range list {
		res.Tokens = append(res.Tokens, enrollInfo(t))
	}
	return connect.NewResponse(res), nil
}

func (c *controlService) RevokeEnrollmentToken(ctx context.Context, req *connect.Request[forgev1.RevokeEnrollmentTokenRequest]) (*connect.Response[forgev1.RevokeEnrollmentTokenResponse], error) {
	t, err := c.s.store.RevokeEnrollmentToken(ctx, req.Msg.Id)
	if err != nil {
		return nil, c.s.storeError(ctx, err)
	}
	c.s.audit(ctx, req.Peer(), "revoke enrollment token", "id", t.ID)
	return connect.NewResponse(&forgev1.RevokeEnrollmentTokenResponse{Info: enrollInfo(t), RevokedAt: timestamppb.New(t.RevokedAt)}), nil
}
