package server

import (
	"fmt"
	"io"
	"net/http"
)

// describeRefusals makes every refusal at the HTTP level say what was wrong.
// Connect answers a wrong method (405), a Content-Type it does not take (415)
// and a bidi stream over HTTP/1.1 (505) with a status and no body, and an
// unknown procedure with "404 page not found"; with `curl -sS` a caller sees
// nothing. This wrapper holds those statuses back until the handler returns:
// if it wrote no body of its own, one line of text explains the refusal and
// how to fix it. Connect's own errors (JSON bodies) pass through untouched.
func describeRefusals(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &refusalWriter{ResponseWriter: w, r: r}
		next.ServeHTTP(rw, r)
		rw.finish()
	})
}

// refusalWriter holds back a refusal status (see describeRefusals).
type refusalWriter struct {
	http.ResponseWriter
	r       *http.Request
	held    int  // a refusal status not yet written
	started bool // the status line has gone out
	swallow bool // the handler's generic 404 text is being replaced
}

func refusal(code int) bool {
	switch code {
	case http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusUnsupportedMediaType, http.StatusHTTPVersionNotSupported:
		return true
	}
	return false
}

func (w *refusalWriter) WriteHeader(code int) {
	if w.started || w.held != 0 {
		return
	}
	if refusal(code) {
		w.held = code
		return
	}
	w.started = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *refusalWriter) Write(b []byte) (int, error) {
	if w.swallow {
		return len(b), nil
	}
	if w.held != 0 && !w.started {
		// http.NotFound's text is replaced; anything else (a Connect error's
		// JSON) is the handler's own answer.
		if w.held == http.StatusNotFound && string(b) == notFoundText {
			w.swallow = true
			return len(b), nil
		}
		w.started = true
		w.ResponseWriter.WriteHeader(w.held)
		w.held = 0
	}
	w.started = true
	return w.ResponseWriter.Write(b)
}

// Flush lets streaming handlers (reflection, health's Watch) flush.
func (w *refusalWriter) Flush() {
	if w.held != 0 && !w.started {
		return
	}
	w.started = true
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap gives http.ResponseController the connection (held calls extend
// their deadlines through it).
func (w *refusalWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish writes the explanation of a held refusal the handler left bodiless.
func (w *refusalWriter) finish() {
	if w.held == 0 || w.started {
		return
	}
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.ResponseWriter.WriteHeader(w.held)
	io.WriteString(w.ResponseWriter, refusalText(w.held, w.r, h))
}

// notFoundText is what http.NotFound writes.
const notFoundText = "404 page not found\n"

// apiHint is how forge's API is called, for refusal texts.
const apiHint = "forge's API takes POST /<service>/<method> with Content-Type application/json " +
	"(Connect JSON; with curl: -H 'Content-Type: application/json') or application/proto, " +
	"or gRPC and gRPC-Web; docs/api.md lists the calls"

// refusalText explains a refusal status for request r; h is the response's
// header (Connect sets Allow).
func refusalText(code int, r *http.Request, h http.Header) string {
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	switch code {
	case http.StatusUnsupportedMediaType:
		what := fmt.Sprintf("Content-Type %.100q is not one this endpoint takes", r.Header.Get("Content-Type"))
		if r.Header.Get("Content-Type") == "" {
			what = "the request has no Content-Type"
		}
		return fmt.Sprintf("%s: %s; %s\n", status, what, apiHint)
	case http.StatusMethodNotAllowed:
		allow := h.Get("Allow")
		if allow == "" {
			allow = http.MethodPost
		}
		return fmt.Sprintf("%s: method %.20q is not allowed here (Allow: %s); %s\n", status, r.Method, allow, apiHint)
	case http.StatusHTTPVersionNotSupported:
		return fmt.Sprintf("%s: %.200s streams both ways and needs HTTP/2: over TLS it is negotiated; "+
			"on plain HTTP use HTTP/2 with prior knowledge (buf curl --http2-prior-knowledge, grpcurl -plaintext)\n",
			status, r.URL.Path)
	}
	return fmt.Sprintf("%s: no endpoint %.200q; forge serves its API at POST /<service>/<method> "+
		"(docs/api.md lists the calls), the fleet page at /, and /healthz, /readyz and /metrics\n", status, r.URL.Path)
}
