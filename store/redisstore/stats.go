package redisstore

import (
	"context"
	"strconv"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// Stats implements store.Store from counters and indexes the scripts keep
// with every change, so its cost is fixed: per shard, the size of each state
// index, the oldest pending task (the first of its state index, which is in id
// order, so in order of dispatch), the agents in the online index seen within
// the online window, the revoked set's size and the expired-lease counter; then
// the size of the agent list and the pending task's creation time. Two
// pipelined round trips (a few per node on a cluster), whatever the history
// holds. Agents registered before the online index existed count as offline
// until their next call.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	st := store.NewStats()
	now := s.nowMS()
	states := store.TaskStates()
	per := len(states) + 4 // ZCARD per state, oldest pending, online, revoked, counters
	cmds := make(rueidis.Commands, 0, NumShards*per+1)
	for sh := range NumShards {
		for _, state := range states {
			cmds = append(cmds, s.client.B().Zcard().Key(s.k.stateIndex(sh, int(state))).Build())
		}
		cmds = append(cmds,
			s.client.B().Zrange().Key(s.k.stateIndex(sh, int(store.StatePending))).Min("0").Max("0").Build(),
			s.client.B().Zcount().Key(s.k.online(sh)).Min("("+strconv.FormatInt(now-s.cfg.OnlineWindow.Milliseconds(), 10)).Max("+inf").Build(),
			s.client.B().Scard().Key(s.k.revoked(sh)).Build(),
			s.client.B().Hget().Key(s.k.counters(sh)).Field("lx").Build())
	}
	cmds = append(cmds, s.client.B().Zcard().Key(s.k.agents()).Build())
	res := s.client.DoMulti(ctx, cmds...)
	for _, r := range res {
		if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return store.Stats{}, s.wrap(ctx, err)
		}
	}
	oldest := ""
	var online, revoked int
	for sh := range NumShards {
		r := res[sh*per:]
		for i, state := range states {
			n, _ := r[i].AsInt64()
			st.Tasks[state] += int(n)
		}
		r = r[len(states):]
		if ids, _ := r[0].AsStrSlice(); len(ids) > 0 && (oldest == "" || ids[0] < oldest) {
			oldest = ids[0]
		}
		n, _ := r[1].AsInt64()
		online += int(n)
		n, _ = r[2].AsInt64()
		revoked += int(n)
		lx, _ := r[3].ToString()
		st.LeasesExpired += atoi(lx)
	}
	total, _ := res[len(res)-1].AsInt64()
	st.Agents[store.AgentOnline] = online
	st.Agents[store.AgentRevoked] = revoked
	st.Agents[store.AgentOffline] = max(int(total)-online-revoked, 0)
	if oldest != "" {
		aid, ok := store.AgentOfTask(oldest)
		if ok {
			ca, err := s.client.Do(ctx, s.client.B().Hget().Key(s.k.task(aid, oldest)).Field("ca").Build()).ToString()
			switch {
			case err == nil:
				st.OldestPending = msTime(ca)
			case !rueidis.IsRedisNil(err):
				return store.Stats{}, s.wrap(ctx, err)
			}
		}
	}
	return st, nil
}
