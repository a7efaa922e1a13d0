//go:build linux

package chaos

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// evidenceBuilder makes small, hand-written evidence for the checker's own tests.
type evidenceBuilder struct {
	t0 time.Time
	ev Evidence
}

func newEvidence() *evidenceBuilder {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	return &evidenceBuilder{t0: t0, ev: Evidence{Kinds: []string{FaultAgentKill}, Start: t0, FaultsEnd: t0.Add(time.Minute),
		Healed: t0.Add(time.Minute), Settled: t0.Add(2 * time.Minute), Lease: 3 * time.Second,
		Tasks: map[string]*forgev1.TaskInfo{}, JobInfo: map[string]*forgev1.JobInfo{},
		Faults: []Fault{{Kind: FaultAgentKill, Target: "other", Start: t0, Back: t0.Add(time.Second)}}}}
}

func (b *evidenceBuilder) at(s float64) time.Time {
	return b.t0.Add(time.Duration(s * float64(time.Second)))
}

// job adds a job with its tasks in the given final states (and counts to match).
func (b *evidenceBuilder) job(id string, mc int32, states ...forgev1.TaskState) []*forgev1.TaskInfo {
	j := JobRecord{ID: id, MC: mc}
	counts := &forgev1.JobCounts{}
	var out []*forgev1.TaskInfo
	for i, st := range states {
		tid := "t" + id + string(rune('a'+i)) + "-agent"
		j.TaskIDs = append(j.TaskIDs, tid)
		ti := &forgev1.TaskInfo{Id: tid, JobId: id, State: st, Attempt: 1, CreatedAt: timestamppb.New(b.t0),
			History: []*forgev1.StateChange{{State: forgev1.TaskState_TASK_STATE_RUNNING, At: timestamppb.New(b.at(1)), Attempt: 1, Reason: "leased (attempt 1)"}}}
		if terminal(st) {
			ti.History = append(ti.History, &forgev1.StateChange{State: st, At: timestamppb.New(b.at(3)), Attempt: 1, Reason: "reported succeeded"})
			ti.Output = []byte("run=r" + tid + "1 task=" + tid + " att=1\n")
		}
		b.ev.Tasks[tid] = ti
		counts.Total++
		switch st {
		case forgev1.TaskState_TASK_STATE_SUCCEEDED:
			counts.Succeeded++
		case forgev1.TaskState_TASK_STATE_RUNNING:
			counts.Running++
		case forgev1.TaskState_TASK_STATE_LOST:
			counts.Lost++
		}
		out = append(out, ti)
	}
	b.ev.Jobs = append(b.ev.Jobs, j)
	b.ev.JobInfo[id] = &forgev1.JobInfo{Id: id, Counts: counts}
	return out
}

// run adds a handler run of a task's attempt from..to (to < 0: no end written).
func (b *evidenceBuilder) run(id, task string, att int32, host string, from, to float64) {
	b.ev.Events = append(b.ev.Events, Event{Ev: "start", Run: id, Task: task, Att: att, Host: host, At: b.at(from).UnixMicro()})
	if to >= 0 {
		b.ev.Events = append(b.ev.Events, Event{Ev: "end", Run: id, Task: task, Att: att, Host: host, At: b.at(to).UnixMicro(), How: "ok"})
	}
}

func wantViolation(t *testing.T, r *Report, substr string) {
	t.Helper()
	for _, v := range r.Violations {
		if strings.Contains(v, substr) {
			return
		}
	}
	t.Fatalf("no violation containing %q in %q", substr, r.Violations)
}

func TestCheckClean(t *testing.T) {
	b := newEvidence()
	ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
	b.run("r"+ts[0].Id+"1", ts[0].Id, 1, "h", 1, 2)
	if r := Check(b.ev); len(r.Violations) != 0 {
		t.Fatalf("violations in clean evidence: %q", r.Violations)
	}
}

func TestCheckFindsEachBreak(t *testing.T) {
	t.Run("not terminal", func(t *testing.T) {
		b := newEvidence()
		b.job("j1", 0, forgev1.TaskState_TASK_STATE_RUNNING)
		wantViolation(t, Check(b.ev), "ended TASK_STATE_RUNNING")
	})
	t.Run("missing task", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		delete(b.ev.Tasks, ts[0].Id)
		wantViolation(t, Check(b.ev), "does not exist")
	})
	t.Run("overlap without an expired lease", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		ts[0].Attempt = 2
		ts[0].Output = []byte("run=x task=" + ts[0].Id + " att=2\n")
		b.run("a", ts[0].Id, 1, "h", 1, 5)
		b.run("x", ts[0].Id, 2, "h", 2, 4)
		wantViolation(t, Check(b.ev), "ran at once")
	})
	t.Run("overlap after the lease expired is allowed", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		ts[0].Attempt = 2
		ts[0].Output = []byte("run=x task=" + ts[0].Id + " att=2\n")
		ts[0].History = append(ts[0].History[:1], &forgev1.StateChange{State: forgev1.TaskState_TASK_STATE_PENDING,
			At: timestamppb.New(b.at(1.5)), Attempt: 1, Reason: "lease expired (attempt 1); requeued"}, ts[0].History[1])
		b.run("a", ts[0].Id, 1, "h", 1, 5)
		b.run("x", ts[0].Id, 2, "h", 2, 4)
		if r := Check(b.ev); len(r.Violations) != 0 || r.StaleOverlap != 1 {
			t.Fatalf("violations %q, stale overlaps %d", r.Violations, r.StaleOverlap)
		}
	})
	t.Run("stale report kept", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		ts[0].Attempt = 2
		b.run("r"+ts[0].Id+"1", ts[0].Id, 1, "h", 1, 2)
		wantViolation(t, Check(b.ev), "kept the report of attempt 1")
	})
	t.Run("counts disagree", func(t *testing.T) {
		b := newEvidence()
		b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		b.ev.JobInfo["j1"].Counts.Succeeded = 0
		b.ev.JobInfo["j1"].Counts.Lost = 1
		wantViolation(t, Check(b.ev), "counts")
	})
	t.Run("max_concurrency exceeded", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 1, forgev1.TaskState_TASK_STATE_SUCCEEDED, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		b.run("r"+ts[0].Id+"1", ts[0].Id, 1, "h", 1, 3)
		b.run("r"+ts[1].Id+"1", ts[1].Id, 1, "h", 2, 4)
		wantViolation(t, Check(b.ev), "max_concurrency is 1")
	})
	t.Run("killed and never run again", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		ts[0].Output = nil
		b.run("a", ts[0].Id, 1, "victim", 1, -1)
		b.ev.Faults = append(b.ev.Faults, Fault{Kind: FaultAgentKill, Target: "victim", Start: b.at(1.5), Back: b.at(2)})
		wantViolation(t, Check(b.ev), "was killed and never ran again")
	})
	t.Run("fault kind missing", func(t *testing.T) {
		b := newEvidence()
		b.ev.Kinds = append(b.ev.Kinds, FaultSlotMove)
		wantViolation(t, Check(b.ev), "fault slot-move never happened")
	})
	t.Run("cancel not honoured", func(t *testing.T) {
		b := newEvidence()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		b.ev.Cancels = []CancelRecord{{ID: ts[0].Id, OK: true, At: b.at(1.2)}}
		wantViolation(t, Check(b.ev), "cancel accepted")
	})
}

// TestCheckStoreWipe: what a store wipe took is counted as lost with the store,
// not judged and not counted LOST; what was dispatched after it is judged in full.
func TestCheckStoreWipe(t *testing.T) {
	wiped := func() *evidenceBuilder {
		b := newEvidence()
		b.ev.Faults = append(b.ev.Faults, Fault{Kind: FaultStoreWipe, Target: "3 masters", Start: b.at(10), Back: b.at(10.1)})
		b.ev.Reenrolled = []time.Duration{2 * time.Second}
		return b
	}
	t.Run("lost with the store", func(t *testing.T) {
		b := wiped()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		b.ev.Jobs[0].At = b.at(5)
		b.run("ra", ts[0].Id, 1, "h", 6, 12)
		delete(b.ev.Tasks, ts[0].Id)
		delete(b.ev.Tasks, ts[1].Id)
		delete(b.ev.JobInfo, "j1")
		r := Check(b.ev)
		if len(r.Violations) != 0 {
			t.Fatalf("violations: %q", r.Violations)
		}
		if r.StoreLost != 2 || r.StoreLostJobs != 1 || r.StoreLostRuns != 1 || r.Lost != 0 {
			t.Fatalf("store lost %d tasks %d jobs %d runs, LOST %d; want 2, 1, 1, 0", r.StoreLost, r.StoreLostJobs, r.StoreLostRuns, r.Lost)
		}
	})
	t.Run("after the wipe judged in full", func(t *testing.T) {
		b := wiped()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		b.ev.Jobs[0].At = b.at(11)
		delete(b.ev.Tasks, ts[0].Id)
		delete(b.ev.JobInfo, "j1")
		r := Check(b.ev)
		wantViolation(t, r, "does not exist")
		wantViolation(t, r, "no record")
	})
	t.Run("one attempt twice at once", func(t *testing.T) {
		b := wiped()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED)
		b.ev.Jobs[0].At = b.at(5)
		b.run("ra", ts[0].Id, 1, "h", 6, 9)
		b.run("rb", ts[0].Id, 1, "h2", 7, 8)
		delete(b.ev.Tasks, ts[0].Id)
		wantViolation(t, Check(b.ev), "ran twice at once")
	})
	t.Run("agents not back", func(t *testing.T) {
		b := wiped()
		b.ev.Reenrolled = nil
		wantViolation(t, Check(b.ev), "did not all enroll again")
	})
	t.Run("kept in part", func(t *testing.T) {
		b := wiped()
		ts := b.job("j1", 0, forgev1.TaskState_TASK_STATE_SUCCEEDED, forgev1.TaskState_TASK_STATE_PENDING)
		b.ev.Jobs[0].At = b.at(9.9)
		delete(b.ev.Tasks, ts[0].Id)
		b.ev.Unfinished = []string{"j1"}
		r := Check(b.ev)
		if len(r.Violations) != 0 || r.StoreLost != 1 || r.Stranded != 1 {
			t.Fatalf("violations %q, store lost %d, stranded %d; want none, 1, 1", r.Violations, r.StoreLost, r.Stranded)
		}
	})
}
