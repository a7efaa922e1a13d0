package agent

import (
	"bytes"
	"io"
	"net/http"
)

// singleWriteMax bounds the bodies SingleWrite copies; larger ones stream.
const singleWriteMax = 64 << 10

// SingleWrite wraps rt so that a request with a small body of known length
// leaves in one write: its headers and its body in one TCP segment.
//
// net/http flushes a request's headers on their own before copying any body it
// does not know to be in memory, and the body connect-go hands it for a unary
// call is such a body. Each call with a body then costs two writes, two packets,
// and often a second wake-up of the server's reader. SingleWrite copies the body
// (at most 64 KiB) into a bytes.Reader, which net/http writes with the headers.
// The agent's default transport uses it; give it to the clients of any program
// that calls forge often (forge bench does).
func SingleWrite(rt http.RoundTripper) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return singleWrite{rt}
}

type singleWrite struct{ base http.RoundTripper }

func (t singleWrite) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength <= 0 || req.ContentLength > singleWriteMax {
		return t.base.RoundTrip(req)
	}
	b := make([]byte, req.ContentLength)
	_, err := io.ReadFull(req.Body, b)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	r := req.WithContext(req.Context()) // a shallow copy: RoundTrip must not change req
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return t.base.RoundTrip(r)
}
