package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/tasksig"
)

// acceptedFile is the replay guard's record in the state dir.
const acceptedFile = "accepted.jsonl"

// replayGuard remembers the signed tasks an agent accepted, so that none runs
// twice — not when a recorded Poll answer is played back to it, not across its
// restarts (with a state dir the record is a file, written and synced before
// the task starts), not when a hostile store leases an attempt again. A job
// has one task per agent, so the guard keeps, per job: the task, the highest
// attempt run, and the leases handed back unstarted (ReturnTasks). It refuses
// another task of a job it knows, an attempt not above the highest run, and a
// lease it handed back. An entry lives until its job's signature expires
// (NotAfter and tasksig.MaxSkew): after that the signature check refuses the
// job's tasks anyway.
type replayGuard struct {
	mu    sync.Mutex
	jobs  map[string]*acceptedJob
	file  *os.File // nil: memory only (no state dir)
	name  string
	lines int // lines in the file, for compaction
}

// acceptedJob is what the guard keeps of one job.
type acceptedJob struct {
	Task     string  `json:"t"`
	Ran      int32   `json:"a,omitempty"` // the highest attempt run
	Returned []lease `json:"r,omitempty"` // leases handed back unstarted
	Until    int64   `json:"u"`           // unix ms; forgotten after
}

type lease struct {
	Attempt int32 `json:"a"`
	Expires int64 `json:"e"` // the lease's expiry, unix ms: it names the lease
}

// acceptedLine is one line of the file: an update of one job's entry.
type acceptedLine struct {
	Job string `json:"j"`
	acceptedJob
}

// newReplayGuard returns a guard kept in memory only.
func newReplayGuard() *replayGuard { return &replayGuard{jobs: map[string]*acceptedJob{}} }

// openReplayGuard loads the guard of state dir dir, drops what expired before
// now, rewrites the file compacted and opens it for appending.
func openReplayGuard(dir string, now time.Time) (*replayGuard, error) {
	g := newReplayGuard()
	g.name = filepath.Join(dir, acceptedFile)
	f, err := os.Open(g.name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("agent: replay record: %w", err)
	default:
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var l acceptedLine
			if json.Unmarshal(sc.Bytes(), &l) != nil || l.Job == "" {
				continue // a line torn by a crash: the ones before it stand
			}
			e := l.acceptedJob
			g.jobs[l.Job] = &e
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("agent: replay record %s: %w", g.name, err)
		}
	}
	g.forget(now)
	if err := g.rewrite(); err != nil {
		return nil, err
	}
	return g, nil
}

// forget drops the entries of jobs expired before now.
func (g *replayGuard) forget(now time.Time) {
	ms := now.UnixMilli()
	for j, e := range g.jobs {
		if e.Until < ms {
			delete(g.jobs, j)
		}
	}
}

// rewrite writes the live entries to a new file and appends to it from then on.
func (g *replayGuard) rewrite() error {
	var b []byte
	for j, e := range g.jobs {
		line, _ := json.Marshal(acceptedLine{Job: j, acceptedJob: *e})
		b = append(append(b, line...), '\n')
	}
	if err := writeFileAtomic(g.name, b); err != nil {
		return fmt.Errorf("agent: replay record: %w", err)
	}
	f, err := os.OpenFile(g.name, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("agent: replay record: %w", err)
	}
	if g.file != nil {
		g.file.Close()
	}
	g.file, g.lines = f, len(g.jobs)
	return nil
}

func (g *replayGuard) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.file != nil {
		g.file.Close()
		g.file = nil
	}
}

// errReplay is the error of a task the guard refuses.
var errReplay = errors.New("this agent already accepted it (a replay)")

// until is how long the guard keeps what it learns of t's job.
func until(t *forgev1.Task) int64 {
	return t.GetJobSignature().GetNotAfter().AsTime().Add(tasksig.MaxSkew + time.Minute).UnixMilli()
}

// check tells whether t (verified) may run: not another task of a job already
// accepted, not an attempt already run or passed, not a lease handed back.
func (g *replayGuard) check(t *forgev1.Task) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.jobs[t.JobId]
	if e == nil {
		return nil
	}
	if e.Task != t.Id {
		return fmt.Errorf("%w: task %s of job %s ran here already; %s is another task of it", errReplay, e.Task, t.JobId, t.Id)
	}
	if t.Attempt <= e.Ran {
		return fmt.Errorf("%w: attempt %d of task %s, and attempt %d ran", errReplay, t.Attempt, t.Id, e.Ran)
	}
	exp := t.GetLeaseExpiresAt().AsTime().UnixMilli()
	for _, r := range e.Returned {
		if r.Attempt == t.Attempt && r.Expires == exp {
			return fmt.Errorf("%w: the lease of attempt %d of task %s was handed back", errReplay, t.Attempt, t.Id)
		}
	}
	return nil
}

// record keeps that the tasks run are accepted and the leases back are handed
// back, on disk (synced) before it returns; a task is started only after.
func (g *replayGuard) record(run, back []*forgev1.Task) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	var b []byte
	add := func(t *forgev1.Task, ran bool) {
		e := g.jobs[t.JobId]
		switch {
		case e == nil:
			e = &acceptedJob{Task: t.Id}
			g.jobs[t.JobId] = e
		case e.Task != t.Id:
			return // check refused it; what the guard knows of the job stands
		}
		if ran {
			e.Ran = max(e.Ran, t.Attempt)
		} else {
			e.Returned = append(e.Returned, lease{Attempt: t.Attempt, Expires: t.GetLeaseExpiresAt().AsTime().UnixMilli()})
		}
		e.Until = max(e.Until, until(t))
		line, _ := json.Marshal(acceptedLine{Job: t.JobId, acceptedJob: *e})
		b = append(append(b, line...), '\n')
	}
	for _, t := range run {
		add(t, true)
	}
	for _, t := range back {
		add(t, false)
	}
	if g.file == nil || len(b) == 0 {
		return nil
	}
	if _, err := g.file.Write(b); err != nil {
		return fmt.Errorf("agent: replay record: %w", err)
	}
	if err := g.file.Sync(); err != nil {
		return fmt.Errorf("agent: replay record: %w", err)
	}
	g.lines += len(run) + len(back)
	if g.lines > 4*len(g.jobs)+1000 {
		g.forget(time.Now())
		return g.rewrite()
	}
	return nil
}
