package client

import (
	"errors"
	"io"
	"net/http"

	"connectrpc.com/connect"
)

// capAnswers bounds the bytes read of each answer's body, as sent (compressed
// or not). connect.WithReadMaxBytes bounds the decoded message, but on an
// answer over it connect-go reads the rest to say how large it was: from a
// server that never stops sending, until the call's deadline. Cut here, the
// call fails as soon as the answer passes the limit.
type capAnswers struct {
	base http.RoundTripper
	max  int64
}

func (c capAnswers) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := c.base.RoundTrip(r)
	if err != nil || res.Body == nil {
		return res, err
	}
	left := c.max
	if res.ContentLength > c.max {
		// Said too large up front: not one byte of it is read.
		left = 0
	}
	res.Body = &cappedBody{ReadCloser: res.Body, left: left}
	return res, nil
}

// errAnswerTooLarge ends the read of an answer larger than the Client takes:
// resource_exhausted, which is not retried.
var errAnswerTooLarge = connect.NewError(connect.CodeResourceExhausted,
	errors.New("the server's answer is larger than the client takes (WithMaxAnswer)"))

type cappedBody struct {
	io.ReadCloser
	left int64
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errAnswerTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// withCappedAnswers returns hc sending through capAnswers; hc is not changed.
func withCappedAnswers(hc *http.Client, max int) *http.Client {
	base := hc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	c := *hc
	// Room past the message for its envelope and a compressor's overhead.
	c.Transport = capAnswers{base: base, max: int64(max) + 64<<10}
	return &c
}
