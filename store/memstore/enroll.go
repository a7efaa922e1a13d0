package memstore

import (
	"cmp"
	"context"
	"crypto/subtle"
	"slices"
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

// checkEnrollment finds a stored enrollment token that lets an agent register now;
// the caller holds the lock.
func (s *Store) checkEnrollment(id string, hash []byte, now time.Time, check func(store.EnrollmentToken, time.Time) error) (*store.EnrollmentToken, error) {
	t := s.enroll[id]
	if t == nil || subtle.ConstantTimeCompare(t.SecretHash, hash) != 1 {
		return nil, store.ErrEnrollmentToken()
	}
	if err := check(*t, now); err != nil {
		return nil, err
	}
	return t, nil
}

// CreateEnrollmentToken implements store.Store.
func (s *Store) CreateEnrollmentToken(ctx context.Context, p store.EnrollmentParams) (store.EnrollmentToken, error) {
	return locked(ctx, s, func(now time.Time) (store.EnrollmentToken, error) {
		if _, ok := s.enroll[p.ID]; ok {
			return store.EnrollmentToken{}, store.ErrEnrollmentExists(p.ID)
		}
		t := &store.EnrollmentToken{ID: p.ID, SecretHash: slices.Clone(p.SecretHash), Description: p.Description,
			MaxUses: p.MaxUses, CreatedAt: now}
		if p.TTL > 0 {
			t.ExpiresAt = now.Add(p.TTL)
		}
		s.enroll[p.ID] = t
		return *t, nil
	})
}

// ListEnrollmentTokens implements store.Store.
func (s *Store) ListEnrollmentTokens(ctx context.Context) ([]store.EnrollmentToken, error) {
	return locked(ctx, s, func(time.Time) ([]store.EnrollmentToken, error) {
		out := make([]store.EnrollmentToken, 0, len(s.enroll))
		for _, t := range s.enroll {
			out = append(out, *t)
		}
		// In order of creation, ties by id, as the Redis store lists them.
		slices.SortFunc(out, func(x, y store.EnrollmentToken) int {
			return cmp.Or(x.CreatedAt.Compare(y.CreatedAt), strings.Compare(x.ID, y.ID))
		})
		return out, nil
	})
}

// RevokeEnrollmentToken implements store.Store.
func (s *Store) RevokeEnrollmentToken(ctx context.Context, id string) (store.EnrollmentToken, error) {
	return locked(ctx, s, func(now time.Time) (store.EnrollmentToken, error) {
		t, err := find(s.enroll, id, store.ErrEnrollmentNotFound)
		if err != nil {
			return store.EnrollmentToken{}, err
		}
		if t.RevokedAt.IsZero() {
			t.RevokedAt = now
		}
		return *t, nil
	})
}

// CheckEnrollmentToken implements store.Store.
func (s *Store) CheckEnrollmentToken(ctx context.Context, id string, secretHash []byte) error {
	return lockedDo(ctx, s, func(now time.Time) error {
		_, err := s.checkEnrollment(id, secretHash, now, store.CheckEnrollment)
		return err
	})
}
