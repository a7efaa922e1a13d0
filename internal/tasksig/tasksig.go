// Package tasksig signs and verifies what an agent runs. Two ed25519 signatures
// travel with every task:
//
//   - the job signature, made when Dispatch accepts a job and kept with it, over
//     what the operator dispatched: the job id, type, payload (its SHA-256),
//     timeout, max_attempts and target, when it was accepted and until when its
//     tasks may run (NotAfter);
//   - the lease signature, made when Poll hands out an attempt, over the agent
//     id, task id, job id, attempt and lease expiry, and the job signature.
//
// An agent holding the server's public keys runs a task only when both verify,
// the target names it, the attempt is within max_attempts, and neither the job
// nor the lease has expired by its clock (MaxSkew allowed). So a task written
// into the store by anyone else, a job changed there after Dispatch, a task
// altered on the way, or one meant for another agent is never run; replays are
// the agent's to refuse within the validity (see package agent's replay guard).
package tasksig

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/store"
)

// KeyID names a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return hex.EncodeToString(h[:8])
}

// MaxSkew is how far the agent's clock may be ahead of the server's before a
// lease or a job looks expired to it.
const MaxSkew = 5 * time.Minute

// Job is what a job signature covers.
type Job struct {
	ID          string
	Type        string
	Payload     []byte
	Timeout     time.Duration
	MaxAttempts int32
	Target      string // TargetText
	CreatedAt   time.Time
	NotAfter    time.Time
}

// envelope builds a versioned envelope, each variable field length-prefixed so
// no two values share one.
type envelope []byte

func (b *envelope) field(s []byte) {
	*b = binary.BigEndian.AppendUint32(*b, uint32(len(s)))
	*b = append(*b, s...)
}

func (b *envelope) u64(v uint64) { *b = binary.BigEndian.AppendUint64(*b, v) }

// JobEnvelope returns the bytes a job signature covers.
func JobEnvelope(j Job) []byte {
	ph := sha256.Sum256(j.Payload)
	b := make(envelope, 0, 256)
	b.field([]byte("forge-job-v1"))
	b.field([]byte(j.ID))
	b.field([]byte(j.Type))
	b.field(ph[:])
	b.u64(uint64(j.Timeout))
	b.u64(uint64(j.MaxAttempts))
	b.field([]byte(j.Target))
	b.u64(uint64(j.CreatedAt.UnixMilli()))
	b.u64(uint64(j.NotAfter.UnixMilli()))
	return b
}

// SignJob signs j with key.
func SignJob(key ed25519.PrivateKey, j Job) *forgev1.JobSignature {
	return &forgev1.JobSignature{
		KeyId:       KeyID(key.Public().(ed25519.PublicKey)),
		Signature:   ed25519.Sign(key, JobEnvelope(j)),
		CreatedAt:   timestamppb.New(j.CreatedAt),
		NotAfter:    timestamppb.New(j.NotAfter),
		MaxAttempts: j.MaxAttempts,
		Target:      j.Target,
	}
}

// JobOf returns the job a task's job signature claims to cover: the task's own
// job id, type, payload and timeout, with the signature's other fields.
func JobOf(t *forgev1.Task) Job {
	js := t.GetJobSignature()
	return Job{ID: t.JobId, Type: t.Type, Payload: t.Payload, Timeout: t.Timeout.AsDuration(),
		MaxAttempts: js.GetMaxAttempts(), Target: js.GetTarget(),
		CreatedAt: js.GetCreatedAt().AsTime(), NotAfter: js.GetNotAfter().AsTime()}
}

// LeaseEnvelope returns the bytes the lease signature of task t, leased to
// agentID, covers.
func LeaseEnvelope(agentID string, t *forgev1.Task) []byte {
	jh := sha256.Sum256(t.GetJobSignature().GetSignature())
	b := make(envelope, 0, 192)
	b.field([]byte("forge-lease-v2"))
	b.field([]byte(agentID))
	b.field([]byte(t.Id))
	b.field([]byte(t.JobId))
	b.u64(uint64(t.Attempt))
	b.u64(uint64(t.LeaseExpiresAt.AsTime().UnixMilli()))
	b.field(jh[:])
	return b
}

// SignLease sets t's lease signature and key id; t's job signature must be set.
func SignLease(key ed25519.PrivateKey, agentID string, t *forgev1.Task) {
	t.KeyId = KeyID(key.Public().(ed25519.PublicKey))
	t.Signature = ed25519.Sign(key, LeaseEnvelope(agentID, t))
}

// TargetText is the form of a target a job signature covers: "agent:<id>",
// "name:<pattern>", "selector:<selector>" or "all".
func TargetText(t store.Target) string {
	switch {
	case t.AgentID != "":
		return "agent:" + t.AgentID
	case t.AgentName != "":
		return "name:" + t.AgentName
	case t.All:
		return "all"
	}
	return "selector:" + t.Selector
}

// ParseTargetText reads TargetText's form back.
func ParseTargetText(s string) (store.Target, error) {
	kind, v, _ := strings.Cut(s, ":")
	switch {
	case s == "all":
		return store.Target{All: true}, nil
	case kind == "agent" && v != "":
		return store.Target{AgentID: v}, nil
	case kind == "name" && v != "":
		return store.Target{AgentName: v}, nil
	case kind == "selector":
		return store.Target{Selector: v}, nil
	}
	return store.Target{}, fmt.Errorf("the signed target %.80q is not one this agent knows", s)
}

// NotAfter returns when the tasks of a job accepted at created may no longer
// run: a task can be leased until its delivery TTL runs out, and each attempt
// whose lease runs out (at the latest its timeout and a lease after it) puts
// it back for another delivery TTL, up to attempts times, with an hour for the
// reaper to be late. A rollout (max_concurrency) releases its tasks one after
// another, for as long as the job lasts: 90 days more.
func NotAfter(created time.Time, ttl, timeout, lease time.Duration, attempts int32, rollout bool) time.Time {
	life := ttl + time.Duration(max(attempts, 1))*(timeout+lease+ttl) + time.Hour
	if rollout {
		life += 90 * 24 * time.Hour
	}
	return created.Add(life)
}

// Self is the agent a task is checked for: its id, and the name and labels the
// server knows it by, which a fan-out's target picked it by.
type Self struct {
	ID     string
	Name   string
	Labels map[string]string
}

// Verify checks task t for agent self at now by its clock, with the server's
// keys: both signatures, the target, the attempt, and that neither the lease
// nor the job has expired more than MaxSkew ago. The error says which failed.
func Verify(keys map[string]ed25519.PublicKey, self Self, t *forgev1.Task, now time.Time) error {
	js := t.GetJobSignature()
	switch {
	case len(t.Signature) == 0 || js == nil || len(js.Signature) == 0:
		return errors.New("task is not signed")
	case keys[t.KeyId] == nil:
		return errors.New("task is signed by an unknown key " + t.KeyId)
	case keys[js.KeyId] == nil:
		return errors.New("job is signed by an unknown key " + js.KeyId)
	case !ed25519.Verify(keys[js.KeyId], JobEnvelope(JobOf(t)), js.Signature):
		return errors.New("job signature does not verify: the task is not what the operator dispatched")
	case t.LeaseExpiresAt == nil || !ed25519.Verify(keys[t.KeyId], LeaseEnvelope(self.ID, t), t.Signature):
		return errors.New("task signature does not verify: the lease is not this agent's")
	}
	if err := covers(js.Target, self); err != nil {
		return err
	}
	switch {
	case t.Attempt < 1 || t.Attempt > js.MaxAttempts:
		return fmt.Errorf("attempt %d is outside the job's 1..%d", t.Attempt, js.MaxAttempts)
	case now.Sub(t.LeaseExpiresAt.AsTime()) > MaxSkew:
		return errors.New("task lease has expired: a replay")
	case now.Sub(js.GetNotAfter().AsTime()) > MaxSkew:
		return errors.New("job has expired: its tasks may no longer run")
	}
	return nil
}

// covers tells whether the signed target reaches self.
func covers(target string, self Self) error {
	tg, err := ParseTargetText(target)
	if err != nil {
		return err
	}
	if tg.AgentID != "" {
		if tg.AgentID != self.ID {
			return fmt.Errorf("the job was dispatched to agent %s, not this one", tg.AgentID)
		}
		return nil
	}
	m, err := tg.Matcher()
	if err != nil {
		return fmt.Errorf("the signed target %.80q: %v", target, err)
	}
	if !m.Matches(self.Name, self.Labels) {
		return fmt.Errorf("the job was dispatched to %s, which this agent is not", tg)
	}
	return nil
}
