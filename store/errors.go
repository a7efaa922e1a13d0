package store

import (
	"errors"
	"fmt"
)

// Kind classifies a store error; the server maps each kind to one Connect code.
type Kind int

// Error kinds.
const (
	KindInternal        Kind = iota // a bug or an unexpected reply; details stay in the log
	KindNotFound                    // no such thing, or not the caller's to see
	KindUnauthenticated             // credential unknown, wrong or revoked
	KindPrecondition                // stale attempt, finished task, conflicting report
	KindExhausted                   // a limit was reached
	KindInvalid                     // the request is malformed
	KindUnavailable                 // the backing store cannot be reached
)

// Error is an error with a Kind and a message meant for the caller.
type Error struct {
	Kind Kind
	Msg  string
	Err  error // the cause, for logs; never shown to callers
}

func (e *Error) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is(err, ErrNotFound) and friends match any error of the same kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Msg == "" && t.Err == nil && t.Kind == e.Kind
}

// Sentinels to test kinds with errors.Is.
var (
	ErrNotFound        = &Error{Kind: KindNotFound}
	ErrUnauthenticated = &Error{Kind: KindUnauthenticated}
	ErrPrecondition    = &Error{Kind: KindPrecondition}
	ErrExhausted       = &Error{Kind: KindExhausted}
	ErrInvalid         = &Error{Kind: KindInvalid}
	ErrUnavailable     = &Error{Kind: KindUnavailable}
)

// Errorf returns an *Error of the given kind with a formatted message.
func Errorf(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of the given kind that keeps err as its cause.
func Wrap(kind Kind, err error, msg string) error {
	return &Error{Kind: kind, Msg: msg, Err: err}
}

// KindOf returns the kind of err, or KindInternal if it has none.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}
