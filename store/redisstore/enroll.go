package redisstore

import (
	"context"
	"slices"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// Enrollment tokens live in the global slot: one hash per token and a list of ids.

// Modes of enrollCheckScript.
const (
	enrollCheckOnly   = "0" // check the token
	enrollConsume     = "1" // check it and count a use
	enrollCheckReplay = "r" // check it for a replayed registration
)

func (s *Store) checkEnrollment(ctx context.Context, id string, hash []byte, now int64, mode string) error {
	_, err := s.run(ctx, enrollCheckScript, []string{s.k.enrollment(id)}, []string{itoa(now), string(hash), mode, id})
	return err
}

// CreateEnrollmentToken implements store.Store.
func (s *Store) CreateEnrollmentToken(ctx context.Context, p store.EnrollmentParams) (store.EnrollmentToken, error) {
	now := s.nowMS()
	t := store.EnrollmentToken{ID: p.ID, SecretHash: p.SecretHash, Description: p.Description, MaxUses: p.MaxUses,
		CreatedAt: time.UnixMilli(now)}
	exp := int64(0)
	if p.TTL > 0 {
		exp = now + p.TTL.Milliseconds()
		t.ExpiresAt = time.UnixMilli(exp)
	}
	_, err := s.run(ctx, enrollCreateScript, []string{s.k.enrollment(t.ID), s.k.enrollments()},
		[]string{t.ID, "hash", string(t.SecretHash), "desc", t.Description, "max", itoa(t.MaxUses), "uses", "0",
			"exp", itoa(exp), "ca", itoa(now), "rev", "0"})
	if err != nil {
		return store.EnrollmentToken{}, err
	}
	return t, nil
}

func decodeEnrollment(id string, f map[string]string) store.EnrollmentToken {
	return store.EnrollmentToken{
		ID:          id,
		SecretHash:  []byte(f["hash"]),
		Description: f["desc"],
		MaxUses:     int(atoi(f["max"])),
		Uses:        int(atoi(f["uses"])),
		ExpiresAt:   msTime(f["exp"]),
		CreatedAt:   msTime(f["ca"]),
		RevokedAt:   msTime(f["rev"]),
	}
}

// ListEnrollmentTokens implements store.Store.
func (s *Store) ListEnrollmentTokens(ctx context.Context) ([]store.EnrollmentToken, error) {
	ids, err := s.client.Do(ctx, s.client.B().Zrange().Key(s.k.enrollments()).Min("0").Max("-1").Build()).AsStrSlice()
	if err != nil {
		return nil, s.wrap(ctx, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make(rueidis.Commands, len(ids))
	for i, id := range ids {
		cmds[i] = s.client.B().Hgetall().Key(s.k.enrollment(id)).Build()
	}
	out := make([]store.EnrollmentToken, 0, len(ids))
	for i, r := range s.client.DoMulti(ctx, cmds...) {
		f, err := r.AsStrMap()
		if err != nil {
			return nil, s.wrap(ctx, err)
		}
		if len(f) > 0 {
			out = append(out, decodeEnrollment(ids[i], f))
		}
	}
	slices.SortStableFunc(out, func(x, y store.EnrollmentToken) int { return x.CreatedAt.Compare(y.CreatedAt) })
	return out, nil
}

// RevokeEnrollmentToken implements store.Store.
func (s *Store) RevokeEnrollmentToken(ctx context.Context, id string) (store.EnrollmentToken, error) {
	arr, err := s.run(ctx, enrollRevokeScript, []string{s.k.enrollment(id)}, []string{itoa(s.nowMS()), id})
	if store.KindOf(err) == store.KindNotFound {
		// Enrollment token ids reach the script unchecked; the message quotes
		// them as Go does (the script's q knows only ids that need no escapes).
		return store.EnrollmentToken{}, store.ErrEnrollmentNotFound(id)
	}
	if err != nil {
		return store.EnrollmentToken{}, err
	}
	return decodeEnrollment(id, pairs(arr[1])), nil
}

// CheckEnrollmentToken implements store.Store.
func (s *Store) CheckEnrollmentToken(ctx context.Context, id string, secretHash []byte) error {
	return s.checkEnrollment(ctx, id, secretHash, s.nowMS(), enrollCheckOnly)
}
