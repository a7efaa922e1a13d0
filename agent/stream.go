package agent

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/outputcap"
)

// Live output: what a handler writes to Task.Stdout and Task.Stderr goes to the
// server while the handler runs (AppendOutput), batched: a batch leaves
// outputDelay after its first byte was written, or as soon as it holds
// outputBatch bytes. Each stream counts its bytes from 0 and every chunk carries
// its offset, so a chunk sent again after a lost answer is stored once; one
// sender per attempt sends a chunk at a time and keeps it until it is
// acknowledged. The handler never waits for the server: what the server has not
// taken yet waits in memory, at most outputKeep bytes at the front of each
// stream's backlog and the newest outputKeep bytes at its back; bytes between
// them are dropped, and a line saying how many takes their place. A chunk the
// server cannot take now is sent again with backoff; one it refuses for good
// stops the attempt's output. An agent killed mid-output loses only what it had
// not sent.
const (
	outputDelay = 250 * time.Millisecond
	outputBatch = 64 << 10
	outputKeep  = 512 << 10
	// outputFlush bounds how long the report waits, once the handler has
	// returned, for the rest of the output to be taken: a server that keeps
	// refusing it for a while (busy, rate-limited, out of memory) must not hold
	// the result back; what is left then is dropped, and the report says so.
	outputFlush = 30 * time.Second
)

// streamer sends one attempt's output.
type streamer struct {
	a       *Agent
	log     *slog.Logger
	taskID  string
	attempt int32
	ctx     context.Context // ends when the attempt is given up (abandoned, revoked)

	mu      sync.Mutex
	out     [2]streamBuf // stdout, stderr
	closing bool         // the handler returned: send what is left at once
	stopped bool         // sending stopped; later writes are only counted
	// fallback collects the output for the report when the server does not
	// take live output (an older server): both streams, capped as the report's.
	fallback *capture
	kick     chan struct{}
	done     chan struct{}
}

// streamBuf is one stream's output not yet acknowledged by the server.
type streamBuf struct {
	stream forgev1.Stream
	queue  []byte // unsent bytes, oldest first: chunks come from its front
	ring   []byte // newer bytes once queue holds outputKeep; its oldest drop beyond outputKeep
	cut    int64  // bytes dropped between queue and ring
	// midLine says the last byte taken from queue did not end a line.
	midLine bool
	since   time.Time // when the oldest unsent byte was written; zero when none
	chunk   []byte    // the chunk sent and not yet acknowledged, kept as is for retries
	sent    int64     // bytes the server acknowledged: the offset of chunk
	// written counts what the handler wrote, dropped what never reached the server.
	written, dropped int64
}

func newStreamer(ctx context.Context, a *Agent, t *Task) *streamer {
	st := &streamer{a: a, log: a.log.With("task", t.ID, "attempt", t.Attempt), taskID: t.ID, attempt: t.Attempt, ctx: ctx,
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	st.out[0].stream = forgev1.Stream_STREAM_STDOUT
	st.out[1].stream = forgev1.Stream_STREAM_STDERR
	go st.run()
	return st
}

// streamWriter is Task.Stdout or Task.Stderr.
type streamWriter struct {
	st *streamer
	i  int
}

// Write queues p for the server; it never blocks on the network and never fails.
func (w streamWriter) Write(p []byte) (int, error) {
	w.st.write(w.i, p)
	return len(p), nil
}

func (st *streamer) write(i int, p []byte) {
	if len(p) == 0 {
		return
	}
	st.mu.Lock()
	b := &st.out[i]
	b.written += int64(len(p))
	first := b.since.IsZero() // the sender starts this batch's clock
	switch {
	case st.stopped:
		b.dropped += int64(len(p))
	case st.fallback != nil:
		st.fallback.Write(p)
	default:
		b.add(p, time.Now())
	}
	due := first || len(b.queue)+len(b.ring) >= outputBatch
	st.mu.Unlock()
	if due {
		st.wake()
	}
}

func (st *streamer) wake() {
	select {
	case st.kick <- struct{}{}:
	default:
	}
}

// add queues p: at the queue's end while the queue has room and nothing waits
// behind it, else in the ring, whose oldest bytes are cut beyond outputKeep.
func (b *streamBuf) add(p []byte, now time.Time) {
	if b.since.IsZero() {
		b.since = now
	}
	if len(b.ring) == 0 && b.cut == 0 {
		k := min(len(p), outputKeep-len(b.queue))
		b.queue = append(b.queue, p[:k]...)
		p = p[k:]
	}
	if len(p) == 0 {
		return
	}
	if len(p) >= outputKeep {
		b.cut += int64(len(b.ring) + len(p) - outputKeep)
		b.ring = append(b.ring[:0], p[len(p)-outputKeep:]...)
		return
	}
	b.ring = append(b.ring, p...)
	if over := len(b.ring) - outputKeep; over > 0 {
		b.cut += int64(over)
		b.ring = b.ring[over:]
	}
}

// take moves the next chunk, at most outputBatch bytes, out of the backlog: the
// queue's front, or once it is empty, the note for what was cut and the ring.
func (b *streamBuf) take() []byte {
	if len(b.queue) == 0 {
		var q []byte
		ring := b.ring
		if b.cut > 0 {
			// The marker goes between whole lines: the ring starts after its
			// first newline (the rest of a line whose start was dropped).
			if i := bytes.IndexByte(ring, '\n'); i >= 0 && i+1 < len(ring) {
				b.cut += int64(i + 1)
				ring = ring[i+1:]
			}
			q = outputcap.AppendMarker(q, b.cut, !b.midLine)
			b.dropped += b.cut
			b.cut = 0
		}
		b.queue = append(q, ring...)
		b.ring = b.ring[:0]
	}
	k := min(len(b.queue), outputBatch)
	last := k == len(b.queue) && b.cut > 0
	if last {
		// The queue's last chunk before a cut ends at its last newline: the
		// partial line after it is cut too.
		if i := bytes.LastIndexByte(b.queue[:k], '\n'); i >= 0 {
			b.cut += int64(k - i - 1)
			k = i + 1
		}
	}
	chunk := append([]byte(nil), b.queue[:k]...)
	b.queue = b.queue[k:]
	if last {
		b.queue = b.queue[:0]
	}
	if k > 0 {
		b.midLine = chunk[k-1] != '\n'
	}
	if len(b.queue) == 0 && len(b.ring) == 0 {
		b.queue = nil
		b.since = time.Time{}
	}
	return chunk
}

func (b *streamBuf) pending() bool { return b.chunk != nil || len(b.queue) > 0 || len(b.ring) > 0 }

// next picks what to send: a chunk not yet acknowledged, or a new one from the
// stream whose oldest byte is oldest, if due. Otherwise it says how long until
// one is due (0: wait for a write), or that all is sent (done).
func (st *streamer) next(now time.Time) (i int, chunk []byte, off int64, wait time.Duration, done bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.stopped || st.fallback != nil {
		return 0, nil, 0, 0, true
	}
	for i := range st.out {
		if b := &st.out[i]; b.chunk != nil {
			return i, b.chunk, b.sent, 0, false
		}
	}
	pick := -1
	for i := range st.out {
		b := &st.out[i]
		if !b.pending() {
			continue
		}
		if pick < 0 || b.since.Before(st.out[pick].since) {
			pick = i
		}
	}
	if pick < 0 {
		return 0, nil, 0, 0, st.closing
	}
	b := &st.out[pick]
	dueAt := b.since.Add(outputDelay)
	if st.closing || len(b.queue)+len(b.ring) >= outputBatch || b.cut > 0 || !now.Before(dueAt) {
		b.chunk = b.take()
		return pick, b.chunk, b.sent, 0, false
	}
	return 0, nil, 0, dueAt.Sub(now), false
}

// run sends chunks until the attempt's output is all sent after close, or sending stops.
func (st *streamer) run() {
	defer close(st.done)
	var bo backoff
	for {
		i, chunk, off, wait, done := st.next(time.Now())
		if done {
			return
		}
		if chunk == nil {
			var timer <-chan time.Time
			if wait > 0 {
				timer = time.After(wait)
			}
			select {
			case <-st.kick:
			case <-timer:
			case <-st.ctx.Done():
				st.stop()
				return
			}
			continue
		}
		err := st.send(i, chunk, off)
		if err == nil {
			bo.reset()
			continue
		}
		if !st.failed(i, err, &bo) {
			return
		}
	}
}

// send sends one chunk and, once it is acknowledged, forgets it.
func (st *streamer) send(i int, chunk []byte, off int64) error {
	idx, c := st.a.client()
	cctx, cancel := context.WithTimeout(st.ctx, callTimeout)
	req, _ := authed(st.a, &forgev1.AppendOutputRequest{TaskId: st.taskID, Attempt: st.attempt,
		Stream: st.out[i].stream, Offset: off, Data: chunk})
	res, err := c.AppendOutput(cctx, req)
	cancel()
	if err != nil {
		if transient(err) && connect.CodeOf(err) != connect.CodeResourceExhausted {
			st.a.failover(idx) // a limit of this server's is no reason to leave it
		}
		return err
	}
	st.mu.Lock()
	b := &st.out[i]
	b.chunk = nil
	b.sent = off + int64(len(chunk))
	if n := res.Msg.NextOffset; n != b.sent {
		st.log.Warn("the server holds a different amount of output than was sent", "stream", b.stream.String(), "sent", b.sent, "held", n)
	}
	st.mu.Unlock()
	return nil
}

// failed handles a chunk the server did not take: it tells whether to go on
// (after a backoff, to send it again).
func (st *streamer) failed(i int, err error, bo *backoff) bool {
	if st.ctx.Err() != nil {
		st.stop()
		return false
	}
	switch code := connect.CodeOf(err); {
	case code == connect.CodeUnimplemented:
		st.log.Info("the server does not take live output; sending it with the result")
		st.toFallback()
		return false
	case code == connect.CodeUnauthenticated:
		st.log.Warn("output refused: agent token not accepted", "err", err)
		st.stop()
		return false
	case !transient(err):
		st.log.Warn("output refused; no more of this attempt's output is sent", "stream", st.out[i].stream.String(), "err", err)
		st.stop()
		return false
	}
	if !bo.failing() {
		st.log.Warn("cannot send output; retrying with backoff", "err", err)
	}
	if !sleep(st.ctx, bo.next()) {
		st.stop()
		return false
	}
	return true
}

// stop ends sending: what was not acknowledged is dropped, and so is what the
// handler writes from now on.
func (st *streamer) stop() {
	defer st.wake()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.stopped {
		return
	}
	st.stopped = true
	for i := range st.out {
		b := &st.out[i]
		b.dropped += int64(len(b.chunk)+len(b.queue)+len(b.ring)) + b.cut
		b.chunk, b.queue, b.ring, b.cut = nil, nil, nil, 0
	}
}

// toFallback collects everything not yet acknowledged, and all later output,
// for the report.
func (st *streamer) toFallback() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.fallback = newCapture(st.a.cfg.MaxOutput)
	for i := range st.out {
		b := &st.out[i]
		st.fallback.Write(b.chunk)
		if b.cut > 0 {
			st.fallback.Write(outputcap.Join(nil, b.queue, b.ring, b.cut))
			b.dropped += b.cut
		} else {
			st.fallback.Write(b.queue)
			st.fallback.Write(b.ring)
		}
		b.chunk, b.queue, b.ring, b.cut = nil, nil, nil, 0
	}
}

// streamed is what became of an attempt's streams, for its report.
type streamed struct {
	// fallback is the output to send with the result (capped), when the server
	// did not take it live; nil otherwise.
	fallback []byte
	// cut tells whether output was dropped on the way.
	cut bool
	// written counts the bytes the handler wrote to its streams.
	written int64
}

// close sends what is left and waits until it is acknowledged, sending stops,
// or ctx ends, and says what became of the output.
func (st *streamer) close(ctx context.Context) streamed {
	st.mu.Lock()
	st.closing = true
	st.mu.Unlock()
	st.wake()
	wait := time.NewTimer(outputFlush)
	defer wait.Stop()
	select {
	case <-st.done:
	case <-ctx.Done():
		st.stop()
	case <-wait.C:
		st.log.Warn("output not taken in time; sending the result without the rest", "wait", outputFlush)
		st.stop()
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.stopped = true // writes from goroutines the handler left behind are not sent
	var so streamed
	for _, b := range st.out {
		so.written += b.written
		so.cut = so.cut || b.dropped > 0 || b.cut > 0 || b.chunk != nil || len(b.queue)+len(b.ring) > 0
	}
	if st.fallback != nil {
		var cut bool
		so.fallback, cut, _ = st.fallback.result()
		so.fallback = append([]byte{}, so.fallback...)
		so.cut = so.cut || cut
	}
	return so
}
