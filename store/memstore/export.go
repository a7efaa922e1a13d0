package memstore

import (
	"context"
	"strconv"
	"time"

	"github.com/orange-forge/forge/store"
)

var _ store.Exporter = (*Store)(nil)

// exportFeed is the memory store's feed of finished tasks (store.Exporter):
// task ids in the order they ended, the first numbered base.
type exportFeed struct {
	ids      []string
	base     int64
	exported int64 // entries below this number were committed
	owner    string
	until    time.Time
	lease    time.Duration
	// holds is when the export stops holding retention back: store.ExportHold
	// after its first claim, then after its last commit.
	holds time.Time
}

// add records a task that ended and returns its number in the feed.
func (f *exportFeed) add(id string) int64 {
	f.ids = append(f.ids, id)
	return f.base + int64(len(f.ids)) - 1
}

// held tells whether retention must keep the task numbered seq at now: an
// export runs (store.ExportHold) and has not committed it.
func (f *exportFeed) held(seq int64, now time.Time) bool {
	return now.Before(f.holds) && seq >= f.exported
}

// trim forgets exported entries, and those whose task is gone, from the front.
func (f *exportFeed) trim(gone func(id string) bool) {
	i := 0
	for i < len(f.ids) && (f.base+int64(i) < f.exported || gone(f.ids[i])) {
		i++
	}
	f.ids = f.ids[i:]
	f.base += int64(i)
	f.exported = max(f.exported, f.base)
}

func (f *exportFeed) claim(owner string, now time.Time, lease time.Duration) bool {
	if f.owner != "" && f.owner != owner && f.until.After(now) {
		return false
	}
	if lease == 0 {
		if f.owner != owner {
			return false
		}
		lease = f.lease
	}
	f.owner, f.until, f.lease = owner, now.Add(lease), lease
	return true
}

// ExportBatch implements store.Exporter.
func (s *Store) ExportBatch(ctx context.Context, owner string, lease time.Duration, n int) (store.ExportBatch, error) {
	return locked(ctx, s, func(now time.Time) (store.ExportBatch, error) {
		f := &s.feed
		if !f.claim(owner, now, lease) {
			return store.ExportBatch{}, nil
		}
		if !now.Before(f.holds) {
			f.holds = now.Add(store.ExportHold)
		}
		f.trim(func(id string) bool { return s.tasks[id] == nil })
		ids := f.ids[f.exported-f.base:]
		ids = ids[:min(n, len(ids))]
		b := store.ExportBatch{Claimed: true, Position: strconv.FormatInt(f.exported+int64(len(ids)), 10)}
		for _, id := range ids {
			if t := s.tasks[id]; t != nil {
				b.Tasks = append(b.Tasks, t.clone())
			}
		}
		return b, nil
	})
}

// CommitExport implements store.Exporter.
func (s *Store) CommitExport(ctx context.Context, owner string, b store.ExportBatch) error {
	return lockedDo(ctx, s, func(now time.Time) error {
		f := &s.feed
		if !f.claim(owner, now, 0) {
			return store.ErrExportClaimed(f.owner)
		}
		pos, err := strconv.ParseInt(b.Position, 10, 64)
		if err != nil || pos < f.base || pos > f.base+int64(len(f.ids)) {
			return store.ErrExportPosition(b.Position)
		}
		f.exported = max(f.exported, pos)
		f.holds = now.Add(store.ExportHold)
		return nil
	})
}
