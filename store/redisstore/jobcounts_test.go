package redisstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/orange-forge/forge/internal/redistest"
	"github.com/orange-forge/forge/store"
)

// TestSingleAgentCountsAcrossVersions: a single-agent job keeps no per-shard
// counts (jc) — GetJob counts it from its task — and reads right when a
// replica of the previous version, which kept them, shares the Redis: it made
// the task (jc written at create), or leased one this version made (jc
// written at the lease). Either way the task's end leaves no jc behind, and
// the count of jobs kept, run by a replica that has none of the jobs cached,
// drops finished single-agent jobs and keeps a fan-out with a live task.
func TestSingleAgentCountsAcrossVersions(t *testing.T) {
	t.Parallel()
	rd := redistest.Start(t)
	prefix := fmt.Sprintf("jc%d", time.Now().UnixNano())
	s, err := Open(t.Context(), rd.URL(), store.Config{}, Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := t.Context()
	cred := func(name string) store.Cred {
		a, err := s.RegisterAgent(ctx, store.RegisterParams{Name: name, SecretHash: sum(name)})
		if err != nil {
			t.Fatal(err)
		}
		return store.Cred{AgentID: a.ID, SecretHash: sum(name)}
	}
	c := cred("a")
	spec := store.JobSpec{Type: "echo", Payload: []byte("hi"), Target: store.Target{AgentID: c.AgentID},
		Timeout: time.Minute, DeliveryTTL: time.Hour, MaxAttempts: 3}
	jc := func(jid string) string { return s.k.jobCounts(shardOf(c.AgentID), jid) }
	// previous writes what the previous version's moved() wrote to a job's
	// counts: HINCRBY of the old state (-1) or of n (a new task), and of the new.
	previous := func(jid string, old, new store.TaskState) {
		t.Helper()
		if old == 0 {
			rd.MustDo("HINCRBY", jc(jid), "n", "1")
		} else {
			rd.MustDo("HINCRBY", jc(jid), itoa(old), "-1")
		}
		rd.MustDo("HINCRBY", jc(jid), itoa(new), "1")
	}
	counts := func(what, jid string, want store.TaskState) {
		t.Helper()
		for _, cached := range []bool{true, false} {
			if !cached {
				s.jobs.drop(jid)
			}
			j, err := s.GetJob(ctx, jid)
			if err != nil {
				t.Fatal(err)
			}
			var w store.Counts
			w.Add(want, 1)
			if j.Counts != w {
				t.Errorf("%s: GetJob(cached %v) counts %+v, want %+v", what, cached, j.Counts, w)
			}
		}
	}
	noCounts := func(what, jid string) {
		t.Helper()
		if n := rd.MustDo("EXISTS", jc(jid)); n != "0" {
			t.Errorf("%s: the job's per-shard counts exist (%s); want none", what, rd.MustDo("HGETALL", jc(jid)))
		}
	}
	lease := func() store.Task {
		t.Helper()
		r, err := s.Lease(ctx, store.LeaseParams{Cred: c, Max: 4, Lease: time.Minute})
		if err != nil || len(r.Tasks) != 1 {
			t.Fatalf("Lease = %+v, %v", r, err)
		}
		return r.Tasks[0]
	}
	report := func(tk store.Task) {
		t.Helper()
		if _, err := s.Report(ctx, store.ReportParams{Cred: c, TaskID: tk.ID, Attempt: tk.Attempt, Outcome: store.OutcomeSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	var finished []string

	// Made, leased and ended by this version: no counts, ever.
	j, err := s.Dispatch(ctx, spec)
	if err != nil || j.Counts.Pending != 1 || j.Counts.Total() != 1 {
		t.Fatalf("Dispatch = %+v, %v; want one task pending", j, err)
	}
	noCounts("made", j.ID)
	counts("made", j.ID, store.StatePending)
	tk := lease()
	noCounts("leased", j.ID)
	counts("leased", j.ID, store.StateRunning)
	report(tk)
	noCounts("ended", j.ID)
	counts("ended", j.ID, store.StateSucceeded)
	finished = append(finished, j.ID)

	// Made by the previous version (its create counted the task), leased and
	// ended by this one.
	if j, err = s.Dispatch(ctx, spec); err != nil {
		t.Fatal(err)
	}
	previous(j.ID, 0, store.StatePending)
	counts("made before", j.ID, store.StatePending)
	tk = lease()
	counts("made before, leased", j.ID, store.StateRunning)
	report(tk)
	noCounts("made before, ended", j.ID)
	counts("made before, ended", j.ID, store.StateSucceeded)
	finished = append(finished, j.ID)

	// Made by this version, leased by the previous one, ended by this one.
	if j, err = s.Dispatch(ctx, spec); err != nil {
		t.Fatal(err)
	}
	tk = lease()
	previous(j.ID, store.StatePending, store.StateRunning)
	counts("leased before", j.ID, store.StateRunning)
	report(tk)
	noCounts("leased before, ended", j.ID)
	counts("leased before, ended", j.ID, store.StateSucceeded)
	finished = append(finished, j.ID)

	// A fan-out keeps its counts: one task ended, one live.
	cred("d")
	fan := spec
	fan.Target = store.Target{All: true}
	fj, err := s.Dispatch(ctx, fan)
	if err != nil || fj.Counts.Pending != 2 {
		t.Fatalf("fan-out Dispatch = %+v, %v", fj, err)
	}
	report(lease())
	if j, err := s.GetJob(ctx, fj.ID); err != nil || j.Counts.Succeeded != 1 || j.Counts.Pending != 1 {
		t.Fatalf("fan-out GetJob = %+v, %v; want one succeeded, one pending", j.Counts, err)
	}

	// The count of jobs kept, on a replica that has cached none of them: the
	// newest single-agent job stays, the older ones go, the live fan-out stays.
	r, err := Open(ctx, rd.URL(), store.Config{KeepJobs: 1}, Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Reap(ctx); err != nil {
		t.Fatal(err)
	}
	for i, id := range finished {
		_, err := r.GetJob(ctx, id)
		if gone := store.KindOf(err) == store.KindNotFound; gone != (i < len(finished)-1) {
			t.Errorf("job %d of %d after the count of jobs kept (1): GetJob = %v", i+1, len(finished), err)
		}
	}
	if j, err := r.GetJob(ctx, fj.ID); err != nil || j.Counts.Succeeded != 1 || j.Counts.Pending != 1 {
		t.Errorf("fan-out with a live task after the count of jobs kept: GetJob = %+v, %v", j.Counts, err)
	}
}
