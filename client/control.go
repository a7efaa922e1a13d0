package client

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
)

// control is Control's ControlServiceClient: each method is one invoke. The
// embedded client (the first server's, without retries) answers a method added
// to the API and not yet listed here; TestControlRetriesEveryCall finds it.
type control struct {
	forgev1connect.ControlServiceClient
	c *Client
}

var _ forgev1connect.ControlServiceClient = control{}

// call makes one call through the Client's retries.
func call[Req, Res any](ctx context.Context, c *Client, req *connect.Request[Req], m method[Req, Res]) (*connect.Response[Res], error) {
	res, _, err := invoke(ctx, c, req, m)
	return res, err
}

// Dispatch sends the request with an idempotency key, one of its own when the
// request has none, so that a retry never makes a second job.
func (x control) Dispatch(ctx context.Context, req *connect.Request[forgev1.DispatchRequest]) (*connect.Response[forgev1.DispatchResponse], error) {
	if req.Msg.GetIdempotencyKey() == "" {
		m := proto.Clone(req.Msg).(*forgev1.DispatchRequest)
		m.IdempotencyKey = newIdempotencyKey()
		r := connect.NewRequest(m)
		for k, v := range req.Header() {
			r.Header()[k] = v
		}
		req = r
	}
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.Dispatch)
}

// CancelTask: a retried cancel may find the task finished by the try whose
// answer was lost (a PENDING task ends CANCELED at once), which the server
// refuses as failed_precondition; the task as it stands is the answer then.
func (x control) CancelTask(ctx context.Context, req *connect.Request[forgev1.CancelTaskRequest]) (*connect.Response[forgev1.CancelTaskResponse], error) {
	res, tries, err := invoke(ctx, x.c, req, forgev1connect.ControlServiceClient.CancelTask)
	if tries > 1 && connect.CodeOf(err) == connect.CodeFailedPrecondition {
		got, gerr := call(ctx, x.c, connect.NewRequest(&forgev1.GetTaskRequest{TaskId: req.Msg.TaskId}), forgev1connect.ControlServiceClient.GetTask)
		if gerr == nil && got.Msg.Task.GetState() == forgev1.TaskState_TASK_STATE_CANCELED {
			return connect.NewResponse(&forgev1.CancelTaskResponse{Task: got.Msg.Task}), nil
		}
	}
	return res, err
}

func (x control) GetJob(ctx context.Context, req *connect.Request[forgev1.GetJobRequest]) (*connect.Response[forgev1.GetJobResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.GetJob)
}

func (x control) WaitJob(ctx context.Context, req *connect.Request[forgev1.WaitJobRequest]) (*connect.Response[forgev1.WaitJobResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.WaitJob)
}

func (x control) ListJobs(ctx context.Context, req *connect.Request[forgev1.ListJobsRequest]) (*connect.Response[forgev1.ListJobsResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.ListJobs)
}

func (x control) CancelJob(ctx context.Context, req *connect.Request[forgev1.CancelJobRequest]) (*connect.Response[forgev1.CancelJobResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.CancelJob)
}

func (x control) GetTask(ctx context.Context, req *connect.Request[forgev1.GetTaskRequest]) (*connect.Response[forgev1.GetTaskResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.GetTask)
}

func (x control) WaitTask(ctx context.Context, req *connect.Request[forgev1.WaitTaskRequest]) (*connect.Response[forgev1.WaitTaskResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.WaitTask)
}

func (x control) ReadOutput(ctx context.Context, req *connect.Request[forgev1.ReadOutputRequest]) (*connect.Response[forgev1.ReadOutputResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.ReadOutput)
}

func (x control) ListTasks(ctx context.Context, req *connect.Request[forgev1.ListTasksRequest]) (*connect.Response[forgev1.ListTasksResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.ListTasks)
}

func (x control) ListAgents(ctx context.Context, req *connect.Request[forgev1.ListAgentsRequest]) (*connect.Response[forgev1.ListAgentsResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.ListAgents)
}

func (x control) GetAgent(ctx context.Context, req *connect.Request[forgev1.GetAgentRequest]) (*connect.Response[forgev1.GetAgentResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.GetAgent)
}

func (x control) RevokeAgent(ctx context.Context, req *connect.Request[forgev1.RevokeAgentRequest]) (*connect.Response[forgev1.RevokeAgentResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.RevokeAgent)
}

func (x control) CreateEnrollmentToken(ctx context.Context, req *connect.Request[forgev1.CreateEnrollmentTokenRequest]) (*connect.Response[forgev1.CreateEnrollmentTokenResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.CreateEnrollmentToken)
}

func (x control) ListEnrollmentTokens(ctx context.Context, req *connect.Request[forgev1.ListEnrollmentTokensRequest]) (*connect.Response[forgev1.ListEnrollmentTokensResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.ListEnrollmentTokens)
}

func (x control) RevokeEnrollmentToken(ctx context.Context, req *connect.Request[forgev1.RevokeEnrollmentTokenRequest]) (*connect.Response[forgev1.RevokeEnrollmentTokenResponse], error) {
	return call(ctx, x.c, req, forgev1connect.ControlServiceClient.RevokeEnrollmentToken)
}
