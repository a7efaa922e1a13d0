package agent_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// mitm sits between an agent and its server, as a party in the middle would: it
// can record Poll answers that carry tasks and play one back, strip the
// signing keys from Register answers, and alter payloads in Poll answers.
type mitm struct {
	URL string

	mu        sync.Mutex
	recorded  []byte // the last Poll answer with a task, as sent
	replay    bool   // answer the next Poll with recorded
	replayed  chan struct{}
	stripKeys bool
	tamper    bool
	strip     bool // take the signatures off the tasks in Poll answers
}

func newMITM(t *testing.T, target string) *mitm {
	m := &mitm{replayed: make(chan struct{}, 1)}
	u, _ := url.Parse(target)
	p := httputil.NewSingleHostReverseProxy(u)
	p.ModifyResponse = m.modify
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		replay := m.replay && strings.HasSuffix(r.URL.Path, "/Poll")
		if replay {
			m.replay = false
		}
		body := m.recorded
		m.mu.Unlock()
		if replay {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/proto")
			w.Write(body)
			m.replayed <- struct{}{}
			return
		}
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	m.URL = hs.URL
	return m
}

func (m *mitm) set(f func(m *mitm)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m)
}

func (m *mitm) modify(res *http.Response) error {
	path := res.Request.URL.Path
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "application/proto") {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var msg proto.Message
	switch {
	case strings.HasSuffix(path, "/Register") && m.stripKeys:
		msg = &forgev1.RegisterResponse{}
	case strings.HasSuffix(path, "/Poll"):
		msg = &forgev1.PollResponse{}
	default:
		return nil
	}
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		return err
	}
	switch x := msg.(type) {
	case *forgev1.RegisterResponse:
		x.SigningKeys = nil
	case *forgev1.PollResponse:
		if len(x.Tasks) > 0 {
			m.recorded = append([]byte(nil), b...)
		}
		for _, tk := range x.Tasks {
			if m.tamper {
				tk.Payload = []byte("tampered")
			}
			if m.strip {
				tk.Signature, tk.KeyId, tk.JobSignature = nil, "", nil
			}
		}
	}
	b, _ = proto.Marshal(msg)
	res.Body = io.NopCloser(bytes.NewReader(b))
	res.ContentLength = int64(len(b))
	res.Header.Set("Content-Length", strconv.Itoa(len(b)))
	return nil
}

// runCounter is a handler that counts the runs of each task.
type runCounter struct {
	mu   sync.Mutex
	runs map[string]int
}

func (c *runCounter) handle(_ context.Context, t *agent.Task) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.runs == nil {
		c.runs = map[string]int{}
	}
	c.runs[t.ID]++
	return t.Payload, nil
}

func (c *runCounter) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

// TestAttackReplayAfterRestart records a Poll answer between an agent and its
// server, waits for the agent to restart with the same state dir, and answers
// its first Poll with the recording (issue 13, finding 1): the agent does not
// run the task again, though its lease signature is still good.
func TestAttackReplayAfterRestart(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		_, key, _ := ed25519.GenerateKey(nil)
		e := newEnv(t, b, server.Config{SigningKeys: []ed25519.PrivateKey{key}})
		m := newMITM(t, e.URL)
		var c runCounter
		dir := t.TempDir()
		// One slot: a task after the replay runs only once whatever the replay
		// started has returned, so the count below is final without a wait.
		cfg := agent.Config{Servers: []string{m.URL}, StateDir: dir, Concurrency: 1}
		a := startAgent(t, cfg, map[string]agent.Handler{"count": c.handle})
		id := a.ID()
		task := e.dispatch(id, "count", []byte("once"), 0)
		wantState(t, e.wait(task), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if err := a.stop(t); err != nil {
			t.Fatal(err)
		}
		m.set(func(m *mitm) { m.replay = m.recorded != nil })
		if m.recorded == nil {
			t.Fatal("no Poll answer was recorded")
		}

		a = startAgent(t, cfg, map[string]agent.Handler{"count": c.handle})
		select {
		case <-m.replayed:
		case <-time.After(20 * time.Second):
			t.Fatal("the restarted agent never polled")
		}
		// The agent goes on working: the next task runs in its one slot once
		// anything the replay started has returned.
		next := e.dispatch(id, "count", []byte("twice"), 0)
		wantState(t, e.wait(next), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		if n := c.count(task); n != 1 {
			t.Fatalf("the task ran %d times; a replay after a restart ran it again", n)
		}
		if st := e.Task(task).State; st != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("the task is %s after the replay", st)
		}
		if _, err := os.Stat(filepath.Join(dir, "accepted.jsonl")); err != nil {
			t.Fatalf("no replay record in the state dir: %v", err)
		}
		a.stop(t)
	})
}

// TestAttackStrippedSigningKeys strips the signing keys from Register answers
// and alters every payload in Poll answers (issue 13, finding 2). An agent
// with pinned keys refuses the altered tasks although its Register answer had
// no key; an agent that learned the keys at its first Register keeps them when
// a later Register answer (it enrolled again: the server lost its state) has
// none, and refuses them too.
func TestAttackStrippedSigningKeys(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		pub, key, _ := ed25519.GenerateKey(nil)
		s := forgetest.Start(t, forgetest.Options{Backend: b, OwnRedis: b == forgetest.Redis,
			Server: server.Config{SigningKeys: []ed25519.PrivateKey{key}}})
		e := &env{Server: s, t: t}
		var c runCounter
		refused := func(a *started, what string) {
			t.Helper()
			id := e.dispatch(a.ID(), "count", []byte("original"), 0)
			info := e.wait(id)
			if info.State != forgev1.TaskState_TASK_STATE_FAILED || !strings.Contains(info.Error, "refused by the agent") || c.count(id) != 0 {
				t.Fatalf("%s: the altered task is %s (%s), run %d times; want it refused", what, info.State, info.Error, c.count(id))
			}
		}

		pinned := newMITM(t, e.URL)
		pinned.set(func(m *mitm) { m.stripKeys, m.tamper = true, true })
		p := startAgent(t, agent.Config{Servers: []string{pinned.URL}, SigningKeys: []ed25519.PublicKey{pub}},
			map[string]agent.Handler{"count": c.handle})
		refused(p, "pinned agent")
		p.stop(t)

		learner := newMITM(t, e.URL)
		dir := t.TempDir()
		l := startAgent(t, agent.Config{Servers: []string{learner.URL}, StateDir: dir},
			map[string]agent.Handler{"count": c.handle})
		first := l.ID()
		ok := e.dispatch(first, "count", []byte("ok"), 0)
		wantState(t, e.wait(ok), forgev1.TaskState_TASK_STATE_SUCCEEDED)
		learner.set(func(m *mitm) { m.stripKeys, m.tamper = true, true })
		e.LoseState() // the agent hears "unknown agent" and enrolls again, through the stripping proxy
		waitFor(t, 30*time.Second, "the agent enrolled again", func() bool { return l.ID() != first })
		refused(l, "agent that learned its keys")
		var saved struct {
			SigningKeys []json.RawMessage `json:"signing_keys"`
		}
		raw, _ := os.ReadFile(filepath.Join(dir, "identity.json"))
		if json.Unmarshal(raw, &saved) != nil || len(saved.SigningKeys) != 1 {
			t.Fatalf("the identity saved after enrolling again keeps %d signing keys, want 1: %s", len(saved.SigningKeys), raw)
		}
		l.stop(t)
	})
}

// TestAttackStoreWrites writes into Redis as whoever can would (issue 13,
// finding 2): it changes the payload of a pending single-agent task and of a
// fan-out's job record, and adds a second task of a job that already ran to
// the agent's queue. The server leases and signs each, and the agent refuses
// every one: what it runs is what the operator dispatched, once.
func TestAttackStoreWrites(t *testing.T) {
	t.Parallel()
	_, key, _ := ed25519.GenerateKey(nil)
	e := newEnv(t, forgetest.Redis, server.Config{SigningKeys: []ed25519.PrivateKey{key}})
	nodes, prefix := e.Redis()
	rdb := nodes[0]
	var c runCounter
	dir := t.TempDir()
	cfg := agent.Config{Servers: []string{e.URL}, StateDir: dir, Labels: map[string]string{"role": "target"}}
	a := startAgent(t, cfg, map[string]agent.Handler{"count": c.handle})
	id := a.ID()
	ran := e.dispatch(id, "count", []byte("ran once"), 0)
	wantState(t, e.wait(ran), forgev1.TaskState_TASK_STATE_SUCCEEDED)
	a.stop(t)

	// While the agent is away: two tasks dispatched, then rewritten in Redis.
	single := e.dispatch(id, "count", []byte("uptime"), 0)
	res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "count", Payload: []byte("uptime"),
		Target: &forgev1.DispatchRequest_Selector{Selector: "role=target"}, IncludeOffline: true}))
	if err != nil || len(res.Msg.TaskIds) != 1 {
		t.Fatalf("fan-out: %v, %v", res, err)
	}
	fan := res.Msg.TaskIds[0]
	taskKey := func(task string) string {
		keys := strings.Fields(rdb.MustDo("KEYS", "{"+prefix+":s*}:t:"+task))
		if len(keys) != 1 {
			t.Fatalf("no record of task %s in Redis", task)
		}
		return keys[0]
	}
	rdb.MustDo("HSET", taskKey(single), "pl", "rm -rf /")
	rdb.MustDo("HSET", "{"+prefix+":j:"+res.Msg.JobId+"}", "pl", "rm -rf /")
	// A second task of the job that already ran: its record copied under
	// another id, put in the agent's queue.
	ranKey := taskKey(ran)
	clone := strings.Replace(ran, "-", "x-", 1)
	cloneKey := strings.Replace(ranKey, ran, clone, 1)
	rdb.MustDo("COPY", ranKey, cloneKey)
	rdb.MustDo("HSET", cloneKey, "st", "1", "att", "0", "db", strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10))
	queue := strings.Replace(ranKey, ":t:"+ran, ":q:"+id, 1)
	rdb.MustDo("ZADD", queue, "0", clone)

	a = startAgent(t, cfg, map[string]agent.Handler{"count": c.handle})
	for _, task := range []string{single, fan} {
		info := e.wait(task)
		if info.State != forgev1.TaskState_TASK_STATE_FAILED || !strings.Contains(info.Error, "job signature does not verify") {
			t.Errorf("task %s, rewritten in Redis: %s (%s); want it refused", task, info.State, info.Error)
		}
		if n := c.count(task); n != 0 {
			t.Errorf("task %s, rewritten in Redis, ran %d times", task, n)
		}
	}
	waitFor(t, 20*time.Second, "the copied task leased", func() bool {
		tk, err := e.Control.GetTask(t.Context(), connect.NewRequest(&forgev1.GetTaskRequest{TaskId: clone}))
		return err == nil && tk.Msg.Task.Attempt >= 1
	})
	time.Sleep(500 * time.Millisecond)
	if n := c.count(clone) + c.count(ran); n != 1 {
		t.Errorf("the job that ran once ran %d times in all after a copy of its task was written into Redis", n)
	}
	a.stop(t)
}

// TestAttackUnsignedTasks: an agent pinned to the server's key (--signing-pubkey)
// refuses unsigned tasks, whatever the server says: here the server has no key
// at all (an attacker's, or one whose key was taken away), and a proxy strips
// the signatures from a signing server's Poll answers.
func TestAttackUnsignedTasks(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		pub, key, _ := ed25519.GenerateKey(nil)
		var c runCounter
		refused := func(e *env, a *started, what string) {
			t.Helper()
			id := e.dispatch(a.ID(), "count", []byte("unsigned"), 0)
			info := e.wait(id)
			if info.State != forgev1.TaskState_TASK_STATE_FAILED || !strings.Contains(info.Error, "not signed") || c.count(id) != 0 {
				t.Fatalf("%s: the task is %s (%s), run %d times; want it refused as not signed", what, info.State, info.Error, c.count(id))
			}
		}
		pinned := agent.Config{SigningKeys: []ed25519.PublicKey{pub}}

		keyless := newEnv(t, b, server.Config{})
		pinned.Servers = []string{keyless.URL}
		a := startAgent(t, pinned, map[string]agent.Handler{"count": c.handle})
		refused(keyless, a, "a server without a key")
		a.stop(t)

		signing := newEnv(t, b, server.Config{SigningKeys: []ed25519.PrivateKey{key}})
		m := newMITM(t, signing.URL)
		m.set(func(m *mitm) { m.strip = true })
		pinned.Servers = []string{m.URL}
		a = startAgent(t, pinned, map[string]agent.Handler{"count": c.handle})
		refused(signing, a, "signatures stripped on the way")
		a.stop(t)
	})
}
