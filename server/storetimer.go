package server

import (
	"context"
	"time"

	"github.com/orange-forge/forge/store"
)

// timedStore is the Store every handler calls: each call's time goes to
// forge_store_call_duration_seconds and each failure to
// forge_store_errors_total, by operation. Watch is not a call and passes through.
//
// The calls an agent makes (RegisterAgent, AuthenticateAgent, Lease,
// Heartbeat, Report, AppendOutput) are timed without timed's closure and
// generic frames: on a held Poll's connection the deepest of them sets the
// size of the goroutine stack that connection keeps (docs/performance.md, "Idle").
type timedStore struct {
	store.Store
	m *metrics
}

// kindNames are store.Kind values as the kind label shows them.
var kindNames = map[store.Kind]string{
	store.KindInternal: "internal", store.KindNotFound: "not_found", store.KindUnauthenticated: "unauthenticated",
	store.KindPrecondition: "precondition", store.KindExhausted: "exhausted", store.KindInvalid: "invalid",
	store.KindUnavailable: "unavailable", store.KindExists: "exists",
}

func timed[T any](m *metrics, op string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	m.storeCall(op, start, err)
	return v, err
}

// storeCall counts one store call. It is not inlined into timed, whose frame
// then stays small on the stack of every store call (a held Poll's included).
//
//go:noinline
func (m *metrics) storeCall(op string, start time.Time, err error) {
	m.storeCalls.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		kind, ok := kindNames[store.KindOf(err)]
		if !ok {
			kind = "internal"
		}
		m.storeErrors.WithLabelValues(op, kind).Inc()
	}
}

func timed0(m *metrics, op string, f func() error) error {
	_, err := timed(m, op, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

type page[T any] struct {
	items []T
	next  string
}

func timedPage[T any](m *metrics, op string, f func() ([]T, string, error)) ([]T, string, error) {
	p, err := timed(m, op, func() (page[T], error) {
		items, next, err := f()
		return page[T]{items, next}, err
	})
	return p.items, p.next, err
}

func (s timedStore) RegisterAgent(ctx context.Context, p store.RegisterParams) (store.Agent, error) {
	start := time.Now()
	a, err := s.Store.RegisterAgent(ctx, p)
	s.m.storeCall("RegisterAgent", start, err)
	return a, err
}

func (s timedStore) AuthenticateAgent(ctx context.Context, c store.Cred) error {
	start := time.Now()
	err := s.Store.AuthenticateAgent(ctx, c)
	s.m.storeCall("AuthenticateAgent", start, err)
	return err
}

func (s timedStore) RotateAgentToken(ctx context.Context, c store.Cred, h []byte) error {
	return timed0(s.m, "RotateAgentToken", func() error { return s.Store.RotateAgentToken(ctx, c, h) })
}

func (s timedStore) Lease(ctx context.Context, p store.LeaseParams) (store.LeaseResult, error) {
	start := time.Now()
	res, err := s.Store.Lease(ctx, p)
	s.m.storeCall("Lease", start, err)
	return res, err
}

func (s timedStore) Heartbeat(ctx context.Context, p store.HeartbeatParams) (store.HeartbeatResult, error) {
	start := time.Now()
	res, err := s.Store.Heartbeat(ctx, p)
	s.m.storeCall("Heartbeat", start, err)
	return res, err
}

func (s timedStore) ReturnTasks(ctx context.Context, p store.ReturnParams) ([]store.TaskRef, error) {
	return timed(s.m, "ReturnTasks", func() ([]store.TaskRef, error) { return s.Store.ReturnTasks(ctx, p) })
}

func (s timedStore) Report(ctx context.Context, p store.ReportParams) (store.TaskState, error) {
	start := time.Now()
	st, err := s.Store.Report(ctx, p)
	s.m.storeCall("Report", start, err)
	return st, err
}

func (s timedStore) AppendOutput(ctx context.Context, p store.AppendParams) (int64, error) {
	start := time.Now()
	n, err := s.Store.AppendOutput(ctx, p)
	s.m.storeCall("AppendOutput", start, err)
	return n, err
}

func (s timedStore) ReadOutput(ctx context.Context, p store.ReadParams) (store.OutputRead, error) {
	return timed(s.m, "ReadOutput", func() (store.OutputRead, error) { return s.Store.ReadOutput(ctx, p) })
}

func (s timedStore) Dispatch(ctx context.Context, spec store.JobSpec) (store.Job, error) {
	return timed(s.m, "Dispatch", func() (store.Job, error) { return s.Store.Dispatch(ctx, spec) })
}

func (s timedStore) GetJob(ctx context.Context, id string) (store.Job, error) {
	return timed(s.m, "GetJob", func() (store.Job, error) { return s.Store.GetJob(ctx, id) })
}

func (s timedStore) ListJobs(ctx context.Context, p store.Page) ([]store.Job, string, error) {
	return timedPage(s.m, "ListJobs", func() ([]store.Job, string, error) { return s.Store.ListJobs(ctx, p) })
}

func (s timedStore) CancelJob(ctx context.Context, id, reason string) (store.Job, error) {
	return timed(s.m, "CancelJob", func() (store.Job, error) { return s.Store.CancelJob(ctx, id, reason) })
}

func (s timedStore) GetTask(ctx context.Context, id string) (store.Task, error) {
	return timed(s.m, "GetTask", func() (store.Task, error) { return s.Store.GetTask(ctx, id) })
}

func (s timedStore) ListTasks(ctx context.Context, f store.TaskFilter) ([]store.Task, string, error) {
	return timedPage(s.m, "ListTasks", func() ([]store.Task, string, error) { return s.Store.ListTasks(ctx, f) })
}

func (s timedStore) CancelTask(ctx context.Context, id, reason string) (store.Task, error) {
	return timed(s.m, "CancelTask", func() (store.Task, error) { return s.Store.CancelTask(ctx, id, reason) })
}

func (s timedStore) GetAgent(ctx context.Context, id string) (store.Agent, error) {
	return timed(s.m, "GetAgent", func() (store.Agent, error) { return s.Store.GetAgent(ctx, id) })
}

func (s timedStore) ListAgents(ctx context.Context, f store.AgentFilter) ([]store.Agent, string, error) {
	return timedPage(s.m, "ListAgents", func() ([]store.Agent, string, error) { return s.Store.ListAgents(ctx, f) })
}

func (s timedStore) RevokeAgent(ctx context.Context, id, reason string) (store.Agent, error) {
	return timed(s.m, "RevokeAgent", func() (store.Agent, error) { return s.Store.RevokeAgent(ctx, id, reason) })
}

func (s timedStore) CreateEnrollmentToken(ctx context.Context, p store.EnrollmentParams) (store.EnrollmentToken, error) {
	return timed(s.m, "CreateEnrollmentToken", func() (store.EnrollmentToken, error) { return s.Store.CreateEnrollmentToken(ctx, p) })
}

func (s timedStore) ListEnrollmentTokens(ctx context.Context) ([]store.EnrollmentToken, error) {
	return timed(s.m, "ListEnrollmentTokens", func() ([]store.EnrollmentToken, error) { return s.Store.ListEnrollmentTokens(ctx) })
}

func (s timedStore) RevokeEnrollmentToken(ctx context.Context, id string) (store.EnrollmentToken, error) {
	return timed(s.m, "RevokeEnrollmentToken", func() (store.EnrollmentToken, error) { return s.Store.RevokeEnrollmentToken(ctx, id) })
}

func (s timedStore) CheckEnrollmentToken(ctx context.Context, id string, h []byte) error {
	return timed0(s.m, "CheckEnrollmentToken", func() error { return s.Store.CheckEnrollmentToken(ctx, id, h) })
}

func (s timedStore) Reap(ctx context.Context) error {
	return timed0(s.m, "Reap", func() error { return s.Store.Reap(ctx) })
}

func (s timedStore) Stats(ctx context.Context) (store.Stats, error) {
	return timed(s.m, "Stats", func() (store.Stats, error) { return s.Store.Stats(ctx) })
}

func (s timedStore) Ping(ctx context.Context) error {
	return timed0(s.m, "Ping", func() error { return s.Store.Ping(ctx) })
}
