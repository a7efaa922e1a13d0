package client

import (
	"bytes"
	"io"
	"sync"
)

// maxPartialLine is how long a line without its end may grow before a
// LineWriter writes it anyway (a progress bar redrawn with \r never ends).
const maxPartialLine = 4 << 10

// Lines writes the output of several tasks onto one writer, a whole line at a
// time, each line prefixed by the writer it came through: what `forge run`
// prints on a terminal ("web-1: ..."). Its writers may be used from several
// goroutines at once; their lines never mix.
type Lines struct {
	mu      sync.Mutex
	w       io.Writer
	writers []*LineWriter
}

// NewLines returns a Lines writing to w.
func NewLines(w io.Writer) *Lines { return &Lines{w: w} }

// Prefix returns a writer whose lines go to the Lines' writer after prefix.
func (l *Lines) Prefix(prefix string) *LineWriter {
	lw := &LineWriter{l: l, prefix: []byte(prefix)}
	l.mu.Lock()
	l.writers = append(l.writers, lw)
	l.mu.Unlock()
	return lw
}

// Flush writes the unfinished last line of every writer, ended with a newline.
func (l *Lines) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, lw := range l.writers {
		if err := lw.flushLocked(); err != nil {
			return err
		}
	}
	return nil
}

// A LineWriter is one prefixed stream of a Lines.
type LineWriter struct {
	l       *Lines
	prefix  []byte
	partial []byte // the start of a line whose end has not come yet
}

// Write writes every line p completes, each after the prefix; the rest waits
// for its end (or Flush), unless it grows past 4 KiB.
func (lw *LineWriter) Write(p []byte) (int, error) {
	lw.l.mu.Lock()
	defer lw.l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			lw.partial = append(lw.partial, p...)
			if len(lw.partial) >= maxPartialLine {
				return n, lw.flushLocked()
			}
			return n, nil
		}
		line := p[:i+1]
		p = p[i+1:]
		if len(lw.partial) > 0 {
			line = append(lw.partial, line...)
			lw.partial = nil
		}
		if err := lw.writeLocked(line); err != nil {
			return n - len(p), err
		}
	}
	return n, nil
}

// Flush writes this writer's unfinished last line, ended with a newline.
func (lw *LineWriter) Flush() error {
	lw.l.mu.Lock()
	defer lw.l.mu.Unlock()
	return lw.flushLocked()
}

func (lw *LineWriter) flushLocked() error {
	if len(lw.partial) == 0 {
		return nil
	}
	line := append(lw.partial, '\n')
	lw.partial = nil
	return lw.writeLocked(line)
}

// writeLocked writes one line, ending in '\n', after the prefix, in one Write
// of the underlying writer.
func (lw *LineWriter) writeLocked(line []byte) error {
	buf := make([]byte, 0, len(lw.prefix)+len(line))
	buf = append(append(buf, lw.prefix...), line...)
	_, err := lw.l.w.Write(buf)
	return err
}
