package main_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forge "github.com/orange-forge/forge/cmd/forge"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/redistest"
)

// TestServerFlagsRefused: a bad command line ends `forge server` before it listens,
// with a message naming what is wrong, exit 2 for usage and 1 for a bad value.
func TestServerFlagsRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ecdsaKey := filepath.Join(dir, "ecdsa.pem")
	_, certFile, keyFile, _ := testPKI(t) // an ECDSA key: not ed25519
	if b, err := os.ReadFile(keyFile); err != nil || os.WriteFile(ecdsaKey, b, 0o600) != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--no-such-flag"}, 2, "flag provided but not defined: --no-such-flag"},
		{[]string{"--lease", "soon"}, 2, `invalid value "soon" for flag --lease`},
		{[]string{"--lease", "0s"}, 1, "--lease must be positive, not 0s"},
		{[]string{"--poll-hold", "-1s"}, 1, "--poll-hold must be positive, not -1s"},
		{[]string{"--max-wait", "0s"}, 1, "--max-wait must be positive, not 0s"},
		{[]string{"--task-timeout", "0s"}, 1, "--task-timeout must be positive"},
		{[]string{"--delivery-ttl", "0s"}, 1, "--delivery-ttl must be positive"},
		{[]string{"--retention", "0s"}, 1, "--retention must be positive"},
		{[]string{"--retention", "1ns"}, 1, "--retention must be at least 1m0s, not 1ns"},
		{[]string{"--retention", "59s"}, 1, "--retention must be at least 1m0s, not 59s"},
		{[]string{"--retention-per-agent", "-1"}, 1, "--retention-per-agent must not be negative, not -1"},
		{[]string{"--retention-jobs", "-5"}, 1, "--retention-jobs must not be negative, not -5"},
		{[]string{"--export-batch", "0"}, 1, "--export-batch must be positive, not 0"},
		{[]string{"--export-batch", "10001"}, 1, "--export-batch must be at most 10000, not 10001"},
		{[]string{"--max-attempts", "0"}, 1, "--max-attempts must be positive, not 0"},
		{[]string{"--max-body", "-1"}, 1, "--max-body must be positive, not -1"},
		{[]string{"--max-payload", "0"}, 1, "--max-payload must be positive"},
		{[]string{"--max-output", "0"}, 1, "--max-output must be positive"},
		{[]string{"--max-pending", "0"}, 1, "--max-pending must be positive"},
		{[]string{"--tls-cert", certFile}, 1, "--tls-cert and --tls-key go together"},
		{[]string{"--tls-key", keyFile}, 1, "--tls-cert and --tls-key go together"},
		{[]string{"--enroll-token", "short"}, 1, "tokens must be at least 16 characters"},
		{[]string{"--admin-token", "short"}, 1, "tokens must be at least 16 characters"},
		{[]string{"--admin-token-file", missing}, 1, "no such file"},
		{[]string{"--enroll-token-file", missing}, 1, "no such file"},
		{[]string{"--log-format", "xml"}, 1, `--log-format: want text or json, not "xml"`},
		{[]string{"--log-level", "loud"}, 1, "--log-level:"},
		// The build step refuses files it cannot use, before it listens.
		{[]string{"--signing-key", missing}, 1, "--signing-key " + missing + ": open"},
		{[]string{"--signing-key", notPEM}, 1, "no PEM block in it"},
		{[]string{"--signing-key", ecdsaKey}, 1, "not an ed25519 key"},
		{[]string{"--tls-cert", notPEM, "--tls-key", keyFile}, 1, "--tls-cert/--tls-key:"},
		{[]string{"--tls-cert", missing, "--tls-key", missing}, 1, "--tls-cert/--tls-key: open"},
	} {
		args := append([]string{"server", "--listen", "127.0.0.1:0"}, c.args...)
		out, code := runForge(t, tokensEnv, args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("forge %s: exit %d, want %d with %q; output:\n%s", strings.Join(args, " "), code, c.code, c.want, out)
		}
		if strings.Contains(out, "listening on") {
			t.Errorf("forge %s listened before refusing:\n%s", strings.Join(args, " "), out)
		}
	}
}

// TestServerHelp: -h prints every flag with its variable and exits 0.
func TestServerHelp(t *testing.T) {
	t.Parallel()
	out, code := runForge(t, nil, "server", "-h")
	if code != 0 {
		t.Fatalf("forge server -h: exit %d", code)
	}
	for _, want := range []string{"--listen  [FORGE_LISTEN]", "--redis  [FORGE_REDIS]", "--enroll-token  [FORGE_ENROLL_TOKEN]",
		"--admin-token  [FORGE_ADMIN_TOKEN]", "--tls-cert  [FORGE_TLS_CERT]", "--insecure  [FORGE_INSECURE]",
		"--lease  [FORGE_LEASE]", "--poll-hold  [FORGE_POLL_HOLD]", "--max-attempts  [FORGE_MAX_ATTEMPTS]", "(default 127.0.0.1:8080)"} {
		if !strings.Contains(out, want) {
			t.Errorf("forge server -h does not show %q:\n%s", want, out)
		}
	}
}

// TestServerEnvFallbacks: each flag reads its FORGE_* variable when not given; the
// command line wins, and a repeated flag replaces the variable's list.
func TestServerEnvFallbacks(t *testing.T) {
	t.Parallel()
	tokFile := filepath.Join(t.TempDir(), "admin")
	if err := os.WriteFile(tokFile, []byte("# operators\nadmin-from-file-0123456789\n\n  admin-from-file-abcdefghij  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := env{
		"FORGE_LISTEN": "127.0.0.2:9", "FORGE_REDIS": "redis://127.0.0.1:1/0", "FORGE_INSECURE": "true",
		"FORGE_ENROLL_TOKEN": "enroll-env-0123456789, enroll-env-abcdefghij", "FORGE_ADMIN_TOKEN": "admin-env-0123456789",
		"FORGE_ADMIN_TOKEN_FILE": tokFile, "FORGE_LEASE": "7s", "FORGE_POLL_HOLD": "3s", "FORGE_MAX_ATTEMPTS": "5",
		"FORGE_MAX_PENDING": "9", "FORGE_RATE_LIMIT": "2.5", "FORGE_LOG_FORMAT": "json", "FORGE_LOG_LEVEL": "debug",
	}
	m := &forge.Main{Stdout: io.Discard, Stderr: io.Discard, Getenv: e.get}
	c, err := m.ParseServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.2:9" || c.Redis.URL != "redis://127.0.0.1:1/0" || !c.Insecure || c.Lease != 7*time.Second ||
		c.PollHold != 3*time.Second || c.MaxAttempts != 5 || c.MaxPending != 9 || c.RateLimit != 2.5 {
		t.Errorf("config from the environment = %+v", c)
	}
	if want := []string{"enroll-env-0123456789", "enroll-env-abcdefghij"}; !slices.Equal(c.EnrollTokens, want) {
		t.Errorf("enroll tokens = %q, want %q", c.EnrollTokens, want)
	}
	if want := []string{"admin-env-0123456789", "admin-from-file-0123456789", "admin-from-file-abcdefghij"}; !slices.Equal(c.AdminTokens, want) {
		t.Errorf("admin tokens = %q, want %q (the variable's, then the file's)", c.AdminTokens, want)
	}
	// The command line wins over the environment.
	c, err = m.ParseServer([]string{"--listen", "127.0.0.1:0", "--lease", "9s", "--enroll-token", "enroll-flag-0123456789", "--insecure=false"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:0" || c.Lease != 9*time.Second || c.Insecure || !slices.Equal(c.EnrollTokens, []string{"enroll-flag-0123456789"}) {
		t.Errorf("config with flags over the environment = %+v", c)
	}
	// A variable is checked like its flag.
	e["FORGE_LISTEN"] = "0.0.0.0:0"
	e["FORGE_INSECURE"] = ""
	out, code := runForge(t, e, "server")
	if code != 1 || !strings.Contains(out, `refusing plain HTTP on "0.0.0.0:0"`) {
		t.Errorf("FORGE_LISTEN=0.0.0.0:0: exit %d:\n%s", code, out)
	}
}

// TestServerListenRules: plain HTTP only on loopback; --insecure or a
// certificate allows any address.
func TestServerListenRules(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "10.0.0.1:0", "localhost.example.com:0", "127.0.0.1.nip.io:0", "nonsense"} {
		out, code := runForge(t, tokensEnv, "server", "--listen", addr)
		if code != 1 || !strings.Contains(out, "refusing plain HTTP on") || !strings.Contains(out, "--insecure") {
			t.Errorf("plain HTTP on %s: exit %d, output:\n%s", addr, code, out)
		}
	}
	m := &forge.Main{Stdout: io.Discard, Stderr: io.Discard}
	for _, addr := range []string{"127.0.0.1:0", "127.1.2.3:8080", "[::1]:0", "localhost:0"} {
		if _, err := m.ParseServer([]string{"--listen", addr}); err != nil {
			t.Errorf("plain HTTP on loopback %s refused: %v", addr, err)
		}
	}
	// Plain HTTP on loopback starts, and says it is not encrypted.
	p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0")
	if u := p.waitURL(t); !strings.HasPrefix(u, "http://127.0.0.1:") {
		t.Errorf("server on 127.0.0.1 listens on %s", u)
	}
	if !strings.Contains(p.output(), "serving plain HTTP without TLS") {
		t.Errorf("a plain-HTTP server does not warn:\n%s", p.output())
	}
	// --insecure allows a non-loopback address (behind a TLS-terminating proxy).
	if u := startForge(t, tokensEnv, "server", "--listen", "0.0.0.0:0", "--insecure").waitURL(t); !strings.HasPrefix(u, "http://") {
		t.Errorf("--insecure server on 0.0.0.0 listens on %s", u)
	}
	// With a certificate, any address is fine, and it is not plain HTTP.
	_, certFile, keyFile, _ := testPKI(t)
	p = startForge(t, tokensEnv, "server", "--listen", "0.0.0.0:0", "--tls-cert", certFile, "--tls-key", keyFile)
	if u := p.waitURL(t); !strings.HasPrefix(u, "https://") {
		t.Errorf("TLS server on 0.0.0.0 listens on %s", u)
	}
	if strings.Contains(p.output(), "without TLS") {
		t.Errorf("a TLS server warns of plain HTTP:\n%s", p.output())
	}
}

// TestServerGeneratesTokens: without tokens the server makes one of each, prints
// each once (never in a log line), and they work; given tokens, none is made.
func TestServerGeneratesTokens(t *testing.T) {
	t.Parallel()
	p := startForge(t, nil, "server", "--listen", "127.0.0.1:0")
	url := p.waitURL(t)
	out := p.output() // complete: the lines are printed before Ready
	admin := regexp.MustCompile(`admin token \(generated, shown once\):\s+(fo_\w+)`).FindStringSubmatch(out)
	enroll := regexp.MustCompile(`enrollment token \(generated, shown once\):\s+(fe_\w+)`).FindStringSubmatch(out)
	if admin == nil || enroll == nil {
		t.Fatalf("no generated tokens in:\n%s", out)
	}
	if _, err := controlAs(url, admin[1]).ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{})); err != nil {
		t.Errorf("the generated admin token is refused: %v", err)
	}
	if _, err := control(url).ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("another admin token = %v, want unauthenticated", err)
	}
	if _, err := agentClient(url, enroll[1]).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "gen"})); err != nil {
		t.Errorf("the generated enrollment token is refused: %v", err)
	}
	// Stopped, the server has logged every line it will: the tokens are in none.
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
	out = p.output()
	for _, tok := range []string{admin[1], enroll[1]} {
		if n := strings.Count(out, tok); n != 1 {
			t.Errorf("the generated token %s appears %d times, want once:\n%s", tok[:3], n, out)
		}
	}

	// Tokens given: nothing generated, nothing printed.
	p = startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0")
	p.waitURL(t)
	if strings.Contains(p.output(), "generated") {
		t.Errorf("a server given tokens generated some:\n%s", p.output())
	}
	// Only one given: the other is generated.
	p = startForge(t, env{"FORGE_ADMIN_TOKEN": adminToken}, "server", "--listen", "127.0.0.1:0")
	p.waitURL(t)
	if out := p.output(); !strings.Contains(out, "enrollment token (generated") || strings.Contains(out, "admin token (generated") {
		t.Errorf("a server given only an admin token printed:\n%s", out)
	}
}

// TestServerReadiness: once Ready is called the server answers /healthz, /readyz
// and /metrics at once; a server started before its Redis waits for it (saying
// so, in its log and on /readyz) and is not ready until it can reach it.
func TestServerReadiness(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, url string) {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			res, err := http.Get(url + path)
			if err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Errorf("GET %s right after start = %d %s", path, res.StatusCode, b)
			}
			if path == "/metrics" && !strings.Contains(string(b), "forge_polls_held") {
				t.Errorf("/metrics has no forge_polls_held:\n%s", b)
			}
		}
	}
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0")
		check(t, p.waitURL(t))
		if out := p.output(); !strings.Contains(out, "store: in memory") {
			t.Errorf("the server does not say its store is in memory:\n%s", out)
		}
	})
	t.Run("redis started late", func(t *testing.T) {
		t.Parallel()
		rd := redistest.Start(t)
		rd.Stop()
		p := startForge(t, tokensEnv, "server", "--listen", "127.0.0.1:0", "--redis", rd.URL())
		waitOutput(t, p, "redis not usable; retrying")
		checkWaiting(t, p, "redis is unavailable: connection refused")
		select {
		case u := <-p.url:
			t.Fatalf("the server said it was ready at %s without its Redis", u)
		default:
		}
		rd.Restart()
		url := p.waitURL(t)
		check(t, url)
		if out := p.output(); !strings.Contains(out, "store: redis redis://"+rd.Addr()) {
			t.Errorf("the server does not name its Redis:\n%s", out)
		}
	})
}

// TestServerShutdownAnswersHeldPolls: when its context ends (as on SIGTERM) the
// server answers a held Poll at once, empty and without an error, stops
// listening, closes its store, and exits 0.
func TestServerShutdownAnswersHeldPolls(t *testing.T) {
	t.Parallel()
	t.Run("memory", func(t *testing.T) { t.Parallel(); shutdownAnswersHeldPolls(t, nil) })
	t.Run("redis", func(t *testing.T) { t.Parallel(); shutdownAnswersHeldPolls(t, redistest.Start(t)) })
}

func shutdownAnswersHeldPolls(t *testing.T, rd *redistest.Server) {
	args := []string{"server", "--listen", "127.0.0.1:0", "--poll-hold", "2m"}
	if rd != nil {
		args = append(args, "--redis", rd.URL())
	}
	p := startForge(t, tokensEnv, args...)
	url := p.waitURL(t)
	reg, err := agentClient(url, enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "poller"}))
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		tasks int
		err   error
	}
	polled := make(chan answer, 1)
	go func() {
		res, err := agentClient(url, reg.Msg.AgentToken).Poll(t.Context(), connect.NewRequest(&forgev1.PollRequest{Wait: durationpb.New(time.Minute)}))
		if err != nil {
			polled <- answer{err: err}
			return
		}
		polled <- answer{tasks: len(res.Msg.Tasks)}
	}()
	waitFor(t, "the Poll is held", func() bool { return metric(t, url, "forge_polls_held") == "1" })

	stopped := time.Now()
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d after its context ended", code)
	}
	select {
	case a := <-polled:
		if a.err != nil || a.tasks != 0 {
			t.Errorf("the held Poll answered at shutdown with %+v, want an empty answer and no error", a)
		}
	case <-time.After(time.Minute):
		t.Fatal("the held Poll was not answered at shutdown")
	}
	// Answered at shutdown, not when its one-minute wait ran out.
	if d := time.Since(stopped); d > 30*time.Second {
		t.Errorf("the held Poll was answered %s after shutdown began", d)
	}
	if out := p.output(); !strings.Contains(out, "shutting down: answering held calls") || !strings.Contains(out, "server stopped") {
		t.Errorf("the shutdown is not logged:\n%s", out)
	}
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Errorf("the server still answers after it stopped")
	}
	if rd != nil { // the store is closed: only the connection asking is left
		waitFor(t, "the store's connections are closed", func() bool { return rd.Info("clients", "connected_clients") == "1" })
	}
}

// metric returns the value of the sample named name on the server's /metrics.
func metric(t *testing.T, url, name string) string {
	t.Helper()
	res, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

// TestServerSigningKeys: keys given with --signing-key, newest first, reach agents
// at Register.
func TestServerSigningKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var files []string
	var pubs []ed25519.PublicKey
	for i := range 2 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, fmt.Sprintf("key%d.pem", i))
		if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		files, pubs = append(files, f), append(pubs, pub)
	}
	url := startServer(t, "--signing-key", files[0], "--signing-key", files[1])
	reg, err := agentClient(url, enrollToken).Register(t.Context(), connect.NewRequest(&forgev1.RegisterRequest{Name: "signed"}))
	if err != nil {
		t.Fatal(err)
	}
	keys := reg.Msg.SigningKeys
	if len(keys) != 2 || !bytes.Equal(keys[0].PublicKey, pubs[0]) || !bytes.Equal(keys[1].PublicKey, pubs[1]) {
		t.Fatalf("Register gave signing keys %v, want the two given, newest first", keys)
	}
}

// TestAgentSigningPubkey: `forge agent --signing-pubkey` pins the server's key:
// an agent pinned to the server's public key runs its tasks; one pinned to
// another key refuses them, whatever the server gave at Register; a file that
// holds no ed25519 public key stops the agent at start.
func TestAgentSigningPubkey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, blk *pem.Block) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	keyPair := func(name string) (priv, pub string) {
		p, k, _ := ed25519.GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(k)
		pder, _ := x509.MarshalPKIXPublicKey(p)
		return write(name+".pem", &pem.Block{Type: "PRIVATE KEY", Bytes: der}), write(name+".pub", &pem.Block{Type: "PUBLIC KEY", Bytes: pder})
	}
	serverKey, serverPub := keyPair("server")
	_, otherPub := keyPair("other")
	url := startServer(t, "--signing-key", serverKey)
	ctl := control(url)
	for _, c := range []struct {
		label, pub string
		want       forgev1.TaskState
	}{{"pin=server", serverPub, forgev1.TaskState_TASK_STATE_SUCCEEDED}, {"pin=other", otherPub, forgev1.TaskState_TASK_STATE_FAILED}} {
		startAgent(t, url, "--signing-pubkey", c.pub, "--label", c.label)
		a := waitAgents(t, ctl, c.label, 1)[0]
		res, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("hi"),
			Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}, Wait: durationpb.New(20 * time.Second)}))
		if err != nil || len(res.Msg.Tasks) != 1 || res.Msg.Tasks[0].State != c.want {
			t.Fatalf("%s: Dispatch = %v, %v; want the task %s", c.label, res, err, c.want)
		}
		if c.want == forgev1.TaskState_TASK_STATE_FAILED && !strings.Contains(res.Msg.Tasks[0].Error, "unknown key") {
			t.Errorf("%s: the refusal says %q", c.label, res.Msg.Tasks[0].Error)
		}
	}
	out, code := runForge(t, nil, "agent", "--server", url, "--enroll-token", enrollToken, "--signing-pubkey", serverKey)
	if code != 1 || !strings.Contains(out, "--signing-pubkey "+serverKey) {
		t.Errorf("a private key given as --signing-pubkey: exit %d:\n%s", code, out)
	}
}

// TestServerRetentionFlags: --retention-jobs and --retention-per-agent reach
// the server's config, from the command line or their FORGE_* variables, and a
// negative count is refused naming the flag.
func TestServerRetentionFlags(t *testing.T) {
	t.Parallel()
	e := env{"FORGE_RETENTION_JOBS": "500", "FORGE_RETENTION_PER_AGENT": "20"}
	m := &forge.Main{Stdout: io.Discard, Stderr: io.Discard, Getenv: e.get}
	c, err := m.ParseServer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.RetentionJobs != 500 || c.RetentionPerAgent != 20 {
		t.Errorf("from the environment: --retention-jobs %d, --retention-per-agent %d; want 500, 20", c.RetentionJobs, c.RetentionPerAgent)
	}
	if c, err = m.ParseServer([]string{"--retention-jobs", "7"}); err != nil || c.RetentionJobs != 7 {
		t.Errorf("--retention-jobs 7: %d, %v", c.RetentionJobs, err)
	}
	for _, name := range []string{"retention-jobs", "retention-per-agent"} {
		_, err := m.ParseServer([]string{"--" + name, "-1"})
		if want := "--" + name + " must not be negative, not -1"; err == nil || err.Error() != want {
			t.Errorf("--%s -1: %v, want %q", name, err, want)
		}
	}
	out, code := runForge(t, nil, "server", "--help")
	if code != 0 || !strings.Contains(out, "--retention-jobs  [FORGE_RETENTION_JOBS]") || !strings.Contains(out, "most finished jobs kept") {
		t.Errorf("server --help (exit %d) does not show --retention-jobs:\n%s", code, out)
	}
}
