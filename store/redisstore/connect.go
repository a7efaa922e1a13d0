package redisstore

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// How a URL names each kind of Redis (rueidis.ParseURL reads them):
//
//	redis://[user:password@]host:port/db                       one node
//	rediss://…                                                 the same over TLS
//	redis://host:port/0?addr=host2:port2&addr=…                a cluster, by any of its nodes
//	redis://[user:password@]s1:port/db?addr=s2:port&master_set=NAME
//	                                                           through Sentinel: the
//	                                                           sentinels' addresses, the
//	                                                           master's user and password
//
// With Sentinel, the TLS settings apply to the sentinels as to the data nodes,
// and the store follows the sentinels' +switch-master events (and asks them
// again every 5 s, in case an event was missed).

// sentinelRefresh is how often a Sentinel client re-reads the topology on top
// of the sentinels' events.
const sentinelRefresh = 5 * time.Second

// clientOption builds rueidis' options from a URL and Options, and what the
// store keeps to explain failures.
func clientOption(rawURL string, opts Options) (rueidis.ClientOption, conn, error) {
	copt, err := rueidis.ParseURL(rawURL)
	if err != nil {
		msg := urlError(rawURL, err)
		return copt, conn{}, &store.Error{Kind: store.KindInvalid, Msg: msg,
			Err: &causeError{cause: CauseURL, err: errors.New(msg), text: msg}}
	}
	if opts.TLS != nil {
		t := opts.TLS.Clone()
		if t.ServerName == "" && len(copt.InitAddress) > 0 {
			t.ServerName, _, _ = net.SplitHostPort(copt.InitAddress[0])
		}
		if t.MinVersion == 0 {
			t.MinVersion = tls.VersionTLS12
		}
		copt.TLSConfig = t
	}
	if opts.Username != "" {
		copt.Username = opts.Username
	}
	if opts.Password != "" {
		copt.Password = opts.Password
	}
	if copt.Sentinel.MasterSet != "" {
		copt.Sentinel.TLSConfig = copt.TLSConfig
		copt.Sentinel.Dialer = copt.Dialer
		copt.Sentinel.Username = opts.SentinelUsername
		copt.Sentinel.Password = opts.SentinelPassword
		copt.Sentinel.TopologyRefreshInterval = sentinelRefresh
	}
	copt.DisableCache = true
	// CLIENT SETINFO would be one more command the ACL user needs (Redis 7.2+).
	copt.ClientSetInfo = rueidis.DisableClientSetInfo
	if copt.ConnWriteTimeout == 0 {
		copt.ConnWriteTimeout = 5 * time.Second
	}
	if opts.ClientOption != nil {
		opts.ClientOption(&copt)
	}
	return copt, conn{
		user:     copt.Username,
		tls:      copt.TLSConfig != nil,
		sentinel: copt.Sentinel.MasterSet,
		db:       copt.SelectDB,
		nodes:    len(copt.InitAddress),
		secrets:  []string{copt.Password, copt.Sentinel.Password},
	}, nil
}

// urlError describes why a URL does not parse without quoting any of it but
// its redacted form: a URL that does not parse may not split where its author
// meant it to (an unencoded / or @ in a password moves the host), and the
// parsers' messages quote the piece they stumbled on, which may be a password's.
func urlError(rawURL string, err error) string {
	var problem string
	var uerr *url.Error
	if errors.As(err, &uerr) {
		problem = quoted.ReplaceAllString(uerr.Err.Error(), "(…)")
	} else {
		problem = strings.TrimPrefix(err.Error(), "redis: ")
		if i := strings.Index(problem, ": "); i >= 0 {
			problem = problem[:i]
		}
	}
	msg := "redis url " + RedactURL(rawURL) + " does not parse: " + problem
	if strings.Contains(rawURL, "@") {
		msg += " (percent-encode @ : / ? # in the user name and password)"
	}
	return msg
}

var quoted = regexp.MustCompile(`"[^"]*"`)

// RedactURL returns a Redis URL fit for a log line: its password, if it has
// one, replaced by xxxxx. A URL that does not parse cleanly keeps only its
// scheme and what follows its last @, since where the password ends cannot be
// told.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err == nil && strings.Count(rawURL, "@") <= 1 && (u.User == nil) == !strings.Contains(rawURL, "@") {
		return u.Redacted()
	}
	at := strings.LastIndex(rawURL, "@")
	if at < 0 {
		return "(a url that does not parse)"
	}
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok || strings.ContainsAny(scheme, "@/") {
		scheme = "redis"
	}
	return scheme + "://xxxxx@" + rawURL[at+1:]
}

// wrap turns a Redis or connection error into a store error whose message names
// the cause (see Cause); only its Kind reaches API callers.
func (c conn) wrap(ctx context.Context, err error, opening bool) error {
	if err == nil {
		return nil
	}
	var se *store.Error
	if errors.As(err, &se) {
		return err
	}
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return &store.Error{Kind: store.KindUnavailable, Msg: "request cancelled",
			Err: &causeError{cause: CauseCancelled, err: err, text: c.redact(err.Error())}}
	}
	cause, msg := c.diagnose(err, opening)
	return &store.Error{Kind: kindOf(cause), Msg: c.redact(msg), Err: &causeError{cause: cause, err: err, text: c.redact(err.Error())}}
}
