// Package pipeline is the processing stage between the event log and the
// sinks, written once for every log: one Processor loop reads a Source
// (the in-process log, or Kafka), runs an event-time engine (internal/stream)
// per lane of it, commits each lane's new samples through the commit
// function the source gave with them, journals the keys of keyed events,
// hands the samples to the live sinks and, where the source has clients
// waiting, acknowledges them.
//
// The source contract (eventlog.Read, eventlog.Batch) is shaped like a
// Benthos/Redpanda Connect batch input: a read yields batches, each with
// the function that commits it. In-process, a commit is a store append;
// under Kafka, each assigned partition is a lane whose commit writes its
// samples, their aggregates and the partition's offset in one transaction.
// The rules below hold for both, but where one says otherwise:
//
//   - Durable first. A batch's samples go to the event-time stages (the
//     reorder buffer, windows, medians, alarms: the Group sink) and to the
//     Batch sink (the twin's live state, the hot window) only once its
//     commit returned nil.
//   - Live before the commit when the log is durable (ADR 0017). On a
//     source whose log holds a batch durably before the processor reads it
//     (Source.DurableLog: Kafka, where the gateway's 2xx means Kafka holds
//     the events), a group goes through the engine as soon as it is read
//     and its samples to the Live sink (the live stream) at once; its
//     commit runs while the next read is processed, one lane's commits in
//     log order. What a viewer gets: a sample seen live is in Kafka and
//     will be stored (exactly once) unless the store refuses it (out of
//     its time window, below); it may be shown more than once — after a
//     processor crash, a rebalance or a fenced commit, another processor
//     reads it again, and a sample the store held already (a sender's
//     resend without id or seq) is shown before the store says so —
//     under a new stream seq each time. A client drops what it has by the
//     sample's (machine, metric, ts), the store's own key; the stream's
//     seq and resume cursor order messages, they do not name samples. A
//     failed commit does not show its group again when the processor reads
//     it again (Batch.Shown). On the in-process log the Live sink gets a
//     group after its commit, the store's duplicates dropped, with the
//     Batch sink, before the ack.
//   - Read your writes. In-process, an entry is acknowledged (its client's
//     2xx) only once the Live and Batch sinks took it, so a read right
//     after the 2xx (the twin's latest values, the fleet list, the stream)
//     sees its events. Under Kafka the gateway answers 2xx once Kafka
//     holds the events: the 2xx means durable in Kafka, live within the
//     consumer lag, stored within the lag and a commit; a read right after
//     it may not see them yet.
//   - Duplicates. Keyed events (id, seq) are recognised by the engine, for
//     the dedup horizon, and across restarts by the key journal (keys are
//     journaled after the commit, before the ack). Sample duplicates — the
//     same (machine, metric, time) — are decided by the store when its
//     commits report which samples they stored (store.FreshAppender; the
//     Kafka offset store always does), else by the engine.
//   - A failed commit stores nothing: its entries are acknowledged with the
//     error (in-process: the client retries) or consumed again (Kafka: the
//     source rewinds the lane, and the lane's batches read since are
//     stale, eventlog.Batch.Current: neither processed further nor
//     committed), and the engine forgets the keys of the group and of
//     those stale batches so the retry is not taken for a duplicate.
//   - A fenced commit (store.ErrFenced: another consumer owns the lane now)
//     resets the lane's engine: what it held may be stale.
//   - Out of bounds. store.ErrOutOfBounds is a partial success: the store
//     kept the samples inside its time window (and, under Kafka, moved the
//     offset with them). Retrying the rejected samples cannot succeed, so
//     they are not retried: the processor appends each entry again
//     (idempotent) to find the entries that lost samples, acknowledges those
//     with the error and the others normally, counts the rejected samples,
//     and keeps the group from the event-time stages and the Batch and
//     Group sinks (a live view recovers from the query API). Under Kafka
//     the group was shown live already: a rejected sample may have been
//     seen on the stream and never be in the history. A group of one
//     entry needs no second look. The keys of the keyed events that were
//     stored are journaled and remembered (a retry of one is a duplicate),
//     the others' forgotten.
//   - Backfill (Processor.Backfill, ADR 0033). A sample whose event time
//     is more than the backfill horizon (--out-of-order-window) behind the
//     server clock when it is read is committed like any other, then goes
//     no further: not to the live stream, the twin, the hot window, the
//     engine's reorder and windows, the medians nor the alarms (the
//     Backfill sink hears of each entry that held some). Loading
//     last month's history stores it (the stores keep its aggregates and
//     rollups) without replaying it as if it were happening now.
//
// The engine package (internal/stream) knows nothing of logs or stores:
// this package is where they meet.
package pipeline

import (
	"context"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// Source is a log the Processor reads: the in-process log (LogSource), or
// Kafka (eventlog/kafka's Consumer).
type Source interface {
	// Read waits for the next batches, at most one per lane, and returns
	// them with the lanes dropped since the last read. It returns io.EOF
	// once the log is closed and drained, and ctx's error when ctx ended
	// first (the Processor reads with a deadline of a second, so that the
	// engines' clocks move while the log is idle). The batches of a read
	// stay valid until the read after the next one.
	Read(ctx context.Context) (eventlog.Read, error)
	// StoreDedups reports whether the batches' commits report which
	// samples the store held already (see store.FreshAppender).
	StoreDedups() bool
	// DurableLog reports whether the log holds a batch durably before the
	// processor reads it (Kafka), so that its samples may be shown live
	// before their commit. Such a source rewinds a lane whose commit
	// failed, and says which of its batches are stale (Batch.Current).
	DurableLog() bool
	// Close releases the source; the Processor calls it when Run returns.
	Close() error
}

// Sinks receive what the processor made durable, and what it shows live.
// None may retain the slices it is given: they are reused for a later
// group. Batch and Group are called from one goroutine; Live from that one
// too on the in-process log, from another on a durable log.
type Sinks struct {
	// Live receives each entry with its new samples for the live stream.
	// On a durable log (Source.DurableLog) it gets them before their
	// commit, possibly more than once (see the package documentation),
	// with the samples the store may hold already; otherwise after the
	// commit, with only the samples the store took, just before Batch.
	// For a sampled entry of a traced group ctx carries the span context
	// its live message continues (see Processor.Trace); otherwise it
	// carries none.
	Live func(ctx context.Context, b *telemetry.Batch, samples []telemetry.Sample)
	// Batch receives each committed entry with its new (deduplicated)
	// samples, in arrival order; b.Received is the time the gateway took
	// the batch (under Kafka too).
	Batch func(b *telemetry.Batch, samples []telemetry.Sample)
	// Group receives, once per lane and commit (and per tick), the samples
	// released in event-time order and the windows that closed or changed.
	Group func(released []telemetry.Sample, windows []stream.Window)
	// Backfill receives, after the Batch sink, each committed entry that
	// held backfill samples (Processor.Backfill), which no other sink got:
	// to register the machines it names, say, without live state.
	Backfill func(b *telemetry.Batch)
}
