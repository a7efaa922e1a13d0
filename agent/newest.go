package agent

import "time"

// newestAttempts remembers the newest attempt the agent took of each task it
// took lately, so a stale attempt delivered after a newer one is not run. An
// entry is kept for newestKeep after the attempt was received: far longer than a
// late Poll answer can take to arrive, whose lease would have ended anyway.
type newestAttempts struct {
	m map[string]newestEntry
}

type newestEntry struct {
	attempt int32
	at      time.Time
}

const (
	newestKeep = 10 * time.Minute
	// newestPrune is the size past which entries older than newestKeep go.
	newestPrune = 4096
)

func (n *newestAttempts) get(task string) int32 { return n.m[task].attempt }

func (n *newestAttempts) put(task string, attempt int32, at time.Time) {
	if n.m == nil {
		n.m = make(map[string]newestEntry)
	}
	if len(n.m) >= newestPrune {
		for k, e := range n.m {
			if at.Sub(e.at) > newestKeep {
				delete(n.m, k)
			}
		}
	}
	if attempt > n.m[task].attempt {
		n.m[task] = newestEntry{attempt: attempt, at: at}
	}
}
