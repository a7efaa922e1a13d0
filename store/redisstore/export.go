package redisstore

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/orange-forge/forge/store"
)

var _ store.Exporter = (*Store)(nil)

// ExportBatch implements store.Exporter: the claim (exportClaimScript), then
// two pipelined round trips — every shard's export position, then each
// shard's finished stream past it (at most n entries) — and the tasks' records
// (taskScript, pipelined). Position lists each shard's last entry read.
//
// While a shard's position exists, retention drops none of its finished tasks
// the export has not written (by age or by count); a shard without one is
// given 0-0 (nothing written yet) as the export starts, and CommitExport keeps
// every shard's alive, so a task that ends in a shard quiet until then is held
// as well. A position goes store.ExportHold after the export last committed.
func (s *Store) ExportBatch(ctx context.Context, owner string, lease time.Duration, n int) (store.ExportBatch, error) {
	held, err := s.claimExport(ctx, owner, lease)
	if err != nil || !held {
		return store.ExportBatch{}, err
	}
	b := s.client.B()
	cmds := make(rueidis.Commands, NumShards)
	for sh := range NumShards {
		cmds[sh] = b.Get().Key(s.k.exported(sh)).Build()
	}
	from := make([]string, NumShards)
	var start rueidis.Commands
	for sh, r := range s.client.DoMulti(ctx, cmds...) {
		v, err := r.ToString()
		if err != nil && !rueidis.IsRedisNil(err) {
			return store.ExportBatch{}, s.wrap(ctx, err)
		}
		from[sh] = "-"
		if v != "" {
			from[sh] = "(" + v
		} else {
			start = append(start, b.Set().Key(s.k.exported(sh)).Value("0-0").Nx().Px(store.ExportHold).Build())
		}
	}
	for _, r := range s.client.DoMulti(ctx, start...) {
		if err := r.Error(); err != nil {
			return store.ExportBatch{}, s.wrap(ctx, err)
		}
	}
	for sh := range NumShards {
		cmds[sh] = b.Xrange().Key(s.k.finished(sh)).Start(from[sh]).End("+").Count(int64(n)).Build()
	}
	var ids, pos []string
	for sh, r := range s.client.DoMulti(ctx, cmds...) {
		entries, err := r.AsXRange()
		if err != nil && !rueidis.IsRedisNil(err) {
			return store.ExportBatch{}, s.wrap(ctx, err)
		}
		for _, e := range entries {
			if id := e.FieldValues["t"]; id != "" {
				ids = append(ids, id)
			}
		}
		if len(entries) > 0 {
			pos = append(pos, strconv.Itoa(sh)+"="+entries[len(entries)-1].ID)
		}
	}
	out := store.ExportBatch{Claimed: true, Position: strings.Join(pos, " ")}
	if len(ids) == 0 {
		return out, nil
	}
	tasks, err := s.getTasks(ctx, ids)
	if err != nil {
		return store.ExportBatch{}, err
	}
	for _, t := range tasks {
		if t.ID != "" {
			out.Tasks = append(out.Tasks, t)
		}
	}
	return out, nil
}

// CommitExport implements store.Exporter: the claim is checked (and renewed),
// then every shard's position is written, pipelined.
func (s *Store) CommitExport(ctx context.Context, owner string, b store.ExportBatch) error {
	held, err := s.claimExport(ctx, owner, 0)
	if err != nil {
		return err
	}
	if !held {
		other, _ := s.client.Do(ctx, s.client.B().Hget().Key(s.k.exportOwner()).Field("o").Build()).ToString()
		return store.ErrExportClaimed(other)
	}
	var cmds rueidis.Commands
	var moved [NumShards]bool
	for _, p := range strings.Fields(b.Position) {
		sh, id, ok := strings.Cut(p, "=")
		n, err := strconv.Atoi(sh)
		if !ok || err != nil || n < 0 || n >= NumShards {
			return store.ErrExportPosition(b.Position)
		}
		moved[n] = true
		cmds = append(cmds, s.client.B().Set().Key(s.k.exported(n)).Value(id).Px(store.ExportHold).Build())
	}
	for sh := range NumShards {
		if !moved[sh] {
			cmds = append(cmds, s.client.B().Pexpire().Key(s.k.exported(sh)).Milliseconds(store.ExportHold.Milliseconds()).Build())
		}
	}
	for _, r := range s.client.DoMulti(ctx, cmds...) {
		if err := r.Error(); err != nil {
			return s.wrap(ctx, err)
		}
	}
	return nil
}

// claimExport takes or renews the export claim for owner (lease 0: checks it,
// renewing it for as long as it had); it tells whether owner holds it.
func (s *Store) claimExport(ctx context.Context, owner string, lease time.Duration) (bool, error) {
	n, err := s.exec(ctx, exportClaimScript, []string{s.k.exportOwner()},
		[]string{owner, itoa(s.nowMS()), ms(lease)}).AsInt64()
	if err != nil {
		return false, s.wrap(ctx, err)
	}
	return n == 1, nil
}
