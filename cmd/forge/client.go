package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
	"github.com/orange-forge/forge/store"
)

// clientFlags are the flags every operator command takes. Where to connect and
// with what read FORGE_* variables; --json and --raw choose what is printed and
// read none.
type clientFlags struct {
	server *string
	token  *string
	ca     *string
	giveUp *time.Duration
	json   *bool
	raw    *bool
}

func (f *flags) client() clientFlags { return f.clientGivingUp(time.Minute) }

// listClient is client for the listing commands (agents, jobs, job, tasks):
// one look at the fleet is not worth a minute of retries, so they give up
// after 10 s by default.
func (f *flags) listClient() clientFlags { return f.clientGivingUp(10 * time.Second) }

func (f *flags) clientGivingUp(giveUp time.Duration) clientFlags {
	return clientFlags{
		server: f.String("server", "http://127.0.0.1:8080", "server URL; several, comma-separated, to fail over between"),
		token:  f.String("admin-token", "", "operator token (required)"),
		ca:     f.String("ca", "", "PEM file of the CA that signed the server's certificate (replaces the system roots)"),
		giveUp: f.Duration("give-up-after", giveUp, "how long to keep retrying a server that cannot be reached before giving up; the first failure is reported at once (0: never give up)"),
		json:   f.FlagSet.Bool("json", false, "print JSON: text as text when it is UTF-8 (base64 in a field named …Base64 otherwise), numbers as numbers"),
		raw:    f.FlagSet.Bool("raw", false, "print text from agents as it is: control, bidi and zero-width characters are escaped otherwise"),
	}
}

// printer returns what prints text that came from agents or the API: escaped
// (see package termsafe) unless --raw.
func (c clientFlags) printer() termsafe.Printer { return termsafe.Printer{Raw: *c.raw} }

// newClient returns a control client of the servers the flags name. Each
// retry of a call that cannot reach a server is told through say, at once and
// then at most every 5 s, so a command never seems to hang.
func (m *Main) newClient(cmd string, c clientFlags, say func(string)) (*client.Client, error) {
	if *c.token == "" {
		return nil, errors.New("--admin-token (or FORGE_ADMIN_TOKEN) is required")
	}
	if say == nil {
		say = func(s string) { fmt.Fprintf(m.Stderr, "forge %s: %s\n", cmd, s) }
	}
	giveUp := *c.giveUp
	if giveUp <= 0 {
		giveUp = -1
	}
	r := &retryNotes{say: say, giveUp: *c.giveUp}
	opts := []client.Option{client.WithGiveUpAfter(giveUp), client.OnRetry(r.retry),
		client.WithCallTimeout(15 * time.Second)}
	if *c.ca != "" {
		pem, err := os.ReadFile(*c.ca)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca %s: no PEM certificate in it", *c.ca)
		}
		opts = append(opts, client.WithTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	cl, err := client.New(*c.server, *c.token, opts...)
	if err != nil {
		return nil, fmt.Errorf("--server: %s", strings.TrimPrefix(err.Error(), "client: "))
	}
	return cl, nil
}

// retryNotes turns the client's retries into notes for the operator: the first
// at once, then one every 5 s while calls keep failing.
type retryNotes struct {
	say    func(string)
	giveUp time.Duration

	mu   sync.Mutex
	last time.Time
}

func (r *retryNotes) retry(x client.Retry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.last) < 5*time.Second {
		return
	}
	r.last = time.Now()
	bound := "until it answers"
	if r.giveUp > 0 {
		bound = "giving up after " + r.giveUp.String()
	}
	what := "cannot reach " + x.Server
	switch connect.CodeOf(x.Err) {
	case connect.CodeUnavailable:
	case connect.CodeDeadlineExceeded:
		what = x.Server + " did not answer in time"
	default: // a connection cut mid-call
		what = "lost the connection to " + x.Server
	}
	next := ""
	if x.Next != x.Server {
		next = "; trying " + x.Next
	}
	since := ""
	if x.Failing >= time.Second {
		since = " for " + x.Failing.Round(time.Second).String()
	}
	r.say(fmt.Sprintf("%s (%s)%s%s; retrying, %s", what, termsafe.Line(errText(x.Err)), since, next, bound))
}

// errText is an error's message without connect's code prefix when the code
// says nothing more than the message.
func errText(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// aboutID is err, a call's refusal about id, with id in front, unless the
// server's message names id already (as store's not-found messages do: task
// "t…" not found), so that no message names an id twice.
func aboutID(id string, err error) error {
	if strings.Contains(err.Error(), id) {
		return err
	}
	return fmt.Errorf("%s: %w", termsafe.Line(id), err)
}

// stateName is a task state as the CLI prints it: SUCCEEDED, TIMED_OUT …
func stateName(s forgev1.TaskState) string { return strings.TrimPrefix(s.String(), "TASK_STATE_") }

// stateNames lists the states a --state flag takes.
const stateNames = "pending, running, succeeded, failed, canceled, timed_out, expired, lost"

// parseState reads a --state value: a state's name in any case, with or
// without its TASK_STATE_ prefix.
func parseState(s string) (forgev1.TaskState, error) {
	u := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), "-", "_"))
	if v, ok := forgev1.TaskState_value["TASK_STATE_"+strings.TrimPrefix(u, "TASK_STATE_")]; ok && v != 0 {
		return forgev1.TaskState(v), nil
	}
	return 0, fmt.Errorf("--state %q: want one of %s", s, stateNames)
}

func statusName(s forgev1.AgentStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "AGENT_STATUS_"))
}

// timeText is a time as the CLI prints it: local, to the millisecond.
func timeText(t interface{ AsTime() time.Time }) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format("2006-01-02 15:04:05.000")
}

func ago(t interface{ AsTime() time.Time }) string {
	if t == nil {
		return "-"
	}
	return time.Since(t.AsTime()).Round(time.Second).String() + " ago"
}

// exitText is a task's exit code where it has one: a task that succeeded, or
// one that reported a non-zero code; "-" for tasks that never reported one
// (pending, running, expired, canceled before they ran …).
func exitText(t *forgev1.TaskInfo) string {
	if t.State == forgev1.TaskState_TASK_STATE_SUCCEEDED || t.ExitCode != 0 {
		return fmt.Sprint(t.ExitCode)
	}
	return "-"
}

// execArgv is an exec task's command, or nil for other tasks.
func execArgv(t *forgev1.TaskInfo) []string {
	if t.Type != "exec" {
		return nil
	}
	var c client.Command
	if json.Unmarshal(t.Payload, &c) != nil || len(c.Argv) == 0 {
		return nil
	}
	return c.Argv
}

// commandText is what a task runs, as one line: an exec task's command as a
// shell would read it, another type's name and payload (when it is short text).
func commandText(p termsafe.Printer, t *forgev1.TaskInfo) string {
	if argv := execArgv(t); argv != nil {
		words := make([]string, len(argv))
		for i, a := range argv {
			words[i] = shellQuote(a)
		}
		return p.Line(strings.Join(words, " "))
	}
	s := p.Line(t.Type)
	switch {
	case len(t.Payload) == 0:
	case utf8.Valid(t.Payload) && len(t.Payload) <= 200:
		s += " " + p.Line(string(t.Payload))
	default:
		s += fmt.Sprintf(" (%d bytes)", len(t.Payload))
	}
	return s
}

// shellQuote quotes a word for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./:=@%+,-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// cut shortens s to n characters for a table cell.
func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func labelsText(p termsafe.Printer, l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return p.Line(strings.Join(parts, ","))
}

// isAgentID tells whether s is shaped like an agent id rather than a name.
func isAgentID(s string) bool { return len(s) == store.AgentIDLen && store.ValidID(s, 'a') }

// findAgents returns the agents an --agent value names: one agent by id, or
// every agent whose name matches a name or glob (web-1, web-*). None is an
// error that says so.
func findAgents(ctx context.Context, c *client.Client, pattern string) ([]*forgev1.AgentInfo, error) {
	if isAgentID(pattern) {
		res, err := c.Control().GetAgent(ctx, connect.NewRequest(&forgev1.GetAgentRequest{AgentId: pattern}))
		if connect.CodeOf(err) == connect.CodeNotFound {
			return nil, fmt.Errorf("--agent %s: no such agent", pattern)
		}
		if err != nil {
			return nil, err
		}
		return []*forgev1.AgentInfo{res.Msg.Agent}, nil
	}
	list, err := c.Agents(ctx, &forgev1.ListAgentsRequest{Name: pattern})
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("--agent %s: no agent has a name that matches (forge agents lists them)", termsafe.Line(pattern))
	}
	return list, nil
}
