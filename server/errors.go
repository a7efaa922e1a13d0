package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/store"
)

// storeError maps a store error to the Connect error a caller sees. This is the one
// place where store kinds become codes; internal detail goes to the log only.
func (s *Server) storeError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	switch store.KindOf(err) {
	case store.KindNotFound:
		return connect.NewError(connect.CodeNotFound, errors.New(msg))
	case store.KindUnauthenticated:
		return connect.NewError(connect.CodeUnauthenticated, errors.New(msg))
	case store.KindPrecondition:
		return connect.NewError(connect.CodeFailedPrecondition, errors.New(msg))
	case store.KindExhausted:
		if store.IsDispatchIncomplete(err) {
			s.log.Warn("dispatch incomplete", causeArgs(err)...)
		}
		return connect.NewError(connect.CodeResourceExhausted, errors.New(msg))
	case store.KindInvalid:
		return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
	case store.KindExists:
		return connect.NewError(connect.CodeAlreadyExists, errors.New(msg))
	case store.KindUnavailable:
		if store.IsDispatchIncomplete(err) {
			// What became of the dispatch, and what the caller may do: written for it.
			s.log.Warn("dispatch incomplete", causeArgs(err)...)
			return connect.NewError(connect.CodeUnavailable, errors.New(msg))
		}
		if ctx.Err() != nil {
			return connect.NewError(connect.CodeCanceled, errors.New("request cancelled"))
		}
		s.log.Warn("store unavailable", causeArgs(err)...)
		return connect.NewError(connect.CodeUnavailable, errors.New("store unavailable; try again"))
	}
	s.log.Error("internal error", causeArgs(err)...)
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// causeArgs returns log attributes for a store error: its message, written for
// callers, and its cause, which is what an operator needs to see in the log.
func causeArgs(err error) []any {
	args := []any{"err", err}
	if cause := errors.Unwrap(err); cause != nil {
		args = append(args, "cause", cause.Error())
	}
	return args
}

func invalid(field, format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(field+": "+format, args...))
}

func exhausted(format string, args ...any) error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf(format, args...))
}

// writeError writes err in the protocol the request used (Connect, gRPC, gRPC-Web).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if !s.errw.IsSupported(r) {
		// Not a call of any protocol forge speaks: say that first, whatever
		// the token (Connect would refuse it with an empty 405 or 415).
		code := http.StatusUnsupportedMediaType
		if r.Method != http.MethodPost {
			code = http.StatusMethodNotAllowed
			w.Header().Set("Allow", http.MethodPost)
		}
		http.Error(w, strings.TrimSuffix(refusalText(code, r, w.Header()), "\n"), code)
		return
	}
	_ = s.errw.Write(w, r, err)
}
