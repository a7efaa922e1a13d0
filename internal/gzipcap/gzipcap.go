// Package gzipcap gives Connect handlers and clients a gzip whose inflating
// stops at a limit.
//
// A gzip bomb is a body of a few MiB that inflates to GiBs. With a read limit,
// Connect refuses a message that inflates past it, but first inflates the
// rest to say how big it was (a 4 MiB body took a core for about five
// seconds); without one, it inflates all of it into memory. A message read
// through this package's gzip inflates to at most limit+1 bytes — enough for
// Connect to see it is over a read limit of limit or less — and its reader
// then fails.
package gzipcap

import (
	"compress/gzip"
	"fmt"
	"io"

	"connectrpc.com/connect"
)

// name is gzip's Content-Encoding.
const name = "gzip"

// Handler returns the handler option that replaces Connect's gzip with one
// that inflates a request to at most limit+1 bytes. Give the handler the same
// read limit (connect.WithReadMaxBytes) or a smaller one.
func Handler(limit int) connect.HandlerOption {
	return connect.WithHandlerOptions(
		connect.WithCompression(name, nil, nil), // Connect's own, which inflates it all
		connect.WithCompression(name, decompressor(limit), compressor),
	)
}

// Client returns the client option that replaces Connect's gzip with one that
// inflates an answer to at most limit+1 bytes. Give the client the same read
// limit (connect.WithReadMaxBytes) or a smaller one.
func Client(limit int) connect.ClientOption {
	return connect.WithClientOptions(
		connect.WithAcceptCompression(name, nil, nil),
		connect.WithAcceptCompression(name, decompressor(limit), compressor),
	)
}

func decompressor(limit int) func() connect.Decompressor {
	return func() connect.Decompressor { return &reader{limit: int64(limit) + 1} }
}

func compressor() connect.Compressor { return gzip.NewWriter(io.Discard) }

// reader inflates gzip, up to limit bytes per message.
type reader struct {
	gz    gzip.Reader
	limit int64
	left  int64
}

// Read inflates into p; past the limit it fails.
func (d *reader) Read(p []byte) (int, error) {
	if d.left <= 0 {
		return 0, fmt.Errorf("it inflates to more than %d bytes (a gzip bomb?); nothing more of it was read", d.limit-1)
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.gz.Read(p)
	d.left -= int64(n)
	return n, err
}

// Reset starts on the next message, read from r.
func (d *reader) Reset(r io.Reader) error {
	d.left = d.limit
	return d.gz.Reset(r)
}

// Close ends the message; it does not close the source.
func (d *reader) Close() error { return d.gz.Close() }
