package eventlog

import (
	"context"

	"github.com/twinline/twinline/internal/telemetry"
)

// What a log hands its processor (internal/pipeline), shaped like a
// Benthos/Redpanda Connect batch input: a read yields batches of events,
// each with the commit function that makes it durable. The in-process log
// and the Kafka consumer (eventlog/kafka) both speak it; the processor loop
// is written once, against it.

// Read is what one read of a log source yields.
type Read struct {
	// Batches are the batches read, at most one per lane.
	Batches []Batch
	// Dropped are the lanes the source gave up since the last read (Kafka
	// partitions revoked or lost): the processor drops their engine state
	// before it processes Batches. A lane dropped and assigned again comes
	// back in Batches and starts afresh.
	Dropped []int32
	// Done, when not nil, is called once every batch of the read is
	// committed (or failed, or found stale: see Batch.Current), from any
	// goroutine. The processor may read again before it (it reads ahead
	// while a read commits): the Kafka consumer counts the reads in
	// flight, lets the group rebalance only when none is, and seeks a
	// partition whose commit failed once the read that failed it is done.
	Done func()
}

// Batch is the events of one lane of a log, read together and committed
// together. A lane is an ordered stream of the log with an event-time
// engine of its own: the in-process log has one (0), a Kafka topic one per
// partition.
type Batch struct {
	// Lane names the lane.
	Lane int32
	// Entries are the batches as the gateway took them (their Received is
	// the ingest time), in log order. Neither they nor their events change
	// until the third read after this one: a source may reuse their memory
	// then (the processor holds at most three reads: one it reads, one it
	// commits, one its sinks take).
	Entries []*telemetry.Batch
	// Shown is the number of leading Entries whose samples went to the
	// processor's live sinks from an earlier read of the same records (a
	// lane read again after a failed commit): the processor does not show
	// them again. Only a durable log (the processor shows its batches
	// before their commit) sets it.
	Shown int
	// OnShown, when not nil, is called once the processor handed the
	// batch's entries to its live sinks before their commit, so that a
	// later read of the same records sets Shown.
	OnShown func()
	// Current, when not nil, reports whether the batch is still to be
	// committed: false once a commit of an earlier batch of its lane
	// failed (the source then reads the lane again from that batch on, and
	// this batch's records come again). The processor neither processes
	// nor commits a batch that is not current. A source that lets the
	// processor read a lane ahead of its commits (a durable log) must set
	// it.
	Current func() bool
	// Ack, when not nil, acknowledges entry i to its client: err == nil
	// means its samples are durable and the live sinks took them (the
	// in-process log). A log whose clients were acknowledged when it took
	// their events (Kafka) has none.
	Ack func(i int, res Result, err error)
	// Commit makes the new samples of the batch durable, with whatever the
	// source commits with them (the Kafka offset, in the same
	// transaction), and returns nil only once they are. fresh is nil, or
	// (when the source's store decides duplicates, see
	// store.FreshAppender) as long as samples, and Commit sets fresh[i] to
	// whether samples[i] was stored by this call. An error wrapping
	// store.ErrOutOfBounds means the others were committed (and the
	// offset moved); one wrapping store.ErrFenced that another consumer
	// owns the lane now (the source rewinds it, and the processor resets
	// the lane's engine).
	Commit CommitFunc
	// Append, when not nil, stores samples again and nothing else,
	// idempotently (what is stored already is a duplicate): after an
	// out-of-bounds Commit the processor appends each entry's samples
	// again to find the entries that lost samples.
	Append CommitFunc
}

// CommitFunc stores samples durably, see Batch.Commit.
type CommitFunc func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error
