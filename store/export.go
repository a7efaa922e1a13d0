package store

import (
	"context"
	"time"
)

// Exporter is a Store that keeps a feed of finished tasks for export: every
// task that ends is added to it, in the order tasks end, and an export reads
// it a batch at a time, writes the batch to its sink, then commits it. The
// export position is kept in the store, so an exporter that dies between
// writing a batch and committing it costs that one batch again, written by the
// next exporter (at least once; duplicates at most one batch). One replica
// exports at a time: the one holding the claim, renewed by each ExportBatch.
type Exporter interface {
	// ExportBatch claims the export for owner for lease (renewing its claim),
	// and returns finished tasks past the stored export position, oldest first
	// (the Redis store: at most n of each shard, each shard in the order its
	// tasks ended; memory: at most n). When another owner holds an unexpired
	// claim it returns a batch with Claimed false and no tasks. A task dropped
	// since it ended (retention) is left out.
	ExportBatch(ctx context.Context, owner string, lease time.Duration, n int) (ExportBatch, error)
	// CommitExport stores b's position as exported, if owner still holds the
	// claim; otherwise it fails with KindPrecondition and changes nothing.
	CommitExport(ctx context.Context, owner string, b ExportBatch) error
}

// ExportBatch is what ExportBatch read.
type ExportBatch struct {
	// Claimed is true when the caller holds the export claim.
	Claimed bool
	Tasks   []Task
	// Position is where the export stands after Tasks, in the store's own form.
	Position string
}

// FmtExportClaimed is the error of a commit by an exporter that lost its claim.
const FmtExportClaimed = "the export is claimed by %s"

// FmtExportPosition is the error of a commit of a position this store never gave.
const FmtExportPosition = "export position %s is not this store's"

// ErrExportPosition is the error of CommitExport of a position (ExportBatch.
// Position) that is not one of this store's.
func ErrExportPosition(pos string) error { return Errorf(KindInvalid, FmtExportPosition, Quote(pos)) }

// ErrExportClaimed is the error of CommitExport by an owner whose claim passed
// to another.
func ErrExportClaimed(other string) error {
	return Errorf(KindPrecondition, FmtExportClaimed, Quote(other))
}
