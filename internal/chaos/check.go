//go:build linux

package chaos

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
)

// Evidence is what a run leaves for the checker: what the driver was told, what
// the injector did, what the agents wrote, and the servers' final records.
type Evidence struct {
	Seed    int64
	Kinds   []string // fault kinds the run was asked to inject
	Jobs    []JobRecord
	Cancels []CancelRecord
	Faults  []Fault
	Events  []Event
	Hosts   map[string]string // agent id → the process that runs it
	Lease   time.Duration
	// Start is when faults began; FaultsEnd when they stopped; Healed when every
	// process and node was back; Settled when every job had ended (or the bound).
	Start, FaultsEnd, Healed, Settled time.Time
	// Reenrolled holds, per store wipe, how long until every agent was online
	// again under a new identity; a wipe with no entry saw them not all back.
	Reenrolled       []time.Duration
	Sent, Refused    int
	DispatchFailures []string
	Unfinished       []string // jobs not done at Settled
	ControlRetries   int
	Tasks            map[string]*forgev1.TaskInfo
	JobInfo          map[string]*forgev1.JobInfo
}

// Report is the checker's verdict and the run's numbers.
type Report struct {
	Seed       int64
	Violations []string
	Notes      []string

	Faults       map[string]int
	FaultErrors  []string
	States       map[string]int
	Jobs         int
	Accepted     int // tasks the server accepted
	Sent         int // dispatches sent
	Refused      int // dispatches that failed after retries
	Retries      int // control calls repeated after a transient failure
	Runs         int // handler invocations
	Attempts     int // attempts the server leased
	Redelivered  int // tasks leased more than once
	Redeliveries int // leases beyond each task's first
	Lost         int
	// StoreLost counts accepted tasks whose records a store wipe took (not
	// LOST, which is a state a task reached); StoreLostJobs the jobs likewise.
	StoreLost     int
	StoreLostJobs int
	// StoreLostRuns counts handler runs of tasks the store lost.
	StoreLostRuns int
	// Stranded counts tasks of a job dispatched as the store was wiped that
	// outlived it in part (the job's record or some of its tasks gone) and did
	// not end.
	Stranded int
	// Reenrolled is the longest any store wipe\'s agents took to be back.
	Reenrolled   time.Duration
	RanTwice     int // tasks whose handler ran more than once
	SameAttempt  int // handler invocations of an attempt already run
	StaleOverlap int // runs that overlapped a later attempt while being stopped
	LongestStale time.Duration
	LiveExpired  int // leases that ran out under an agent neither killed nor stopped
	Killed       int // runs ended by their process's death
	Abandoned    int // runs stopped because their lease was gone
	LongestWait  time.Duration
	WaitTask     string
	WaitWhy      string
	FaultPhase   time.Duration
	SettleTime   time.Duration
}

// run is one handler invocation, from the histories.
type run struct {
	id, task, host string
	att            int32
	start, end     time.Time
	ended          bool // an end event was written
	killed         bool // its process died under it
	how, cause     string
}

func (r *run) overlaps(o *run) bool { return r.start.Before(o.end) && o.start.Before(r.end) }

// Check checks the evidence and returns the report. The rules:
//
//   - every task the server accepted exists and is terminal;
//   - two runs of a task overlap only when the earlier attempt's lease had
//     expired before the later one started (the earlier one is being stopped);
//   - the result kept for a task is its last attempt's (no stale report accepted);
//   - a run killed under its agent, or abandoned, is followed by another attempt,
//     or the task ended LOST, CANCELED, TIMED_OUT or EXPIRED;
//   - job counts equal the states of the job's tasks;
//   - no more than max_concurrency current attempts of a job run at once;
//   - a cancel the server accepted ends the task CANCELED (or TIMED_OUT);
//   - every fault kind asked for happened.
//
// A store wipe (FaultStoreWipe) takes every task and job accepted before it:
// those whose record is gone are counted as lost with the store, not judged
// (and not counted LOST, a state they never reached). A dispatch under way as
// the store was wiped may be kept in part; its tasks that exist are judged like
// any other, except that one left unfinished is counted as stranded. Every task
// whose record exists is judged by all the rules above.
func Check(ev Evidence) *Report {
	r := &Report{Seed: ev.Seed, Faults: map[string]int{}, States: map[string]int{}, Jobs: len(ev.Jobs),
		Sent: ev.Sent, Refused: ev.Refused, Retries: ev.ControlRetries,
		FaultPhase: ev.FaultsEnd.Sub(ev.Start), SettleTime: ev.Settled.Sub(ev.Healed)}
	bad := func(format string, args ...any) { r.Violations = append(r.Violations, fmt.Sprintf(format, args...)) }
	note := func(format string, args ...any) { r.Notes = append(r.Notes, fmt.Sprintf(format, args...)) }

	for _, f := range ev.Faults {
		if f.Err != "" {
			r.FaultErrors = append(r.FaultErrors, fmt.Sprintf("%s %s: %s", f.Kind, f.Target, f.Err))
			continue
		}
		r.Faults[f.Kind]++
	}
	for _, k := range ev.Kinds {
		if r.Faults[k] == 0 {
			bad("fault %s never happened", k)
		}
	}
	for _, f := range ev.DispatchFailures {
		note("%s", f)
	}
	wiped := lastWipe(ev.Faults)
	if n := r.Faults[FaultStoreWipe]; len(ev.Reenrolled) < n {
		bad("after %d of %d store wipes the agents did not all enroll again", n-len(ev.Reenrolled), n)
	}
	for _, d := range ev.Reenrolled {
		r.Reenrolled = max(r.Reenrolled, d)
	}
	// old tells whether a job was dispatched before the last store wipe ended.
	oldJob := map[string]bool{}
	for _, j := range ev.Jobs {
		oldJob[j.ID] = j.At.Before(wiped)
	}
	for _, j := range ev.Unfinished {
		if oldJob[j] {
			note("job %s, dispatched as the store was wiped, kept in part and not done", j)
			continue
		}
		bad("job %s not done %s after the cluster healed", j, ev.Settled.Sub(ev.Healed).Round(time.Second))
	}

	runs := buildRuns(ev, note)
	byTask := map[string][]*run{}
	for _, x := range runs {
		byTask[x.task] = append(byTask[x.task], x)
	}
	for _, rs := range byTask {
		slices.SortFunc(rs, func(a, b *run) int { return a.start.Compare(b.start) })
	}
	r.Runs = len(runs)

	accepted := map[string]*JobRecord{}
	for i := range ev.Jobs {
		for _, id := range ev.Jobs[i].TaskIDs {
			accepted[id] = &ev.Jobs[i]
		}
	}
	r.Accepted = len(accepted)
	for id, j := range accepted {
		if ev.Tasks[id] != nil {
			continue
		}
		if oldJob[j.ID] {
			r.StoreLost++
			r.StoreLostRuns += len(byTask[id])
			// Its lease history went with it: two attempts that overlapped are
			// not judged, but one attempt never runs twice at once.
			rs := byTask[id]
			for i, a := range rs {
				for _, b := range rs[i+1:] {
					if !a.overlaps(b) {
						continue
					}
					if a.att == b.att {
						bad("task %s (lost with the store): attempt %d ran twice at once (%s %s..%s and %s %s..%s)",
							id, a.att, a.host, stamp(a.start), stamp(a.end), b.host, stamp(b.start), stamp(b.end))
					} else {
						note("task %s (lost with the store): attempts %d and %d overlapped; its lease history is gone", id, a.att, b.att)
					}
				}
			}
			continue
		}
		bad("accepted task %s does not exist", id)
	}
	for id := range byTask {
		if accepted[id] == nil {
			note("task %s ran but its dispatch was not acknowledged", id)
		}
	}

	ids := make([]string, 0, len(ev.Tasks))
	for id := range ev.Tasks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		t := ev.Tasks[id]
		r.States[strings.TrimPrefix(t.State.String(), "TASK_STATE_")]++
		r.Attempts += int(t.Attempt)
		if t.Attempt > 1 {
			r.Redelivered++
			r.Redeliveries += int(t.Attempt) - 1
		}
		if t.State == forgev1.TaskState_TASK_STATE_LOST {
			r.Lost++
		}
		if !terminal(t.State) {
			if j := accepted[id]; j != nil && oldJob[j.ID] {
				r.Stranded++
				note("task %s of job %s, dispatched as the store was wiped, ended %s", id, j.ID, t.State)
			} else {
				bad("task %s ended %s", id, t.State)
			}
		}
		rs := byTask[id]
		expired := leaseExpiries(t)
		leasedAt := leases(t)
		seenAtt := map[int32]bool{}
		for _, x := range rs {
			if seenAtt[x.att] {
				r.SameAttempt++
				note("task %s: attempt %d ran twice", id, x.att)
			}
			seenAtt[x.att] = true
			if x.killed {
				r.Killed++
			}
			if x.how == "canceled" && strings.Contains(x.cause, "abandoned") {
				r.Abandoned++
			}
		}
		if len(rs) > 1 {
			r.RanTwice++
		}
		// Leases that ran out while their agent was neither killed nor stopped:
		// the servers or Redis were out of reach for longer than a lease.
		for _, x := range rs {
			te, ok := expired[x.att]
			if ok && te.After(x.start) && !hostDown(ev.Faults, x.host, x.start, te) {
				r.LiveExpired++
			}
		}
		// Overlaps.
		for i, a := range rs {
			for _, b := range rs[i+1:] {
				if !a.overlaps(b) {
					continue
				}
				// The older attempt may still run, being stopped, once its lease
				// expired before the newer one started; whichever started first.
				lo, hi := a, b
				if hi.att < lo.att {
					lo, hi = hi, lo
				}
				// Judged on the server's own times (its history), so the two
				// clocks need not agree: attempt hi was leased after lo's lease ran out.
				te, ok := expired[lo.att]
				leased, lok := leasedAt[hi.att]
				if !lok {
					leased = hi.start.Add(clockSlack)
				}
				if lo.att < hi.att && ok && !te.After(leased) {
					r.StaleOverlap++
					from, to := lo.start, lo.end
					if hi.start.After(from) {
						from = hi.start
					}
					if hi.end.Before(to) {
						to = hi.end
					}
					r.LongestStale = max(r.LongestStale, to.Sub(from))
					continue
				}
				bad("task %s: attempt %d (%s %s..%s) and attempt %d (%s %s..%s) ran at once; lease of attempt %d expired: %v",
					id, lo.att, lo.host, stamp(lo.start), stamp(lo.end), hi.att, hi.host, stamp(hi.start), stamp(hi.end), lo.att, fmtTime(te, ok))
			}
		}
		// The result kept is the last attempt's.
		if reported(t) {
			if att, ok := outputAttempt(t.Output); ok && att != t.Attempt {
				bad("task %s: the server kept the report of attempt %d, its current attempt is %d", id, att, t.Attempt)
			}
			if run := RunID(t.Output); run != "" {
				found := false
				for _, x := range rs {
					found = found || x.id == run
				}
				if !found {
					note("task %s: the reported run %s is in no history", id, run)
				}
			}
		}
		// A killed or abandoned run is followed by another attempt, or the task gave up.
		for i, x := range rs {
			if !x.killed && !(x.how == "canceled" && strings.Contains(x.cause, "abandoned")) {
				continue
			}
			later := false
			for _, y := range rs[i+1:] {
				later = later || y.att > x.att
			}
			switch t.State {
			case forgev1.TaskState_TASK_STATE_LOST, forgev1.TaskState_TASK_STATE_CANCELED,
				forgev1.TaskState_TASK_STATE_TIMED_OUT, forgev1.TaskState_TASK_STATE_EXPIRED:
				later = true
			}
			if !later && t.Attempt <= x.att {
				bad("task %s: attempt %d was %s and never ran again; the task ended %s at attempt %d",
					id, x.att, map[bool]string{true: "killed", false: "abandoned"}[x.killed], t.State, t.Attempt)
			}
		}
		// Waits caused by faults: dispatch to first start for tasks not held by a
		// rollout, and the gap before each redelivery.
		if j := accepted[id]; j != nil && j.MC == 0 && len(rs) > 0 && t.CreatedAt != nil {
			r.wait(id, t.CreatedAt.AsTime(), rs[0].start, "pickup", ev.Faults)
		}
		for i := 1; i < len(rs); i++ {
			if rs[i].att > rs[i-1].att {
				r.wait(id, rs[i-1].end, rs[i].start, "redelivery", ev.Faults)
			}
		}
	}

	// Job counts and max_concurrency.
	for _, j := range ev.Jobs {
		info := ev.JobInfo[j.ID]
		if info == nil && oldJob[j.ID] {
			r.StoreLostJobs++
			continue
		}
		if info == nil {
			bad("job %s: no record", j.ID)
			continue
		}
		var want forgev1.JobCounts
		for _, id := range j.TaskIDs {
			t := ev.Tasks[id]
			if t == nil {
				continue
			}
			want.Total++
			switch t.State {
			case forgev1.TaskState_TASK_STATE_PENDING:
				want.Pending++
			case forgev1.TaskState_TASK_STATE_RUNNING:
				want.Running++
			case forgev1.TaskState_TASK_STATE_SUCCEEDED:
				want.Succeeded++
			case forgev1.TaskState_TASK_STATE_FAILED:
				want.Failed++
			case forgev1.TaskState_TASK_STATE_CANCELED:
				want.Canceled++
			case forgev1.TaskState_TASK_STATE_TIMED_OUT:
				want.TimedOut++
			case forgev1.TaskState_TASK_STATE_EXPIRED:
				want.Expired++
			case forgev1.TaskState_TASK_STATE_LOST:
				want.Lost++
			}
		}
		if oldJob[j.ID] && int(want.Total) != len(j.TaskIDs) {
			note("job %s, dispatched as the store was wiped: %d of its %d tasks kept", j.ID, want.Total, len(j.TaskIDs))
			continue
		}
		got := info.Counts
		if got == nil {
			got = &forgev1.JobCounts{}
		}
		if got.Total != want.Total || got.Pending != want.Pending || got.Running != want.Running || got.Succeeded != want.Succeeded ||
			got.Failed != want.Failed || got.Canceled != want.Canceled || got.TimedOut != want.TimedOut ||
			got.Expired != want.Expired || got.Lost != want.Lost {
			bad("job %s: counts %v, its tasks say %v", j.ID, countsText(got), countsText(&want))
		}
		if int(want.Total) != len(j.TaskIDs) {
			bad("job %s: %d tasks accepted, %d exist", j.ID, len(j.TaskIDs), want.Total)
		}
		if j.MC > 0 {
			if peak, at := peakConcurrency(j, byTask, ev.Tasks); peak > int(j.MC) {
				bad("job %s: %d attempts ran at once at %s, max_concurrency is %d", j.ID, peak, stamp(at), j.MC)
			}
		}
	}

	// Cancels the server accepted end the task CANCELED (or TIMED_OUT, which wins).
	for _, c := range ev.Cancels {
		if c.Job || !c.OK {
			continue
		}
		t := ev.Tasks[c.ID]
		if t == nil {
			continue
		}
		if t.State != forgev1.TaskState_TASK_STATE_CANCELED && t.State != forgev1.TaskState_TASK_STATE_TIMED_OUT {
			bad("task %s: cancel accepted at %s, but it ended %s", c.ID, stamp(c.At), t.State)
		}
	}
	return r
}

// buildRuns pairs start and end events into runs. A run with no end ended when
// its process was killed: for an embedded agent at the kill, for a command of a
// `forge agent` when the agent started again (it ends what its previous run left).
func buildRuns(ev Evidence, note func(string, ...any)) []*run {
	byID := map[string]*run{}
	var out []*run
	for _, e := range ev.Events {
		x := byID[e.Run]
		if x == nil {
			x = &run{id: e.Run, task: e.Task, att: e.Att, host: e.Host}
			byID[e.Run] = x
			out = append(out, x)
		}
		switch e.Ev {
		case "start":
			x.start = e.Time()
		case "end":
			x.end, x.ended, x.how, x.cause = e.Time(), true, e.How, e.Cause
		}
	}
	for _, x := range out {
		if x.ended {
			continue
		}
		for _, f := range ev.Faults {
			if f.Kind != FaultAgentKill || f.Target != x.host || f.Err != "" || f.Start.Before(x.start) {
				continue
			}
			x.killed = true
			x.end = f.Start
			if strings.HasPrefix(x.host, "fa-") {
				x.end = f.Back
			}
			break
		}
		if !x.killed {
			note("task %s: attempt %d on %s started at %s and never ended", x.task, x.att, x.host, stamp(x.start))
			x.end = ev.Settled
		}
	}
	return out
}

// hostDown tells whether an agent process was killed or stopped at some time
// between from and to.
func hostDown(faults []Fault, host string, from, to time.Time) bool {
	for _, f := range faults {
		if (f.Kind == FaultAgentKill || f.Kind == FaultAgentStop) && f.Target == host &&
			f.Start.Before(to) && f.Back.After(from) {
			return true
		}
	}
	return false
}

// clockSlack is how far apart a time the servers recorded (Redis' clock, as each
// replica reads it) and one an agent process recorded (its own) may be for the
// same instant, on one machine: the replicas' offset from Redis is measured to
// within half a round trip, which a loaded machine can stretch.
const clockSlack = 100 * time.Millisecond

// leases returns, per attempt, when the server leased it.
func leases(t *forgev1.TaskInfo) map[int32]time.Time {
	out := map[int32]time.Time{}
	for _, h := range t.History {
		if h.State == forgev1.TaskState_TASK_STATE_RUNNING {
			out[h.Attempt] = h.At.AsTime()
		}
	}
	return out
}

// leaseExpiries returns, per attempt, when the server found its lease expired.
func leaseExpiries(t *forgev1.TaskInfo) map[int32]time.Time {
	out := map[int32]time.Time{}
	for _, h := range t.History {
		if strings.Contains(h.Reason, "lease expired") {
			if _, ok := out[h.Attempt]; !ok {
				out[h.Attempt] = h.At.AsTime()
			}
		}
	}
	return out
}

// reported tells whether the task ended by its agent's report.
func reported(t *forgev1.TaskInfo) bool {
	if len(t.History) == 0 {
		return false
	}
	return strings.Contains(t.History[len(t.History)-1].Reason, "reported")
}

func outputAttempt(out []byte) (int32, bool) {
	var run, task string
	var att int32
	if _, err := fmt.Sscanf(string(out), "run=%s task=%s att=%d", &run, &task, &att); err != nil {
		return 0, false
	}
	return att, true
}

// peakConcurrency returns the most runs of a job's current attempts at once: each
// run counts from its start until it ended or its lease was found expired.
func peakConcurrency(j JobRecord, byTask map[string][]*run, tasks map[string]*forgev1.TaskInfo) (int, time.Time) {
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, id := range j.TaskIDs {
		t := tasks[id]
		if t == nil {
			continue
		}
		exp := leaseExpiries(t)
		for _, x := range byTask[id] {
			// Counted until it ended, or its lease was found expired (less the
			// slack between clocks: the next task may start right after).
			end := x.end
			if te, ok := exp[x.att]; ok && te.Add(-clockSlack).Before(end) {
				end = te.Add(-clockSlack)
			}
			if !end.After(x.start) {
				continue
			}
			edges = append(edges, edge{x.start, 1}, edge{end, -1})
		}
	}
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d // ends before starts at the same instant
	})
	peak, cur := 0, 0
	var at time.Time
	for _, e := range edges {
		cur += e.d
		if cur > peak {
			peak, at = cur, e.at
		}
	}
	return peak, at
}

// wait records a wait of a task from..to, naming the faults under way then.
func (r *Report) wait(task string, from, to time.Time, what string, faults []Fault) {
	d := to.Sub(from)
	if d <= r.LongestWait {
		return
	}
	r.LongestWait, r.WaitTask = d, task
	var why []string
	for _, f := range faults {
		if f.Start.Before(to) && f.Back.Add(5*time.Second).After(from) {
			why = append(why, f.Kind+" "+f.Target)
		}
	}
	if len(why) == 0 {
		why = []string{"no fault"}
	}
	r.WaitWhy = what + " during " + strings.Join(why, ", ")
}

func terminal(s forgev1.TaskState) bool {
	switch s {
	case forgev1.TaskState_TASK_STATE_SUCCEEDED, forgev1.TaskState_TASK_STATE_FAILED, forgev1.TaskState_TASK_STATE_CANCELED,
		forgev1.TaskState_TASK_STATE_TIMED_OUT, forgev1.TaskState_TASK_STATE_EXPIRED, forgev1.TaskState_TASK_STATE_LOST:
		return true
	}
	return false
}

func countsText(c *forgev1.JobCounts) string {
	return fmt.Sprintf("{total %d pending %d running %d succeeded %d failed %d canceled %d timed_out %d expired %d lost %d}",
		c.Total, c.Pending, c.Running, c.Succeeded, c.Failed, c.Canceled, c.TimedOut, c.Expired, c.Lost)
}

func stamp(t time.Time) string { return t.Format("15:04:05.000") }

func fmtTime(t time.Time, ok bool) string {
	if !ok {
		return "never"
	}
	return stamp(t)
}

// Table returns the report as a table for people.
func (r *Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos run, seed %d: %s of faults, settled in %s\n", r.Seed, r.FaultPhase.Round(time.Second), r.SettleTime.Round(100*time.Millisecond))
	fmt.Fprintf(&b, "  faults by kind:")
	for _, k := range AllFaults {
		fmt.Fprintf(&b, "  %s %d", k, r.Faults[k])
	}
	for k, n := range r.Faults {
		if !slices.Contains(AllFaults, k) {
			fmt.Fprintf(&b, "  %s %d", k, n)
		}
	}
	fmt.Fprintf(&b, "\n  tasks by final state:")
	for _, s := range []string{"SUCCEEDED", "FAILED", "CANCELED", "TIMED_OUT", "EXPIRED", "LOST", "PENDING", "RUNNING"} {
		if n := r.States[s]; n > 0 || s == "LOST" {
			fmt.Fprintf(&b, "  %s %d", s, n)
		}
	}
	fmt.Fprintf(&b, "\n  jobs %d, tasks accepted %d (dispatches %d, failed after retries %d, control retries %d)\n",
		r.Jobs, r.Accepted, r.Sent, r.Refused, r.Retries)
	fmt.Fprintf(&b, "  attempts %d, handler runs %d, redelivered tasks %d (redeliveries %d), lost %d\n",
		r.Attempts, r.Runs, r.Redelivered, r.Redeliveries, r.Lost)
	if r.Faults[FaultStoreWipe] > 0 {
		fmt.Fprintf(&b, "  lost with the store (wiped): tasks %d (their runs %d), jobs %d; stranded by a wipe mid-dispatch %d; every agent enrolled again within %s\n",
			r.StoreLost, r.StoreLostRuns, r.StoreLostJobs, r.Stranded, r.Reenrolled.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, "  duplicates: tasks run more than once %d, same attempt run twice %d, stale runs overlapping a retry while being stopped %d (longest overlap %s)\n",
		r.RanTwice, r.SameAttempt, r.StaleOverlap, r.LongestStale.Round(time.Millisecond))
	fmt.Fprintf(&b, "  runs killed with their process %d, abandoned (lease gone) %d; leases run out under a live agent %d\n",
		r.Killed, r.Abandoned, r.LiveExpired)
	fmt.Fprintf(&b, "  longest wait because of a fault: %s (task %s, %s)\n", r.LongestWait.Round(time.Millisecond), r.WaitTask, r.WaitWhy)
	if len(r.FaultErrors) > 0 {
		fmt.Fprintf(&b, "  faults that could not be injected: %d\n", len(r.FaultErrors))
		for _, e := range r.FaultErrors {
			fmt.Fprintf(&b, "    %s\n", e)
		}
	}
	if len(r.Violations) == 0 {
		fmt.Fprintf(&b, "  violations: none\n")
	} else {
		fmt.Fprintf(&b, "  violations: %d\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "    %s\n", v)
		}
	}
	return b.String()
}
