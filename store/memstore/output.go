package memstore

import (
	"context"
	"time"

	"github.com/orange-forge/forge/store"
)

// outputLog is a task's kept output: package store's rules (store/output.go)
// applied to pieces in memory.
type outputLog struct {
	meta       store.OutputMeta
	head, tail []store.OutputChunk
}

// reset makes the log attempt att's, dropping an older attempt's output; the
// new attempt's cursors start where the old one's ended.
func (o *outputLog) reset(att int32) {
	if o.meta.Attempt != att {
		*o = outputLog{meta: store.OutputMeta{Attempt: att, Base: o.meta.End()}}
	}
}

// add appends data of stream s to attempt att's output under cap.
func (o *outputLog) add(att int32, s store.Stream, data []byte, cap int64) {
	o.reset(att)
	m := &o.meta
	n := int64(len(data))
	if m.Total == m.HeadBytes {
		ls, ll := lastPiece(o.head)
		merge := store.OutputMergeRoom(ls, ll, s)
		take := store.OutputHeadTake(m.Total, m.HeadBytes, m.HeadPieces, merge, n, cap)
		var added int64
		o.head, added = push(o.head, s, data[:take], min(merge, take))
		m.HeadPieces += added
		m.HeadBytes += take
		data = data[take:]
	}
	if rest := int64(len(data)); rest > 0 {
		ls, ll := lastPiece(o.tail)
		merge := store.OutputMergeRoom(ls, ll, s)
		var added int64
		o.tail, added = push(o.tail, s, data, min(merge, rest))
		m.TailPieces += added
		m.TailBytes += rest
		for store.OutputTailOver(m.TailBytes, m.TailPieces, cap) {
			first := int64(len(o.tail[0].Data))
			d := store.OutputTrim(m.TailBytes, m.TailPieces, first, cap)
			if d == first {
				o.tail[0] = store.OutputChunk{}
				o.tail = o.tail[1:]
				m.TailPieces--
			} else {
				o.tail[0].Data = o.tail[0].Data[d:]
			}
			m.TailBytes -= d
		}
	}
	m.Total += n
	if s == store.StreamStderr {
		m.Stderr += n
	} else {
		m.Stdout += n
	}
}

// lastPiece returns the stream and length of the last of pieces (StreamNone, 0
// when there is none).
func lastPiece(pieces []store.OutputChunk) (store.Stream, int64) {
	if len(pieces) == 0 {
		return store.StreamNone, 0
	}
	p := pieces[len(pieces)-1]
	return p.Stream, int64(len(p.Data))
}

// push appends data of stream s to pieces: its first merge bytes extend the
// last piece, the rest go in new pieces of at most store.OutputPieceMax bytes. It
// returns the pieces and how many were added.
func push(pieces []store.OutputChunk, s store.Stream, data []byte, merge int64) ([]store.OutputChunk, int64) {
	if merge > 0 {
		last := &pieces[len(pieces)-1]
		last.Data = append(last.Data, data[:merge]...)
		data = data[merge:]
	}
	var added int64
	for len(data) > 0 {
		k := min(len(data), store.OutputPieceMax)
		pieces = append(pieces, store.OutputChunk{Stream: s, Data: append(make([]byte, 0, k), data[:k]...)})
		data = data[k:]
		added++
	}
	return pieces, added
}

// AppendOutput implements store.Store.
func (s *Store) AppendOutput(ctx context.Context, p store.AppendParams) (int64, error) {
	return locked(ctx, s, func(time.Time) (int64, error) {
		a, err := s.auth(p.Cred)
		if err != nil {
			return 0, err
		}
		t := s.tasks[p.TaskID]
		if t == nil || t.AgentID != a.ID {
			return 0, store.ErrTaskNotFound(p.TaskID)
		}
		held := func() int64 {
			if t.out.meta.Attempt != p.Attempt {
				return 0
			}
			return t.out.meta.Held(p.Stream)
		}
		skip, err := store.CheckAppend(t.Task, held(), p)
		if err != nil {
			return 0, err
		}
		if skip < int64(len(p.Data)) {
			t.out.add(p.Attempt, p.Stream, p.Data[skip:], store.OutputCap(p.Cap))
			s.hub.Notify(store.OutputKey(t.ID))
		}
		return held(), nil
	})
}

// ReadOutput implements store.Store.
func (s *Store) ReadOutput(ctx context.Context, p store.ReadParams) (store.OutputRead, error) {
	return locked(ctx, s, func(time.Time) (store.OutputRead, error) {
		t, err := find(s.tasks, p.TaskID, store.ErrTaskNotFound)
		if err != nil {
			return store.OutputRead{}, err
		}
		m := t.out.meta
		chunks, next, err := store.ReadFrom(t.ID, m, p.Cursor, t.out.head, t.out.tail, m.End()-m.TailBytes, max(p.Max, 1))
		if err != nil {
			return store.OutputRead{}, err
		}
		return store.OutputRead{Chunks: chunks, Next: next, State: t.State, Finished: store.Finished(t.State, m, next)}, nil
	})
}
