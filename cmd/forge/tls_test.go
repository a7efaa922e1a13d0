package main_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/bearer"
)

// testPKI writes a throwaway CA and a server certificate for 127.0.0.1 signed by
// it, and returns the paths of the CA cert, the server cert and its key, and the
// CA as a pool.
func testPKI(t *testing.T) (caFile, certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "forge test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pool = x509.NewCertPool()
	pool.AddCert(ca)
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", der), write("server.key", "PRIVATE KEY", keyDER), pool
}

func TestTLS(t *testing.T) {
	t.Parallel()
	caFile, certFile, keyFile, pool := testPKI(t)
	url := startServer(t, "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(url, "https://") {
		t.Fatalf("server with a certificate listens on %s", url)
	}
	addr := strings.TrimPrefix(url, "https://")

	dial := func(minV, maxV uint16, protos ...string) (*tls.Conn, error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: &tls.Config{
			RootCAs: pool, MinVersion: minV, MaxVersion: maxV, NextProtos: protos}}
		c, err := d.DialContext(t.Context(), "tcp", addr)
		if err != nil {
			return nil, err
		}
		return c.(*tls.Conn), nil
	}
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		if c, err := dial(v, v); err == nil {
			c.Close()
			t.Errorf("a %s handshake succeeded; the server must refuse below TLS 1.2", tls.VersionName(v))
		}
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		c, err := dial(v, v, "h2", "http/1.1")
		if err != nil {
			t.Fatalf("%s: %v", tls.VersionName(v), err)
		}
		if st := c.ConnectionState(); st.NegotiatedProtocol != "h2" {
			t.Errorf("%s: ALPN chose %q, want h2 offered", tls.VersionName(v), st.NegotiatedProtocol)
		}
		c.Close()
	}
	// HTTP/1.1 stays available over TLS for clients that do not speak h2.
	if c, err := dial(tls.VersionTLS12, 0, "http/1.1"); err != nil || c.ConnectionState().NegotiatedProtocol != "http/1.1" {
		t.Fatalf("HTTP/1.1 over TLS: %v", err)
	} else {
		c.Close()
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	res, err := hc.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.ProtoMajor != 2 {
		t.Errorf("GET /healthz over TLS used %s, want HTTP/2", res.Proto)
	}
	ctl := forgev1connect.NewControlServiceClient(hc, url, connect.WithInterceptors(bearer.Interceptor(adminToken)))

	// An agent that trusts the CA registers and runs an echo task.
	startAgent(t, url, "--ca", caFile, "--name", "tls-1", "--label", "role=tls", "--state-dir", t.TempDir())
	a := waitAgents(t, ctl, "role=tls", 1)[0]
	d, err := ctl.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "echo", Payload: []byte("over tls"),
		Target: &forgev1.DispatchRequest_AgentId{AgentId: a.Id}, Wait: durationpb.New(20 * time.Second)}))
	if err != nil || len(d.Msg.Tasks) != 1 || d.Msg.Tasks[0].State != forgev1.TaskState_TASK_STATE_SUCCEEDED || string(d.Msg.Tasks[0].Output) != "over tls" {
		t.Fatalf("echo over TLS = %v, %v", d, err)
	}

	// One without --ca does not trust the server: it keeps trying and never registers.
	// It says why, and keeps trying: it has neither exited nor registered.
	noCA := startAgent(t, url, "--name", "tls-noca", "--label", "role=noca", "--state-dir", t.TempDir())
	waitOutput(t, noCA, "certificate signed by unknown authority")
	if noCA.exited() {
		t.Fatalf("the agent without --ca exited; it should keep retrying:\n%s", noCA.output())
	}
	list, err := ctl.ListAgents(t.Context(), connect.NewRequest(&forgev1.ListAgentsRequest{Selector: "role=noca"}))
	if err != nil || len(list.Msg.Agents) != 0 {
		t.Fatalf("agents with role=noca = %v, %v; want none", list, err)
	}
}
