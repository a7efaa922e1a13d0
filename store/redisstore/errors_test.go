package redisstore

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// TestScriptErrorCodes checks the one place where scripts' error codes become
// store kinds: the codes of store.Kind map to their kind with the script's
// message, an id collision to errIDTaken, and anything else — an unknown code, a
// code that is not a number (as the scripts' old string kinds were) — to
// KindInternal, logged with its text.
func TestScriptErrorCodes(t *testing.T) {
	t.Parallel()
	var log bytes.Buffer
	s, err := Open(t.Context(), redistest.Start(t).URL(), store.Config{},
		Options{Logger: slog.New(slog.NewTextHandler(&log, nil)), Prefix: "codes"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	run := func(body string) error {
		_, err := s.run(t.Context(), newScript("", body), nil, nil)
		return err
	}
	for _, k := range []store.Kind{store.KindNotFound, store.KindUnauthenticated, store.KindPrecondition, store.KindExhausted, store.KindInvalid} {
		err := run("return fail(" + itoa(k) + ", 'the message')")
		if store.KindOf(err) != k || err.Error() != "the message" {
			t.Errorf("fail(%d) = %v (kind %d), want kind %d with the script's message", k, err, store.KindOf(err), k)
		}
	}
	if err := run("return fail(E_ID_TAKEN, MSG_ID_TAKEN)"); !errors.Is(err, errIDTaken) {
		t.Errorf("fail(E_ID_TAKEN) = %v, want errIDTaken", err)
	}
	for _, body := range []string{"return fail(999, 'odd')", "return {'E', 'unauth', 'odd'}", "return fail(E_NOT_FOUND)"} {
		log.Reset()
		err := run(body)
		if store.KindOf(err) != store.KindInternal || err.Error() != "internal store error" {
			t.Errorf("%s: %v (kind %d), want KindInternal saying nothing of it", body, err, store.KindOf(err))
		}
		if !strings.Contains(log.String(), "unknown error") {
			t.Errorf("%s: not logged (log %q)", body, log.String())
		}
	}
}

// TestRegisterRetriesOnlyOnCollision makes the first agent ids RegisterAgent draws
// collide with an existing agent: it draws again, and gives up with KindInternal
// after a few collisions in a row.
func TestRegisterRetriesOnlyOnCollision(t *testing.T) {
	t.Parallel()
	s, err := Open(t.Context(), redistest.Start(t).URL(), store.Config{}, Options{Prefix: "collide"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	taken, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "first", SecretHash: []byte("h")})
	if err != nil {
		t.Fatal(err)
	}
	draws := 0
	fresh := store.NewAgentID()
	s.newAgentID = func() string {
		draws++
		if draws <= 2 {
			return taken.ID
		}
		return fresh
	}
	a, err := s.RegisterAgent(t.Context(), store.RegisterParams{Name: "second", SecretHash: []byte("h")})
	if err != nil || a.ID != fresh || draws != 3 {
		t.Fatalf("RegisterAgent after two collisions = %s, %v after %d draws; want %s after 3", a.ID, err, draws, fresh)
	}
	if got, _ := s.GetAgent(t.Context(), taken.ID); got.Name != "first" {
		t.Fatalf("the colliding registration changed the agent it collided with: %+v", got)
	}
	draws = 0
	s.newAgentID = func() string { draws++; return taken.ID }
	_, err = s.RegisterAgent(t.Context(), store.RegisterParams{Name: "third", SecretHash: []byte("h")})
	if store.KindOf(err) != store.KindInternal || draws != 4 {
		t.Fatalf("RegisterAgent always colliding = %v (kind %d) after %d draws; want KindInternal after 4", err, store.KindOf(err), draws)
	}
}
