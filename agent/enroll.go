package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sort"

	"connectrpc.com/connect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/bearer"
	"github.com/orange-forge/forge/store"
)

// refusal is what an answer to a call made with the agent's own token says
// about that token.
type refusal int

const (
	notRefused     refusal = iota
	refusedUnknown         // the server does not know the identity: enroll again
	refusedRevoked         // revoked, or refused for another reason: stop for good
)

// refusalOf reads an answer by the messages a server refuses a token with,
// code unauthenticated: store.MsgUnknownAgent and store.MsgAgentRevoked, part
// of forge's API (the agent lifecycle rules).
func refusalOf(err error) refusal {
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		return notRefused
	}
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Message() == store.MsgUnknownAgent {
		return refusedUnknown
	}
	return refusedRevoked
}

// revokedError is the error Run returns for a refusal that stops the agent for
// good: ErrRevoked, quoting the server when it said something else than
// "agent revoked".
func revokedError(cause error) error {
	var ce *connect.Error
	if cause == nil || (errors.As(cause, &ce) && ce.Message() == store.MsgAgentRevoked) {
		return ErrRevoked
	}
	return fmt.Errorf("%w; the server said: %v", ErrRevoked, cause)
}

// enroll loads the saved identity or registers a new one. A state dir that
// recorded a revocation stops it at once. A saved identity is announced to the
// server (Register with the agent's own token), so the name, labels and task
// types given at this start replace those it held; a server that no longer
// knows the identity gets a new one enrolled, one that revoked it stops the
// agent.
func (a *Agent) enroll(ctx context.Context) error {
	if st := a.st; st != nil {
		rev, err := st.loadRevoked()
		if err != nil {
			return err
		}
		if rev.AgentID != "" {
			a.log.Error("this agent was revoked; it does not start again", "agent", rev.AgentID, "revoked_at", rev.At, "state_dir", st.dir)
			return ErrRevoked
		}
		id, err := st.loadIdentity()
		if err != nil {
			return err
		}
		if id.AgentID != "" {
			a.mu.Lock()
			a.id, a.token = id.AgentID, id.AgentToken
			a.learnKeys(id.SigningKeys)
			a.mu.Unlock()
			a.log.Info("using saved identity", "agent", id.AgentID, "state_dir", st.dir)
			err := a.register(ctx, "", true)
			switch refusalOf(err) {
			case refusedUnknown:
				return a.reenroll(ctx, a.generation())
			case refusedRevoked:
				a.log.Error("the server revoked this agent; stopping for good", "agent", id.AgentID, "err", err)
				a.recordRevoked()
				return revokedError(err)
			}
			return err
		}
	}
	if a.cfg.EnrollToken == "" {
		return errors.New("agent: no saved identity and no enrollment token")
	}
	return a.register(ctx, "", false)
}

// generation returns the identity generation in use (see Agent.gen).
func (a *Agent) generation() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gen
}

// reenroll registers a new identity because the server answered the token of
// identity generation gen "unknown agent". It does nothing when the agent has
// enrolled again since gen (another call met the same refusal first), and
// answers ErrUnknown when there is no enrollment token to do it with.
func (a *Agent) reenroll(ctx context.Context, gen uint64) error {
	a.mu.Lock()
	old, cur := a.id, a.gen
	a.mu.Unlock()
	if gen != cur {
		return nil
	}
	if a.cfg.EnrollToken == "" {
		a.log.Error("the server does not know this agent (never registered there, or its state was lost), and there is no enrollment token to enroll again with",
			"agent", old)
		return ErrUnknown
	}
	a.log.Warn("the server does not know this agent (never registered there, or its state was lost); enrolling again", "agent", old)
	return a.register(ctx, old, false)
}

// register enrolls a new identity with the enrollment token, retrying with
// backoff while the server cannot be reached, and keeps it (in the state dir
// too). previous is the identity the server no longer knew, if any.
//
// With self, it announces the saved identity instead (Register with the
// agent's own token): the server replaces the name, labels and task types it
// held with these, and the agent keeps its token. A refusal of the token is
// returned as it came, for the caller to act on (refusalOf); a server too old
// to take the call is logged and left alone.
func (a *Agent) register(ctx context.Context, previous string, self bool) error {
	a.mu.Lock()
	types := make([]string, 0, len(a.handlers))
	for t := range a.handlers {
		types = append(types, t)
	}
	st := a.st
	a.mu.Unlock()
	sort.Strings(types)
	// One key for this enrollment, sent again with each retry: a Register
	// whose answer was lost (timed out after the server enrolled us) then
	// names the same agent instead of leaving an orphan behind.
	var key string
	if !self {
		key = rand.Text()
	}
	var bo backoff
	for {
		idx, c := a.client()
		msg := &forgev1.RegisterRequest{
			Name: a.cfg.Name, Labels: a.cfg.Labels, Hostname: a.hostname,
			Version: a.cfg.Version, TaskTypes: types, PreviousAgentId: previous,
			IdempotencyKey: key,
		}
		var req *connect.Request[forgev1.RegisterRequest]
		if self {
			req, _ = authed(a, msg)
		} else {
			req = connect.NewRequest(msg)
			bearer.Set(req.Header(), a.cfg.EnrollToken)
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		res, err := c.Register(cctx, req)
		cancel()
		if err == nil {
			m := res.Msg
			if m.AgentId == "" || (m.AgentToken == "" && !self) {
				return errors.New("agent: register: the server answered without an identity")
			}
			if self && m.AgentId != a.ID() {
				return fmt.Errorf("agent: register: the server answered for agent %q, not this agent's saved identity %q", m.AgentId, a.ID())
			}
			var given []signingKey
			for _, k := range m.SigningKeys {
				if k != nil {
					given = append(given, signingKey{ID: k.Id, PublicKey: k.PublicKey})
				}
			}
			a.mu.Lock()
			keys := a.learnKeys(given) // those learned before stay
			token := a.token
			if !self {
				token = m.AgentToken
			}
			a.mu.Unlock()
			if st != nil {
				if err := st.saveIdentity(identity{AgentID: m.AgentId, AgentToken: token, SigningKeys: keys}); err != nil {
					return err
				}
			}
			a.mu.Lock()
			if !self {
				a.id, a.token = m.AgentId, m.AgentToken
				a.gen++
			}
			a.lastGood = idx
			if d := m.PollWait.AsDuration(); a.cfg.PollWait == 0 && m.PollWait != nil && d > 0 {
				a.pollWait = d
			}
			if d := m.HeartbeatInterval.AsDuration(); m.HeartbeatInterval != nil && d > 0 {
				a.hbInterval, a.hbKnown = d, true
			}
			a.mu.Unlock()
			switch {
			case self:
				a.log.Debug("the server took this agent's name, labels and task types", "agent", m.AgentId, "server", a.servers[idx])
			case previous != "":
				a.log.Info("enrolled again", "agent", m.AgentId, "previous_agent", previous, "server", a.servers[idx])
			default:
				a.log.Info("registered", "agent", m.AgentId, "server", a.servers[idx])
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch connect.CodeOf(err) {
		case connect.CodeUnauthenticated:
			if self {
				return err // the caller tells unknown from revoked
			}
			return fmt.Errorf("agent: the server refused the enrollment token: %w", err)
		case connect.CodePermissionDenied, connect.CodeUnimplemented:
			if self {
				// A server from before Register took an agent's own token: it
				// keeps what it held of this agent.
				a.log.Warn("the server cannot update this agent's name, labels and task types (an older server?); it keeps those it had",
					"server", a.servers[idx], "err", err)
				return nil
			}
			return fmt.Errorf("agent: register: %w", err)
		case connect.CodeInvalidArgument:
			return fmt.Errorf("agent: register: %w", err)
		}
		// Anything else may pass: the server unreachable, or resource_exhausted
		// (registrations rate-limited while a fleet enrolls at once, or the store
		// full): retry with backoff.
		if !bo.failing() {
			a.log.Warn("cannot register; retrying with backoff", "server", a.servers[idx], "err", err)
		}
		a.failover(idx)
		if !sleep(ctx, bo.next()) {
			return ctx.Err()
		}
	}
}

// recordRevoked keeps the revocation in the state dir, so the agent never
// starts again with the revoked identity, whatever a server says then (one that
// lost its state would answer "unknown agent").
func (a *Agent) recordRevoked() {
	a.mu.Lock()
	st, id := a.st, a.id
	a.mu.Unlock()
	if st == nil {
		return
	}
	if err := st.saveRevoked(id); err != nil {
		a.log.Error("cannot record the revocation in the state dir", "err", err)
	}
}
