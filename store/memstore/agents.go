package memstore

import (
	"context"
	"crypto/subtle"
	"slices"
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

// replay is a registration a retry with the same request key repeats.
type replay struct {
	agentID string
	until   time.Time
}

// RegisterAgent implements store.Store.
func (s *Store) RegisterAgent(ctx context.Context, p store.RegisterParams) (store.Agent, error) {
	if err := store.CheckAgentName(p.Name); err != nil {
		return store.Agent{}, err
	}
	return locked(ctx, s, func(now time.Time) (store.Agent, error) {
		s.dropReplays(now)
		if r, ok := s.replays[p.RequestKey]; ok && p.RequestKey != "" {
			return s.replayRegister(p, r.agentID, now)
		}
		if p.Enrollment != nil {
			t, err := s.checkEnrollment(p.Enrollment.ID, p.Enrollment.SecretHash, now, store.CheckEnrollment)
			if err != nil {
				return store.Agent{}, err
			}
			t.Uses++
		}
		a := s.newAgent(store.NewAgentID(), p, now)
		if p.RequestKey != "" {
			s.replays[p.RequestKey] = replay{agentID: a.ID, until: now.Add(store.EnrollReplayWindow)}
			s.replayOrder = append(s.replayOrder, p.RequestKey)
		}
		return s.agentView(a, now), nil
	})
}

// replayRegister repeats the registration that made agent id: it gives the
// agent p's token in place of the one its first answer carried. The caller
// holds the lock.
func (s *Store) replayRegister(p store.RegisterParams, id string, now time.Time) (store.Agent, error) {
	if p.Enrollment != nil {
		if _, err := s.checkEnrollment(p.Enrollment.ID, p.Enrollment.SecretHash, now, store.CheckEnrollmentReplay); err != nil {
			return store.Agent{}, err
		}
	}
	a := s.agents[id]
	switch {
	case a == nil: // gone since (forgotten): made again under the same id
		a = s.newAgent(id, p, now)
	case !a.RevokedAt.IsZero():
		return store.Agent{}, store.ErrRevokedAgent()
	default:
		a.cur, a.next = slices.Clone(p.SecretHash), nil
		a.LastSeenAt, a.stopped = now, false
	}
	return s.agentView(a, now), nil
}

// newAgent stores a new agent made by registration p; the caller holds the lock.
func (s *Store) newAgent(id string, p store.RegisterParams, now time.Time) *agent {
	a := &agent{
		Agent: store.Agent{
			ID:           id,
			Name:         p.Name,
			Hostname:     p.Hostname,
			Version:      p.Version,
			Labels:       cloneMap(p.Labels),
			TaskTypes:    slices.Clone(p.TaskTypes),
			RegisteredAt: now,
			LastSeenAt:   now,
		},
		cur:     slices.Clone(p.SecretHash),
		running: make(map[string]*task),
	}
	s.agents[a.ID] = a
	return a
}

// dropReplays forgets the registrations whose replay window has passed; the
// caller holds the lock.
func (s *Store) dropReplays(now time.Time) {
	for len(s.replayOrder) > 0 {
		k := s.replayOrder[0]
		if r, ok := s.replays[k]; ok && now.Before(r.until) {
			return
		}
		delete(s.replays, k)
		s.replayOrder = s.replayOrder[1:]
	}
}

// UpdateAgent implements store.Store.
func (s *Store) UpdateAgent(ctx context.Context, c store.Cred, p store.RegisterParams) (store.Agent, error) {
	if err := store.CheckAgentName(p.Name); err != nil {
		return store.Agent{}, err
	}
	return locked(ctx, s, func(now time.Time) (store.Agent, error) {
		a, err := s.auth(c)
		if err != nil {
			return store.Agent{}, err
		}
		was := s.agentView(a, now)
		a.Name, a.Hostname, a.Version = p.Name, p.Hostname, p.Version
		a.Labels, a.TaskTypes = cloneMap(p.Labels), slices.Clone(p.TaskTypes)
		a.LastSeenAt, a.stopped = now, false
		return was, nil
	})
}

// auth finds the agent of a credential, promoting its next token on first use;
// the caller holds the lock.
func (s *Store) auth(c store.Cred) (*agent, error) {
	a := s.agents[c.AgentID]
	matched := false
	if a != nil && a.RevokedAt.IsZero() && len(c.SecretHash) > 0 {
		switch {
		case subtle.ConstantTimeCompare(a.cur, c.SecretHash) == 1:
			matched = true
		case a.next != nil && subtle.ConstantTimeCompare(a.next, c.SecretHash) == 1:
			a.cur, a.next = a.next, nil
			matched = true
		}
	}
	if err := store.CheckAgentCred(a != nil, a != nil && !a.RevokedAt.IsZero(), matched); err != nil {
		return nil, err
	}
	return a, nil
}

// AuthenticateAgent implements store.Store.
func (s *Store) AuthenticateAgent(ctx context.Context, c store.Cred) error {
	return lockedDo(ctx, s, func(time.Time) error {
		_, err := s.auth(c)
		return err
	})
}

// RotateAgentToken implements store.Store.
func (s *Store) RotateAgentToken(ctx context.Context, c store.Cred, newSecretHash []byte) error {
	return lockedDo(ctx, s, func(time.Time) error {
		a, err := s.auth(c)
		if err != nil {
			return err
		}
		a.next = slices.Clone(newSecretHash)
		return nil
	})
}

func (s *Store) status(a *agent, now time.Time) store.AgentStatus {
	return store.StatusAt(!a.RevokedAt.IsZero(), a.stopped, a.LastSeenAt, a.pollUntil, now, s.cfg.OnlineWindow)
}

func (s *Store) agentView(a *agent, now time.Time) store.Agent {
	v := a.Agent
	v.Labels = cloneMap(a.Labels)
	v.TaskTypes = slices.Clone(a.TaskTypes)
	v.Status = s.status(a, now)
	v.Pending = len(a.queue)
	v.Running = nil
	for _, t := range a.running {
		v.Running = append(v.Running, t.Ref())
	}
	slices.SortFunc(v.Running, func(x, y store.TaskRef) int { return strings.Compare(x.TaskID, y.TaskID) })
	return v
}

// GetAgent implements store.Store.
func (s *Store) GetAgent(ctx context.Context, id string) (store.Agent, error) {
	return locked(ctx, s, func(now time.Time) (store.Agent, error) {
		a, err := find(s.agents, id, store.ErrAgentNotFound)
		if err != nil {
			return store.Agent{}, err
		}
		return s.agentView(a, now), nil
	})
}

type agentPage struct {
	agents []store.Agent
	next   string
}

// ListAgents implements store.Store.
func (s *Store) ListAgents(ctx context.Context, f store.AgentFilter) ([]store.Agent, string, error) {
	p, err := locked(ctx, s, func(now time.Time) (agentPage, error) {
		ids := make([]string, 0, len(s.agents))
		for id := range s.agents {
			if id > f.Token {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		size := store.PageSize(f.Size)
		var out []store.Agent
		for _, id := range ids {
			a := s.agents[id]
			if !f.Selector.Matches(a.Labels) || !f.MatchesName(a.Name) {
				continue
			}
			if f.Status != store.AgentUnspecified && s.status(a, now) != f.Status {
				continue
			}
			if len(out) == size {
				return agentPage{out, out[len(out)-1].ID}, nil
			}
			out = append(out, s.agentView(a, now))
		}
		return agentPage{agents: out}, nil
	})
	return p.agents, p.next, err
}

// RevokeAgent implements store.Store.
func (s *Store) RevokeAgent(ctx context.Context, id, reason string) (store.Agent, error) {
	return locked(ctx, s, func(now time.Time) (store.Agent, error) {
		a, err := find(s.agents, id, store.ErrAgentNotFound)
		if err != nil {
			return store.Agent{}, err
		}
		if !a.RevokedAt.IsZero() {
			return s.agentView(a, now), nil
		}
		a.RevokedAt = now
		a.cur, a.next = nil, nil
		reason = store.ReasonRevoked(reason)
		for _, t := range slices.Clone(a.queue) {
			s.end(t, store.StateCanceled, reason, now)
		}
		for _, t := range a.running {
			s.end(t, store.StateCanceled, reason, now)
		}
		// Held tasks of rollout jobs would otherwise be released to a revoked agent.
		for _, tid := range a.tasks {
			if t := s.tasks[tid]; t != nil && t.Held {
				s.end(t, store.StateCanceled, reason, now)
			}
		}
		s.hub.Notify(store.AgentKey(id))
		return s.agentView(a, now), nil
	})
}
