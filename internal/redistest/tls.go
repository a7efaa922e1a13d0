package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Certs is a private certificate authority made for one test, and the files a
// TLS Redis and its clients need: a server certificate for 127.0.0.1, ::1 and
// localhost, a client certificate for mutual TLS, and a second, unrelated CA that
// signed nothing the server shows (to test a client that trusts the wrong one).
// Every file is PEM.
type Certs struct {
	Dir        string
	CA         string // the CA's certificate
	ServerCert string
	ServerKey  string
	ClientCert string // signed by CA, for mutual TLS
	ClientKey  string
	OtherCA    string // a CA that signed nothing here
	// StrangerCert and StrangerKey are a client certificate signed by OtherCA,
	// which a server trusting only CA refuses.
	StrangerCert string
	StrangerKey  string
}

// NewCerts makes a CA and certificates in a temporary directory of t.
func NewCerts(t testing.TB) *Certs {
	t.Helper()
	dir := t.TempDir()
	c := &Certs{Dir: dir}
	ca, caKey := newCA(t, "forge test CA")
	c.CA = writePEM(t, dir, "ca.pem", "CERTIFICATE", ca.Raw)
	other, otherKey := newCA(t, "forge test other CA")
	c.OtherCA = writePEM(t, dir, "other-ca.pem", "CERTIFICATE", other.Raw)

	c.ServerCert, c.ServerKey = leaf(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	c.ClientCert, c.ClientKey = leaf(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
	c.StrangerCert, c.StrangerKey = leaf(t, dir, "stranger", other, otherKey, x509.ExtKeyUsageClientAuth)
	return c
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

func newCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("redistest: CA key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("redistest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("redistest: CA certificate: %v", err)
	}
	return cert, key
}

func leaf(t testing.TB, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("redistest: %s key: %v", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: "forge test " + name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatalf("redistest: %s certificate: %v", name, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("redistest: %s key: %v", name, err)
	}
	return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+"-key.pem", "PRIVATE KEY", kder)
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return p
}

// ClientAuth says whether a TLS Redis asks its clients for a certificate.
type ClientAuth string

// Values of Redis' tls-auth-clients.
const (
	ClientCertRequired ClientAuth = "yes"      // mutual TLS: no certificate, no connection
	ClientCertOptional ClientAuth = "optional" // checked when given
	ClientCertNone     ClientAuth = "no"
)

// WithTLS makes the server also serve TLS on a second free port (TLSAddr,
// TLSURL) with the server certificate of c, trusting c.CA for client
// certificates as auth says. The plain port stays open on 127.0.0.1, so Do and
// the other helpers keep working; tests point the client under test at the TLS
// port. Replication (in a Sentinel set) stays plain.
func WithTLS(c *Certs, auth ClientAuth) Option {
	return func(cfg *config) {
		cfg.tls = &tlsConfig{certs: c, auth: auth}
	}
}

type tlsConfig struct {
	certs *Certs
	auth  ClientAuth
}

// extraArgs are the arguments of the options defined outside redistest.go.
func (s *Server) extraArgs() []string {
	var args []string
	if tc := s.cfg.tls; tc != nil {
		args = append(args,
			"--tls-port", strconv.Itoa(s.tlsPort),
			"--tls-cert-file", tc.certs.ServerCert,
			"--tls-key-file", tc.certs.ServerKey,
			"--tls-ca-cert-file", tc.certs.CA,
			"--tls-auth-clients", string(tc.auth),
		)
	}
	return args
}

// TLSAddr returns the "127.0.0.1:port" of the TLS port (WithTLS), or "" without.
func (s *Server) TLSAddr() string {
	if s.tlsPort == 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tlsPort))
}

// TLSURL returns "rediss://127.0.0.1:port/0" for the TLS port (WithTLS).
func (s *Server) TLSURL() string { return "rediss://" + s.TLSAddr() + "/0" }
