package server

import (
	"errors"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/orange-forge/forge/store"
)

// agentRefused answers an agent credential the store refused (store.CheckAgentCred):
// unauthenticated with the store's message, "unknown agent" or "agent revoked",
// which agents act on (the Go agent enrolls again on the first and stops for good
// on the second). It counts the refusal by reason, and logs unknown agents in a
// summary line (refusalLog): after the store lost its state, a whole fleet is
// refused once each and comes back, and the log should say so without a line per
// agent — or per request of someone trying made-up tokens.
func (s *Server) agentRefused(agentID string, err error) error {
	reason := "other"
	switch {
	case store.IsUnknownAgent(err):
		reason = "unknown"
		if n, ok := s.unknown.note(time.Now()); ok {
			s.log.Info("agent tokens refused: unknown agent (never registered here, or the store lost its state); agents with an enrollment token enroll again",
				"refused", n, "last_agent", agentID)
		}
	case store.IsRevokedAgent(err):
		reason = "revoked"
	}
	s.metrics.agentRefused.WithLabelValues(reason).Inc()
	return connect.NewError(connect.CodeUnauthenticated, errors.New(err.Error()))
}

// refusalLogEvery is how often at most refusalLog lets a line through.
const refusalLogEvery = 10 * time.Second

// refusalLog counts events and lets a log line through for the first one and
// then at most once per refusalLogEvery, with the count since the last line.
type refusalLog struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

// note counts one event at now; it answers the count to log and true when a
// line is due.
func (l *refusalLog) note(now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if !l.last.IsZero() && now.Sub(l.last) < refusalLogEvery {
		return 0, false
	}
	n := l.n
	l.last, l.n = now, 0
	return n, true
}
