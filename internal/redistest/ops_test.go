package redistest_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
)

func tlsPing(t *testing.T, addr, caFile, cert, key string) error {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		t.Fatalf("PING over TLS = %q", line)
	}
	return nil
}

// TestTLS: a server WithTLS answers on its TLS port to a client trusting the
// test CA, and with mutual TLS only to one showing a certificate the CA signed.
func TestTLS(t *testing.T) {
	t.Parallel()
	c := redistest.NewCerts(t)
	s := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertNone))
	if !strings.HasPrefix(s.TLSURL(), "rediss://127.0.0.1:") || s.TLSAddr() == s.Addr() {
		t.Fatalf("TLSURL = %q, Addr = %q", s.TLSURL(), s.Addr())
	}
	if err := tlsPing(t, s.TLSAddr(), c.CA, "", ""); err != nil {
		t.Fatalf("TLS PING: %v", err)
	}
	if err := tlsPing(t, s.TLSAddr(), c.OtherCA, "", ""); err == nil {
		t.Fatal("a client trusting another CA connected")
	}
	m := redistest.Start(t, redistest.WithTLS(c, redistest.ClientCertRequired))
	if err := tlsPing(t, m.TLSAddr(), c.CA, c.ClientCert, c.ClientKey); err != nil {
		t.Fatalf("mutual TLS PING: %v", err)
	}
	if err := tlsPing(t, m.TLSAddr(), c.CA, "", ""); err == nil {
		t.Fatal("mutual TLS answered a client without a certificate")
	}
	if err := tlsPing(t, m.TLSAddr(), c.CA, c.StrangerCert, c.StrangerKey); err == nil {
		t.Fatal("mutual TLS answered a client whose certificate another CA signed")
	}
}

// TestSentinel: the sentinels name the master; killed, it is replaced by the
// replica, which kept what the master had written.
func TestSentinel(t *testing.T) {
	t.Parallel()
	set := redistest.StartSentinel(t)
	if got := set.MasterAddr(); got != set.Master.Addr() {
		t.Fatalf("MasterAddr = %q, want %q", got, set.Master.Addr())
	}
	if !strings.Contains(set.URL(), "master_set="+redistest.SentinelMasterName) {
		t.Fatalf("URL = %q", set.URL())
	}
	set.Master.MustDo("SET", "k", "v")
	set.Master.MustDo("WAIT", "1", "5000")
	set.Master.Kill()
	t0 := time.Now()
	if got := set.WaitFailover(set.Master.Addr()); got != set.Replica.Addr() {
		t.Fatalf("new master = %q, want %q", got, set.Replica.Addr())
	}
	t.Logf("failover took %s", time.Since(t0))
	if got := set.Replica.MustDo("GET", "k"); got != "v" {
		t.Fatalf("GET on the promoted replica = %q", got)
	}
}
