package server

import (
	"context"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/store"
)

// Live output: agents append chunks of a running attempt's stdout and stderr
// (AppendOutput), operators read them from a cursor, held until there is more
// (ReadOutput). What is kept, and how a read is assembled, is package store's
// (store/output.go).

// maxOffset bounds a chunk's offset: far beyond any output, and exact in the
// Redis store's Lua numbers.
const maxOffset = 1 << 50

// readOutputMax bounds the output bytes one ReadOutput answers (notes aside):
// the default cap's worth, so a finished task's output comes in one answer.
const readOutputMax = 1 << 20

func (a *agentService) AppendOutput(ctx context.Context, req *connect.Request[forgev1.AppendOutputRequest]) (*connect.Response[forgev1.AppendOutputResponse], error) {
	s := a.s
	m := req.Msg
	switch {
	case !store.ValidTaskID(m.TaskId):
		return nil, invalid("task_id", "%.80q is not a task id", m.TaskId)
	case m.Attempt <= 0:
		return nil, invalid("attempt", "must be at least 1")
	case m.Stream != forgev1.Stream_STREAM_STDOUT && m.Stream != forgev1.Stream_STREAM_STDERR:
		return nil, invalid("stream", "must be STREAM_STDOUT or STREAM_STDERR")
	case m.Offset < 0:
		return nil, invalid("offset", "must not be negative")
	case m.Offset > maxOffset:
		return nil, invalid("offset", "%d is over the limit of %d", m.Offset, int64(maxOffset))
	case len(m.Data) > s.cfg.Limits.MaxChunk:
		return nil, exhausted("data: %d bytes is over the limit of %d bytes per chunk", len(m.Data), s.cfg.Limits.MaxChunk)
	}
	next, err := s.store.AppendOutput(ctx, store.AppendParams{
		Cred: principalFrom(ctx).cred, TaskID: m.TaskId, Attempt: m.Attempt, Stream: store.Stream(m.Stream),
		Offset: m.Offset, Data: m.Data, Cap: int64(s.cfg.Limits.MaxOutput),
	})
	if err != nil {
		return nil, s.agentError(ctx, err)
	}
	return connect.NewResponse(&forgev1.AppendOutputResponse{NextOffset: next}), nil
}

func (c *controlService) ReadOutput(ctx context.Context, req *connect.Request[forgev1.ReadOutputRequest]) (*connect.Response[forgev1.ReadOutputResponse], error) {
	s := c.s
	m := req.Msg
	if m.Offset < 0 {
		return nil, invalid("offset", "must not be negative")
	}
	wait, err := waitFor("wait", m.Wait, s.cfg.PollHold, s.cfg.MaxWait)
	if err != nil {
		return nil, err
	}
	p := store.ReadParams{TaskID: m.TaskId, Cursor: m.Offset, Max: readOutputMax}
	var r store.OutputRead
	err = s.hold(ctx, hold{Keys: []string{store.OutputKey(m.TaskId), store.TaskKey(m.TaskId)}, End: holdEnd(ctx, wait)}, func() (bool, error) {
		var err error
		r, err = s.store.ReadOutput(ctx, p)
		return len(r.Chunks) > 0 || r.Finished, err
	})
	if err != nil {
		return nil, s.storeError(ctx, err)
	}
	res := &forgev1.ReadOutputResponse{NextOffset: r.Next, Finished: r.Finished, State: forgev1.TaskState(r.State)}
	for _, ch := range r.Chunks {
		res.Chunks = append(res.Chunks, &forgev1.OutputChunk{Stream: forgev1.Stream(ch.Stream), Data: ch.Data})
	}
	return connect.NewResponse(res), nil
}
