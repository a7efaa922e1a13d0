package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// RegisterAgent implements store.Store. The enrollment use (global slot) is
// consumed first, then the registration's request key claimed for the agent's
// id, then the agent record is written, then it is listed: a crash between the
// steps costs an enrollment use or leaves an unlisted record nobody holds a
// token for, never a listed agent that does not exist; a replay of a
// registration cut short makes the agent its claim named.
func (s *Store) RegisterAgent(ctx context.Context, p store.RegisterParams) (store.Agent, error) {
	if err := store.CheckAgentName(p.Name); err != nil {
		return store.Agent{}, err
	}
	now := s.nowMS()
	if p.RequestKey != "" {
		v, err := s.client.Do(ctx, s.client.B().Get().Key(s.k.enrollReplay(p.RequestKey)).Build()).ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return store.Agent{}, s.wrap(ctx, err)
		}
		if id, ok := replayOf(v, now); ok {
			return s.replayRegister(ctx, p, id, now)
		}
	}
	if p.Enrollment != nil {
		if err := s.checkEnrollment(ctx, p.Enrollment.ID, p.Enrollment.SecretHash, now, enrollConsume); err != nil {
			return store.Agent{}, err
		}
	}
	for try := 0; ; try++ {
		id := s.newAgentID()
		if p.RequestKey != "" {
			// Claimed before the record is written: a retry arriving while this
			// registration still runs names the same agent.
			window := store.EnrollReplayWindow.Milliseconds()
			arr, err := s.run(ctx, replayClaimScript, []string{s.k.enrollReplay(p.RequestKey)},
				[]string{itoa(now), id, itoa(now + window), itoa(2 * window)})
			if err != nil {
				return store.Agent{}, err
			}
			if claimed, _ := arr[1].ToString(); claimed != "" {
				return s.replayRegister(ctx, p, claimed, now)
			}
		}
		_, err := s.run(ctx, registerScript, []string{s.k.agent(id)}, s.shardArgs(s.k.tag(id), now, append([]string{id, itoa(s.agentDue(now))}, s.agentFields(p, now)...)...))
		if errors.Is(err, errIDTaken) {
			if p.RequestKey != "" {
				// The id was claimed above, so its record was made by a replay of
				// this registration, which holds the token the caller now waits on.
				return store.Agent{}, store.Errorf(store.KindUnavailable, "this registration was repeated while it ran; the repeat holds the agent's token")
			}
			if try < 3 { // astronomically rare: 75 random bits
				continue
			}
			return store.Agent{}, store.Wrap(store.KindInternal, err, "internal store error")
		}
		if err != nil {
			return store.Agent{}, err
		}
		if err := s.list(ctx, id); err != nil {
			return store.Agent{}, err
		}
		return s.GetAgent(ctx, id)
	}
}

// replayRegister repeats the registration that made (or claimed) agent id: see
// replayScript.
func (s *Store) replayRegister(ctx context.Context, p store.RegisterParams, id string, now int64) (store.Agent, error) {
	if !store.ValidID(id, 'a') {
		return store.Agent{}, store.Errorf(store.KindInternal, "the registration request key names %q, not an agent id", id)
	}
	if p.Enrollment != nil {
		if err := s.checkEnrollment(ctx, p.Enrollment.ID, p.Enrollment.SecretHash, now, enrollCheckReplay); err != nil {
			return store.Agent{}, err
		}
	}
	args := append([]string{itoa(s.agentDue(now)), string(p.SecretHash)}, s.agentFields(p, now)...)
	arr, err := s.run(ctx, replayScript, []string{s.k.agent(id)}, s.shardArgs(s.k.tag(id), now, append([]string{id}, args...)...))
	if err != nil {
		return store.Agent{}, err
	}
	if made, _ := arr[1].AsInt64(); made == 1 {
		if err := s.list(ctx, id); err != nil {
			return store.Agent{}, err
		}
	}
	return s.GetAgent(ctx, id)
}

// replayOf is the agent id a registration request key's record v names while
// its window lasts at now (see replayClaimScript).
func replayOf(v string, now int64) (string, bool) {
	id, till, ok := strings.Cut(v, " ")
	if !ok || atoi(till) <= now {
		return "", false
	}
	return id, true
}

// agentFields are the field, value pairs of a new agent record made by p.
func (s *Store) agentFields(p store.RegisterParams, now int64) []string {
	labels, _ := json.Marshal(p.Labels)
	types, _ := json.Marshal(p.TaskTypes)
	return []string{"name", p.Name, "host", p.Hostname, "ver", p.Version, "labels", string(labels), "types", string(types),
		"reg", itoa(now), "seen", itoa(now), "si", itoa(now), "cur", string(p.SecretHash), "gen", "0", "ra", p.RemoteAddr}
}

// list puts a new agent in the agent list.
func (s *Store) list(ctx context.Context, id string) error {
	if err := s.client.Do(ctx, s.client.B().Zadd().Key(s.k.agents()).ScoreMember().ScoreMember(0, id).Build()).Error(); err != nil {
		return s.wrap(ctx, err)
	}
	return nil
}

// agentRetentionMS is the agent retention the scripts take: ms, 0 for never.
func (s *Store) agentRetentionMS() int64 {
	return max(s.cfg.AgentRetention.Milliseconds(), 0)
}

// agentDue is when an agent seen at now is next due in its shard's due index
// (0: never), for Reap to see whether it has gone unseen for the retention.
func (s *Store) agentDue(now int64) int64 {
	if r := s.agentRetentionMS(); r > 0 {
		return now + r
	}
	return 0
}

// AuthenticateAgent implements store.Store.
func (s *Store) AuthenticateAgent(ctx context.Context, c store.Cred) error {
	if !store.ValidID(c.AgentID, 'a') {
		return store.ErrUnknownAgent()
	}
	_, err := s.run(ctx, authScript, []string{s.k.agent(c.AgentID)},
		s.shardArgs(s.k.tag(c.AgentID), s.nowMS(), string(c.SecretHash)))
	return err
}

// UpdateAgent implements store.Store.
func (s *Store) UpdateAgent(ctx context.Context, c store.Cred, p store.RegisterParams) (store.Agent, error) {
	if err := store.CheckAgentName(p.Name); err != nil {
		return store.Agent{}, err
	}
	if !store.ValidID(c.AgentID, 'a') {
		return store.Agent{}, store.ErrUnknownAgent()
	}
	labels, _ := json.Marshal(p.Labels)
	types, _ := json.Marshal(p.TaskTypes)
	arr, err := s.run(ctx, updateAgentScript, []string{s.k.agent(c.AgentID)},
		s.shardArgs(s.k.tag(c.AgentID), s.nowMS(), c.AgentID, string(c.SecretHash),
			"name", p.Name, "host", p.Hostname, "ver", p.Version, "labels", string(labels), "types", string(types)))
	if err != nil {
		return store.Agent{}, err
	}
	return decodeAgent(c.AgentID, pairs(arr[1])), nil
}

// RotateAgentToken implements store.Store.
func (s *Store) RotateAgentToken(ctx context.Context, c store.Cred, newSecretHash []byte) error {
	if !store.ValidID(c.AgentID, 'a') {
		return store.ErrUnknownAgent()
	}
	_, err := s.run(ctx, rotateScript, []string{s.k.agent(c.AgentID)},
		s.shardArgs(s.k.tag(c.AgentID), s.nowMS(), string(c.SecretHash), string(newSecretHash)))
	return err
}

func (s *Store) agentViewExec(id string, now int64) rueidis.LuaExec {
	return rueidis.LuaExec{
		Keys: []string{s.k.agent(id), s.k.queue(id), s.k.running(id)},
		Args: s.shardArgs(s.k.tag(id), now, id),
	}
}

// agentFromView decodes an agentViewScript answer.
func (s *Store) agentFromView(id string, arr []rueidis.RedisMessage, now int64) store.Agent {
	f := pairs(arr[1])
	a := decodeAgent(id, f)
	a.Status = s.status(f["rev"] != "", f["so"] == "1", atoi(f["seen"]), atoi(f["pu"]), now)
	a.Pending = int(msgInt(arr[2]))
	a.Running = refs(arr[3])
	return a
}

// GetAgent implements store.Store.
func (s *Store) GetAgent(ctx context.Context, id string) (store.Agent, error) {
	if !store.ValidID(id, 'a') {
		return store.Agent{}, store.ErrAgentNotFound(id)
	}
	now := s.nowMS()
	e := s.agentViewExec(id, now)
	arr, err := s.run(ctx, agentViewScript, e.Keys, e.Args)
	if err != nil {
		return store.Agent{}, err
	}
	return s.agentFromView(id, arr, now), nil
}

// ListAgents implements store.Store: agents in id order from the global list,
// read in pipelined batches and filtered here.
func (s *Store) ListAgents(ctx context.Context, f store.AgentFilter) ([]store.Agent, string, error) {
	size := store.PageSize(f.Size)
	after := f.Token
	var out []store.Agent
	for {
		min := "-"
		if after != "" {
			min = "(" + after
		}
		batch := max(size+1-len(out), 32)
		ids, err := s.client.Do(ctx, s.client.B().Zrange().Key(s.k.agents()).Min(min).Max("+").Bylex().Limit(0, int64(batch)).Build()).AsStrSlice()
		if err != nil {
			return nil, "", s.wrap(ctx, err)
		}
		if len(ids) == 0 {
			return out, "", nil
		}
		now := s.nowMS()
		execs := make([]rueidis.LuaExec, len(ids))
		for i, id := range ids {
			execs[i] = s.agentViewExec(id, now)
		}
		for i, r := range s.runMulti(ctx, agentViewScript, execs) {
			arr, err := s.answer(ctx, r)
			if err != nil {
				if store.KindOf(err) == store.KindNotFound {
					continue
				}
				return nil, "", err
			}
			a := s.agentFromView(ids[i], arr, now)
			if !f.Selector.Matches(a.Labels) || !f.MatchesName(a.Name) || (f.Status != store.AgentUnspecified && a.Status != f.Status) {
				continue
			}
			if len(out) == size {
				return out, out[len(out)-1].ID, nil
			}
			out = append(out, a)
		}
		after = ids[len(ids)-1]
		if len(ids) < batch {
			return out, "", nil
		}
	}
}

// RevokeAgent implements store.Store.
func (s *Store) RevokeAgent(ctx context.Context, id, reason string) (store.Agent, error) {
	if !store.ValidID(id, 'a') {
		return store.Agent{}, store.ErrAgentNotFound(id)
	}
	reason = store.ReasonRevoked(reason)
	arr, err := s.run(ctx, revokeScript, []string{s.k.agent(id), s.k.agentTasks(id)},
		s.shardArgs(s.k.tag(id), s.nowMS(), id, reason))
	if err != nil {
		return store.Agent{}, err
	}
	s.advanceAll(ctx, msgStrs(arr[1]))
	return s.GetAgent(ctx, id)
}
