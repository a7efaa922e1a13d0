package server

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/store"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func dur(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func refsToProto(refs []store.TaskRef) []*forgev1.TaskRef {
	if len(refs) == 0 {
		return nil
	}
	out := make([]*forgev1.TaskRef, len(refs))
	for i, r := range refs {
		out[i] = &forgev1.TaskRef{TaskId: r.TaskID, Attempt: r.Attempt}
	}
	return out
}

func refsFromProto(refs []*forgev1.TaskRef) []store.TaskRef {
	out := make([]store.TaskRef, 0, len(refs))
	for _, r := range refs {
		if r != nil {
			out = append(out, store.TaskRef{TaskID: r.TaskId, Attempt: r.Attempt})
		}
	}
	return out
}

func leasedToProto(t store.Task) *forgev1.Task {
	return &forgev1.Task{
		Id: t.ID, JobId: t.JobID, Attempt: t.Attempt, Type: t.Type, Payload: t.Payload,
		Deadline: ts(t.Deadline), LeaseExpiresAt: ts(t.LeaseExpiresAt), Timeout: dur(t.Timeout),
	}
}

func taskInfo(t store.Task) *forgev1.TaskInfo {
	info := &forgev1.TaskInfo{
		Id: t.ID, JobId: t.JobID, AgentId: t.AgentID, Type: t.Type,
		State: forgev1.TaskState(t.State), Attempt: t.Attempt,
		Output: t.Output, Stderr: t.Stderr, ExitCode: t.ExitCode, Error: t.Error,
		CreatedAt: ts(t.CreatedAt), UpdatedAt: ts(t.UpdatedAt),
		Payload: t.Payload, MaxAttempts: t.MaxAttempts, CancelRequested: t.CancelRequested,
		OutputTruncated: t.OutputTruncated, OutputSize: t.OutputSize, Timeout: dur(t.Timeout),
	}
	if t.State == store.StateRunning {
		info.LeaseExpiresAt = ts(t.LeaseExpiresAt)
	}
	for _, c := range t.History {
		info.History = append(info.History, &forgev1.StateChange{
			State: forgev1.TaskState(c.State), At: ts(c.At), Reason: c.Reason, Attempt: c.Attempt,
		})
	}
	return info
}

func taskInfos(ts []store.Task) []*forgev1.TaskInfo {
	out := make([]*forgev1.TaskInfo, len(ts))
	for i, t := range ts {
		out[i] = taskInfo(t)
	}
	return out
}

func agentInfo(a store.Agent) *forgev1.AgentInfo {
	return &forgev1.AgentInfo{
		Id: a.ID, Name: a.Name, Labels: a.Labels, Hostname: a.Hostname, Version: a.Version,
		Status: forgev1.AgentStatus(a.Status), LastSeenAt: ts(a.LastSeenAt), Running: refsToProto(a.Running),
		TaskTypes: a.TaskTypes, RegisteredAt: ts(a.RegisteredAt), Pending: int32(a.Pending),
	}
}

func countsToProto(c store.Counts) *forgev1.JobCounts {
	return &forgev1.JobCounts{
		Pending: int32(c.Pending), Running: int32(c.Running), Succeeded: int32(c.Succeeded),
		Failed: int32(c.Failed), Canceled: int32(c.Canceled), TimedOut: int32(c.TimedOut),
		Expired: int32(c.Expired), Lost: int32(c.Lost), Total: int32(c.Total()),
	}
}

func jobInfo(j store.Job) *forgev1.JobInfo {
	return &forgev1.JobInfo{
		Id: j.ID, Type: j.Spec.Type, Target: j.Spec.Target.String(), Counts: countsToProto(j.Counts),
		Done: j.Counts.Done(), CreatedAt: ts(j.CreatedAt), MaxConcurrency: j.Spec.MaxConcurrency,
		MaxFailures: j.Spec.MaxFailures, IdempotencyKey: j.Spec.IdempotencyKey, Canceled: j.Canceled,
	}
}

func enrollInfo(t store.EnrollmentToken) *forgev1.EnrollmentTokenInfo {
	info := &forgev1.EnrollmentTokenInfo{
		Id: t.ID, Description: t.Description, MaxUses: int32(t.MaxUses),
		ExpiresAt: ts(t.ExpiresAt), CreatedAt: ts(t.CreatedAt), Revoked: !t.RevokedAt.IsZero(),
	}
	if t.MaxUses > 0 {
		info.UsesLeft = int32(max(t.MaxUses-t.Uses, 0))
	}
	return info
}
