package server

import (
	"compress/gzip"
	"fmt"
	"io"

	"connectrpc.com/connect"
)

// A gzip bomb is a body of a few MiB that inflates to GiBs. Connect refuses a
// message that inflates past its read limit, but first inflates the rest of it
// to say how big it was: a 4 MiB body took a core for about five seconds, for
// anyone with an agent token. Requests are therefore inflated through
// boundedGunzip, which gives up at the limit.

// compressionGzip is the Content-Encoding name of gzip.
const compressionGzip = "gzip"

// boundedGzip is the gzip compression of forge's handlers: answers are
// compressed as Connect does by default; a request is inflated to at most
// limit+1 bytes (enough for Connect to see it is over a read limit of limit or
// less), and past that its reader fails.
func boundedGzip(limit int) connect.HandlerOption {
	return connect.WithHandlerOptions(
		connect.WithCompression(compressionGzip, nil, nil), // Connect's own, which inflates it all
		connect.WithCompression(compressionGzip,
			func() connect.Decompressor { return &boundedGunzip{limit: int64(limit) + 1} },
			func() connect.Compressor { return gzip.NewWriter(io.Discard) }),
	)
}

// boundedGunzip inflates gzip, up to limit bytes per message.
type boundedGunzip struct {
	gz    gzip.Reader
	limit int64
	left  int64
}

// Read inflates into p; past the limit it fails.
func (d *boundedGunzip) Read(p []byte) (int, error) {
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
func (d *boundedGunzip) Reset(r io.Reader) error {
	d.left = d.limit
	return d.gz.Reset(r)
}

// Close ends the message; it does not close the source.
func (d *boundedGunzip) Close() error { return d.gz.Close() }
