package redisstore

import (
	"slices"
	"sync"

	"github.com/orange-forge/forge/store"
)

// jobCacheSize bounds the jobs whose fixed part a Store remembers.
const jobCacheSize = 8192

// jobCache remembers the part of each job record that never changes once the
// record is written — spec, task list, creation time — and the shards its tasks
// live in, so GetJob (and ListTasks by job) can read the job's changing fields
// and its per-shard counts in one pipelined round trip instead of reading the
// record first to learn where its tasks are. Job ids are never reused and a
// job's task list is written once, with the record, so an entry is never stale;
// whether the job still exists is read from Redis on every call.
type jobCache struct {
	mu sync.Mutex
	m  map[string]*cachedJob
}

type cachedJob struct {
	job    store.Job // Counts, Canceled and Existing unset
	shards []int     // the shards the job's tasks are in, each once
	// solo is the task of a single-agent job (Target.AgentID; none otherwise),
	// whose state is the job's counts (see countReads).
	solo string
}

func (c *jobCache) get(id string) *cachedJob {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

func (c *jobCache) put(j store.Job) *cachedJob {
	e := &cachedJob{job: j, shards: taskShards(j.TaskIDs)}
	if j.Spec.Target.AgentID != "" && len(j.TaskIDs) == 1 {
		e.solo = j.TaskIDs[0]
	}
	e.job.Counts, e.job.Canceled, e.job.Existing = store.Counts{}, false, false
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]*cachedJob)
	}
	if len(c.m) >= jobCacheSize {
		for k := range c.m { // drop an arbitrary entry: a miss costs one round trip
			delete(c.m, k)
			break
		}
	}
	c.m[j.ID] = e
	return e
}

func (c *jobCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// view returns a copy of the cached job the caller may keep and change.
func (e *cachedJob) view() store.Job {
	j := e.job
	j.TaskIDs = slices.Clone(j.TaskIDs)
	j.Spec.Payload = slices.Clone(j.Spec.Payload)
	return j
}

// taskShards returns the shards of the given tasks, each once, in first-seen order.
func taskShards(taskIDs []string) []int {
	var seen [NumShards]bool
	var out []int
	for _, id := range taskIDs {
		a, ok := store.AgentOfTask(id)
		if !ok {
			continue
		}
		if sh := shardOf(a); !seen[sh] {
			seen[sh] = true
			out = append(out, sh)
		}
	}
	return out
}
