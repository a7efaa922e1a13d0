package storetest

import (
	"time"

	"github.com/orange-forge/forge/store"
)

var enrollmentCases = []testCase{
	{"Tokens", testEnrollment, nil},
}

func testEnrollment(h *harness) {
	t0 := h.now()
	e1, err := h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e1", SecretHash: hash("s1"), MaxUses: 2, TTL: time.Hour, Description: "two"})
	if err != nil {
		h.Fatal(err)
	}
	if e1.ID != "e1" || !e1.CreatedAt.Equal(t0) || !e1.ExpiresAt.Equal(t0.Add(time.Hour)) || e1.MaxUses != 2 || e1.Uses != 0 ||
		e1.Description != "two" || !e1.RevokedAt.IsZero() {
		h.Fatalf("CreateEnrollmentToken = %+v; want it expiring an hour after now by the store's clock", e1)
	}
	_, err = h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e1", SecretHash: hash("other")})
	wantErr(h, err, store.ErrEnrollmentExists("e1"), "a second token with the same id")

	use := &store.EnrollmentUse{ID: "e1", SecretHash: hash("s1")}
	reg := func() error {
		_, err := h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: "x", SecretHash: hash("agent"), Enrollment: use})
		return err
	}
	if err := h.s.CheckEnrollmentToken(h.ctx, "e1", hash("s1")); err != nil {
		h.Fatalf("CheckEnrollmentToken: %v", err)
	}
	wantErr(h, h.s.CheckEnrollmentToken(h.ctx, "e1", hash("bad")), store.ErrEnrollmentToken(), "wrong enrollment secret")
	wantErr(h, h.s.CheckEnrollmentToken(h.ctx, "e9", hash("s1")), store.ErrEnrollmentToken(), "unknown enrollment token")
	_, err = h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: "x", SecretHash: hash("a"), Enrollment: &store.EnrollmentUse{ID: "e1", SecretHash: hash("bad")}})
	wantErr(h, err, store.ErrEnrollmentToken(), "register with a wrong enrollment secret")
	for i := 0; i < 2; i++ {
		if err := reg(); err != nil {
			h.Fatalf("registration %d: %v", i+1, err)
		}
	}
	usedUp := store.Errorf(store.KindUnauthenticated, store.FmtEnrollUsedUp, "e1", 2)
	wantErr(h, reg(), usedUp, "used-up enrollment token")
	wantErr(h, h.s.CheckEnrollmentToken(h.ctx, "e1", hash("s1")), usedUp, "check of a used-up enrollment token")

	if _, err := h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e2", SecretHash: hash("s2"), TTL: time.Hour}); err != nil {
		h.Fatal(err)
	}
	use = &store.EnrollmentUse{ID: "e2", SecretHash: hash("s2")}
	h.clock.Advance(time.Hour - time.Millisecond)
	if err := reg(); err != nil {
		h.Fatalf("registration just before expiry: %v", err)
	}
	h.clock.Advance(time.Millisecond)
	wantErr(h, reg(), store.Errorf(store.KindUnauthenticated, store.FmtEnrollExpired, "e2"), "expired enrollment token")

	if _, err := h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e3", SecretHash: hash("s3")}); err != nil {
		h.Fatal(err)
	}
	use = &store.EnrollmentUse{ID: "e3", SecretHash: hash("s3")}
	h.clock.Advance(1000 * time.Hour)
	if err := reg(); err != nil {
		h.Fatalf("a token without a TTL stopped working: %v", err)
	}
	tRevoke := h.now()
	if rv, err := h.s.RevokeEnrollmentToken(h.ctx, "e3"); err != nil || !rv.RevokedAt.Equal(tRevoke) || rv.Uses != 1 {
		h.Fatalf("RevokeEnrollmentToken = %+v, %v", rv, err)
	}
	h.clock.Advance(time.Second)
	if rv, err := h.s.RevokeEnrollmentToken(h.ctx, "e3"); err != nil || !rv.RevokedAt.Equal(tRevoke) {
		h.Fatalf("revoking twice = %+v, %v; want it unchanged", rv, err)
	}
	wantErr(h, reg(), store.Errorf(store.KindUnauthenticated, store.FmtEnrollRevoked, "e3"), "revoked enrollment token")

	list, err := h.s.ListEnrollmentTokens(h.ctx)
	if err != nil || len(list) != 3 {
		h.Fatalf("ListEnrollmentTokens = %d, %v", len(list), err)
	}
	for i, want := range []struct {
		id      string
		uses    int
		revoked bool
	}{{"e1", 2, false}, {"e2", 1, false}, {"e3", 1, true}} {
		if t := list[i]; t.ID != want.id || t.Uses != want.uses || t.RevokedAt.IsZero() == want.revoked {
			h.Fatalf("token %d = %+v; want %s with %d uses, revoked %v (listed in order of creation)", i, t, want.id, want.uses, want.revoked)
		}
	}
	_, err = h.s.RevokeEnrollmentToken(h.ctx, "nope")
	wantErr(h, err, store.ErrEnrollmentNotFound("nope"), "revoke of an unknown enrollment token")
	_, err = h.s.RevokeEnrollmentToken(h.ctx, "no\"pe")
	wantErr(h, err, store.ErrEnrollmentNotFound("no\"pe"), "revoke of an id that needs quoting")
}
