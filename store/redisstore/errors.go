package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
	"github.com/orange-forge/forge/store/redisstore/internal/luaprelude"
)

// errIDTaken is registerScript's answer when the agent id it was given is taken.
var errIDTaken = errors.New("redisstore: agent id taken")

// typeUnhandledError is createTasksScript's answer when the single agent of a
// dispatch does not handle its type; the caller makes the error callers see
// (store.CheckTaskType) from the agent's types.
type typeUnhandledError struct{ types []string }

func (e *typeUnhandledError) Error() string {
	return "redisstore: the agent does not handle the task type"
}

// scriptError turns a script's error answer, fail(code, msg) = {'E', code, msg}
// with its leading 'E' removed, into the error callers see. This is the one place
// script error codes become store kinds: the codes are the store.Kind values the
// prelude's E_* constants were generated from, and luaprelude.CodeIDTaken. Any
// other answer is a bug: KindInternal, logged with its text.
func (s *Store) scriptError(ans []rueidis.RedisMessage) error {
	var code int64 = -1 // no code: unknown
	var msg string
	if len(ans) == 2 {
		if c, err := ans[0].ToInt64(); err == nil {
			code = c
		}
		msg, _ = ans[1].ToString()
	}
	switch k := store.Kind(code); k {
	case store.KindNotFound, store.KindUnauthenticated, store.KindPrecondition, store.KindExhausted, store.KindInvalid:
		return &store.Error{Kind: k, Msg: msg}
	}
	if code == luaprelude.CodeIDTaken {
		return errIDTaken
	}
	if code == luaprelude.CodeTypeUnhandled {
		e := &typeUnhandledError{}
		if msg != "" && msg != "null" {
			_ = json.Unmarshal([]byte(msg), &e.types) // the agent's record, as decodeAgent reads it
		}
		return e
	}
	err := fmt.Errorf("redisstore: unknown script error answer %v", ans)
	s.log.Error("a script answered an unknown error", "err", err)
	return store.Wrap(store.KindInternal, err, "internal store error")
}

// wrap turns a Redis or connection error into a store error. Its Kind reveals
// nothing of the backend: a Redis reply forge did not expect is a bug
// (KindInternal); everything else — unreachable, refused, failing over, a
// closed store, a cancelled request — is KindUnavailable. Its message names the
// cause without addresses or secrets (cause.go), for the server's log and
// /readyz; the raw error stays in Err.
func (s *Store) wrap(ctx context.Context, err error) error {
	err = s.conn.wrap(ctx, err, !s.opened.Load())
	if c := CauseOf(err); c == CausePermission || c == CauseAuth {
		s.refused.note(err, c)
	}
	return err
}
