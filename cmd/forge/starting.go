package main

import (
	"errors"
	"net/http"
	"sync/atomic"

	"connectrpc.com/connect"
)

// gate is the server's handler from the moment it listens: until its store is
// open it answers by itself — /healthz ok (the process is up), /readyz 503
// naming why the store cannot be used, every other call Connect's unavailable
// — and then hands every request to the API handler. So a server waiting for its
// Redis (or for an ACL user, a certificate) says why to whoever probes it.
type gate struct {
	api   atomic.Pointer[http.Handler]
	cause atomic.Pointer[string] // why the store is not open yet
	errw  *connect.ErrorWriter
}

func newGate() *gate { return &gate{errw: connect.NewErrorWriter()} }

// open hands every later request to h.
func (g *gate) open(h http.Handler) { g.api.Store(&h) }

// waiting records why the store cannot be opened yet; err's message names the
// cause and holds no secret (see redisstore).
func (g *gate) waiting(err error) {
	msg := err.Error()
	g.cause.Store(&msg)
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := g.api.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/healthz":
		w.Write([]byte("ok\n"))
	case r.Method == http.MethodGet && r.URL.Path == "/readyz":
		cause := "starting"
		if c := g.cause.Load(); c != nil {
			cause = *c
		}
		http.Error(w, "store unavailable: "+cause, http.StatusServiceUnavailable)
	case g.errw.IsSupported(r):
		_ = g.errw.Write(w, r, connect.NewError(connect.CodeUnavailable, errors.New("the server is starting: its store is not ready; try again")))
	default:
		http.Error(w, "the server is starting", http.StatusServiceUnavailable)
	}
}
