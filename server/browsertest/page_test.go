// Package browsertest drives forge's fleet page in headless Chromium against
// real servers and agents. It is a package of its own so the browser's work
// does not weigh on the server package's tests that measure their own heap.
package browsertest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	"github.com/orange-forge/forge/agent"
	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/forgetest"
)

func TestMain(m *testing.M) { forgetest.Main(m) }

// chromium finds the browser the page tests drive: FORGE_CHROMIUM, else
// chromium (Debian's package) or Chrome on PATH. Without one the test fails
// and says how to get it; it never skips.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("FORGE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the fleet page is tested in headless Chromium, and none was found: install it " +
		"(apt-get install -y chromium; .ci/run does) or set FORGE_CHROMIUM to its path")
	return ""
}

// artifactDir is where tests write what a person may want to look at (the
// page's screenshots): FORGE_ARTIFACTS, else forge-artifacts in the temp dir.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FORGE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "forge-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts a headless Chromium for the test and returns a tab's context.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.WindowSize(1500, 1100),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelA := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancelA)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting Chromium: %v", err)
	}
	return ctx
}

// pageAgents starts three real agents (web-1 and web-2 succeed, db-1 fails)
// whose "exec" handler prints to stdout and stderr and then waits for release.
func pageAgents(t *testing.T, url string, release <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, a := range []struct{ name, role string }{{"web-1", "web"}, {"web-2", "web"}, {"db-1", "db"}} {
		ag, err := agent.New(agent.Config{Servers: []string{url}, EnrollToken: forgetest.EnrollToken, Name: a.name,
			Labels: map[string]string{"env": "prod", "role": a.role}, Version: "1.4.2"})
		if err != nil {
			t.Fatal(err)
		}
		ag.Handle("exec", func(ctx context.Context, task *agent.Task) ([]byte, error) {
			var p struct{ Argv []string }
			json.Unmarshal(task.Payload, &p)
			fmt.Fprintf(task.Stdout, "$ %s\nhello from %s\n\u202eevil\ndeploying 1.4.2 ...\n", strings.Join(p.Argv, " "), a.name)
			fmt.Fprintf(task.Stderr, "warning: disk 91%% full on %s\n", a.name)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if a.role == "db" {
				fmt.Fprintln(task.Stderr, "error: migration 42 failed")
				return nil, errors.New("exit status 3")
			}
			fmt.Fprintln(task.Stdout, "done")
			return nil, nil
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			ag.Run(ctx)
		}()
	}
}

// shown is what the page shows, read from its DOM.
type shown struct {
	Login     bool
	LoginErr  string
	Summary   map[string]string
	Agents    []shownAgent
	Jobs      []string
	Counts    map[string]string
	JobState  string
	Tasks     []string
	Output    string
	Stderr    string
	Finished  string
	OutState  string
	Images    int
	Cookie    string
	Title     string
	NameNodes int
}

type shownAgent struct {
	ID, Name, Status, Labels, Version, Running string
}

const readPage = `(() => {
  const q = (s) => document.querySelector(s);
  const all = (s) => [...document.querySelectorAll(s)];
  const text = (e) => e ? e.textContent.trim() : '';
  const summary = {};
  for (const e of all('[data-summary]')) summary[e.dataset.summary] = text(e.querySelector('b'));
  const counts = {};
  for (const e of all('#job-counts [data-state]')) counts[e.dataset.state] = text(e);
  return {
    Login: !q('#login').hidden,
    LoginErr: text(q('#login-error')),
    Summary: summary,
    Agents: all('#agents tbody tr').map((r) => ({
      ID: r.dataset.agentId,
      Name: text(r.querySelector('.name').firstChild),
      Status: text(r.cells[1]),
      Labels: [...r.querySelectorAll('.chip:not(.task)')].map(text).join(' '),
      Version: text(r.cells[3]),
      Running: [...r.cells[4].querySelectorAll('[data-task-id]')].map((e) => e.dataset.taskId).join(' ') || text(r.cells[4]),
    })),
    Jobs: all('#jobs tbody tr').map((r) => r.dataset.jobId),
    Counts: counts,
    JobState: text(q('#job-done')),
    Tasks: all('#tasks tbody tr').map((r) => [...r.cells].slice(0, 4).map(text).join('|')),
    Output: text(q('#output')),
    Stderr: all('#output .err').map(text).join('\n'),
    Finished: q('#output').dataset.finished || '',
    OutState: text(q('#out-state')),
    Images: all('img').length,
    Cookie: document.cookie,
    Title: document.title,
    NameNodes: all('#agents .name').length,
  };
})()`

// TestFleetPage drives the page at / in headless Chromium against a real
// server with three real agents, on memory and on Redis: sign-in (a wrong
// token is refused, the token never reaches a URL), the agents with status,
// labels, version and running tasks, a job's per-state counts, a task's live
// stdout and stderr while it runs, and the page updating by itself when the
// tasks finish. Names and output are shown as text: an agent named like an
// HTML tag stays text, a bidi override in output is shown as \u202e.
// Screenshots go to the artifact dir (see artifactDir).
func TestFleetPage(t *testing.T) {
	t.Parallel()
	forgetest.Each(t, func(t *testing.T, b forgetest.Backend) {
		e := forgetest.Start(t, forgetest.Options{Backend: b})
		release := make(chan struct{})
		pageAgents(t, e.URL, release)
		const hostile = `<img src=x onerror="document.title='pwned'">`
		e.Register(hostile, nil)

		ctx, cancel := context.WithTimeout(browser(t), 2*time.Minute)
		defer cancel()
		var page shown
		read := func() shown {
			t.Helper()
			s, err := chromedp.Run(ctx, chromedp.Evaluate[shown](readPage))
			if err != nil {
				t.Fatalf("reading the page: %v (last seen: %+v)", err, page)
			}
			page = s
			return s
		}
		// until waits for the page to show what ok accepts; the bound is the
		// context's, for a page that never gets there.
		until := func(what string, ok func(s shown) bool) {
			t.Helper()
			for {
				if s := read(); ok(s) {
					return
				}
				select {
				case <-ctx.Done():
					t.Fatalf("the page never showed %s; it shows %+v", what, page)
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
		shot := func(name string) {
			t.Helper()
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(artifactDir(t), fmt.Sprintf("fleet-page-%s-%s.png", b, name))
			if err := os.WriteFile(path, png, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("screenshot: %s", path)
		}

		// Sign in: a wrong token is refused with the server's reason.
		if err := chromedp.Do(ctx, chromedp.Navigate(e.URL+"/"), chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), "not-the-admin-token-0000"), chromedp.Click(chromedp.CSS("#login-form button"))); err != nil {
			t.Fatal(err)
		}
		until("the refusal of a wrong token", func(s shown) bool { return strings.Contains(s.LoginErr, "refused") })
		shot("signin")
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(document.getElementById('token').value = '', true)`)); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.ID("token"), forgetest.AdminToken), chromedp.Click(chromedp.CSS("#login-form button"))); err != nil {
			t.Fatal(err)
		}
		until("four agents, the three real ones online", func(s shown) bool {
			online := 0
			for _, a := range s.Agents {
				if a.Name != hostile && a.Status == "online" {
					online++
				}
			}
			return !s.Login && len(s.Agents) == 4 && online == 3
		})
		url, err := chromedp.Run(ctx, chromedp.Location())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(url, forgetest.AdminToken) {
			t.Fatalf("the token is in the URL: %s", url)
		}

		// A job on the three real agents; each prints and waits.
		res, err := e.Control.Dispatch(t.Context(), connect.NewRequest(&forgev1.DispatchRequest{Type: "exec",
			Payload: []byte(`{"argv":["deploy","--version","1.4.2"]}`), Target: &forgev1.DispatchRequest_Selector{Selector: "env=prod"}}))
		if err != nil {
			t.Fatal(err)
		}
		job := res.Msg.JobId
		until("the job with its three tasks running", func(s shown) bool {
			return slices.Contains(s.Jobs, job) && s.Summary["running"] == "3"
		})
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`tr[data-job-id="`+job+`"]`))); err != nil {
			t.Fatal(err)
		}
		until("a running task's live stdout and stderr", func(s shown) bool {
			return s.Counts["RUNNING"] == "3 running" && strings.Contains(s.Output, "hello from") &&
				strings.Contains(s.Stderr, "warning: disk 91% full") && s.OutState == "running"
		})
		s := read()
		if !strings.Contains(s.Output, `\u202eevil`) {
			t.Errorf("the bidi override in the output is not shown escaped: %q", s.Output)
		}
		wantAgents := map[string]shownAgent{
			"web-1": {Name: "web-1", Status: "online", Labels: "env=prod role=web", Version: "1.4.2"},
			"web-2": {Name: "web-2", Status: "online", Labels: "env=prod role=web", Version: "1.4.2"},
			"db-1":  {Name: "db-1", Status: "online", Labels: "env=prod role=db", Version: "1.4.2"},
			hostile: {Name: hostile, Running: "idle"}, // online for 50 s: either
		}
		for _, a := range s.Agents {
			w, ok := wantAgents[a.Name]
			if !ok {
				t.Errorf("the page shows an agent %q", a.Name)
				continue
			}
			if w.Running == "" {
				// Its task of the job (a task id ends with its agent's id).
				for _, id := range res.Msg.TaskIds {
					if strings.HasSuffix(id, "-"+a.ID) {
						w.Running = id
					}
				}
			}
			w.ID = a.ID
			if w.Status == "" {
				w.Status = a.Status
				w.Version = a.Version
			}
			if a != w {
				t.Errorf("agent row %+v, want %+v", a, w)
			}
		}
		if s.Images != 0 || s.Title != "forge · fleet" {
			t.Errorf("the page has %d <img> elements and the title %q: an agent's name was inserted as HTML", s.Images, s.Title)
		}
		if s.Cookie != "" {
			t.Errorf("the page set cookies: %q", s.Cookie)
		}
		shot("running")

		// The tasks finish: the page updates by itself.
		close(release)
		until("the job done: 2 succeeded, 1 failed, output finished", func(s shown) bool {
			return s.Counts["SUCCEEDED"] == "2 succeeded" && s.Counts["FAILED"] == "1 failed" && s.JobState == "done" &&
				s.Finished == "true" && s.Summary["running"] == "0" && len(s.Tasks) == 3
		})
		s = read()
		slices.Sort(s.Tasks)
		// db-1's handler returned an error: FAILED, with whatever exit code the agent gives it.
		if len(s.Tasks) != 3 || !strings.HasPrefix(s.Tasks[0], "db-1|failed|1|") ||
			!slices.Equal(s.Tasks[1:], []string{"web-1|succeeded|1|0", "web-2|succeeded|1|0"}) {
			t.Errorf("tasks as shown: %q", s.Tasks)
		}
		if !strings.Contains(s.Output, "done") && !strings.Contains(s.Stderr, "migration 42 failed") {
			t.Errorf("the followed task's last output is missing: %q / %q", s.Output, s.Stderr)
		}
		shot("done")

		// Every column fits at the widths operators use: no table scrolls
		// sideways, so no column (Started, Last seen, Error) is cut off
		// on a laptop (1280, 1400) or a desktop (1920) screen.
		for _, width := range []int64{1920, 1400, 1280} {
			if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, 1000)); err != nil {
				t.Fatal(err)
			}
			cut, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](tablesCut))
			if err != nil {
				t.Fatal(err)
			}
			if len(cut) > 0 {
				t.Errorf("at %d px wide, tables are cut off: %q", width, cut)
			}
			shot(fmt.Sprintf("done-%d", width))
		}
	})
}

// tablesCut lists the tables whose scroll box is narrower than the table (so
// its last columns are hidden behind a sideways scroll), each with its
// widths.
const tablesCut = `(() => {
  const cut = [];
  for (const box of document.querySelectorAll('.scroll')) {
    const table = box.querySelector('table');
    if (!table || box.offsetParent === null) continue;
    if (box.scrollWidth > box.clientWidth + 1) cut.push(table.id + ': ' + box.scrollWidth + ' > ' + box.clientWidth);
  }
  return cut;
})()`
