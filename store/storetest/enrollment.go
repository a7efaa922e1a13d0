package storetest

import (
	"time"

	"github.com/orange-forge/forge/store"
)

var enrollmentCases = []testCase{
	{"Tokens", testEnrollment, nil},
	{"Replay", testEnrollmentReplay, nil},
}

// testEnrollmentReplay: a registration repeated with the same request key within
// the replay window names the first one's agent with the new token (the first
// token stops working), counts no enrollment use, and makes no second agent.
func testEnrollmentReplay(h *harness) {
	if _, err := h.s.CreateEnrollmentToken(h.ctx, store.EnrollmentParams{ID: "e1", SecretHash: hash("s1"), MaxUses: 2}); err != nil {
		h.Fatal(err)
	}
	use := &store.EnrollmentUse{ID: "e1", SecretHash: hash("s1")}
	reg := func(key, secret string, use *store.EnrollmentUse) (store.Agent, error) {
		return h.s.RegisterAgent(h.ctx, store.RegisterParams{Name: "x", Labels: map[string]string{"env": "prod"},
			SecretHash: hash(secret), Enrollment: use, RequestKey: key})
	}
	first, err := reg("k1", "first", use)
	if err != nil {
		h.Fatalf("first registration: %v", err)
	}
	h.clock.Advance(store.EnrollReplayWindow - time.Millisecond)
	again, err := reg("k1", "second", use)
	if err != nil {
		h.Fatalf("replayed registration: %v", err)
	}
	if again.ID != first.ID || again.Name != "x" || again.Labels["env"] != "prod" {
		h.Fatalf("replayed registration = %+v; want agent %s as the first made it", again, first.ID)
	}
	wantErr(h, h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: first.ID, SecretHash: hash("first")}), store.ErrUnknownAgent(),
		"the first registration's token after its replay")
	if err := h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: first.ID, SecretHash: hash("second")}); err != nil {
		h.Fatalf("the replay's token: %v", err)
	}
	agents, _, err := h.s.ListAgents(h.ctx, store.AgentFilter{})
	if err != nil {
		h.Fatal(err)
	}
	if len(agents) != 1 || agents[0].ID != first.ID || agents[0].Status != store.AgentOnline {
		h.Fatalf("ListAgents = %+v; want only agent %s, online", agents, first.ID)
	}
	if toks, err := h.s.ListEnrollmentTokens(h.ctx); err != nil || len(toks) != 1 || toks[0].Uses != 1 {
		h.Fatalf("ListEnrollmentTokens = %+v, %v; want e1 used once: a replay counts no use", toks, err)
	}

	// The token's last use, then replays of both keys: the use each counted
	// lets its replay through.
	if _, err := reg("k2", "k2-first", use); err != nil {
		h.Fatalf("registration with the last use: %v", err)
	}
	usedUp := store.Errorf(store.KindUnauthenticated, store.FmtEnrollUsedUp, "e1", 2)
	_, err = reg("k3", "k3", use)
	wantErr(h, err, usedUp, "a new registration with a used-up token")
	for _, k := range []string{"k1", "k2"} {
		if _, err := reg(k, k+"-again", use); err != nil {
			h.Fatalf("replay of %s with a used-up token: %v", k, err)
		}
	}
	_, err = reg("k1", "wrong", &store.EnrollmentUse{ID: "e1", SecretHash: hash("bad")})
	wantErr(h, err, store.ErrEnrollmentToken(), "a replay with a wrong enrollment secret")
	if err := h.s.AuthenticateAgent(h.ctx, store.Cred{AgentID: first.ID, SecretHash: hash("k1-again")}); err != nil {
		h.Fatalf("a refused replay changed the agent's token: %v", err)
	}

	// Tokens given by flag (no stored token): the key alone. After the window
	// the same key makes a new agent.
	a, err := reg("k4", "k4", nil)
	if err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(store.EnrollReplayWindow)
	b, err := reg("k4", "k4-later", nil)
	if err != nil {
		h.Fatal(err)
	}
	if b.ID == a.ID {
		h.Fatalf("a registration after the replay window named agent %s again; want a new agent", a.ID)
	}
	c, err := reg("k4", "k4-replay", nil)
	if err != nil || c.ID != b.ID {
		h.Fatalf("replay in the new window = %+v, %v; want agent %s", c, err, b.ID)
	}
	d, err := reg("", "nokey", nil)
	if err != nil {
		h.Fatal(err)
	}
	if e, err := reg("", "nokey", nil); err != nil || e.ID == d.ID {
		h.Fatalf("registration without a key = %+v, %v; want a new agent each time", e, err)
	}

	// A replay of an agent revoked since is refused as revoked.
	if _, err := h.s.RevokeAgent(h.ctx, b.ID, "test"); err != nil {
		h.Fatal(err)
	}
	_, err = reg("k4", "k4-after-revoke", nil)
	wantErr(h, err, store.ErrRevokedAgent(), "a replay of a revoked agent")
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
