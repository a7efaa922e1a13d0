package main_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// Tests of Redis as operators run it: TLS with a private CA and client
// certificates, ACL users, Sentinel, and start-up and readiness errors that
// name their cause. docs/operations.md's examples are run as written.

const aclPassword = "acl-Passw0rd-for-tests"

// operationsDoc returns docs/operations.md.
func operationsDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docsACL returns the ACL SETUSER line of docs/operations.md as arguments, with
// its password placeholder replaced.
func docsACL(t *testing.T) []string {
	t.Helper()
	var line string
	for _, l := range strings.Split(operationsDoc(t), "\n") {
		if strings.HasPrefix(l, "ACL SETUSER forge ") {
			if line != "" {
				t.Fatal("docs/operations.md has two ACL SETUSER forge lines")
			}
			line = l
		}
	}
	args := strings.Fields(line)
	for i, a := range args {
		if a == ">CHANGE-ME" {
			args[i] = ">" + aclPassword
			return args
		}
	}
	t.Fatalf("docs/operations.md has no ACL SETUSER forge line with >CHANGE-ME: %q", line)
	return nil
}

// setACLUser creates the documented forge user on each node.
func setACLUser(t *testing.T, nodes ...*redistest.Server) {
	t.Helper()
	for _, n := range nodes {
		n.MustDo(docsACL(t)...)
	}
}

// docsRedisCommands returns the `forge server` command lines of the Redis
// section of docs/operations.md, continuation lines joined, split into
// arguments (single quotes respected), without "forge server".
func docsRedisCommands(t *testing.T) [][]string {
	t.Helper()
	doc := operationsDoc(t)
	_, sec, ok := strings.Cut(doc, "\n## Redis\n")
	if !ok {
		t.Fatal("docs/operations.md has no Redis section")
	}
	_, block, ok := strings.Cut(sec, "```sh\n")
	if !ok {
		t.Fatal("the Redis section has no sh block")
	}
	block, _, _ = strings.Cut(block, "```")
	block = strings.ReplaceAll(block, "\\\n", " ")
	var cmds [][]string
	for _, l := range strings.Split(block, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "forge server ") {
			continue
		}
		var args []string
		for _, m := range regexp.MustCompile(`'[^']*'|\S+`).FindAllString(l, -1) {
			args = append(args, strings.Trim(m, "'"))
		}
		cmds = append(cmds, args[2:]) // without "forge server"
	}
	return cmds
}

// substitute replaces, in every argument, each key of with by its value.
func substitute(args []string, with map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		for k, v := range with {
			a = strings.ReplaceAll(a, k, v)
		}
		out[i] = a
	}
	return out
}

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// readyz returns /readyz's status and body.
func readyz(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestRedisDocsExamples runs the TLS, ACL and Sentinel commands of
// docs/operations.md as written — only the hosts, ports and files are the
// test's — each with an agent taking tasks through it.
func TestRedisDocsExamples(t *testing.T) {
	t.Parallel()
	cmds := docsRedisCommands(t)
	if len(cmds) != 3 {
		t.Fatalf("the Redis section shows %d forge server commands, want 3 (TLS, ACL, Sentinel): %q", len(cmds), cmds)
	}
	password := writeFile(t, "redis-password", aclPassword+"\n")
	run := func(t *testing.T, args []string, label string) {
		t.Helper()
		for _, a := range args {
			if strings.Contains(a, "/etc/forge") || strings.Contains(a, "redis.internal") || strings.Contains(a, "sentinel-") {
				t.Fatalf("argument %q was not replaced: the example changed; update the test", a)
			}
		}
		url := startServer(t, args...)
		startAgent(t, url, "--label", "docs="+label)
		ctl := control(url)
		ag := waitAgents(t, ctl, "docs="+label, 1)[0]
		echoRoundTrips(t, ctl, ag.Id, 5)
		if code, body := readyz(t, url); code != http.StatusOK {
			t.Fatalf("/readyz = %d %s", code, body)
		}
	}
	t.Run("tls", func(t *testing.T) {
		t.Parallel()
		c := redistest.NewCerts(t)
		rd := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertRequired))
		run(t, substitute(cmds[0], map[string]string{
			"redis.internal:6380":             rd.TLSAddr(),
			"/etc/forge/redis-ca.pem":         c.CA,
			"/etc/forge/redis-client.pem":     c.ClientCert,
			"/etc/forge/redis-client-key.pem": c.ClientKey,
		}), "tls")
	})
	t.Run("acl", func(t *testing.T) {
		t.Parallel()
		rd := redistest.Start(t)
		setACLUser(t, rd)
		run(t, substitute(cmds[1], map[string]string{
			"redis.internal:6379":       rd.Addr(),
			"/etc/forge/redis-password": password,
		}), "acl")
		if log := rd.MustDo("ACL", "LOG"); log != "" {
			t.Fatalf("Redis refused commands of the documented user:\n%s", log)
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		t.Parallel()
		set := redistest.StartSentinel(t)
		setACLUser(t, set.Master, set.Replica)
		s := set.SentinelAddrs()
		run(t, substitute(cmds[2], map[string]string{
			"sentinel-1:26379":          s[0],
			"sentinel-2:26379":          s[1],
			"sentinel-3:26379":          s[2],
			"master_set=forge":          "master_set=" + redistest.SentinelMasterName,
			"/etc/forge/redis-password": password,
		}), "sentinel")
	})
}

// TestRedisFlagsRefused: --redis-* flags that cannot work end `forge server`
// before it connects or listens, saying why — and never print a password.
func TestRedisFlagsRefused(t *testing.T) {
	t.Parallel()
	c := redistest.NewCerts(t)
	missing := filepath.Join(t.TempDir(), "missing")
	notPEM := writeFile(t, "not.pem", "not a certificate\n")
	empty := writeFile(t, "empty", "\n")
	pw := writeFile(t, "pw", aclPassword+"\n")
	const plain, tlsURL = "redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis-ca", c.CA}, "the --redis-* flags need --redis"},
		{[]string{"--redis-password-file", pw}, "the --redis-* flags need --redis"},
		{[]string{"--redis", plain, "--redis-ca", c.CA}, "use a rediss:// URL"},
		{[]string{"--redis", plain, "--redis-server-name", "redis.example"}, "use a rediss:// URL"},
		{[]string{"--redis", tlsURL, "--redis-cert", c.ClientCert}, "--redis-cert and --redis-key go together"},
		{[]string{"--redis", tlsURL, "--redis-key", c.ClientKey}, "--redis-cert and --redis-key go together"},
		{[]string{"--redis", plain, "--redis-sentinel-password-file", pw}, "needs a Sentinel URL"},
		{[]string{"--redis-wait-replicas", "1"}, "the --redis-* flags need --redis"},
		{[]string{"--redis", plain, "--redis-wait-replicas", "-1"}, "--redis-wait-replicas must be 0 or more"},
		{[]string{"--redis", plain, "--redis-wait-replicas", "1", "--redis-wait-timeout", "0s"}, "--redis-wait-timeout positive"},
		{[]string{"--redis", tlsURL, "--redis-ca", missing}, "--redis-ca: open"},
		{[]string{"--redis", tlsURL, "--redis-ca", notPEM}, "no PEM certificate in it"},
		{[]string{"--redis", tlsURL, "--redis-cert", notPEM, "--redis-key", c.ClientKey}, "--redis-cert/--redis-key:"},
		{[]string{"--redis", plain, "--redis-password-file", missing}, "--redis-password-file: open"},
		{[]string{"--redis", plain, "--redis-password-file", empty}, "is empty"},
		{[]string{"--redis", "redis://forge:" + aclPassword + "@127.0.0.1:1/0", "--redis-password-file", pw}, "keep one"},
		{[]string{"--redis", "redis://forge:" + aclPassword + "/x@127.0.0.1:1/0"}, "does not parse"},
	} {
		args := append([]string{"server", "--listen", "127.0.0.1:0"}, tc.args...)
		out, code := runForge(t, tokensEnv, args...)
		if code != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("forge %s: exit %d, want 1 with %q; output:\n%s", strings.Join(args, " "), code, tc.want, out)
		}
		if strings.Contains(out, "listening on") || strings.Contains(out, "retrying") {
			t.Errorf("forge %s went on before refusing:\n%s", strings.Join(args, " "), out)
		}
		if strings.Contains(out, aclPassword) {
			t.Errorf("forge %s printed the password:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestRedisStartupCauses: a server whose Redis cannot be used keeps retrying
// and logs why — TLS verification, a missing client certificate, a wrong
// password, a missing permission, a wrong database, a cluster URL for a single
// node — with a hint naming the flag that fixes it, and never the password.
// When the cause is fixed (here: the ACL user gets its permissions) it starts
// by itself.
func TestRedisStartupCauses(t *testing.T) {
	t.Parallel()
	c := redistest.NewCerts(t)
	tlsRd := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertRequired))
	rd := redistest.Start(t)
	rd.MustDo("ACL", "SETUSER", "forge", "on", ">"+aclPassword, "~*", "&*", "-@all", "+ping", "+time")
	pw := writeFile(t, "pw", aclPassword+"\n")
	wrongPw := writeFile(t, "wrong", "not-"+aclPassword+"\n")
	type cause struct {
		name  string
		args  []string
		want  []string // in the log line
		ready string   // in /readyz's body
	}
	for _, tc := range []cause{
		{"tls unknown authority", []string{"--redis", tlsRd.TLSURL()},
			[]string{"cause=tls", "certificate signed by unknown authority", "hint=\"--redis-ca"},
			"redis TLS verification failed: x509: certificate signed by unknown authority"},
		{"tls no client certificate", []string{"--redis", tlsRd.TLSURL(), "--redis-ca", c.CA},
			[]string{"cause=tls", "client certificate", "--redis-cert"},
			"client certificate"},
		{"wrong password", []string{"--redis", "redis://forge@" + rd.Addr() + "/0", "--redis-password-file", wrongPw},
			[]string{"cause=auth", `redis authentication failed for user \"forge\": WRONGPASS`, "--redis-password-file"},
			`redis authentication failed for user "forge": WRONGPASS`},
		{"wrong database", []string{"--redis", "redis://" + rd.Addr() + "/99"},
			[]string{"cause=database", "redis has no database 99", "hint="},
			"redis has no database 99"},
		{"cluster URL, single node", []string{"--redis", rd.URL() + "?addr=" + rd.Addr()},
			[]string{"cause=topology", "not a cluster", "?addr="},
			"the URL names 2 nodes, as for a cluster, but Redis is not a cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startForge(t, tokensEnv, append([]string{"server", "--listen", "127.0.0.1:0"}, tc.args...)...)
			waitOutput(t, p, "redis not usable; retrying")
			line := logLine(p.output(), "redis not usable; retrying")
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("the log line lacks %q:\n%s", w, line)
				}
			}
			checkWaiting(t, p, tc.ready)
			if strings.Contains(p.output(), aclPassword) {
				t.Errorf("the password was printed:\n%s", p.output())
			}
		})
	}
	t.Run("missing permission, then granted", func(t *testing.T) {
		t.Parallel()
		p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0",
			"--redis", "redis://forge@"+rd.Addr()+"/0", "--redis-password-file", pw)
		waitOutput(t, p, "cause=permission")
		checkWaiting(t, p, `redis user "forge" lacks a permission: NOPERM`)
		line := logLine(p.output(), "cause=permission")
		for _, w := range []string{`redis user \"forge\" lacks a permission: NOPERM`, "script|load", "docs/operations.md"} {
			if !strings.Contains(line, w) {
				t.Errorf("the log line lacks %q:\n%s", w, line)
			}
		}
		setACLUser(t, rd)
		url := p.waitURL(t)
		if code, body := readyz(t, url); code != http.StatusOK {
			t.Fatalf("/readyz once permitted = %d %s", code, body)
		}
		if strings.Contains(p.output(), aclPassword) {
			t.Errorf("the password was printed:\n%s", p.output())
		}
	})
}

// checkWaiting checks a server waiting for its store: it listens (at the URL
// its log gives) and answers /healthz 200, /readyz 503 with want in the body,
// and API calls unavailable — and has not called Ready.
func checkWaiting(t *testing.T, p *inproc, want string) {
	t.Helper()
	waitOutput(t, p, "waiting for the store")
	m := regexp.MustCompile(`waiting for the store.* url=(\S+)`).FindStringSubmatch(p.output())
	if m == nil {
		t.Fatalf("no URL in the waiting line:\n%s", p.output())
	}
	url := m[1]
	if code, body := readyz(t, url); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "store unavailable: ") || !strings.Contains(body, want) {
		t.Errorf("/readyz while waiting = %d %q, want 503 with %q", code, body, want)
	}
	if res, err := http.Get(url + "/healthz"); err != nil || res.StatusCode != http.StatusOK {
		t.Errorf("/healthz while waiting = %v, %v", res, err)
	}
	_, err := control(url).ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("ListAgents while waiting = %v, want unavailable", err)
	}
	select {
	case u := <-p.url:
		t.Errorf("Ready was called (%s) before the store opened", u)
	default:
	}
}

// logLine returns the first line of out that contains s.
func logLine(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// TestRedisReadyzNamesTheCause: a running server's /readyz answers 503 with
// the cause in its body: a permission taken from its ACL user (after a call was
// refused), and Redis gone. Its log says the same, with the detail.
func TestRedisReadyzNamesTheCause(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t)
	setACLUser(t, rd)
	pw := writeFile(t, "pw", aclPassword+"\n")
	p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0",
		"--redis", "redis://forge@"+rd.Addr()+"/0", "--redis-password-file", pw)
	url := p.waitURL(t)
	if code, body := readyz(t, url); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	rd.MustDo("ACL", "SETUSER", "forge", "-fcall")
	startAgent(t, url, "--label", "readyz=1") // its Register is refused
	waitFor(t, "/readyz naming the refused command", func() bool {
		code, body := readyz(t, url)
		return code == http.StatusServiceUnavailable &&
			strings.Contains(body, `store unavailable: redis user "forge" lacks a permission: NOPERM`) && strings.Contains(body, "'fcall'")
	})
	waitOutput(t, p, "readyz: store unavailable")
	rd.Kill()
	waitFor(t, "/readyz saying Redis is unreachable", func() bool {
		code, body := readyz(t, url)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "store unavailable: redis is unavailable")
	})
	_, body := readyz(t, url)
	if strings.Contains(body, "127.0.0.1") || strings.Contains(p.output(), aclPassword) {
		t.Fatalf("/readyz shows an address (%q), or the password was printed:\n%s", body, p.output())
	}
}

// TestAttackRedisURLPassword gives `forge server` Redis URLs that do not parse,
// each broken by its password in another way, by flag and by variable (issue
// 13, finding 8): whether the server refuses the URL or keeps trying to reach
// what it parsed, no piece of the password appears in anything it prints.
func TestAttackRedisURLPassword(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, secret string }{
		{"redis://forge:Qx/Zy-Kw@127.0.0.1:1/0", "Qx/Zy-Kw"},
		{"redis://forge:Q@Zy-Kw@127.0.0.1:1/0", "Q@Zy-Kw"},
		{"redis://forge:Qx Zy@127.0.0.1:1/0", "Qx Zy"},
		{"redis://forge:Qx%zzZy@127.0.0.1:1/0", "Qx%zzZy"},
		{"redis://:Qx9Zy/x", "Qx9Zy"},
		{"http://forge:QxZyKw@127.0.0.1/0", "QxZyKw"},
		{"redis://forge:QxZyKw@127.0.0.1:1/zero", "QxZyKw"},
		{"redis://forge:Qx:Zy:Kw@127.0.0.1:1/0?x=%zz", "Qx:Zy:Kw"},
	} {
		for _, how := range []string{"flag", "variable"} {
			t.Run(how, func(t *testing.T) {
				t.Parallel()
				e := env{"FORGE_ENROLL_TOKEN": enrollToken, "FORGE_ADMIN_TOKEN": adminToken}
				args := []string{"server", "--listen", "127.0.0.1:0"}
				if how == "flag" {
					args = append(args, "--redis", tc.url)
				} else {
					e["FORGE_REDIS"] = tc.url
				}
				var out buffer
				ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
				defer cancel()
				newMain(e, &out).Run(ctx, args)
				for _, piece := range strings.FieldsFunc(tc.secret, func(r rune) bool { return strings.ContainsRune("/@ %:", r) }) {
					if len(piece) >= 2 && strings.Contains(out.String(), piece) {
						t.Errorf("%s %q: the output shows %q of the password:\n%s", how, tc.url, piece, out.String())
					}
				}
			})
		}
	}
}
