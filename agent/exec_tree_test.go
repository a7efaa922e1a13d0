package agent

import (
	"sync"
	"testing"
	"time"
)

// fakeTree is a process tree whose processes obey (or not) as a test says.
type fakeTree struct {
	mu          *sync.Mutex
	alive       bool
	interrupts  int
	kills       int
	canSignal   bool // interrupt can be sent
	obeys       bool // the tree exits when interrupted
	killable    bool // the tree exits when killed
	interruptAt time.Time
	killAt      time.Time
}

func (f *fakeTree) id() int { return 7 }

func (f *fakeTree) interrupt() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.interrupts++
	f.interruptAt = time.Now()
	if f.canSignal && f.obeys {
		f.alive = false
	}
	return f.canSignal
}

func (f *fakeTree) kill() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kills++
	f.killAt = time.Now()
	if f.killable {
		f.alive = false
	}
}

func (f *fakeTree) gone() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.alive
}

func (f *fakeTree) release() {}

// TestStopTree: the escalation every system shares (interrupt, grace, kill,
// wait) asks politely first, waits the grace only when asking reached the tree,
// and says when even a kill did not end it.
func TestStopTree(t *testing.T) {
	t.Parallel()
	const grace, wait = 300 * time.Millisecond, 200 * time.Millisecond
	for _, c := range []struct {
		name                      string
		tree                      fakeTree
		wantGone                  bool
		wantInterrupts, wantKills int
		waitsGrace                bool
	}{
		{"already gone", fakeTree{alive: false}, true, 0, 0, false},
		{"exits when interrupted", fakeTree{alive: true, canSignal: true, obeys: true, killable: true}, true, 1, 0, false},
		{"ignores the interrupt", fakeTree{alive: true, canSignal: true, killable: true}, true, 1, 1, true},
		// No console to send Ctrl-Break through: no point waiting the grace.
		{"cannot be interrupted", fakeTree{alive: true, killable: true}, true, 1, 1, false},
		{"survives the kill", fakeTree{alive: true, canSignal: true}, false, 1, 1, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := &c.tree
			f.mu = new(sync.Mutex)
			start := time.Now()
			gone := stopTree(f, grace, wait)
			if gone != c.wantGone || f.interrupts != c.wantInterrupts || f.kills != c.wantKills {
				t.Fatalf("stopTree = %v with %d interrupts, %d kills; want %v, %d, %d",
					gone, f.interrupts, f.kills, c.wantGone, c.wantInterrupts, c.wantKills)
			}
			if f.kills > 0 {
				waited := f.killAt.Sub(f.interruptAt)
				if c.waitsGrace && waited < grace {
					t.Fatalf("killed %v after the interrupt, before the grace (%v) ended", waited, grace)
				}
				if !c.waitsGrace && waited >= grace {
					t.Fatalf("killed %v after an interrupt that could not be sent; want no wait", waited)
				}
			}
			if !c.wantGone && time.Since(start) < grace+wait {
				t.Fatalf("gave up after %v, before the grace and the kill wait passed", time.Since(start))
			}
		})
	}
}

// TestMergeEnvFoldsCaseOnWindows: on Windows a payload's Path replaces the
// inherited PATH rather than sitting beside it, a token variable is hidden
// whatever its case, and two names that are one variable there are refused.
func TestMergeEnvFoldsCaseOnWindows(t *testing.T) {
	t.Parallel()
	base := []string{"PATH=C:\\Windows", "=C:=C:\\", "Forge_Enroll_Token=secret", "HOME=x"}
	got, err := mergeEnvCase(base, map[string]string{"Path": "C:\\tools"}, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"=C:=C:\\", "HOME=x", "Path=C:\\tools"}
	if len(got) != len(want) {
		t.Fatalf("mergeEnvCase = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("mergeEnvCase = %q, want %q", got, want)
		}
	}
	if _, err := mergeEnvCase(nil, map[string]string{"FORGE_TASK_ID": "t1", "forge_task_id": "t2"}, true); err == nil {
		t.Fatal("two names of one variable were accepted")
	}
	// Without folding (Unix) they are two variables, and PATH stays beside Path.
	got, err = mergeEnvCase(base, map[string]string{"Path": "/tools"}, false)
	if err != nil || len(got) != 4 || got[0] != "PATH=C:\\Windows" {
		t.Fatalf("mergeEnvCase without folding = %q, %v", got, err)
	}
}
