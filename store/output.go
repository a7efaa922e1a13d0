package store

import (
	"fmt"

	"github.com/orange-forge/forge/internal/outputcap"
)

// This file is live output, written once: how a store keeps the output an agent
// streams while an attempt runs (AppendOutput), and how it is read back
// (ReadOutput) and shown (Task.Output, Task.Stderr).
//
// A task's output is one sequence of chunks, each of one stream, in the order the
// store accepted them. Only the current (or last) attempt's output is kept: the
// first chunk of a new attempt replaces what an older one left. A cursor is a
// position in the task's output over its whole life: each attempt's output starts
// where the last one's ended (Base), so a reader's cursor stays meaningful when a
// new attempt starts, and when output is cut.
//
// The output of an attempt is kept under a cap (the server's --max-output) as a
// head and a tail: the first bytes go to the head until it holds half the cap,
// the rest to the tail, whose oldest bytes are dropped once it holds the other
// half. Between them lies the cut: bytes received and counted, but not kept. A
// reader whose cursor is in the cut gets a note saying how many bytes it missed,
// then the tail. Head and tail are stored as pieces, runs of one stream of at
// most OutputPieceMax bytes (the next chunk of the same stream extends the last
// piece); each of head and tail holds at most one piece per OutputPieceCost bytes
// of the cap, so output that switches streams at every byte cannot make a store
// hold more than its cap in bookkeeping.
//
// The rules below are functions; memstore applies them directly and the Redis
// store's scripts apply their Lua twins (store/redisstore/prelude.lua), tested
// against these. Reads and the stdout and stderr views are assembled from the
// stored pieces by Go in both stores (ReadFrom, OutputViews).

// Stream is one of an attempt's output streams; the values match forge.v1.Stream.
type Stream int32

// Streams. StreamNone marks a note from forge in what ReadOutput answers.
const (
	StreamNone   Stream = 0
	StreamStdout Stream = 1
	StreamStderr Stream = 2
)

// String returns the stream's name: "stdout", "stderr", or "note".
func (s Stream) String() string {
	switch s {
	case StreamStdout:
		return "stdout"
	case StreamStderr:
		return "stderr"
	}
	return "note"
}

// Sizes of stored output.
const (
	// OutputPieceMax is the longest piece a store keeps: a chunk extends the
	// last piece of its region while that piece is of its stream and shorter.
	// On Redis two pieces with their stream byte fill one 8 KiB list node
	// (list-max-listpack-size -2), so kept output costs little beyond its size.
	OutputPieceMax = 4000
	// OutputPieceCost is how many bytes of the cap allow one piece in each of
	// head and tail (at least 16 each).
	OutputPieceCost = 256
)

// DefaultOutputCap is the cap of a call that gives none (AppendParams.Cap,
// ReportParams.Cap): 1 MiB, the server's default --max-output.
const DefaultOutputCap = outputcap.Default

// OutputCap returns cap, or DefaultOutputCap when cap is not positive.
func OutputCap(cap int64) int64 {
	if cap <= 0 {
		return DefaultOutputCap
	}
	return cap
}

// OutputChunk is a run of bytes of one stream: a stored piece, or a chunk of a
// read (where StreamNone is a note from forge).
type OutputChunk struct {
	Stream Stream
	Data   []byte
}

// OutputMeta is what a store keeps of a task's output besides its pieces.
type OutputMeta struct {
	// Attempt is the attempt the stored output belongs to; zero when none was kept.
	Attempt int32
	// Base is the cursor of the attempt's first byte: the end of the output of
	// the attempts before it.
	Base int64
	// Total counts the bytes of both streams received for the attempt.
	Total int64
	// Stdout and Stderr count the bytes of each stream received: the offset of
	// its next chunk.
	Stdout, Stderr int64
	// HeadBytes, HeadPieces, TailBytes and TailPieces size the two regions kept.
	HeadBytes, HeadPieces, TailBytes, TailPieces int64
}

// Held returns how many bytes of stream s the store holds for the attempt.
func (m OutputMeta) Held(s Stream) int64 {
	if s == StreamStderr {
		return m.Stderr
	}
	return m.Stdout
}

// Cut returns how many bytes of the attempt's output were dropped to keep it
// under the cap.
func (m OutputMeta) Cut() int64 { return m.Total - m.HeadBytes - m.TailBytes }

// End returns the cursor after the last byte received.
func (m OutputMeta) End() int64 { return m.Base + m.Total }

// AppendParams is one chunk of a running attempt's output.
type AppendParams struct {
	Cred    Cred
	TaskID  string
	Attempt int32
	Stream  Stream
	// Offset is how many bytes of the stream were sent before Data.
	Offset int64
	Data   []byte
	// Cap bounds the bytes kept of the attempt's output (both streams).
	Cap int64
}

// ReadParams asks for a task's output from a cursor.
type ReadParams struct {
	TaskID string
	// Cursor is 0 for the start, or a previous read's Next.
	Cursor int64
	// Max bounds the bytes of output in the answer (notes aside); at least 1.
	Max int
}

// OutputRead is a task's output from a cursor.
type OutputRead struct {
	Chunks []OutputChunk
	// Next is the cursor after what Chunks hold.
	Next int64
	// State is the task's state as it was read.
	State TaskState
	// Finished is true when the task has ended and Next is the end of its
	// output: no more will come.
	Finished bool
}

// CheckAppend decides what chunk p does to the output of task t. held is how many
// bytes of p's stream the store holds for p.Attempt (zero when the stored output
// is an older attempt's). It answers how many of the chunk's first bytes the store
// holds already — all of them for a chunk sent again, which is acknowledged and
// not stored twice — or an error: KindInvalid for a bad stream or offset,
// KindPrecondition for a chunk that would leave a gap (naming the offset
// expected), or of another attempt, or of an ended one; the same texts as a
// report's. The identical chunk of the attempt that ended the task is still
// acknowledged, so a retry that crosses the report is harmless. The task's
// existence and owner are the caller's to check first.
func CheckAppend(t Task, held int64, p AppendParams) (skip int64, err error) {
	n := int64(len(p.Data))
	switch {
	case p.Stream != StreamStdout && p.Stream != StreamStderr:
		return 0, newError(KindInvalid, MsgBadStream)
	case p.Offset < 0:
		return 0, newError(KindInvalid, MsgBadOffset)
	}
	if t.State.Terminal() {
		if t.Attempt == p.Attempt && p.Offset+n <= held {
			return n, nil
		}
		if t.Attempt != p.Attempt {
			return 0, Errorf(KindPrecondition, FmtStaleEnded, p.Attempt, Quote(t.ID), t.State, t.Attempt)
		}
		return 0, Errorf(KindPrecondition, FmtTaskEnded, Quote(t.ID), t.State)
	}
	if t.State != StateRunning || t.Attempt != p.Attempt {
		return 0, Errorf(KindPrecondition, FmtStale, p.Attempt, Quote(t.ID), t.Attempt, t.State)
	}
	if p.Offset > held {
		return 0, Errorf(KindPrecondition, FmtOutputGap, p.Stream, p.Offset, p.Attempt, Quote(t.ID), held)
	}
	return min(held-p.Offset, n), nil
}

// OutputLimits returns, for a cap, the most bytes the head and the tail keep and
// the most pieces each holds.
func OutputLimits(cap int64) (headMax, tailMax, maxPieces int64) {
	headMax = cap / 2
	return headMax, cap - headMax, max(cap/OutputPieceCost, 16)
}

// OutputMergeRoom returns how many bytes of stream s may extend a region whose
// last piece is of stream last and lastLen bytes long (StreamNone when the
// region is empty).
func OutputMergeRoom(last Stream, lastLen int64, s Stream) int64 {
	if last != s || lastLen >= OutputPieceMax {
		return 0
	}
	return OutputPieceMax - lastLen
}

// OutputHeadTake returns how many of n new bytes go to the head, given the
// attempt's total so far, the head's bytes and pieces, and merge, the bytes that
// may extend its last piece (OutputMergeRoom). The head takes bytes until it
// holds half the cap or its pieces are used up, and none once any byte went past
// it.
func OutputHeadTake(total, headBytes, headPieces, merge, n, cap int64) int64 {
	headMax, _, maxPieces := OutputLimits(cap)
	if total > headBytes {
		return 0
	}
	room := min(headMax-headBytes, merge+(maxPieces-headPieces)*OutputPieceMax)
	return max(min(n, room), 0)
}

// OutputTailOver tells whether a tail of tailBytes in tailPieces holds more than
// the cap allows, so its oldest bytes must go (OutputTrim).
func OutputTailOver(tailBytes, tailPieces, cap int64) bool {
	_, tailMax, maxPieces := OutputLimits(cap)
	return tailBytes > tailMax || tailPieces > maxPieces
}

// OutputTrim returns how many bytes to drop from the front of an over-full
// tail's first piece, first bytes long: all of it while the tail has too many
// pieces or would still be too long without it, else what brings the tail to its
// size.
func OutputTrim(tailBytes, tailPieces, first, cap int64) int64 {
	_, tailMax, maxPieces := OutputLimits(cap)
	switch {
	case tailPieces > maxPieces || tailBytes-first >= tailMax:
		return first
	case tailBytes > tailMax:
		return tailBytes - tailMax
	}
	return 0
}

// OutputSummary returns whether a task's output was cut and its full size, from
// what the store kept and what its report said (the agent may have cut its
// returned output, or dropped bytes it could not send, before the server saw
// them).
func OutputSummary(m OutputMeta, reportedTruncated bool, reportedSize int64) (truncated bool, size int64) {
	return m.Cut() > 0 || reportedTruncated, max(m.Total, reportedSize)
}

// NoteCut is the note a read gives in place of n bytes that were cut.
func NoteCut(n int64) string { return outputcap.Marker(n) }

// IsNoteCut tells whether a note is a NoteCut: what follows it in each stream
// may start mid-line.
func IsNoteCut(note []byte) bool { return outputcap.IsMarker(note) }

// NoteAttempt is the note a read gives where the output of attempt n starts,
// when the cursor was in an older attempt's output.
func NoteAttempt(n int32) string { return fmt.Sprintf(FmtNoteAttempt, n) }

// addChunk appends data of stream s to chunks, extending the last chunk when it
// is of the same stream.
func addChunk(chunks []OutputChunk, s Stream, data []byte) []OutputChunk {
	if len(data) == 0 {
		return chunks
	}
	if n := len(chunks); n > 0 && chunks[n-1].Stream == s && s != StreamNone {
		chunks[n-1].Data = append(chunks[n-1].Data, data...)
		return chunks
	}
	return append(chunks, OutputChunk{Stream: s, Data: append([]byte(nil), data...)})
}

// ReadFrom assembles a read of output from cursor: at most max bytes of output
// (notes aside) and the cursor after them. m is the stored output's meta; head
// holds every head piece (it may be nil when cursor is at or past the head's
// end); tail holds the tail's pieces from the one that holds max(cursor, the
// tail's start) to the last, and tailFrom is the cursor of tail[0]'s first byte.
// A cursor past the end of the output is KindInvalid.
func ReadFrom(taskID string, m OutputMeta, cursor int64, head, tail []OutputChunk, tailFrom int64, max int) ([]OutputChunk, int64, error) {
	end := m.End()
	if cursor < 0 || cursor > end {
		return nil, 0, Errorf(KindInvalid, FmtOutputCursor, cursor, Quote(taskID), end)
	}
	var out []OutputChunk
	if cursor < m.Base {
		out = append(out, OutputChunk{Stream: StreamNone, Data: []byte(NoteAttempt(m.Attempt))})
		cursor = m.Base
	}
	left := int64(max)
	take := func(pieces []OutputChunk, from int64) {
		for _, p := range pieces {
			n := int64(len(p.Data))
			if cursor >= from+n {
				from += n
				continue
			}
			if left == 0 {
				return
			}
			part := p.Data[cursor-from:]
			part = part[:min(int64(len(part)), left)]
			out = addChunk(out, p.Stream, part)
			cursor += int64(len(part))
			left -= int64(len(part))
			from += n
		}
	}
	headEnd, tailStart := m.Base+m.HeadBytes, end-m.TailBytes
	if cursor < headEnd {
		take(head, m.Base)
	}
	if left > 0 && cursor >= headEnd && cursor < tailStart {
		out = append(out, OutputChunk{Stream: StreamNone, Data: []byte(NoteCut(tailStart - cursor))})
		cursor = tailStart
	}
	if cursor >= tailStart {
		take(tail, tailFrom)
	}
	return out, cursor, nil
}

// Finished tells whether a reader at cursor has read all of a task's output:
// the task in state st has ended and cursor is at the end.
func Finished(st TaskState, m OutputMeta, cursor int64) bool {
	return st.Terminal() && cursor >= m.End()
}

// OutputViews returns the attempt's stdout and stderr as kept, each with a note
// in place of its bytes that were cut: a line of its own between whole lines
// (outputcap.Join), counting the bytes dropped and the partial lines trimmed.
func OutputViews(m OutputMeta, head, tail []OutputChunk) (stdout, stderr []byte) {
	var kept [3]int64
	view := func(s Stream, pieces []OutputChunk, to []byte) []byte {
		for _, p := range pieces {
			if p.Stream == s {
				to = append(to, p.Data...)
				kept[s] += int64(len(p.Data))
			}
		}
		return to
	}
	build := func(s Stream) []byte {
		out := view(s, head, nil)
		rest := view(s, tail, nil)
		if cut := m.Held(s) - kept[s]; cut > 0 {
			return outputcap.Join(nil, out, rest, cut)
		}
		return append(out, rest...)
	}
	return build(StreamStdout), build(StreamStderr)
}
