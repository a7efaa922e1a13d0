package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/store"
)

// principalKind is what a request's token proved the caller to be.
type principalKind int

const (
	principalNone principalKind = iota
	principalEnroll
	principalAgent
	principalOperator
)

// principal is the authenticated caller, put in the request context by the
// middleware before the body is read.
type principal struct {
	kind   principalKind
	cred   store.Cred           // agents
	enroll *store.EnrollmentUse // stored enrollment tokens
	by     string               // who, for the audit log: a token id or a short fingerprint of its hash, never the token
	// scope names the enrollment token, for the Register idempotency keys
	// made with it (store.EnrollRequestKey): a stored token's id, or the whole
	// hash of one given by flag.
	scope string
}

// call is what the middleware puts in an API request's context: the caller,
// and the connection's controller, with which a held call extends its own
// deadlines (see extendDeadlines).
type call struct {
	principal
	conn *http.ResponseController
}

type callKey struct{}

func principalFrom(ctx context.Context) principal {
	c, _ := ctx.Value(callKey{}).(*call)
	if c == nil {
		return principal{}
	}
	return c.principal
}

// staticTokens holds hashes of tokens given by flag, compared in constant time.
type staticTokens [][]byte

func hashTokens(toks []string) staticTokens {
	out := make(staticTokens, 0, len(toks))
	for _, t := range toks {
		out = append(out, HashSecret(t))
	}
	return out
}

// match reports whether the token's hash is in the set, looking at every entry so
// the time taken does not depend on which one matched.
func (s staticTokens) match(h []byte) bool {
	found := 0
	for _, x := range s {
		found |= subtle.ConstantTimeCompare(x, h)
	}
	return found == 1
}

func fingerprint(h []byte) string { return hex.EncodeToString(h[:4]) }

// agentCache remembers recently verified agent credentials so that the gate in
// front of the decoder costs no store round trip on the hot path. It only opens
// the door: every store operation checks the credential again atomically, so a
// revoked token fails on its next call whatever the cache says.
type agentCache struct {
	mu  sync.Mutex
	ttl time.Duration
	m   map[string]cacheEntry
}

type cacheEntry struct {
	hash    [sha256.Size]byte
	expires time.Time
}

func (c *agentCache) ok(cr store.Cred, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[cr.AgentID]
	return ok && now.Before(e.expires) && subtle.ConstantTimeCompare(e.hash[:], cr.SecretHash) == 1
}

func (c *agentCache) put(cr store.Cred, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) > 100000 { // bound memory under a flood of distinct valid tokens
		clear(c.m)
	}
	var e cacheEntry
	copy(e.hash[:], cr.SecretHash)
	e.expires = now.Add(c.ttl)
	c.m[cr.AgentID] = e
}

func (c *agentCache) forget(agentID string) {
	c.mu.Lock()
	delete(c.m, agentID)
	c.mu.Unlock()
}

// procedure classes for authentication.
const (
	agentPrefix   = "/" + forgev1connect.AgentServiceName + "/"
	controlPrefix = "/" + forgev1connect.ControlServiceName + "/"
)

// authenticate is HTTP middleware: it checks the bearer token against the
// procedure's service before connect reads the body, so unauthenticated callers
// never reach the decoder. The checks are a call of their own (admit), so that
// this frame, which stays on the stack of every held Poll, stays small.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r = s.admit(w, r); r != nil {
			next.ServeHTTP(w, r)
		}
	})
}

// admit checks a request's token (see authenticate). It returns the request
// to serve, carrying the caller in its context for an API call, or nil when it
// has answered with the refusal.
//
//go:noinline
func (s *Server) admit(w http.ResponseWriter, r *http.Request) *http.Request {
	// No body is ever read past the limit, whatever the path (Ping and unknown
	// paths included), compressed or not.
	r.Body = http.MaxBytesReader(w, r.Body, int64(s.cfg.Limits.MaxBodyBytes))
	var need principalKind
	switch {
	case r.URL.Path == forgev1connect.AgentServiceRegisterProcedure:
		need = principalEnroll
	case strings.HasPrefix(r.URL.Path, agentPrefix):
		need = principalAgent
	case strings.HasPrefix(r.URL.Path, controlPrefix):
		need = principalOperator
	default:
		return r
	}
	p, err := s.identify(r.Context(), r.Header.Get("Authorization"), need)
	// An agent that starts again with its saved identity calls Register with
	// its own token: it updates that identity and creates nothing.
	selfRegister := err == nil && need == principalEnroll && p.kind == principalAgent
	if err == nil && p.kind != need && !selfRegister {
		err = connect.NewError(connect.CodePermissionDenied, errors.New(wrongKind(p.kind, need)))
	}
	if err == nil && !s.limiter.allow(p.by, s.cfg.Clock.Now()) {
		err = errRateLimited
	}
	if err == nil && need == principalEnroll && !selfRegister {
		err = s.allowRegister(p, r.RemoteAddr, s.cfg.Clock.Now())
	}
	if err != nil {
		s.metrics.authFailures.WithLabelValues(connect.CodeOf(err).String()).Inc()
		s.writeError(w, r, err)
		return nil
	}
	c := &call{principal: p, conn: http.NewResponseController(w)}
	return r.WithContext(context.WithValue(r.Context(), callKey{}, c))
}

func wrongKind(got, need principalKind) string {
	names := map[principalKind]string{principalEnroll: "an enrollment token", principalAgent: "an agent token", principalOperator: "an operator token"}
	return "this call needs " + names[need] + ", not " + names[got]
}

var errNoToken = connect.NewError(connect.CodeUnauthenticated, errors.New(`missing token: send "Authorization: Bearer <token>"`))

// identify finds out what kind of token the header carries. need tells which
// kind to try first, so the common case costs one check.
func (s *Server) identify(ctx context.Context, header string, need principalKind) (principal, error) {
	scheme, tok, ok := strings.Cut(header, " ")
	ok = ok && strings.EqualFold(scheme, "Bearer")
	tok = strings.TrimSpace(tok)
	if !ok || tok == "" {
		return principal{}, errNoToken
	}
	if len(tok) > 512 {
		return principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("token is not valid"))
	}
	if cred, ok := parseAgentToken(tok); ok {
		now := time.Now()
		if s.agents.ok(cred, now) {
			return principal{kind: principalAgent, cred: cred, by: "agent:" + cred.AgentID}, nil
		}
		if err := s.store.AuthenticateAgent(ctx, cred); err != nil {
			if store.KindOf(err) == store.KindUnauthenticated {
				return principal{}, s.agentRefused(cred.AgentID, err)
			}
			return principal{}, s.storeError(ctx, err)
		}
		s.agents.put(cred, now)
		return principal{kind: principalAgent, cred: cred, by: "agent:" + cred.AgentID}, nil
	}
	h := HashSecret(tok)
	if s.operators.match(h) {
		return principal{kind: principalOperator, by: "operator:" + fingerprint(h)}, nil
	}
	if s.enrollers.match(h) {
		return principal{kind: principalEnroll, by: "enrollment:" + fingerprint(h), scope: "flag:" + hex.EncodeToString(h)}, nil
	}
	if use, ok := parseStoredEnrollToken(tok); ok {
		if err := s.store.CheckEnrollmentToken(ctx, use.ID, use.SecretHash); err != nil {
			if store.KindOf(err) == store.KindUnauthenticated {
				return principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New(err.Error()))
			}
			return principal{}, s.storeError(ctx, err)
		}
		return principal{kind: principalEnroll, enroll: &use, by: "enrollment token " + use.ID, scope: "stored:" + use.ID}, nil
	}
	return principal{}, connect.NewError(connect.CodeUnauthenticated, errors.New("token is not valid"))
}
