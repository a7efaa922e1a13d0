package client_test

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orange-forge/forge/client"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
)

// syncBuffer is a bytes.Buffer safe for the writers of several tasks.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFollow: a task's stdout and stderr arrive apart, whole and in order, and
// Follow returns the final state; FollowJob does it for every task of a job,
// with the agents' names.
func TestFollow(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		startAgents(t, e, "web-1", "web-2")
		c := newClient(t, e.URL)
		ctx := t.Context()
		script := `for i in 1 2 3; do echo "line $i"; echo "warn $i" >&2; sleep 0.2; done; exit 2`
		d, err := c.Dispatch(ctx, client.Exec(client.AgentName("web-1"), "sh", "-c", script))
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		state, err := c.Follow(ctx, d.TaskIds[0], &stdout, &stderr)
		if err != nil || state != forgev1.TaskState_TASK_STATE_FAILED {
			t.Fatalf("Follow = %v, %v; want FAILED", state, err)
		}
		if stdout.String() != "line 1\nline 2\nline 3\n" || stderr.String() != "warn 1\nwarn 2\nwarn 3\n" {
			t.Fatalf("Follow wrote stdout %q and stderr %q", stdout.String(), stderr.String())
		}
		// Again, from the start, after the end: the same bytes.
		stdout.Reset()
		if state, err := c.Follow(ctx, d.TaskIds[0], &stdout, nil); err != nil || state != forgev1.TaskState_TASK_STATE_FAILED || stdout.String() != "line 1\nline 2\nline 3\n" {
			t.Fatalf("Follow of a finished task = %v, %v, %q", state, err, stdout.String())
		}

		// Live: the first line arrives while the command still runs.
		d, err = c.Dispatch(ctx, client.Exec(client.AgentName("web-2"), "sh", "-c", `echo first; sleep 2; echo second`))
		if err != nil {
			t.Fatal(err)
		}
		var stamps timedWriter
		if _, err := c.Follow(ctx, d.TaskIds[0], &stamps, nil); err != nil {
			t.Fatal(err)
		}
		if len(stamps.at) != 2 || stamps.at[1].Sub(stamps.at[0]) < time.Second {
			t.Fatalf("Follow wrote %d times, %v apart; want the first line well before the second", len(stamps.at), stamps.gap())
		}

		d, err = c.Dispatch(ctx, client.Exec(client.All(), "sh", "-c", `echo one; sleep 0.2; printf two`))
		if err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		lines := client.NewLines(&out)
		err = c.FollowJob(ctx, d.JobId, func(task *forgev1.TaskInfo, name string) (io.Writer, io.Writer) {
			if client.TaskAgent(task.Id) != task.AgentId {
				t.Errorf("task %s of agent %s", task.Id, task.AgentId)
			}
			return lines.Prefix(name + ": "), lines.Prefix(name + " (stderr): ")
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := lines.Flush(); err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		want := map[string]bool{"web-1: one": true, "web-1: two": true, "web-2: one": true, "web-2: two": true}
		if len(got) != 4 {
			t.Fatalf("FollowJob printed %q", out.String())
		}
		for _, l := range got {
			if !want[l] {
				t.Fatalf("FollowJob printed %q; want each agent's two lines, prefixed", out.String())
			}
		}
		res, err := c.Wait(ctx, d.JobId)
		if err != nil || !res.Succeeded() {
			t.Fatalf("Wait after FollowJob = %+v, %v", res, err)
		}
	})
}

// timedWriter records when each write came.
type timedWriter struct{ at []time.Time }

func (w *timedWriter) Write(p []byte) (int, error) {
	w.at = append(w.at, time.Now())
	return len(p), nil
}

func (w *timedWriter) gap() time.Duration {
	if len(w.at) < 2 {
		return 0
	}
	return w.at[len(w.at)-1].Sub(w.at[0])
}

// TestLines: whole lines, prefixed, from writers used at once; an unfinished
// line waits for its end or Flush, unless it grows long.
func TestLines(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	l := client.NewLines(&out)
	a, b := l.Prefix("a: "), l.Prefix("b: ")
	var wg sync.WaitGroup
	for _, w := range []*client.LineWriter{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				io.WriteString(w, "par")
				io.WriteString(w, "tial\nx")
				io.WriteString(w, "y\n")
			}
		}()
	}
	wg.Wait()
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if line != "a: partial" && line != "b: partial" && line != "a: xy" && line != "b: xy" {
			t.Fatalf("a mixed or unprefixed line: %q", line)
		}
	}
	if n := strings.Count(out.String(), "\n"); n != 800 {
		t.Fatalf("%d lines, want 800", n)
	}
	out = syncBuffer{}
	io.WriteString(a, "no end")
	if out.String() != "" {
		t.Fatalf("an unfinished line was written: %q", out.String())
	}
	l.Flush()
	if out.String() != "a: no end\n" {
		t.Fatalf("Flush wrote %q", out.String())
	}
	io.WriteString(b, strings.Repeat("z", 5000))
	if !strings.HasPrefix(out.String(), "a: no end\nb: zzz") {
		t.Fatalf("a long unfinished line was held back: %d bytes written", len(out.String()))
	}
}
