package memstore

import (
	"context"
	"time"

	"github.com/orange-forge/forge/store"
)

// Stats implements store.Store. Tasks are counted as they change state; agents
// and the live tasks (for the oldest pending one) are looked over, which costs
// what the fleet and its live work cost, never the retained history.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	return locked(ctx, s, func(now time.Time) (store.Stats, error) {
		st := store.NewStats()
		for _, a := range s.agents {
			st.Agents[s.status(a, now)]++
		}
		for _, state := range store.TaskStates() {
			st.Tasks[state] = s.byState[state]
		}
		for _, t := range s.live {
			if t.State == store.StatePending && (st.OldestPending.IsZero() || t.CreatedAt.Before(st.OldestPending)) {
				st.OldestPending = t.CreatedAt
			}
		}
		st.LeasesExpired = s.leasesExpired
		return st, nil
	})
}
