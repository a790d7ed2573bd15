package pipeline

import (
	"context"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// maxCommitSamples bounds one commit of the in-process log.
const maxCommitSamples = 64 << 10

// Appender is what LogSource needs of the store. A store that is also a
// store.FreshAppender decides sample duplicates itself (StoreDedups).
type Appender interface {
	Append(ctx context.Context, samples []telemetry.Sample) error
}

// LogSource is the in-process event log as a Source: one lane (0), whose
// commit is a store append of up to 64 Ki samples of queued entries; their
// clients are acknowledged (Batch.Ack) once the Batch sink took them.
type LogSource struct {
	log         *eventlog.Log
	commit      eventlog.CommitFunc
	storeDedups bool
}

// NewLogSource returns the source of l, storing into st.
func NewLogSource(l *eventlog.Log, st Appender) *LogSource {
	s := &LogSource{log: l}
	if fa, ok := st.(store.FreshAppender); ok {
		s.commit, s.storeDedups = fa.AppendFresh, true
	} else {
		s.commit = func(ctx context.Context, samples []telemetry.Sample, _ []bool) error { return st.Append(ctx, samples) }
	}
	return s
}

// Read implements Source: it returns the entries queued (waiting for one),
// io.EOF once the log is closed and drained, or ctx's error.
func (s *LogSource) Read(ctx context.Context) (eventlog.Read, error) {
	entries, err := s.log.Read(ctx, maxCommitSamples)
	if err != nil {
		return eventlog.Read{}, err
	}
	batches := make([]*telemetry.Batch, len(entries))
	for i, e := range entries {
		batches[i] = e.Batch
	}
	return eventlog.Read{Batches: []eventlog.Batch{{
		Entries: batches,
		Ack:     func(i int, res eventlog.Result, err error) { entries[i].Ack(res, err) },
		Commit:  s.commit,
		Append:  s.commit,
	}}}, nil
}

// StoreDedups implements Source.
func (s *LogSource) StoreDedups() bool { return s.storeDedups }

// DurableLog implements Source: the in-process log is not durable, a batch
// is durable once committed.
func (s *LogSource) DurableLog() bool { return false }

// Close implements Source. It leaves the log open: closing the log is
// what drains it (Read then returns io.EOF).
func (s *LogSource) Close() error { return nil }
