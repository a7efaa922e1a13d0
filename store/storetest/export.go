package storetest

import (
	"time"

	"github.com/orange-forge/forge/store"
)

var exportCases = []testCase{
	{"FinishedTasksOnce", testExportOnce, nil},
	{"OneOwnerAtATime", testExportClaim, nil},
}

func (h *harness) exporter() store.Exporter {
	h.Helper()
	x, ok := h.s.(store.Exporter)
	if !ok {
		h.Fatalf("%T is not a store.Exporter", h.s)
	}
	return x
}

// exportAll reads batches of owner until one is empty, committing each, and
// returns the task ids read.
func (h *harness) exportAll(owner string) []string {
	h.Helper()
	var ids []string
	for range 100 {
		b, err := h.exporter().ExportBatch(h.ctx, owner, time.Minute, 2)
		if err != nil {
			h.Fatalf("ExportBatch: %v", err)
		}
		if !b.Claimed {
			h.Fatalf("ExportBatch of %s: not claimed", owner)
		}
		if len(b.Tasks) == 0 {
			return ids
		}
		for _, t := range b.Tasks {
			ids = append(ids, t.ID)
			if !t.State.Terminal() {
				h.Fatalf("exported task %s is %v", t.ID, t.State)
			}
		}
		if err := h.exporter().CommitExport(h.ctx, owner, b); err != nil {
			h.Fatalf("CommitExport: %v", err)
		}
	}
	h.Fatal("the export never ends")
	return nil
}

// testExportOnce: every finished task is exported once, with its result;
// live ones are not; a task that ends later is exported then.
func testExportOnce(h *harness) {
	a := h.register(nil)
	var done []string
	for range 5 {
		h.dispatch(a)
		t := h.leaseOne(a)
		h.mustReport(a, t.Ref(), store.OutcomeSucceeded, store.StateSucceeded)
		done = append(done, t.ID)
	}
	live := h.dispatch(a)
	got := h.exportAll("r1")
	if !sameSet(got, done) {
		h.Fatalf("exported %v, want %v", got, done)
	}
	if again := h.exportAll("r1"); len(again) != 0 {
		h.Fatalf("exported again: %v", again)
	}
	if _, err := h.s.CancelTask(h.ctx, live.TaskIDs[0], ""); err != nil {
		h.Fatal(err)
	}
	if got := h.exportAll("r1"); len(got) != 1 || got[0] != live.TaskIDs[0] {
		h.Fatalf("exported %v after a cancel, want %v", got, live.TaskIDs)
	}
	b, err := h.exporter().ExportBatch(h.ctx, "r1", time.Minute, 10)
	if err != nil || len(b.Tasks) != 0 {
		h.Fatalf("ExportBatch with nothing new: %d tasks, %v", len(b.Tasks), err)
	}
}

// testExportClaim: while one owner holds the claim another reads nothing and
// cannot commit; once the claim lapses the other takes over from the last
// commit, so the batch read but not committed comes again, and nothing is lost.
func testExportClaim(h *harness) {
	a := h.register(nil)
	var done []string
	for range 3 {
		h.dispatch(a)
		t := h.leaseOne(a)
		h.mustReport(a, t.Ref(), store.OutcomeFailed, store.StateFailed)
		done = append(done, t.ID)
	}
	x := h.exporter()
	first, err := x.ExportBatch(h.ctx, "r1", 10*time.Second, 2)
	if err != nil || !first.Claimed || len(first.Tasks) != 2 {
		h.Fatalf("first batch: %+v, %v", first, err)
	}
	if err := x.CommitExport(h.ctx, "r1", first); err != nil {
		h.Fatal(err)
	}
	wantErr(h, x.CommitExport(h.ctx, "r1", store.ExportBatch{Position: "x=1"}), store.ErrExportPosition("x=1"),
		"commit of a position the store never gave")
	second, err := x.ExportBatch(h.ctx, "r1", 10*time.Second, 2)
	if err != nil || len(second.Tasks) != 1 {
		h.Fatalf("second batch: %+v, %v", second, err)
	}
	// r1 dies here: the second batch is written, never committed.
	other, err := x.ExportBatch(h.ctx, "r2", 10*time.Second, 2)
	if err != nil || other.Claimed || len(other.Tasks) != 0 {
		h.Fatalf("a second owner while the claim holds: %+v, %v", other, err)
	}
	wantErr(h, x.CommitExport(h.ctx, "r2", second), store.ErrExportClaimed("r1"), "commit without the claim")
	h.clock.Advance(11 * time.Second)
	got := h.exportAll("r2")
	if len(got) != 1 || got[0] != done[2] {
		h.Fatalf("the next owner exported %v, want the uncommitted batch %v", got, done[2:])
	}
	wantErr(h, x.CommitExport(h.ctx, "r1", second), store.ErrExportClaimed("r2"), "commit after the claim passed")
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, x := range a {
		m[x]++
	}
	for _, x := range b {
		m[x]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}
