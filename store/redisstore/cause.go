package redisstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// A Cause says why Redis could not be used, in a word an operator can act on.
// Errors of Open, Ping and every call carry one (CauseOf reads it) and a
// message that names it with what Redis or the network said; neither ever holds
// a password. Only the Kind and a generic text reach API callers.
type Cause string

// Causes.
const (
	CauseNone        Cause = ""
	CauseURL         Cause = "url"         // the URL does not parse
	CauseUnreachable Cause = "unreachable" // no connection: refused, timed out, reset, no such host
	CauseTLS         Cause = "tls"         // handshake or certificate verification failed, either side
	CauseAuth        Cause = "auth"        // wrong user or password, or none given where one is needed
	CausePermission  Cause = "permission"  // the ACL user may not run a command or touch a key (NOPERM)
	CauseDatabase    Cause = "database"    // the URL's database does not exist there
	CauseTopology    Cause = "topology"    // cluster, single node and Sentinel mixed up
	CauseFailover    Cause = "failover"    // Redis is loading, failing over, or a replica
	CauseFull        Cause = "full"        // Redis is out of memory (OOM)
	CauseCancelled   Cause = "cancelled"   // the caller's context ended
	CauseOther       Cause = "other"       // a Redis reply forge did not expect: a bug
)

// causeError is what a store.Error carries as Err: the raw cause, for logs and
// errors.As, and its class.
type causeError struct {
	cause Cause
	err   error
	text  string // err's text with any password of the connection cut out
}

func (e *causeError) Error() string { return e.text }
func (e *causeError) Unwrap() error { return e.err }

// CauseOf returns the Cause of an error from this package, or CauseNone.
func CauseOf(err error) Cause {
	var ce *causeError
	if errors.As(err, &ce) {
		return ce.cause
	}
	return CauseNone
}

// conn is what the store knows of how it connects, to explain failures.
type conn struct {
	user     string // ACL user; "" is "default"
	ready    bool   // a client the embedder made (OpenClient): the rest is unknown
	tls      bool
	sentinel string // master set name, if through Sentinel
	db       int
	nodes    int // addresses in the URL
	// secrets are the passwords in use, cut out of every message: some Redis
	// replies echo a command's arguments (an old server's "unknown command
	// 'HELLO', with args beginning with: …" would show AUTH's).
	secrets []string
}

// redact replaces each secret in text with xxxxx.
func (c conn) redact(text string) string {
	for _, s := range c.secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, "xxxxx")
		}
	}
	return text
}

// diagnose classifies err and writes the message a store.Error carries for it:
// what went wrong, then what Redis or the network said, then (where one
// helps) what to check. The message holds no address (the raw error, kept in
// Err, has them for the log): the text may be shown by /readyz.
//
// While opening, a TLS connection that Redis drops at once is taken for a
// refused client certificate (with TLS 1.3 the client hears of it only at its
// first write); later, it is more likely a restart.
func (c conn) diagnose(err error, opening bool) (Cause, string) {
	var nrerr *notReplicatedError
	if errors.As(err, &nrerr) {
		return CauseFailover, "redis is unavailable: " + nrerr.Error()
	}
	var rerr *rueidis.RedisError
	if errors.As(err, &rerr) && !rerr.IsNil() {
		return c.redisReply(strings.TrimSpace(rerr.Error()))
	}
	var (
		verr  *tls.CertificateVerificationError
		herr  x509.HostnameError
		uerr  x509.UnknownAuthorityError
		ierr  x509.CertificateInvalidError
		rherr tls.RecordHeaderError
		oerr  *net.OpError
	)
	switch {
	case errors.As(err, &herr):
		return CauseTLS, "redis TLS verification failed: " + herr.Error() + " (set the server name to verify to a name the certificate carries)"
	case errors.As(err, &uerr):
		return CauseTLS, "redis TLS verification failed: " + uerr.Error() + " (trust the CA that signed Redis' certificate)"
	case errors.As(err, &ierr):
		return CauseTLS, "redis TLS verification failed: " + ierr.Error()
	case errors.As(err, &verr):
		return CauseTLS, "redis TLS verification failed: " + verr.Err.Error()
	case errors.As(err, &rherr):
		return CauseTLS, "redis TLS handshake failed: the port does not speak TLS (use redis:// for a plain port)"
	case errors.As(err, &oerr) && oerr.Op == "remote error": // a TLS alert from Redis
		return CauseTLS, "redis refused the TLS handshake: " + oerr.Err.Error() + " (Redis may require a client certificate signed by a CA it trusts)"
	}
	problem := netProblem(err)
	msg := "redis is unavailable"
	if problem != "" {
		msg += ": " + problem
	}
	var nerr net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		if !c.tls {
			return CauseUnreachable, msg + " (if the port serves TLS, use rediss://)"
		}
		if opening {
			return CauseTLS, "redis closed the TLS connection: " + problem + " (Redis does this when it requires a client certificate and got none it trusts)"
		}
	case c.tls && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout()):
		var oerr *net.OpError
		if errors.As(err, &oerr) && oerr.Op == "dial" {
			break // no TCP connection at all
		}
		msg = "redis TLS handshake got no answer: " + problem + " (a port that does not speak TLS leaves it waiting: use redis:// for a plain port)"
		if opening {
			return CauseTLS, msg
		}
	}
	return CauseUnreachable, msg
}

// netProblem says what a connection error is without the addresses it names,
// or "" when it cannot tell.
func netProblem(err error) string {
	var (
		dns   *net.DNSError
		nerr  net.Error
		errno syscall.Errno
	)
	switch {
	case errors.As(err, &dns):
		return "cannot resolve the host: " + dns.Err
	case errors.Is(err, errSubscribeTimeout):
		return errSubscribeTimeout.Error()
	case errors.Is(err, rueidis.ErrClosing):
		return "the connection is closed"
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &nerr) && nerr.Timeout():
		return "timed out"
	case errors.As(err, &errno):
		return errno.Error()
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection was closed"
	}
	return ""
}

// redisReply classifies an error reply.
func (c conn) redisReply(reply string) (Cause, string) {
	user := quote(c.user)
	switch {
	case c.ready:
		user = "of the client"
	case c.user == "":
		user = quote("default")
	}
	has := func(p string) bool { return strings.HasPrefix(reply, p) }
	switch {
	case has("WRONGPASS"):
		return CauseAuth, "redis authentication failed for user " + user + ": " + reply + c.sentinelAuth()
	case has("NOAUTH"):
		return CauseAuth, "redis requires authentication: " + reply + " (give a user and password)" + c.sentinelAuth()
	case has("NOPERM"):
		return CausePermission, "redis user " + user + " lacks a permission: " + reply + " (docs/operations.md lists the ACL forge needs)"
	case strings.Contains(reply, "DB index is out of range"):
		return CauseDatabase, "redis has no database " + strconv.Itoa(c.db) + ": " + reply
	case strings.Contains(reply, "SELECT is not allowed in cluster mode"):
		return CauseDatabase, "redis is a cluster, which has only database 0: " + reply + " (use /0)"
	case strings.Contains(reply, "cluster support disabled"):
		return CauseTopology, "the URL names " + strconv.Itoa(c.nodes) + " nodes, as for a cluster, but Redis is not a cluster: " + reply + " (name one node)"
	case has("MOVED") || has("ASK") || has("CROSSSLOT"):
		return CauseTopology, "redis is a cluster but was addressed as a single node: " + strings.Fields(reply)[0] + " (may the user run CLUSTER SLOTS?)"
	case strings.Contains(reply, "unknown command 'SENTINEL'") || strings.Contains(reply, "unknown command 'sentinel'"):
		return CauseTopology, "the URL names master set " + quote(c.sentinel) + " but the node is not a Sentinel: " + reply + " (name the sentinels, or drop master_set)"
	case strings.Contains(reply, "No such master with that name"):
		return CauseTopology, "the sentinels know no master named " + quote(c.sentinel) + ": " + reply
	case strings.Contains(reply, "unknown command"):
		return CauseTopology, "redis does not know a command forge needs: " + reply + " (a Sentinel takes no data commands: name it with ?master_set=NAME)"
	case has("LOADING") || has("MASTERDOWN") || has("CLUSTERDOWN") || has("TRYAGAIN") || has("BUSY") || has("NOREPLICAS"):
		return CauseFailover, "redis is unavailable: " + reply
	case has("READONLY"):
		return CauseFailover, "redis is unavailable: " + reply + " (a failover in progress, or the URL names a replica)"
	case has("OOM"):
		return CauseFull, store.MsgStoreFull
	}
	return CauseOther, "internal store error"
}

// sentinelAuth says, through Sentinel, that the refusal may be the sentinels'.
func (c conn) sentinelAuth() string {
	if c.sentinel == "" {
		return ""
	}
	return " (through Sentinel: the master's credentials, or the sentinels' own)"
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }

// kindOf is the store.Kind of a Cause: a reply forge did not expect is a bug;
// a full Redis is KindExhausted, which a retry cannot help until memory is
// freed (see full.go); everything else is Redis being unusable for now, which
// an operator (or a failover) fixes and a retry then gets through.
func kindOf(c Cause) store.Kind {
	switch c {
	case CauseOther:
		return store.KindInternal
	case CauseFull:
		return store.KindExhausted
	}
	return store.KindUnavailable
}

// refusals remembers the last error that says forge is set up wrong (a missing
// permission, wrong credentials) seen on any call, so Ping — and /readyz with
// it — reports a fault that plain PING cannot see: a user who may PING but not
// run forge's scripts is not ready.
type refusals struct {
	mu   sync.Mutex
	err  error
	at   time.Time
	keep time.Duration
}

func (r *refusals) note(err error, cause Cause) {
	if cause != CausePermission && cause != CauseAuth {
		return
	}
	r.mu.Lock()
	r.err, r.at = err, time.Now()
	r.mu.Unlock()
}

// recent returns the last refusal if it happened within keep.
func (r *refusals) recent() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil || time.Since(r.at) > r.keep {
		return nil
	}
	return r.err
}
