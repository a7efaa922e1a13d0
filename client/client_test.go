package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/orange-forge/forge/agent"
	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/gen/forge/v1/forgev1connect"
	"github.com/orange-forge/forge/internal/forgetest"
	"github.com/orange-forge/forge/server"
)

// startAgents runs agents named after names against url in this process, each
// handling exec (echo, sh), greet (hello, <payload>) and wait (until canceled),
// and waits until the server holds a Poll of each.
func startAgents(t *testing.T, e *forgetest.Server, names ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	held := e.HeldPolls()
	for _, name := range names {
		a, err := agent.New(agent.Config{Servers: []string{e.URL}, EnrollToken: forgetest.EnrollToken, Name: name,
			Labels: map[string]string{"group": strings.TrimRight(name, "0123456789-")}, DrainGrace: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		a.Handle("exec", agent.ExecHandler([]string{"echo", "sh"}))
		a.Handle("greet", func(ctx context.Context, t *agent.Task) ([]byte, error) {
			return append([]byte("hello, "), t.Payload...), nil
		})
		a.Handle("wait", func(ctx context.Context, t *agent.Task) ([]byte, error) {
			<-ctx.Done()
			return nil, context.Cause(ctx)
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx); err != nil {
				t.Errorf("agent %s: %v", name, err)
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for e.HeldPolls() < held+len(names) {
		if time.Now().After(deadline) {
			t.Fatalf("the agents %v never polled", names)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newClient(t *testing.T, urls string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(urls, forgetest.AdminToken, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRun: Run on every kind of target, on both stores, with each agent's
// result and name.
func TestRun(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		startAgents(t, e, "web-1", "web-2", "db-1")
		c := newClient(t, e.URL)
		ctx := t.Context()
		agents, err := c.Agents(ctx, nil)
		if err != nil || len(agents) != 3 {
			t.Fatalf("Agents = %v, %v", agents, err)
		}
		idOf := map[string]string{}
		for _, a := range agents {
			idOf[a.Name] = a.Id
		}
		for _, tc := range []struct {
			target client.Target
			want   []string
		}{
			{client.All(), []string{"db-1", "web-1", "web-2"}},
			{client.Selector("group=web"), []string{"web-1", "web-2"}},
			{client.Agent("web-*"), []string{"web-1", "web-2"}},
			{client.Agent("db-1"), []string{"db-1"}},
			{client.Agent(idOf["web-2"]), []string{"web-2"}},
			{client.AgentID(idOf["web-1"]), []string{"web-1"}},
			{client.AgentName("nobody"), nil},
		} {
			res, err := c.Run(ctx, client.Exec(tc.target, "sh", "-c", "echo out; echo err >&2; exit 0"))
			if err != nil {
				t.Fatalf("%s: %v", tc.target, err)
			}
			var got []string
			for _, task := range res.Tasks {
				got = append(got, res.AgentName(task))
				if task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED || !strings.Contains(string(task.Output), "out") {
					t.Errorf("%s: task on %s = %v", tc.target, res.AgentName(task), task)
				}
				if client.TaskAgent(task.Id) != task.AgentId {
					t.Errorf("TaskAgent(%s) = %q, want %s", task.Id, client.TaskAgent(task.Id), task.AgentId)
				}
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") || !res.Job.Done || !res.Succeeded() {
				t.Errorf("%s: ran on %v (done %v, succeeded %v), want %v in name order", tc.target, got, res.Job.Done, res.Succeeded(), tc.want)
			}
			if res.Job.Target != tc.target.String() {
				t.Errorf("job target %q, client target %q", res.Job.Target, tc.target)
			}
		}
		res, err := c.Run(ctx, client.Command{Argv: []string{"sh", "-c", "exit 7"}}.On(client.Agent("web-1")))
		if err != nil || res.Succeeded() || len(res.Failed()) != 1 || res.Failed()[0].ExitCode != 7 {
			t.Fatalf("a failing command: %+v, %v", res, err)
		}
	})
}

// TestWaitReportsProgress: OnProgress sees the counts move and the job done,
// and Wait makes a held call per hold however long the job runs.
func TestWaitReportsProgress(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		startAgents(t, e, "web-1", "web-2")
		c := newClient(t, e.URL, client.WithHold(300*time.Millisecond))
		ctx := t.Context()
		req := client.Exec(client.All(), "sh", "-c", "sleep 1.5")
		req.MaxConcurrency = 1 // one after the other: the counts move in steps
		d, err := c.Dispatch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		res, err := c.Wait(ctx, d.JobId, client.OnProgress(func(j *forgev1.JobInfo) {
			n := j.Counts
			seen = append(seen, strings.Join([]string{itoa(n.Pending), itoa(n.Running), itoa(n.Succeeded)}, "/"))
		}))
		if err != nil || !res.Succeeded() || len(res.Tasks) != 2 {
			t.Fatalf("Wait = %+v, %v", res, err)
		}
		if seen[len(seen)-1] != "0/0/2" || len(seen) < 3 {
			t.Fatalf("progress (pending/running/succeeded) = %v; want several steps ending 0/0/2", seen)
		}
		for i := 1; i < len(seen); i++ {
			if seen[i] == seen[i-1] {
				t.Fatalf("progress reported the same counts twice: %v", seen)
			}
		}
		// Without progress, 3 s of work with 300 ms holds: about 10 calls, each held.
		d, err = c.Dispatch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		before := count(t, e, "WaitJob")
		if res, err := c.Wait(ctx, d.JobId); err != nil || !res.Succeeded() {
			t.Fatalf("Wait = %+v, %v", res, err)
		}
		if n := count(t, e, "WaitJob") - before; n < 4 || n > 100 {
			t.Fatalf("Wait of 3 s in 300 ms holds made %d WaitJob calls; want about 10", n)
		}
		task, err := c.WaitTask(ctx, d.TaskIds[0])
		if err != nil || task.State != forgev1.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("WaitTask = %v, %v", task, err)
		}
	})
}

// count returns how many calls of a ControlService method the server answered.
func count(t *testing.T, e *forgetest.Server, method string) int {
	t.Helper()
	res, err := http.Get(e.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, `forge_rpc_requests_total{code="ok",procedure="/forge.v1.ControlService/`+method+`"}`) {
			f := strings.Fields(line)
			n = atoi(f[len(f)-1])
		}
	}
	return n
}

// TestWaitDoesNotSpin: a server whose forge handler was closed while its HTTP
// server still serves answers held calls at once; Wait backs off rather than
// calling it in a tight loop.
func TestWaitDoesNotSpin(t *testing.T) {
	t.Parallel()
	e := forgetest.Start(t, forgetest.Options{})
	id, _ := e.Register("quiet", nil) // never polls
	closed := e.Replica(server.Config{})
	closed.Close()
	d, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "greet",
		Target: &forgev1.DispatchRequest_AgentId{AgentId: id}}))
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, closed.URL)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := c.Wait(ctx, d.Msg.JobId); !errors.Is(err, context.DeadlineExceeded) && connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("Wait on a closed server = %v; want the context's end", err)
	}
	if n := count(t, closed, "WaitJob"); n < 2 || n > 50 {
		t.Fatalf("Wait made %d WaitJob calls in 2 s on a server that answers at once; want a few, backing off", n)
	}
}

// TestRunCancelsWhenItsContextEnds: Run owns its job.
func TestRunCancelsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		startAgents(t, e, "web-1", "web-2")
		c := newClient(t, e.URL)
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		res, err := c.Run(ctx, client.NewDispatch("wait", nil, client.All()))
		if !errors.Is(err, context.DeadlineExceeded) || res == nil || res.Job.Id == "" || !strings.Contains(err.Error(), res.Job.Id) {
			t.Fatalf("Run past its context = %+v, %v; want the job and an error naming it", res, err)
		}
		done, err := c.Wait(t.Context(), res.Job.Id)
		if err != nil || done.Job.Counts.Canceled != 2 {
			t.Fatalf("the job after Run gave up = %+v, %v; want both tasks canceled", done.Job, err)
		}
		if r := done.Tasks[0].History[len(done.Tasks[0].History)-1].Reason; !strings.Contains(r, "run interrupted") {
			t.Fatalf("cancel reason %q", r)
		}
	})
}

// TestFailover: with several servers, a dead one is skipped, a replica that
// goes away mid-Wait (its connections cut, its port closed) is left for the
// next, and OnRetry hears each retry.
func TestFailover(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		startAgents(t, e, "web-1")
		dead := deadURL(t)
		// A replica of e on an HTTP server this test can take away.
		rep, err := server.New(server.Config{Store: e.Store, AdminTokens: []string{forgetest.AdminToken}, DisableReaper: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rep.Close() })
		hs := httptest.NewServer(rep)
		t.Cleanup(hs.Close)

		var retries []client.Retry
		var mu sync.Mutex
		c := newClient(t, dead+","+hs.URL+","+e.URL, client.OnRetry(func(r client.Retry) {
			mu.Lock()
			retries = append(retries, r)
			mu.Unlock()
		}))
		ctx := t.Context()
		d, err := c.Dispatch(ctx, client.NewDispatch("wait", nil, client.Agent("web-1")))
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		if len(retries) != 1 || retries[0].Server != dead || retries[0].Next != hs.URL || connect.CodeOf(retries[0].Err) != connect.CodeUnavailable {
			t.Fatalf("retries = %+v; want one, from the dead server to the replica", retries)
		}
		mu.Unlock()
		waited := make(chan error, 1)
		go func() {
			res, err := c.Wait(ctx, d.JobId)
			if err == nil && res.Job.Counts.Canceled != 1 {
				err = errors.New("job not canceled: " + res.Job.String())
			}
			waited <- err
		}()
		time.Sleep(300 * time.Millisecond) // the Wait is held on the replica
		hs.CloseClientConnections()
		hs.Listener.Close()
		if _, err := c.CancelJob(ctx, d.JobId, "done"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-waited:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Wait did not move to the next server")
		}
		if got := c.Servers(); len(got) != 3 || got[0] != dead {
			t.Fatalf("Servers() = %v", got)
		}
	})
}

// TestGiveUp: a call that keeps failing returns after the bound, with the last
// error's code and how long it tried.
func TestGiveUp(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	c := newClient(t, deadURL(t), client.WithGiveUpAfter(time.Second), client.WithBackoff(50*time.Millisecond, 200*time.Millisecond),
		client.OnRetry(func(client.Retry) { n.Add(1) }))
	start := time.Now()
	_, err := c.Agents(t.Context(), nil)
	took := time.Since(start)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "gave up after") {
		t.Fatalf("Agents of a dead server = %v; want unavailable, having given up", err)
	}
	if took < time.Second || took > 10*time.Second || n.Load() < 3 {
		t.Fatalf("gave up after %v and %d retries; want about a second and several", took, n.Load())
	}
	// The caller's context ends it sooner.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	c = newClient(t, deadURL(t), client.WithGiveUpAfter(-1))
	if _, err := c.Agents(ctx, nil); err == nil || time.Since(start) > 20*time.Second {
		t.Fatalf("Agents under a short context = %v", err)
	}
}

// TestHungServer: a server that accepts and never answers is given up per try
// (WithCallTimeout) and the next one answers.
func TestHungServer(t *testing.T) {
	t.Parallel()
	e := forgetest.Start(t, forgetest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	hung := "http://" + ln.Addr().String()
	c := newClient(t, hung+","+e.URL, client.WithCallTimeout(300*time.Millisecond))
	if _, err := c.Agents(t.Context(), nil); err != nil {
		t.Fatalf("Agents past a hung server = %v", err)
	}
	// Alone, it is given up on: its tries count from the first one's start.
	c = newClient(t, hung, client.WithCallTimeout(300*time.Millisecond), client.WithGiveUpAfter(time.Second))
	start := time.Now()
	_, err = c.Agents(t.Context(), nil)
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded || !strings.Contains(err.Error(), "gave up") || time.Since(start) > 10*time.Second {
		t.Fatalf("Agents of a hung server = %v after %v; want deadline_exceeded, given up", err, time.Since(start))
	}
}

// TestRetriedDispatchMakesOneJob: an answer lost on the way back (the server
// made the job, the caller saw a 503) is retried with the same idempotency
// key, and there is one job. A lost CancelTask answer is retried the same way,
// and the task it canceled is the answer.
func TestRetriedDispatchMakesOneJob(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		id, _ := e.Register("quiet", nil) // never polls: its tasks stay pending
		proxy := loseAnswers(t, e.URL, "/forge.v1.ControlService/Dispatch", "/forge.v1.ControlService/CancelTask")
		c := newClient(t, proxy)
		ctx := t.Context()
		req := client.NewDispatch("greet", nil, client.AgentID(id))
		d, err := c.Dispatch(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if req.IdempotencyKey != "" {
			t.Fatal("Dispatch changed the caller's request")
		}
		jobs, err := e.Control.ListJobs(ctx, connect.NewRequest(&forgev1.ListJobsRequest{}))
		if err != nil || len(jobs.Msg.Jobs) != 1 || jobs.Msg.Jobs[0].Id != d.JobId {
			t.Fatalf("jobs after a retried Dispatch = %v, %v; want one, %s", jobs, err, d.JobId)
		}
		task, err := c.CancelTask(ctx, d.TaskIds[0], "no")
		if err != nil || task.State != forgev1.TaskState_TASK_STATE_CANCELED {
			t.Fatalf("a retried CancelTask = %v, %v; want the canceled task", task, err)
		}
		_, err = c.CancelTask(ctx, d.TaskIds[0], "again")
		if connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Fatalf("cancelling a finished task = %v, want failed_precondition", err)
		}
	})
}

// loseAnswers returns the URL of a proxy to target that, for each of the
// paths, lets the first call through to the server and answers the caller 503
// instead of the server's answer.
func loseAnswers(t *testing.T, target string, paths ...string) string {
	t.Helper()
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	var mu sync.Mutex
	lost := map[string]bool{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lose := slices.Contains(paths, r.URL.Path) && !lost[r.URL.Path]
		lost[r.URL.Path] = true
		mu.Unlock()
		if !lose {
			rp.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		rp.ServeHTTP(rec, r)
		http.Error(w, "the answer was lost", http.StatusServiceUnavailable)
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

// TestControlRetriesEveryCall: every ControlService method of Control goes
// through the Client's retries: with a dead first server, each call reaches
// the second (no call of the API may fall through to an unretried client).
func TestControlRetriesEveryCall(t *testing.T) {
	t.Parallel()
	e := forgetest.Start(t, forgetest.Options{})
	iface := reflect.TypeOf((*forgev1connect.ControlServiceClient)(nil)).Elem()
	for i := range iface.NumMethod() {
		m := iface.Method(i)
		t.Run(m.Name, func(t *testing.T) {
			c := newClient(t, deadURL(t)+","+e.URL)
			ctl := reflect.ValueOf(c.Control())
			reqType := m.Type.In(1) // *connect.Request[T]
			msg := reflect.New(reqType.Elem().Field(0).Type.Elem())
			if f := msg.Elem().FieldByName("Wait"); f.IsValid() {
				f.Set(reflect.ValueOf(durationpb.New(0))) // answer at once
			}
			req := reflect.New(reqType.Elem())
			req.Elem().Field(0).Set(msg)
			out := ctl.MethodByName(m.Name).Call([]reflect.Value{reflect.ValueOf(t.Context()), req})
			err, _ := out[1].Interface().(error)
			if connect.CodeOf(err) == connect.CodeUnavailable {
				t.Fatalf("Control().%s did not move past the dead server: %v", m.Name, err)
			}
		})
	}
}

// TestNewRefuses: bad URLs, no token, an HTTP client with a Timeout.
func TestNewRefuses(t *testing.T) {
	t.Parallel()
	for _, urls := range []string{"", " , ", "ftp://x", "127.0.0.1:8080", "http://", "http://x?y=1"} {
		if _, err := client.New(urls, "tok"); err == nil {
			t.Errorf("New(%q) accepted", urls)
		}
	}
	if _, err := client.New("http://x", ""); err == nil {
		t.Error("New without a token accepted")
	}
	if _, err := client.New("http://x", "tok", client.WithHTTPClient(&http.Client{Timeout: time.Second})); err == nil {
		t.Error("New with an HTTP client Timeout accepted")
	}
	c, err := client.New(" http://a:1/forge/ ,https://b ", "tok")
	if err != nil || strings.Join(c.Servers(), " ") != "http://a:1/forge https://b" {
		t.Fatalf("New = %v, %v", c, err)
	}
}

// deadURL returns a loopback URL where nothing listens.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// TestTransient: which errors are retried.
func TestTransient(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want bool
	}{
		{connect.NewError(connect.CodeUnavailable, errors.New("store down")), true},
		{connect.NewError(connect.CodeDeadlineExceeded, errors.New("try ran out")), true},
		{connect.NewError(connect.CodeAborted, errors.New("aborted")), true},
		{connect.NewError(connect.CodeCanceled, fmt.Errorf("read: %w", syscall.ECONNRESET)), true},
		{connect.NewError(connect.CodeUnknown, fmt.Errorf("read message: %w", io.ErrUnexpectedEOF)), true},
		{connect.NewError(connect.CodeCanceled, context.Canceled), false},
		{connect.NewError(connect.CodeUnknown, errors.New("odd")), false},
		{connect.NewError(connect.CodeNotFound, errors.New("no such job")), false},
		{connect.NewError(connect.CodeResourceExhausted, errors.New("the store is full")), false},
		{connect.NewError(connect.CodeInvalidArgument, errors.New("selector")), false},
		{errors.New("plain"), false},
	} {
		if got := client.Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
	// A server that resets every connection (a replica killed mid-call) is
	// left for the next.
	e := forgetest.Start(t, forgetest.Options{})
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		conn.(*net.TCPConn).SetLinger(0) // close with RST
		conn.Close()
	}))
	t.Cleanup(reset.Close)
	var codes []connect.Code
	c := newClient(t, reset.URL+","+e.URL, client.OnRetry(func(r client.Retry) { codes = append(codes, connect.CodeOf(r.Err)) }))
	if _, err := c.Agents(t.Context(), nil); err != nil || len(codes) != 1 {
		t.Fatalf("Agents past a resetting server = %v (retries %v)", err, codes)
	}
}
