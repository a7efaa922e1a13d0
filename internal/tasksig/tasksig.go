// Package tasksig signs and verifies task envelopes. The server signs each task
// it leases with ed25519 over an envelope that binds the task to the agent, the
// attempt and the lease expiry; an agent holding the server's public keys refuses
// a task whose signature does not verify, so a task written into the store by
// anyone else, altered on the way, or replayed to another agent is never run.
package tasksig

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"time"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// KeyID names a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return hex.EncodeToString(h[:8])
}

// Envelope returns the bytes signed for task t leased to agentID: a version tag,
// then each field length-prefixed so no two tasks share an envelope.
func Envelope(agentID string, t *forgev1.Task) []byte {
	ph := sha256.Sum256(t.Payload)
	b := make([]byte, 0, 192)
	field := func(s []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	field([]byte("forge-task-v1"))
	field([]byte(agentID))
	field([]byte(t.Id))
	field([]byte(t.JobId))
	b = binary.BigEndian.AppendUint32(b, uint32(t.Attempt))
	field([]byte(t.Type))
	field(ph[:])
	b = binary.BigEndian.AppendUint64(b, uint64(t.Timeout.AsDuration()))
	b = binary.BigEndian.AppendUint64(b, uint64(t.LeaseExpiresAt.AsTime().UnixMilli()))
	return b
}

// Sign sets t's signature and key id.
func Sign(key ed25519.PrivateKey, agentID string, t *forgev1.Task) {
	t.KeyId = KeyID(key.Public().(ed25519.PublicKey))
	t.Signature = ed25519.Sign(key, Envelope(agentID, t))
}

// MaxSkew is how far the agent's clock may be ahead of the server's before a
// task's lease looks expired to it.
const MaxSkew = 5 * time.Minute

// Verify checks t's signature against keys (by key id) for agentID, and that its
// lease has not expired more than MaxSkew ago by the agent's clock now.
func Verify(keys map[string]ed25519.PublicKey, agentID string, t *forgev1.Task, now time.Time) error {
	if len(t.Signature) == 0 {
		return errors.New("task is not signed")
	}
	pub, ok := keys[t.KeyId]
	if !ok {
		return errors.New("task is signed by an unknown key " + t.KeyId)
	}
	if !ed25519.Verify(pub, Envelope(agentID, t), t.Signature) {
		return errors.New("task signature does not verify")
	}
	if t.LeaseExpiresAt == nil || now.Sub(t.LeaseExpiresAt.AsTime()) > MaxSkew {
		return errors.New("task lease has expired: a replay")
	}
	return nil
}
