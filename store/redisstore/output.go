package redisstore

import (
	"context"

	"github.com/orange-forge/forge/store"
)

// AppendOutput implements store.Store: one script in the agent's shard, which
// checks the credential, the attempt and the offset, and keeps the output under
// the cap by store/output.go's rules (their Lua twins, from the prelude).
func (s *Store) AppendOutput(ctx context.Context, p store.AppendParams) (int64, error) {
	id := p.Cred.AgentID
	if err := s.ownTask(ctx, p.Cred, p.TaskID); err != nil {
		return 0, err
	}
	arr, err := s.run(ctx, appendOutputScript,
		[]string{s.k.agent(id), s.k.task(id, p.TaskID), s.k.outHead(id, p.TaskID), s.k.outTail(id, p.TaskID)},
		s.shardArgs(s.k.tag(id), s.nowMS(), id, string(p.Cred.SecretHash), p.TaskID, itoa(p.Attempt), itoa(p.Stream),
			itoa(p.Offset), string(p.Data), itoa(store.OutputCap(p.Cap))))
	if err != nil {
		return 0, err
	}
	return msgInt(arr[1]), nil
}

// ReadOutput implements store.Store: one read-only script fetches the record's
// output fields and the pieces the cursor needs, and store.ReadFrom assembles
// the answer, as memstore's does.
func (s *Store) ReadOutput(ctx context.Context, p store.ReadParams) (store.OutputRead, error) {
	a, ok := store.AgentOfTask(p.TaskID)
	if !ok || !store.ValidTaskID(p.TaskID) {
		return store.OutputRead{}, store.ErrTaskNotFound(p.TaskID)
	}
	arr, err := s.run(ctx, readOutputScript,
		[]string{s.k.task(a, p.TaskID), s.k.outHead(a, p.TaskID), s.k.outTail(a, p.TaskID)}, []string{itoa(p.Cursor)})
	if err != nil {
		return store.OutputRead{}, err
	}
	if len(arr) < 5 {
		return store.OutputRead{}, store.ErrTaskNotFound(p.TaskID)
	}
	vals, _ := arr[1].ToArray()
	f := make(map[string]string, len(outputFields))
	for i, name := range outputFields {
		if i < len(vals) {
			f[name], _ = vals[i].ToString()
		}
	}
	m := decodeOutput(f)
	st := store.TaskState(atoi(f["st"]))
	chunks, next, err := store.ReadFrom(p.TaskID, m, p.Cursor, decodePieces(arr[2]), decodePieces(arr[3]), msgInt(arr[4]), max(p.Max, 1))
	if err != nil {
		return store.OutputRead{}, err
	}
	return store.OutputRead{Chunks: chunks, Next: next, State: st, Finished: store.Finished(st, m, next)}, nil
}

// withOutput fills in a task's stdout and stderr from its record and kept pieces.
func withOutput(t store.Task, f map[string]string, head, tail []store.OutputChunk) store.Task {
	m := decodeOutput(f)
	if m.Attempt == 0 {
		return t // nothing kept (or a record from before pieces, whose Output decodeTask read)
	}
	t.Output, t.Stderr = store.OutputViews(m, head, tail)
	return t
}
