package redisstore

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

// A fan-out's payload is kept once, in its job record; its tasks keep none
// (their records carry cj=1). What a task is given — by Lease, GetTask,
// ListTasks, CancelTask — is filled in from the job record, read once per job
// and kept by each Store in a cache bounded by count and bytes: the payload of
// a job never changes, so an entry is never stale.
const (
	contentCacheEntries = 4096
	contentCacheBytes   = 64 << 20
)

// jobContent is what a fan-out's tasks take from their job record.
type jobContent struct {
	payload []byte
	sig     store.JobSig
	target  store.Target
}

// contentCache maps job ids to their content.
type contentCache struct {
	mu    sync.Mutex
	m     map[string]*jobContent
	bytes int
}

func (c *contentCache) get(id string) *jobContent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[id]
}

func (c *contentCache) put(id string, e *jobContent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]*jobContent)
	}
	if old := c.m[id]; old != nil {
		c.bytes -= len(old.payload)
	}
	for k, v := range c.m { // drop arbitrary entries until it fits: a miss costs one read
		if len(c.m) < contentCacheEntries && c.bytes+len(e.payload) <= contentCacheBytes {
			break
		}
		delete(c.m, k)
		c.bytes -= len(v.payload)
	}
	c.m[id] = e
	c.bytes += len(e.payload)
}

// fillContent sets the payload of each task whose record (fields fs[i]) keeps
// it in the job record, reading the job records not cached in one pipelined
// round trip. A job record that is gone leaves the payload empty.
func (s *Store) fillContent(ctx context.Context, tasks []store.Task, fs []map[string]string) error {
	var need []string
	seen := map[string]bool{}
	for i := range tasks {
		if fs[i]["cj"] != "1" {
			continue
		}
		j := tasks[i].JobID
		if seen[j] || s.content.get(j) != nil {
			continue
		}
		seen[j] = true
		need = append(need, j)
	}
	if len(need) > 0 {
		cmds := make(rueidis.Commands, len(need))
		for i, j := range need {
			cmds[i] = s.client.B().Hmget().Key(s.k.job(j)).Field("pl", "ca", "js", "tgt").Build()
		}
		for i, r := range s.client.DoMulti(ctx, cmds...) {
			vals, err := r.ToArray()
			if err != nil {
				return s.wrap(ctx, err)
			}
			if vals[1].IsNil() {
				s.log.Warn("a task's job record is gone; its payload is unknown", "job", need[i])
				continue
			}
			pl, _ := vals[0].ToString()
			js, _ := vals[2].ToString()
			tgt, _ := vals[3].ToString()
			e := &jobContent{sig: decodeJobSig(js)}
			_ = json.Unmarshal([]byte(tgt), &e.target) // written by jobFields from a Target
			if pl != "" {
				e.payload = []byte(pl)
			}
			s.content.put(need[i], e)
		}
	}
	for i := range tasks {
		if fs[i]["cj"] != "1" {
			continue
		}
		if e := s.content.get(tasks[i].JobID); e != nil {
			if e.payload != nil {
				tasks[i].Payload = append([]byte(nil), e.payload...)
			}
			tasks[i].JobSig, tasks[i].Target = e.sig, e.target
		}
	}
	return nil
}

// encodeJobSig is how a job's signature is kept in the job record (and in a
// single-agent task's): JSON, empty for an unsigned job.
func encodeJobSig(js store.JobSig) string {
	if len(js.Sig) == 0 {
		return ""
	}
	b, _ := json.Marshal(jobSigRecord{KeyID: js.KeyID, Sig: js.Sig, CreatedAt: js.CreatedAt.UnixMilli(), NotAfter: js.NotAfter.UnixMilli()})
	return string(b)
}

// decodeJobSig reads encodeJobSig's form; anything else is no signature (an
// agent holding keys then refuses the task).
func decodeJobSig(s string) store.JobSig {
	var r jobSigRecord
	if s == "" || json.Unmarshal([]byte(s), &r) != nil {
		return store.JobSig{}
	}
	return store.JobSig{KeyID: r.KeyID, Sig: r.Sig, CreatedAt: time.UnixMilli(r.CreatedAt), NotAfter: time.UnixMilli(r.NotAfter)}
}

type jobSigRecord struct {
	KeyID     string `json:"k"`
	Sig       []byte `json:"s"`
	CreatedAt int64  `json:"c"`
	NotAfter  int64  `json:"n"`
}
