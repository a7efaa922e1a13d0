package redisstore_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore"
	"github.com/orange-forge/forge/store/storetest"
)

// docsACL returns the ACL SETUSER line of docs/operations.md, split into
// arguments, with its password placeholder replaced by password.
func docsACL(t *testing.T, password string) []string {
	t.Helper()
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "ACL SETUSER forge ") {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("docs/operations.md has %d ACL SETUSER forge lines, want 1", len(found))
	}
	args := strings.Fields(found[0])
	n := 0
	for i, a := range args {
		if a == ">CHANGE-ME" {
			args[i] = ">" + password
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the ACL line has no >CHANGE-ME password: %s", found[0])
	}
	return args
}

// openAs returns an Opener that opens the store as user on url, each test with
// its own prefix under "forge:" (which the documented key patterns cover).
func openAs(url, user, password string, waitReplicas int) storetest.Opener {
	return func(t *testing.T, cfg store.Config) store.Store {
		s, err := redisstore.Open(t.Context(), url, cfg, redisstore.Options{Username: user, Password: password,
			Prefix: fmt.Sprintf("forge:t%d", prefixes.Add(1)), WaitReplicas: waitReplicas})
		if err != nil {
			t.Fatalf("Open as %s: %v", user, err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// TestConformanceACL runs the whole conformance suite as a user that has
// exactly the ACL of docs/operations.md, on a single node, a cluster and
// through Sentinel, and then checks Redis refused none of its commands.
func TestConformanceACL(t *testing.T) {
	t.Parallel()
	const password = "acl-test-password"
	acl := docsACL(t, password)
	setUser := func(t *testing.T, nodes ...*redistest.Server) {
		for _, n := range nodes {
			n.MustDo(acl...)
			n.MustDo("ACL", "LOG", "RESET")
		}
		t.Cleanup(func() {
			for _, n := range nodes {
				if !n.Running() {
					continue
				}
				if log := n.MustDo("ACL", "LOG"); log != "" {
					t.Errorf("%s refused commands of the documented ACL user:\n%s", n.Addr(), log)
				}
			}
		})
	}
	t.Run("single", func(t *testing.T) {
		t.Parallel()
		srv := redistest.Start(t)
		setUser(t, srv)
		storetest.Run(t, openAs(srv.URL(), "forge", password, 0))
	})
	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		cl := redistest.StartCluster(t, 3)
		setUser(t, cl.Nodes...)
		storetest.Run(t, openAs(cl.URL(), "forge", password, 0))
	})
	t.Run("sentinel", func(t *testing.T) {
		t.Parallel()
		set := redistest.StartSentinel(t)
		setUser(t, set.Master, set.Replica)
		storetest.Run(t, openAs(set.URL(), "forge", password, 0))
	})
	t.Run("sentinel, every write on a replica", func(t *testing.T) {
		t.Parallel()
		set := redistest.StartSentinel(t)
		setUser(t, set.Master, set.Replica)
		storetest.Run(t, openAs(set.URL(), "forge", password, 1))
		t.Cleanup(func() { // after the suite's parallel tests
			if st := set.Master.Info("commandstats", "cmdstat_wait"); !strings.HasPrefix(st, "calls=") {
				t.Errorf("no WAIT was sent: cmdstat_wait = %q", st)
			}
		})
	})
}

// TestWaitReplicas: with WaitReplicas a write the replicas do not confirm in
// time fails as unavailable, saying so; a cluster is refused.
func TestWaitReplicas(t *testing.T) {
	t.Parallel()
	set := redistest.StartSentinel(t)
	s, err := redisstore.Open(t.Context(), set.URL(), store.Config{}, redisstore.Options{Prefix: "w",
		WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cred := register(t, s, "secret")
	if _, err := s.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
		t.Fatalf("Dispatch with the replica up: %v", err)
	}
	set.Replica.Kill()
	_, err = s.Dispatch(t.Context(), spec(cred.AgentID))
	if store.KindOf(err) != store.KindUnavailable || redisstore.CauseOf(err) != redisstore.CauseFailover ||
		!strings.Contains(err.Error(), "confirmed by 0 of the 1 replicas required within 200ms") {
		t.Fatalf("Dispatch with the replica gone = %v (cause %q), want unavailable, not confirmed", err, redisstore.CauseOf(err))
	}
	if _, err := s.GetJob(t.Context(), "j0000000000000000"); store.KindOf(err) != store.KindNotFound {
		t.Fatalf("a read with the replica gone = %v, want not found (reads do not wait)", err)
	}
	cl := redistest.StartCluster(t, 1)
	if _, err := redisstore.Open(t.Context(), cl.URL(), store.Config{}, redisstore.Options{WaitReplicas: 1}); store.KindOf(err) != store.KindInvalid {
		t.Fatalf("WaitReplicas on a cluster: %v, want KindInvalid", err)
	}
}

func tlsConfig(t *testing.T, c *redistest.Certs, clientCert, clientKey string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no CA certificate")
	}
	cfg := &tls.Config{RootCAs: pool}
	if clientCert != "" {
		cert, err := tls.LoadX509KeyPair(clientCert, clientKey)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// TestConformanceTLS runs the conformance suite over mutual TLS with a private
// CA, given through Options.TLS.
func TestConformanceTLS(t *testing.T) {
	t.Parallel()
	c := redistest.NewCerts(t)
	srv := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertRequired))
	tc := tlsConfig(t, c, c.ClientCert, c.ClientKey)
	storetest.Run(t, func(t *testing.T, cfg store.Config) store.Store {
		s, err := redisstore.Open(t.Context(), srv.TLSURL(), cfg, redisstore.Options{TLS: tc,
			Prefix: fmt.Sprintf("t%d", prefixes.Add(1))})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestOpenClient: a store on a client the caller made works, and Close leaves
// the client open.
func TestOpenClient(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s, err := redisstore.OpenClient(t.Context(), client, store.Config{}, redisstore.Options{Prefix: "oc"})
	if err != nil {
		t.Fatalf("OpenClient: %v", err)
	}
	cred := register(t, s, "secret-of-the-agent")
	if _, err := s.Dispatch(t.Context(), spec(cred.AgentID)); err != nil {
		t.Fatalf("Dispatch: %v", err)
	}
	s.Close()
	if err := client.Do(t.Context(), client.B().Ping().Build()).Error(); err != nil {
		t.Fatalf("the caller's client after Close: %v", err)
	}
}

// TestOpenNamesTheCause: each way Redis can be unusable fails Open with
// KindUnavailable, the right Cause, a message that says it — and never the
// password.
func TestOpenNamesTheCause(t *testing.T) {
	t.Parallel()
	const password = "s3cret-Passw0rd"
	c := redistest.NewCerts(t)
	plain := redistest.Start(t)
	plain.MustDo("ACL", "SETUSER", "forge", "on", ">"+password, "~*", "&*", "+@all")
	plain.MustDo("ACL", "SETUSER", "pinger", "on", ">"+password, "~*", "-@all", "+ping", "+time")
	locked := redistest.Start(t)
	locked.MustDo("CONFIG", "SET", "requirepass", password)
	tlsSrv := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertNone))
	mtls := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertRequired))
	cl := redistest.StartCluster(t, 1)
	set := redistest.StartSentinel(t)
	ca := tlsConfig(t, c, "", "")
	wrongName := ca.Clone()
	wrongName.ServerName = "redis.example"
	for _, tc := range []struct {
		name  string
		url   string
		opts  redisstore.Options
		cause redisstore.Cause
		want  string
	}{
		{"tls unknown authority", tlsSrv.TLSURL(), redisstore.Options{}, redisstore.CauseTLS, "certificate signed by unknown authority"},
		{"tls other CA", tlsSrv.TLSURL(), redisstore.Options{TLS: tlsConfig(t, &redistest.Certs{CA: c.OtherCA}, "", "")}, redisstore.CauseTLS, "redis TLS verification failed"},
		{"tls server name", tlsSrv.TLSURL(), redisstore.Options{TLS: wrongName}, redisstore.CauseTLS, "not redis.example"},
		{"mtls without certificate", mtls.TLSURL(), redisstore.Options{TLS: ca}, redisstore.CauseTLS, "client certificate"},
		{"mtls other CA's certificate", mtls.TLSURL(), redisstore.Options{TLS: tlsConfig(t, c, c.StrangerCert, c.StrangerKey)}, redisstore.CauseTLS, "client certificate"},
		{"plain to a TLS port", "redis://" + mtls.TLSAddr() + "/0", redisstore.Options{}, redisstore.CauseUnreachable, "use rediss://"},
		{"wrong password", "redis://forge:wrong-" + password + "@" + plain.Addr() + "/0", redisstore.Options{}, redisstore.CauseAuth, `redis authentication failed for user "forge": WRONGPASS`},
		{"wrong password by option", plain.URL(), redisstore.Options{Username: "forge", Password: "x" + password}, redisstore.CauseAuth, "WRONGPASS"},
		{"no password", locked.URL(), redisstore.Options{}, redisstore.CauseAuth, "NOAUTH"},
		{"missing permission", "redis://pinger:" + password + "@" + plain.Addr() + "/0", redisstore.Options{}, redisstore.CausePermission, `redis user "pinger" lacks a permission: NOPERM`},
		{"no such database", "redis://" + plain.Addr() + "/99", redisstore.Options{}, redisstore.CauseDatabase, "redis has no database 99"},
		{"database on a cluster", "redis://" + cl.Nodes[0].Addr() + "/1", redisstore.Options{}, redisstore.CauseDatabase, "only database 0"},
		{"cluster URL, single node", plain.URL() + "?addr=" + plain.Addr(), redisstore.Options{}, redisstore.CauseTopology, "not a cluster"},
		{"a sentinel without master_set", "redis://" + set.Sentinels[0].Addr() + "/0", redisstore.Options{}, redisstore.CauseTopology, "master_set"},
		{"master_set, not a sentinel", plain.URL() + "?master_set=forge", redisstore.Options{}, redisstore.CauseTopology, "not a Sentinel"},
		{"unknown master name", set.URL() + "-nope", redisstore.Options{}, redisstore.CauseTopology, `no master named "forge-nope"`},
		{"unreachable", "redis://forge:" + password + "@127.0.0.1:1/0", redisstore.Options{}, redisstore.CauseUnreachable, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := redisstore.Open(t.Context(), tc.url, store.Config{}, tc.opts)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if store.KindOf(err) != store.KindUnavailable || redisstore.CauseOf(err) != tc.cause || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v [%v] (kind %v, cause %q), want KindUnavailable, cause %q, saying %q", err, errors.Unwrap(err), store.KindOf(err), redisstore.CauseOf(err), tc.cause, tc.want)
			}
			if strings.Contains(err.Error(), password) || strings.Contains(fmt.Sprintf("%+v", errors.Unwrap(err)), password) {
				t.Fatalf("the error holds the password: %v", err)
			}
		})
	}
}

// TestOpenTLSNoHandshake: rediss:// to a plain port fails after the dial
// timeout, saying the port may not speak TLS.
func TestOpenTLSNoHandshake(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	_, err := redisstore.Open(t.Context(), "rediss://"+srv.Addr()+"/0", store.Config{}, redisstore.Options{})
	if redisstore.CauseOf(err) != redisstore.CauseTLS || !strings.Contains(err.Error(), "does not speak TLS") {
		t.Fatalf("Open = %v (cause %q), want the TLS cause saying the port may not speak TLS", err, redisstore.CauseOf(err))
	}
}

// TestURLErrorsHideThePassword: a URL that does not parse is KindInvalid, and
// its error shows no part of the password, however the password broke it.
func TestURLErrorsHideThePassword(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, secret string }{
		{"redis://forge:Qx/Zy-Kw@host:6379/0", "Qx/Zy-Kw"},       // an unencoded / moves the host
		{"redis://forge:98765/Zykw@host:6379/0", "98765/Zykw"},   // … and can even parse
		{"redis://forge:Q@Zy-Kw@host:1/0", "Q@Zy-Kw"},            // an unencoded @
		{"redis://forge:Qx Zy@host:6379/0", "Qx Zy"},             // a space
		{"redis://forge:Qx%zzZy@host:6379/0", "Qx%zzZy"},         // a bad escape
		{"redis://:Qx9Zy/x", "Qx9Zy"},                            // no @ at all
		{"http://forge:QxZyKw@host/0", "QxZyKw"},                 // a wrong scheme
		{"redis://forge:QxZyKw@host:6379/zero", "QxZyKw"},        // a bad database
		{"redis://forge:QxZyKw@host:6379/0/1", "QxZyKw"},         // a bad path
		{"redis://forge:QxZyKw@host:6379/0?db=x", "QxZyKw"},      // a bad db parameter
		{"redis://forge:Qx:Zy:Kw@host:6379/0?x=%zz", "Qx:Zy:Kw"}, // a bad query
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := redisstore.Open(ctx, tc.url, store.Config{}, redisstore.Options{})
		cancel()
		if err == nil {
			t.Errorf("Open(%q) succeeded", tc.url)
			continue
		}
		shown := err.Error() + " " + fmt.Sprint(errors.Unwrap(err)) + " " + redisstore.RedactURL(tc.url)
		for _, piece := range strings.FieldsFunc(tc.secret, func(r rune) bool { return strings.ContainsRune("/@ %:", r) }) {
			if len(piece) >= 2 && strings.Contains(shown, piece) {
				t.Errorf("Open(%q): %q shows %q of the password", tc.url, shown, piece)
			}
		}
	}
	if got := redisstore.RedactURL("redis://forge:secret@redis.internal:6379/0"); got != "redis://forge:xxxxx@redis.internal:6379/0" {
		t.Errorf("RedactURL = %q", got)
	}
	_, err := redisstore.Open(t.Context(), "redis://forge:QxZyKw@host:6379/zero", store.Config{}, redisstore.Options{})
	if store.KindOf(err) != store.KindInvalid || redisstore.CauseOf(err) != redisstore.CauseURL || !strings.Contains(err.Error(), "invalid database number") {
		t.Errorf("a bad database: %v, want KindInvalid with CauseURL naming the database", err)
	}
}

// TestPingNamesARefusal: a user who may PING but lost the right to run forge's
// scripts makes Ping fail, naming the refused command, for as long as calls
// are refused; Ping of a stopped Redis says it is unreachable.
func TestPingNamesARefusal(t *testing.T) {
	t.Parallel()
	const password = "acl-test-password"
	srv := redistest.Start(t)
	srv.MustDo(docsACL(t, password)...)
	s := open(t, "redis://forge:"+password+"@"+srv.Addr()+"/0", "forge:ping", store.Config{})
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	srv.MustDo("ACL", "SETUSER", "forge", "-fcall")
	_, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "n", SecretHash: hash("x")})
	if redisstore.CauseOf(err) != redisstore.CausePermission || store.KindOf(err) != store.KindUnavailable {
		t.Fatalf("RegisterAgent = %v, want a permission refusal", err)
	}
	err = s.Ping(t.Context())
	if redisstore.CauseOf(err) != redisstore.CausePermission || !strings.Contains(err.Error(), "'fcall'") {
		t.Fatalf("Ping after a refusal = %v, want it to name the refused fcall", err)
	}
	srv.Stop()
	err = s.Ping(t.Context())
	if redisstore.CauseOf(err) != redisstore.CauseUnreachable {
		t.Fatalf("Ping of a stopped Redis = %v, want unreachable", err)
	}
}
