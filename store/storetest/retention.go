package storetest

import (
	"strings"
	"time"

	"github.com/orange-forge/forge/store"
)

var retentionCases = []testCase{
	{"FinishedTasksAndJobs", testRetention, nil},
	{"IdempotencyKeyGoesWithItsJob", testRetentionIdempotency, nil},
	{"AgedOutSaysSo", testRetentionAgedOut, nil},
	{"NewestPerAgent", testRetentionPerAgent, func(c *store.Config) { c.KeepPerAgent = 3 }},
	{"NewestJobs", testRetentionJobs, func(c *store.Config) { c.KeepJobs = 2 }},
	{"ExportHoldsAge", testRetentionExportAge, func(c *store.Config) { c.Retention = time.Hour }},
	{"ExportHoldsJobCount", testRetentionExportJobs, func(c *store.Config) { c.KeepJobs = 1 }},
	{"ExportHoldsAgentCount", testRetentionExportPerAgent, func(c *store.Config) { c.KeepPerAgent = 2 }},
}

// errJobCountedOut and errTaskCountedOut are the not_found of a job, or a
// task, that the count of jobs kept (n) dropped.
func errJobCountedOut(id string, n int) error {
	return store.Errorf(store.KindNotFound, store.FmtJobCountedOut, store.Quote(id), n)
}

func errTaskCountedOut(id string, n int) error {
	return store.Errorf(store.KindNotFound, store.FmtTaskCountedOut, store.Quote(id), n)
}

// finish leases and reports every task of a's queue (up to n) as succeeded.
func (h *harness) finish(a testAgent, n int) {
	h.Helper()
	for _, t := range h.lease(a, n).Tasks {
		h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	}
}

// wantJobGone checks that a job and its tasks are gone, with want (and
// wantTask for each task) as the error.
func (h *harness) wantJobGone(j store.Job, want func(string) error, wantTask func(string) error) {
	h.Helper()
	_, err := h.s.GetJob(h.ctx, j.ID)
	wantErr(h, err, want(j.ID), "GetJob of a dropped job")
	for _, id := range j.TaskIDs {
		_, err := h.s.GetTask(h.ctx, id)
		wantErr(h, err, wantTask(id), "GetTask of a task of a dropped job")
	}
}

// testRetentionJobs: with KeepJobs 2, Reap keeps the two jobs that finished
// last — a fan-out among them — with their tasks, drops the older finished
// ones, with their tasks, saying why, and never a live job, however old; the
// order is the order jobs finished, not the one they were made in.
func testRetentionJobs(h *harness) {
	web := map[string]string{"role": "web"}
	a, b, c := h.register(web), h.register(web), h.register(nil)
	live := h.dispatch(c) // made first, finished last
	h.clock.Advance(time.Second)
	var done []store.Job
	for i := range 3 {
		if i == 1 {
			done = append(done, h.dispatchSpec(h.spec(store.Target{Selector: "role=web"})))
			h.finish(b, 1)
		} else {
			done = append(done, h.dispatch(a))
		}
		h.finish(a, 1)
		h.clock.Advance(time.Second)
	}
	h.reap()
	h.wantJobGone(done[0], func(id string) error { return errJobCountedOut(id, 2) }, func(id string) error { return errTaskCountedOut(id, 2) })
	for _, j := range append([]store.Job{live}, done[1:]...) {
		for _, id := range h.job(j.ID).TaskIDs {
			h.task(id)
		}
	}
	if got := h.job(done[1].ID); got.Counts.Succeeded != 2 {
		h.Fatalf("the kept fan-out counts %+v, want its two tasks", got.Counts)
	}
	// An id made after every dropped job is plainly not found.
	unknown := store.NewJobID()
	_, err := h.s.GetJob(h.ctx, unknown)
	wantErr(h, err, store.ErrJobNotFound(unknown), "GetJob of an unknown job")
	// The live job, made first, ends now: the oldest finished job is then the
	// fan-out, which goes.
	if _, err := h.s.CancelTask(h.ctx, live.TaskIDs[0], ""); err != nil {
		h.Fatal(err)
	}
	h.reap()
	h.wantJobGone(done[1], func(id string) error { return errJobCountedOut(id, 2) }, func(id string) error { return errTaskCountedOut(id, 2) })
	h.job(live.ID)
	h.job(done[2].ID)
	jobs, _, err := h.s.ListJobs(h.ctx, store.Page{})
	if err != nil {
		h.Fatal(err)
	}
	var ids []string
	for _, j := range jobs {
		ids = append(ids, j.ID)
	}
	if !sameSet(ids, []string{live.ID, done[2].ID}) {
		h.Fatalf("ListJobs = %v, want the two newest finished %v", ids, []string{live.ID, done[2].ID})
	}
	if tasks, _, _ := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: b.ID}); len(tasks) != 0 {
		h.Fatalf("agent b keeps %d tasks of dropped jobs", len(tasks))
	}
}

// startExport claims the export before any task ends: from here on,
// retention keeps what it has not written.
func (h *harness) startExport(owner string) {
	h.Helper()
	b, err := h.exporter().ExportBatch(h.ctx, owner, time.Hour, 10)
	if err != nil || !b.Claimed || len(b.Tasks) != 0 {
		h.Fatalf("starting the export: %+v, %v", b, err)
	}
}

// exportOne exports one batch of at most one task and commits it.
func (h *harness) exportOne(owner string) string {
	h.Helper()
	b, err := h.exporter().ExportBatch(h.ctx, owner, time.Hour, 1)
	if err != nil || len(b.Tasks) != 1 {
		h.Fatalf("ExportBatch of one: %+v, %v", b, err)
	}
	if err := h.exporter().CommitExport(h.ctx, owner, b); err != nil {
		h.Fatal(err)
	}
	return b.Tasks[0].ID
}

// doneTasks finishes n single-agent jobs on a, a second apart.
func (h *harness) doneTasks(a testAgent, n int) []store.Job {
	h.Helper()
	var jobs []store.Job
	for range n {
		j := h.dispatch(a)
		h.finish(a, 1)
		jobs = append(jobs, j)
		h.clock.Advance(time.Second)
	}
	return jobs
}

// testRetentionExportAge: while an export runs, a task past its retention (an
// hour here, well within store.ExportHold) that the export has not written
// stays; once written, it goes.
func testRetentionExportAge(h *harness) {
	a := h.register(nil)
	h.startExport("r1")
	jobs := h.doneTasks(a, 2)
	if got := h.exportOne("r1"); got != jobs[0].TaskIDs[0] {
		h.Fatalf("exported %s first, want %s", got, jobs[0].TaskIDs[0])
	}
	h.clock.Advance(2 * time.Hour)
	h.reap()
	_, err := h.s.GetTask(h.ctx, jobs[0].TaskIDs[0])
	wantErr(h, err, store.ErrTaskNotFound(jobs[0].TaskIDs[0]), "an exported task past retention")
	h.task(jobs[1].TaskIDs[0])
	if got := h.exportAll("r1"); len(got) != 1 || got[0] != jobs[1].TaskIDs[0] {
		h.Fatalf("exported %v, want %v", got, jobs[1].TaskIDs)
	}
	h.clock.Advance(time.Minute)
	h.reap()
	_, err = h.s.GetTask(h.ctx, jobs[1].TaskIDs[0])
	wantErr(h, err, store.ErrTaskNotFound(jobs[1].TaskIDs[0]), "a task past retention, exported late")
}

// testRetentionExportJobs: with KeepJobs 1 and an export running, finished
// jobs past the count go only once the export has written their tasks; the
// newest is kept whatever the export holds back.
func testRetentionExportJobs(h *harness) {
	a := h.register(nil)
	h.startExport("r1")
	jobs := h.doneTasks(a, 3)
	h.reap()
	for _, j := range jobs {
		h.task(h.job(j.ID).TaskIDs[0])
	}
	h.exportOne("r1")
	h.reap()
	counted := func(id string) error { return errJobCountedOut(id, 1) }
	h.wantJobGone(jobs[0], counted, func(id string) error { return errTaskCountedOut(id, 1) })
	h.task(h.job(jobs[1].ID).TaskIDs[0])
	h.task(h.job(jobs[2].ID).TaskIDs[0])
	h.exportAll("r1")
	h.reap()
	h.wantJobGone(jobs[1], counted, func(id string) error { return errTaskCountedOut(id, 1) })
	h.task(h.job(jobs[2].ID).TaskIDs[0])
}

// testRetentionExportPerAgent: with KeepPerAgent 2 and an export running, an
// agent's tasks past the count stay until the export has written them; the
// next task of the agent that ends then drops them.
func testRetentionExportPerAgent(h *harness) {
	a := h.register(nil)
	h.startExport("r1")
	jobs := h.doneTasks(a, 4)
	for _, j := range jobs {
		h.task(j.TaskIDs[0])
	}
	h.exportAll("r1")
	jobs = append(jobs, h.doneTasks(a, 1)...)
	tasks, _, err := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID})
	if err != nil {
		h.Fatal(err)
	}
	var got []string
	for _, t := range tasks {
		got = append(got, t.ID)
	}
	want := []string{jobs[3].TaskIDs[0], jobs[4].TaskIDs[0]}
	if !sameSet(got, want) {
		h.Fatalf("the agent keeps %v, want its newest two %v", got, want)
	}
}

// testRetentionPerAgent: with KeepPerAgent 3 an agent keeps its newest three
// tasks; older finished ones go as newer ones end, another agent's stay.
func testRetentionPerAgent(h *harness) {
	a, b := h.register(nil), h.register(nil)
	var ids []string
	for range 6 {
		h.dispatch(a)
		t := h.leaseOne(a)
		h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
		ids = append(ids, t.ID)
	}
	h.dispatch(b)
	other := h.leaseOne(b)
	h.mustReport(b, other.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	tasks, _, err := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID})
	if err != nil {
		h.Fatal(err)
	}
	var got []string
	for _, t := range tasks {
		got = append(got, t.ID)
	}
	if !sameSet(got, ids[3:]) {
		h.Fatalf("the agent keeps %v, want its newest three %v", got, ids[3:])
	}
	// A task the count dropped says so, and so does any id of the agent made
	// before the newest one dropped; one made after it, or another agent's,
	// is plainly not found.
	for _, id := range ids[:3] {
		_, err := h.s.GetTask(h.ctx, id)
		wantErr(h, err, store.Errorf(store.KindNotFound, store.FmtTaskAgentCountedOut, store.Quote(id), 3), "GetTask of a task past the count")
		if !strings.Contains(err.Error(), "--retention-per-agent") {
			h.Fatalf("GetTask of a task past the count: %q does not name --retention-per-agent", err)
		}
	}
	newestDropped, _ := store.CreatedAt(ids[2])
	before := taskIDAt(a.ID, newestDropped.Add(-time.Microsecond))
	_, err = h.s.GetTask(h.ctx, before)
	wantErr(h, err, store.Errorf(store.KindNotFound, store.FmtTaskAgentCountedOut, store.Quote(before), 3), "GetTask of an id made before the newest task dropped")
	after := taskIDAt(a.ID, newestDropped.Add(time.Microsecond))
	_, err = h.s.GetTask(h.ctx, after)
	wantErr(h, err, store.ErrTaskNotFound(after), "GetTask of an unknown id made after the newest task dropped")
	elsewhere := taskIDAt(b.ID, newestDropped)
	_, err = h.s.GetTask(h.ctx, elsewhere)
	wantErr(h, err, store.ErrTaskNotFound(elsewhere), "GetTask of an unknown id of an agent that dropped none")
	h.task(other.ID)
}

// taskIDAt returns a task id of agent made at t (its time characters), as
// store.NewTaskID would have made it then.
func taskIDAt(agentID string, t time.Time) string {
	const alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
	us := t.UnixMicro()
	var b [11]byte
	for i := 10; i >= 0; i-- {
		b[i] = alphabet[us&31]
		us >>= 5
	}
	return "t" + string(b[:]) + "0000-" + agentID
}

// testRetentionAgedOut: GetTask and GetJob of an id made longer than the
// retention ago say it may have aged out; of a recent one, plainly not found.
func testRetentionAgedOut(h *harness) {
	a := h.register(nil)
	now := h.clock.Now()
	old := taskIDAt(a.ID, now.Add(-retention-26*time.Hour))
	_, err := h.s.GetTask(h.ctx, old)
	wantErr(h, err, store.ErrTaskNotFoundAt(old, now, retention), "GetTask of a task past retention")
	if !strings.Contains(err.Error(), "aged out") {
		h.Fatalf("GetTask of a task past retention: %q does not say it aged out", err)
	}
	recent := taskIDAt(a.ID, now.Add(-time.Hour))
	_, err = h.s.GetTask(h.ctx, recent)
	wantErr(h, err, store.ErrTaskNotFound(recent), "GetTask of an unknown recent task")
	// A job the same way: its id is made as store.NewJobID makes one.
	oldJob := "j" + strings.TrimPrefix(old[:16], "t")
	_, err = h.s.GetJob(h.ctx, oldJob)
	wantErr(h, err, store.ErrJobGone(oldJob, now, store.Dropped{Retention: retention}), "GetJob of a job past retention")
	if !strings.Contains(err.Error(), "aged out") {
		h.Fatalf("GetJob of a job past retention: %q does not say it aged out", err)
	}
	recentJob := "j" + strings.TrimPrefix(recent[:16], "t")
	_, err = h.s.GetJob(h.ctx, recentJob)
	wantErr(h, err, store.ErrJobNotFound(recentJob), "GetJob of an unknown recent job")
}

func testRetention(h *harness) {
	a := h.register(nil)
	j := h.dispatch(a)
	t := h.leaseOne(a)
	h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
	live := h.dispatch(a)
	h.clock.Advance(retention - time.Hour)
	h.reap()
	h.task(t.ID)
	h.job(j.ID)
	h.clock.Advance(2 * time.Hour)
	h.reap()
	_, err := h.s.GetTask(h.ctx, t.ID)
	wantErr(h, err, store.ErrTaskNotFound(t.ID), "task past retention")
	_, err = h.s.GetJob(h.ctx, j.ID)
	wantErr(h, err, store.ErrJobNotFound(j.ID), "job past retention")
	if tasks, _, _ := h.s.ListTasks(h.ctx, store.TaskFilter{AgentID: a.ID}); len(tasks) != 1 || tasks[0].ID != live.TaskIDs[0] {
		h.Fatalf("ListTasks of the agent = %d tasks; want only the live one", len(tasks))
	}
	if jobs, _, _ := h.s.ListJobs(h.ctx, store.Page{}); len(jobs) != 1 || jobs[0].ID != live.ID {
		h.Fatalf("ListJobs = %d jobs; want only the live one", len(jobs))
	}
	// A live task is never dropped: it ended EXPIRED by its TTL within this
	// window, so it is retained from that moment on.
	h.wantEnded(live.TaskIDs[0], store.StateExpired, store.ReasonExpired(deliveryTTL))
	h.job(live.ID)
}

func testRetentionIdempotency(h *harness) {
	a := h.register(nil)
	spec := h.spec(store.Target{AgentID: a.ID})
	spec.IdempotencyKey = "nightly"
	j1 := h.dispatchSpec(spec)
	if _, err := h.s.CancelTask(h.ctx, j1.TaskIDs[0], ""); err != nil {
		h.Fatal(err)
	}
	h.clock.Advance(retention + time.Hour)
	h.reap()
	_, err := h.s.GetJob(h.ctx, j1.ID)
	wantErr(h, err, store.ErrJobNotFound(j1.ID), "job past retention")
	if j2 := h.dispatchSpec(spec); j2.ID == j1.ID || j2.Existing {
		h.Fatalf("the key of a dropped job still names it: %+v", j2)
	}
}
