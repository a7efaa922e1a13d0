package storetest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/orange-forge/forge/internal/outputcap"
	"github.com/orange-forge/forge/store"
)

var outputCases = []testCase{
	{"AppendAndRead", testOutputAppendRead, nil},
	{"SentTwiceStoredOnce", testOutputRetry, nil},
	{"Refused", testOutputRefused, nil},
	{"NewAttempt", testOutputNewAttempt, nil},
	{"Cap", testOutputCap, nil},
	{"CapModel", testOutputCapModel, nil},
	{"PieceLimit", testOutputPieceLimit, nil},
	{"Report", testOutputReport, nil},
	{"Watch", testOutputWatch, nil},
	{"Retention", testOutputRetention, nil},
}

const (
	stdout = store.StreamStdout
	stderr = store.StreamStderr
)

// chunk is an expected chunk of a read; stream 0 is a note.
type chunk struct {
	s store.Stream
	d string
}

func note(s string) chunk { return chunk{store.StreamNone, s} }

func (h *harness) appendOut(a testAgent, ref store.TaskRef, s store.Stream, off int64, data string, cap int64) (int64, error) {
	return h.s.AppendOutput(h.ctx, store.AppendParams{Cred: a.cred, TaskID: ref.TaskID, Attempt: ref.Attempt, Stream: s,
		Offset: off, Data: []byte(data), Cap: cap})
}

// mustAppend appends and checks the next offset the store answers.
func (h *harness) mustAppend(a testAgent, ref store.TaskRef, s store.Stream, off int64, data string, cap, next int64) {
	h.Helper()
	got, err := h.appendOut(a, ref, s, off, data, cap)
	if err != nil || got != next {
		h.Fatalf("AppendOutput(%s offset %d, %d bytes) = %d, %v; want %d", s, off, len(data), got, err, next)
	}
}

func showChunks(cs []store.OutputChunk) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "{%s %q} ", c.Stream, c.Data)
	}
	return b.String()
}

// wantRead reads a task's output from cursor and checks the answer exactly.
func (h *harness) wantRead(id string, cursor int64, max int, next int64, st store.TaskState, finished bool, want ...chunk) {
	h.Helper()
	r, err := h.s.ReadOutput(h.ctx, store.ReadParams{TaskID: id, Cursor: cursor, Max: max})
	if err != nil {
		h.Fatalf("ReadOutput(%d): %v", cursor, err)
	}
	ok := len(r.Chunks) == len(want) && r.Next == next && r.State == st && r.Finished == finished
	for i := 0; ok && i < len(want); i++ {
		ok = r.Chunks[i].Stream == want[i].s && string(r.Chunks[i].Data) == want[i].d
	}
	if !ok {
		exp := make([]store.OutputChunk, len(want))
		for i, w := range want {
			exp[i] = store.OutputChunk{Stream: w.s, Data: []byte(w.d)}
		}
		h.Fatalf("ReadOutput(%d, max %d)\n got %s next %d %s finished %v\nwant %s next %d %s finished %v", cursor, max,
			showChunks(r.Chunks), r.Next, r.State, r.Finished, showChunks(exp), next, st, finished)
	}
}

// wantViews checks a task's stdout and stderr as GetTask shows them.
func (h *harness) wantViews(id, out, errOut string, truncated bool, size int64) {
	h.Helper()
	t := h.task(id)
	if string(t.Output) != out || string(t.Stderr) != errOut || t.OutputTruncated != truncated || t.OutputSize != size {
		h.Fatalf("task %s output\n got %q stderr %q truncated %v size %d\nwant %q stderr %q truncated %v size %d", id,
			t.Output, t.Stderr, t.OutputTruncated, t.OutputSize, out, errOut, truncated, size)
	}
}

// running dispatches a task to a new agent and leases it.
func (h *harness) running() (testAgent, store.Task) {
	h.Helper()
	a := h.register(nil)
	h.dispatch(a)
	return a, h.leaseOne(a)
}

func testOutputAppendRead(h *harness) {
	a := h.register(nil)
	pending := h.dispatch(a).TaskIDs[0]
	h.wantRead(pending, 0, 100, 0, store.StatePending, false)
	t := h.leaseOne(a)
	id, ref := t.ID, t.Ref()
	h.wantRead(id, 0, 100, 0, store.StateRunning, false)
	h.mustAppend(a, ref, stdout, 0, "hello\n", 0, 6)
	h.mustAppend(a, ref, stderr, 0, "oops\n", 0, 5)
	h.mustAppend(a, ref, stdout, 6, "world\n", 0, 12)
	// The cursor counts both streams, in the order the store took them.
	h.wantRead(id, 0, 100, 17, store.StateRunning, false, chunk{stdout, "hello\n"}, chunk{stderr, "oops\n"}, chunk{stdout, "world\n"})
	h.wantRead(id, 6, 100, 17, store.StateRunning, false, chunk{stderr, "oops\n"}, chunk{stdout, "world\n"})
	h.wantRead(id, 8, 100, 17, store.StateRunning, false, chunk{stderr, "ps\n"}, chunk{stdout, "world\n"})
	h.wantRead(id, 0, 3, 3, store.StateRunning, false, chunk{stdout, "hel"})
	h.wantRead(id, 3, 5, 8, store.StateRunning, false, chunk{stdout, "lo\n"}, chunk{stderr, "oo"})
	h.wantRead(id, 17, 100, 17, store.StateRunning, false)
	_, err := h.s.ReadOutput(h.ctx, store.ReadParams{TaskID: id, Cursor: 18, Max: 100})
	wantErr(h, err, store.Errorf(store.KindInvalid, store.FmtOutputCursor, 18, store.Quote(id), 17), "a read past the end")
	_, err = h.s.ReadOutput(h.ctx, store.ReadParams{TaskID: unknownTask, Max: 100})
	wantErr(h, err, store.ErrTaskNotFound(unknownTask), "a read of an unknown task")
	h.wantViews(id, "hello\nworld\n", "oops\n", false, 17)
	// Bytes of one stream that follow each other come as one chunk.
	h.mustAppend(a, ref, stdout, 12, "a", 0, 13)
	h.mustAppend(a, ref, stdout, 13, "b", 0, 14)
	h.wantRead(id, 17, 100, 19, store.StateRunning, false, chunk{stdout, "ab"})
	h.wantRead(id, 10, 100, 19, store.StateRunning, false, chunk{stderr, "\n"}, chunk{stdout, "world\nab"})
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: id, Attempt: 1, Outcome: store.OutcomeSucceeded, Output: []byte("done\n")})
	if err != nil || st != store.StateSucceeded {
		h.Fatalf("Report = %v, %v", st, err)
	}
	// The report's output follows what was streamed, on stdout.
	h.wantRead(id, 19, 100, 24, store.StateSucceeded, true, chunk{stdout, "done\n"})
	h.wantRead(id, 17, 100, 24, store.StateSucceeded, true, chunk{stdout, "abdone\n"})
	h.wantRead(id, 0, 4, 4, store.StateSucceeded, false, chunk{stdout, "hell"})
	h.wantRead(id, 24, 100, 24, store.StateSucceeded, true)
	h.wantViews(id, "hello\nworld\nabdone\n", "oops\n", false, 24)
}

func testOutputRetry(h *harness) {
	a, t := h.running()
	ref := t.Ref()
	h.mustAppend(a, ref, stdout, 0, "abc", 0, 3)
	h.mustAppend(a, ref, stdout, 0, "abc", 0, 3)
	h.mustAppend(a, ref, stdout, 1, "bc", 0, 3)
	h.wantRead(t.ID, 0, 100, 3, store.StateRunning, false, chunk{stdout, "abc"})
	// A chunk partly held: only its new bytes are stored.
	h.mustAppend(a, ref, stdout, 1, "bcde", 0, 5)
	h.mustAppend(a, ref, stderr, 0, "E", 0, 1)
	h.mustAppend(a, ref, stderr, 0, "E", 0, 1)
	h.mustAppend(a, ref, stdout, 0, "abcde", 0, 5)
	// An empty chunk asks what the store holds.
	h.mustAppend(a, ref, stdout, 5, "", 0, 5)
	h.mustAppend(a, ref, stdout, 0, "", 0, 5)
	h.mustAppend(a, ref, stderr, 0, "", 0, 1)
	h.wantRead(t.ID, 0, 100, 6, store.StateRunning, false, chunk{stdout, "abcde"}, chunk{stderr, "E"})
	h.wantViews(t.ID, "abcde", "E", false, 6)
	h.mustReport(a, ref, store.OutcomeFailed, store.StateFailed)
	// A chunk of the attempt that ended the task, sent again, is still acknowledged.
	// (The report's output "out" followed on stdout: the store holds 8 bytes of it.)
	h.mustAppend(a, ref, stdout, 2, "cde", 0, 8)
	h.mustAppend(a, ref, stderr, 0, "E", 0, 1)
	_, err := h.appendOut(a, ref, stdout, 8, "more", 0)
	wantErr(h, err, store.ErrTaskEnded(t.ID, store.StateFailed), "new output after the report")
	_, err = h.appendOut(a, ref, stdout, 3, "deoutxy", 0)
	wantErr(h, err, store.ErrTaskEnded(t.ID, store.StateFailed), "output partly new after the report")
	h.wantViews(t.ID, "abcdeout", "E", false, 9)
}

func testOutputRefused(h *harness) {
	a, t := h.running()
	ref := t.Ref()
	h.mustAppend(a, ref, stdout, 0, "abc", 0, 3)
	gap := func(s store.Stream, off, want int64) error {
		return store.Errorf(store.KindPrecondition, store.FmtOutputGap, s, off, int32(1), store.Quote(t.ID), want)
	}
	_, err := h.appendOut(a, ref, stdout, 4, "x", 0)
	wantErr(h, err, gap(stdout, 4, 3), "a chunk that leaves a gap")
	_, err = h.appendOut(a, ref, stderr, 1, "y", 0)
	wantErr(h, err, gap(stderr, 1, 0), "a first stderr chunk past 0")
	_, err = h.appendOut(a, ref, store.Stream(3), 0, "z", 0)
	wantErr(h, err, store.Errorf(store.KindInvalid, store.MsgBadStream), "an unknown stream")
	_, err = h.appendOut(a, ref, store.StreamNone, 0, "z", 0)
	wantErr(h, err, store.Errorf(store.KindInvalid, store.MsgBadStream), "no stream")
	_, err = h.appendOut(a, ref, stdout, -1, "z", 0)
	wantErr(h, err, store.Errorf(store.KindInvalid, store.MsgBadOffset), "a negative offset")
	_, err = h.appendOut(a, store.TaskRef{TaskID: t.ID, Attempt: 2}, stdout, 3, "z", 0)
	wantErr(h, err, errStale(2, t.ID, 1, store.StateRunning), "an attempt not leased yet")
	other := h.register(nil)
	_, err = h.appendOut(other, ref, stdout, 3, "z", 0)
	wantErr(h, err, store.ErrTaskNotFound(t.ID), "another agent's task")
	_, err = h.appendOut(a, store.TaskRef{TaskID: unknownTask, Attempt: 1}, stdout, 0, "z", 0)
	wantErr(h, err, store.ErrTaskNotFound(unknownTask), "an unknown task")
	bad := a
	bad.cred.SecretHash = hash("wrong")
	_, err = h.appendOut(bad, ref, stdout, 3, "z", 0)
	wantErr(h, err, store.ErrUnknownAgent(), "a wrong credential")
	if _, err := h.s.RevokeAgent(h.ctx, other.ID, ""); err != nil {
		h.Fatal(err)
	}
	_, err = h.appendOut(other, ref, stdout, 3, "z", 0)
	wantErr(h, err, store.ErrRevokedAgent(), "a revoked agent")
	h.wantRead(t.ID, 0, 100, 3, store.StateRunning, false, chunk{stdout, "abc"})
}

func testOutputNewAttempt(h *harness) {
	a, t := h.running()
	ref1 := t.Ref()
	h.mustAppend(a, ref1, stdout, 0, "one\n", 0, 4)
	h.mustAppend(a, ref1, stderr, 0, "e1\n", 0, 3)
	h.clock.Advance(leaseFor)
	h.reap()
	h.wantState(t.ID, store.StatePending)
	_, err := h.appendOut(a, ref1, stdout, 4, "x", 0)
	wantErr(h, err, errStale(1, t.ID, 1, store.StatePending), "the expired attempt, requeued")
	t2 := h.leaseOne(a)
	ref2 := t2.Ref()
	_, err = h.appendOut(a, ref1, stdout, 4, "x", 0)
	wantErr(h, err, errStale(1, t.ID, 2, store.StateRunning), "the expired attempt, while the next runs")
	// Until the new attempt writes, the last one's output stays.
	h.wantRead(t.ID, 0, 100, 7, store.StateRunning, false, chunk{stdout, "one\n"}, chunk{stderr, "e1\n"})
	h.wantViews(t.ID, "one\n", "e1\n", false, 7)
	// Each attempt's streams count from 0; its output replaces the last one's,
	// and cursors go on from where that ended.
	h.mustAppend(a, ref2, stdout, 0, "two\n", 0, 4)
	h.wantRead(t.ID, 0, 100, 11, store.StateRunning, false, note(store.NoteAttempt(2)), chunk{stdout, "two\n"})
	h.wantRead(t.ID, 5, 100, 11, store.StateRunning, false, note(store.NoteAttempt(2)), chunk{stdout, "two\n"})
	h.wantRead(t.ID, 7, 100, 11, store.StateRunning, false, chunk{stdout, "two\n"})
	h.wantRead(t.ID, 9, 100, 11, store.StateRunning, false, chunk{stdout, "o\n"})
	h.wantViews(t.ID, "two\n", "", false, 4)
	h.mustReport(a, ref2, store.OutcomeSucceeded, store.StateSucceeded)
	_, err = h.appendOut(a, ref1, stdout, 0, "one\n", 0)
	wantErr(h, err, errStaleEnded(1, t.ID, store.StateSucceeded, 2), "the expired attempt, after the next ended")
	h.wantRead(t.ID, 11, 100, 14, store.StateSucceeded, true, chunk{stdout, "out"})

	// A new attempt that streams nothing and reports no output shows none.
	a2, t3 := h.running()
	h.mustAppend(a2, t3.Ref(), stdout, 0, "first try", 0, 9)
	h.clock.Advance(leaseFor)
	h.reap()
	t4 := h.leaseOne(a2)
	if _, err := h.s.Report(h.ctx, store.ReportParams{Cred: a2.cred, TaskID: t4.ID, Attempt: t4.Attempt, Outcome: store.OutcomeSucceeded}); err != nil {
		h.Fatal(err)
	}
	h.wantViews(t4.ID, "", "", false, 0)
	h.wantRead(t4.ID, 0, 100, 9, store.StateSucceeded, true, note(store.NoteAttempt(2)))
	h.wantRead(t4.ID, 9, 100, 9, store.StateSucceeded, true)
}

// letters returns n bytes that show their position: a..z repeated from index from.
func letters(from, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + (from+i)%26)
	}
	return string(b)
}

func testOutputCap(h *harness) {
	const cap = 64 // head 32, tail 32
	a, t := h.running()
	ref, id := t.Ref(), t.ID
	data := letters(0, 100)
	h.mustAppend(a, ref, stdout, 0, data, cap, 100)
	h.wantViews(id, data[:32]+store.NoteCut(36)+data[68:], "", true, 100)
	h.wantRead(id, 0, 1000, 100, store.StateRunning, false, chunk{stdout, data[:32]}, note(store.NoteCut(36)), chunk{stdout, data[68:]})
	// Cursors stay valid across the cut: one inside it gets what it missed.
	h.wantRead(id, 40, 1000, 100, store.StateRunning, false, note(store.NoteCut(28)), chunk{stdout, data[68:]})
	h.wantRead(id, 70, 1000, 100, store.StateRunning, false, chunk{stdout, data[70:]})
	h.wantRead(id, 0, 32, 32, store.StateRunning, false, chunk{stdout, data[:32]})
	h.wantRead(id, 32, 10, 78, store.StateRunning, false, note(store.NoteCut(36)), chunk{stdout, data[68:78]})
	// More output cuts more of the tail; a cursor in what it dropped is in the cut.
	h.mustAppend(a, ref, stderr, 0, letters(0, 10), cap, 10)
	h.wantRead(id, 70, 1000, 110, store.StateRunning, false, note(store.NoteCut(8)), chunk{stdout, data[78:]}, chunk{stderr, letters(0, 10)})
	h.wantViews(id, data[:32]+store.NoteCut(46)+data[78:], letters(0, 10), true, 110)
	h.mustAppend(a, ref, stderr, 10, letters(10, 30), cap, 40)
	// A stream whose kept head is empty starts with the marker line itself:
	// no empty line before it.
	h.wantViews(id, data[:32]+store.NoteCut(68), viewCut("", 8)+letters(8, 32), true, 140)
	h.wantRead(id, 0, 1000, 140, store.StateRunning, false, chunk{stdout, data[:32]}, note(store.NoteCut(76)), chunk{stderr, letters(8, 32)})
	// A report's output counts and is cut like any other.
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: id, Attempt: 1, Outcome: store.OutcomeSucceeded,
		Output: []byte("END"), Cap: cap, OutputTruncated: true, OutputSize: 1000})
	if err != nil || st != store.StateSucceeded {
		h.Fatalf("Report = %v, %v", st, err)
	}
	h.wantViews(id, data[:32]+store.NoteCut(68)+"END", viewCut("", 11)+letters(11, 29), true, 1000)
	h.wantRead(id, 100, 1000, 143, store.StateSucceeded, true, note(store.NoteCut(11)), chunk{stderr, letters(11, 29)}, chunk{stdout, "END"})
}

// viewCut is the marker line a stored view shows for n bytes cut after the kept
// head before: a line of its own, so with no newline before it when the head is
// empty or ends a line.
func viewCut(before string, n int64) string {
	return string(outputcap.AppendMarker(nil, n, before == "" || strings.HasSuffix(before, "\n")))
}

// outputModel is what a store keeps of output under a cap, computed the simplest
// way: every byte received in order, the head its first half-cap bytes, the tail
// the last half-cap; it holds when no region runs out of pieces.
type outputModel struct {
	data    []byte
	streams []store.Stream
	cap     int
}

func (m *outputModel) add(s store.Stream, d string) {
	m.data = append(m.data, d...)
	for range d {
		m.streams = append(m.streams, s)
	}
}

// kept returns the ranges of kept bytes: [0, headEnd) and [tailStart, len).
func (m *outputModel) kept() (headEnd, tailStart int) {
	n := len(m.data)
	headEnd = min(n, m.cap/2)
	tailStart = max(headEnd, n-(m.cap-m.cap/2))
	return headEnd, tailStart
}

func (m *outputModel) read(from, max int) ([]chunk, int) {
	headEnd, tailStart := m.kept()
	var out []chunk
	c, left := from, max
	// copyTo adds the bytes from c up to end (or left), a run of one stream at a time.
	copyTo := func(end int) {
		for c < end && left > 0 {
			run := c
			for run < end && run-c < left && m.streams[run] == m.streams[c] {
				run++
			}
			if n := len(out); n > 0 && out[n-1].s == m.streams[c] {
				out[n-1].d += string(m.data[c:run])
			} else {
				out = append(out, chunk{m.streams[c], string(m.data[c:run])})
			}
			left -= run - c
			c = run
		}
	}
	copyTo(headEnd)
	if left > 0 && c >= headEnd && c < tailStart {
		out = append(out, note(store.NoteCut(int64(tailStart-c))))
		c = tailStart
	}
	if c >= tailStart {
		copyTo(len(m.data))
	}
	return out, c
}

func (m *outputModel) views() (string, string) {
	headEnd, tailStart := m.kept()
	var v [3][]byte
	var cut [3]int64
	for i, b := range m.data {
		s := m.streams[i]
		switch {
		case i < headEnd:
			v[s] = append(v[s], b)
		case i < tailStart:
			cut[s]++
		}
	}
	for s := stdout; s <= stderr; s++ {
		if cut[s] > 0 {
			v[s] = append(v[s], viewCut(string(v[s]), cut[s])...)
		}
	}
	for i := tailStart; i < len(m.data); i++ {
		v[m.streams[i]] = append(v[m.streams[i]], m.data[i])
	}
	return string(v[stdout]), string(v[stderr])
}

// testOutputCapModel appends chunks of random streams and sizes, some larger
// than a piece, and after each compares reads from several cursors and the views
// with outputModel.
func testOutputCapModel(h *harness) {
	const cap = 40 << 10 // head and tail 20 KiB: pieces fill, merge and get cut
	rng := rand.New(rand.NewPCG(7, 8))
	a, t := h.running()
	m := &outputModel{cap: cap}
	var off [3]int64
	for step := range 40 {
		s := store.Stream(1 + rng.IntN(2))
		n := 1 + rng.IntN(3*store.OutputPieceMax/2)
		if step%5 == 0 {
			n = 1 + rng.IntN(20)
		}
		d := letters(step, n)
		h.mustAppend(a, t.Ref(), s, off[s], d, cap, off[s]+int64(n))
		off[s] += int64(n)
		m.add(s, d)
		for _, from := range []int{0, rng.IntN(len(m.data) + 1), len(m.data) - rng.IntN(min(len(m.data), 100)+1)} {
			maxRead := []int{1 << 20, 1 + rng.IntN(cap)}[rng.IntN(2)]
			want, next := m.read(from, maxRead)
			h.wantRead(t.ID, int64(from), maxRead, int64(next), store.StateRunning, false, want...)
		}
		out, errOut := m.views()
		headEnd, tailStart := m.kept()
		h.wantViews(t.ID, out, errOut, tailStart > headEnd, int64(len(m.data)))
	}
}

func testOutputPieceLimit(h *harness) {
	const cap = 64 // 16 pieces each for head and tail, 32 bytes each
	a, t := h.running()
	var off [3]int64
	var want []chunk
	for i := range 40 {
		s := store.Stream(1 + i%2)
		d := string(rune('A' + i))
		h.mustAppend(a, t.Ref(), s, off[s], d, cap, off[s]+1)
		off[s]++
		if i < 16 || i >= 24 {
			want = append(want, chunk{s, d})
		}
		if i == 23 {
			want = append(want, note(store.NoteCut(8)))
		}
	}
	// Streams that switch at every byte use a piece per byte: the head closes
	// after 16, and the tail keeps the last 16.
	h.wantRead(t.ID, 0, 1000, 40, store.StateRunning, false, want...)
	var out, errOut string
	for _, c := range want {
		switch c.s {
		case stdout:
			out += c.d
		case stderr:
			errOut += c.d
		}
	}
	out = out[:8] + store.NoteCut(4) + out[8:]
	errOut = errOut[:8] + store.NoteCut(4) + errOut[8:]
	h.wantViews(t.ID, out, errOut, true, 40)
}

func testOutputReport(h *harness) {
	// A handler that streams nothing: its returned output is the stdout.
	a, t := h.running()
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: t.ID, Attempt: 1, Outcome: store.OutcomeSucceeded,
		Output: []byte("result")})
	if err != nil || st != store.StateSucceeded {
		h.Fatalf("Report = %v, %v", st, err)
	}
	h.wantViews(t.ID, "result", "", false, 6)
	h.wantRead(t.ID, 0, 100, 6, store.StateSucceeded, true, chunk{stdout, "result"})
	// The report again changes nothing.
	if st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: t.ID, Attempt: 1, Outcome: store.OutcomeSucceeded,
		Output: []byte("result")}); err != nil || st != store.StateSucceeded {
		h.Fatalf("Report again = %v, %v", st, err)
	}
	h.wantViews(t.ID, "result", "", false, 6)
	// An agent that cut or dropped output says so; the size is the larger of
	// what it says and what the store received.
	a, t = h.running()
	h.mustAppend(a, t.Ref(), stderr, 0, "warning\n", 0, 8)
	if _, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: t.ID, Attempt: 1, Outcome: store.OutcomeFailed,
		Output: []byte("x"), ExitCode: 2, OutputTruncated: true, OutputSize: 5}); err != nil {
		h.Fatal(err)
	}
	h.wantViews(t.ID, "x", "warning\n", true, 9)
	// A task that ends without a report keeps what was streamed.
	a, t = h.running()
	h.mustAppend(a, t.Ref(), stdout, 0, "partial", 0, 7)
	if _, err := h.s.CancelTask(h.ctx, t.ID, ""); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(leaseFor)
	h.reap()
	h.wantState(t.ID, store.StateCanceled)
	h.wantViews(t.ID, "partial", "", false, 7)
	h.wantRead(t.ID, 0, 100, 7, store.StateCanceled, true, chunk{stdout, "partial"})
	h.wantRead(t.ID, 7, 100, 7, store.StateCanceled, true)
}

func testOutputWatch(h *harness) {
	a, t := h.running()
	w := h.s.Watch(store.OutputKey(t.ID))
	defer w.Stop()
	other := h.s.Watch(store.OutputKey(unknownTask))
	defer other.Stop()
	h.mustAppend(a, t.Ref(), stdout, 0, "x", 0, 1)
	if !fired(w) {
		h.Fatalf("AppendOutput did not fire the task's output watcher")
	}
	drain(w)
	h.mustAppend(a, t.Ref(), stdout, 0, "x", 0, 1)
	select {
	case <-w.C:
		h.Fatalf("a chunk held already fired the output watcher")
	case <-time.After(100 * time.Millisecond):
	}
	st, err := h.s.Report(h.ctx, store.ReportParams{Cred: a.cred, TaskID: t.ID, Attempt: 1, Outcome: store.OutcomeSucceeded, Output: []byte("y")})
	if err != nil || st != store.StateSucceeded {
		h.Fatalf("Report = %v, %v", st, err)
	}
	if !fired(w) {
		h.Fatalf("a report with output did not fire the task's output watcher")
	}
	select {
	case <-other.C:
		h.Fatalf("output of one task fired another task's output watcher")
	default:
	}
}

func testOutputRetention(h *harness) {
	a, t := h.running()
	big := bytes.Repeat([]byte("x"), 3*store.OutputPieceMax)
	h.mustAppend(a, t.Ref(), stdout, 0, string(big), 0, int64(len(big)))
	h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	h.clock.Advance(retention + time.Second)
	h.reap()
	_, err := h.s.ReadOutput(h.ctx, store.ReadParams{TaskID: t.ID, Max: 100})
	wantErr(h, err, store.ErrTaskNotFound(t.ID), "a read after retention")
	_, err = h.s.GetTask(h.ctx, t.ID)
	wantErr(h, err, store.ErrTaskNotFound(t.ID), "GetTask after retention")
}
