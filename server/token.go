package server

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"

	"github.com/orange-forge/forge/store"
)

// Token prefixes: what kind of token a string is, told at a glance (and by scanners
// looking for leaked secrets).
const (
	PrefixEnroll   = "fe_"
	PrefixAgent    = "fa_"
	PrefixOperator = "fo_"
)

// MinTokenLen is the shortest token accepted from a flag or the environment.
const MinTokenLen = 16

// NewOperatorToken returns a new random operator token.
func NewOperatorToken() string { return PrefixOperator + store.NewSecret() }

// NewEnrollToken returns a new random enrollment token for the server's flag set
// (not stored; see ControlService.CreateEnrollmentToken for stored ones).
func NewEnrollToken() string { return PrefixEnroll + store.NewSecret() }

// HashSecret returns the SHA-256 hash under which a secret is stored.
func HashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// parseAgentToken splits "fa_<agent id>_<secret>".
func parseAgentToken(tok string) (store.Cred, bool) {
	rest, ok := strings.CutPrefix(tok, PrefixAgent)
	if !ok {
		return store.Cred{}, false
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || !store.ValidID(id, 'a') || len(secret) < 16 || len(secret) > 128 {
		return store.Cred{}, false
	}
	return store.Cred{AgentID: id, SecretHash: HashSecret(secret)}, true
}

// parseStoredEnrollToken splits "fe_<id>_<secret>" of a token created through the API.
func parseStoredEnrollToken(tok string) (store.EnrollmentUse, bool) {
	rest, ok := strings.CutPrefix(tok, PrefixEnroll)
	if !ok {
		return store.EnrollmentUse{}, false
	}
	id, secret, ok := strings.Cut(rest, "_")
	if !ok || !store.ValidID(id, 'e') || len(secret) < 16 || len(secret) > 128 {
		return store.EnrollmentUse{}, false
	}
	return store.EnrollmentUse{ID: id, SecretHash: HashSecret(secret)}, true
}

// ParseSigningKey reads an ed25519 private key from PEM (PKCS#8, as
// `openssl genpkey -algorithm ed25519` writes it), for Config.SigningKeys.
func ParseSigningKey(pemBytes []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		return nil, errors.New("no PEM block in it")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("not an ed25519 key")
	}
	return ek, nil
}
