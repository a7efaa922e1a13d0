// Package client is forge's Go control client: what an operator's tool, a
// deploy pipeline or a web application calls to send work to a fleet of forge
// agents and get the results.
//
// Connect with the server's base URL (or several, separated by commas, to fail
// over between replicas) and an operator token:
//
//	c, err := client.New("https://forge.example.com", os.Getenv("FORGE_ADMIN_TOKEN"))
//
// # Running work
//
// Run sends a job to its target and waits for every agent's result:
//
//	res, err := c.Run(ctx, client.Exec(client.Selector("env=prod"), "uptime"))
//	for _, t := range res.Tasks {
//		fmt.Println(t.AgentId, t.State, string(t.Output))
//	}
//
// A target is one agent by id or name, agents by a glob over names
// (client.Agent("web-*")), by labels (client.Selector("env=prod,role in
// (web,api)")) or every online agent (client.All()). Exec builds a job for the
// agents' built-in exec task type (the command must be allowed on the agent with
// --allow-exec); NewDispatch builds one of any type a Go agent handles. Both
// return the API's own forgev1.DispatchRequest, so every knob of a job
// (timeout, delivery TTL, max_concurrency, max_failures …) is a field to set.
//
// Dispatch and Wait are Run's two halves, for a caller that wants the job id at
// once (to print it, to store it, to wait for it elsewhere or never): Dispatch
// returns as soon as the job exists, Wait waits for it by id and can report its
// counts as they change (OnProgress). Follow streams a task's output while it
// runs. CancelJob and CancelTask stop work; Agents lists the fleet. Control
// gives every other call of the API (ListJobs, GetTask, RevokeAgent, enrollment
// tokens …) with the same retries and failover.
//
// # Output
//
// Follow writes a task's stdout and stderr to writers of the caller's as the
// agent sends them; the server keeps them, so a Follow started late, or moved
// to another server mid-way, misses and repeats nothing. FollowJob follows
// every task of a job at once, and Lines puts several tasks' lines on one
// writer, whole, each after its agent's name.
//
// # In a command line tool
//
// What `forge run` does, in calls of this package: Dispatch, and print the
// job id; FollowJob with Lines, for the output as it is printed; Wait with
// OnProgress in another goroutine, for a live count and the results; on
// Ctrl-C, CancelJob with a context of its own; OnRetry to say at once that
// the server cannot be reached, and WithGiveUpAfter to stop after a bound.
//
// # Failures
//
// Errors carry the server's Connect code: connect.CodeOf(err) is
// connect.CodeNotFound for an unknown job, connect.CodeInvalidArgument for a
// bad selector, and so on, and the message says what was wrong. Transient
// errors — a server that cannot be reached, a replica going away, a store that
// is failing over (see Transient) — are retried with backoff, moving to the
// next server when there are several, until the call succeeds, the context
// ends, or it has failed for the time WithGiveUpAfter sets (a minute by
// default); OnRetry tells the caller as it happens. Every retry is safe:
// Dispatch sends an idempotency key (one of its own when the request has
// none), so a Dispatch whose answer was lost makes one job, not two.
//
// Held calls (waits and output reads) ask the server to hold at most
// DefaultHold (under the idle timeouts of common load balancers) and are made
// again until their condition holds, so a Wait may last hours. Each try has a
// deadline of its own; the Client never relies on an http.Client Timeout.
package client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
)

// A Client calls forge's ControlService with an operator token. It is safe for
// concurrent use; make one and share it.
type Client struct {
	opts    options
	log     *slog.Logger
	servers []serverConn

	mu  sync.Mutex
	cur int // index of the server calls go to
}

type serverConn struct {
	url string
	ctl forgev1connect.ControlServiceClient
}

// New returns a Client of the forge server at url, its base URL (such as
// http://127.0.0.1:8080, or https://app.example.com/forge when forge is
// mounted under a path), or of several replicas given as URLs separated by
// commas: calls go to the first until it fails, then to the next. token is an
// operator token. New makes no call.
func New(urls, token string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if token == "" {
		return nil, errors.New("client: an operator token is required")
	}
	var list []string
	for _, s := range strings.Split(urls, ",") {
		s = strings.TrimRight(strings.TrimSpace(s), "/")
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("client: server %q is not an http(s) base URL", s)
		}
		list = append(list, s)
	}
	if len(list) == 0 {
		return nil, errors.New("client: no server URL given")
	}
	hc := o.httpClient
	if hc == nil {
		hc = &http.Client{Transport: newTransport(o.tlsConfig)}
	} else if hc.Timeout != 0 {
		return nil, errors.New("client: the HTTPClient must have no Timeout (calls are held; the client puts a deadline on each)")
	}
	hc = withCappedAnswers(hc, o.maxAnswer)
	log := o.logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: o, log: log}
	auth := connect.WithInterceptors(bearer.Interceptor(token))
	limit := connect.WithReadMaxBytes(o.maxAnswer)
	for _, s := range list {
		c.servers = append(c.servers, serverConn{url: s, ctl: forgev1connect.NewControlServiceClient(hc, s, auth, limit)})
	}
	return c, nil
}

// newTransport returns the Client's own transport: many held calls may be in
// flight at once (Follow reads each task's output with one), each on its own
// HTTP/1.1 connection or multiplexed over HTTP/2 where the server offers it
// (TLS), and idle connections are kept for the next round.
func newTransport(tc *tls.Config) *http.Transport {
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          128,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	if tc != nil {
		t.TLSClientConfig = tc.Clone()
	}
	return t
}

// Servers returns the servers' base URLs, in the order they are tried.
func (c *Client) Servers() []string {
	out := make([]string, len(c.servers))
	for i, s := range c.servers {
		out[i] = s.url
	}
	return out
}

// current returns the server calls go to now and its index.
func (c *Client) current() (int, forgev1connect.ControlServiceClient) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.servers[c.cur].ctl
}

// failover moves to the next server after a transient failure on server idx,
// unless another call moved already, and returns the server now in use.
func (c *Client) failover(idx int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.servers) > 1 && c.cur == idx {
		c.cur = (idx + 1) % len(c.servers)
		c.log.Info("forge: switching server", "from", c.servers[idx].url, "to", c.servers[c.cur].url)
	}
	return c.cur
}

// Control returns a client of every ControlService call, with the Client's
// token, retries and failover: for the calls this package has no helper for
// (ListJobs, GetTask, ListTasks, RevokeAgent, enrollment tokens …). Each call
// is retried as the Client's own are; a Dispatch without an idempotency key
// is sent with one of its own (the caller's request is not changed). A
// CreateEnrollmentToken whose answer was lost and that was retried may have
// made a token nobody saw, which works until it expires or is revoked.
func (c *Client) Control() forgev1connect.ControlServiceClient {
	return control{ControlServiceClient: c.servers[0].ctl, c: c}
}
