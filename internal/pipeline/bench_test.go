package pipeline

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// benchSource is a Source that is never read: the benchmark drives
// commitLane itself.
type benchSource struct{}

func (benchSource) Read(context.Context) (eventlog.Read, error) { return eventlog.Read{}, io.EOF }
func (benchSource) StoreDedups() bool                           { return true }
func (benchSource) DurableLog() bool                            { return false }
func (benchSource) Close() error                                { return nil }

// BenchmarkProcessLane measures the processor's own work per record of a
// Kafka partition, without Kafka and without decoding (that is
// eventlog/kafka's BenchmarkDecodeRecords): the engine, and a commit of
// samples and offset to the in-memory offset store, in groups of 1000
// two-metric events of one partition.
func BenchmarkProcessLane(b *testing.B) {
	const perGroup, groups = 1000, 100
	var batches [groups]*telemetry.Batch
	seq := int64(0)
	for g := range groups {
		evs := make([]telemetry.Event, perGroup)
		for i := range evs {
			evs[i] = telemetry.Event{Machine: machineName(i % 500), Seq: uint64(seq), HasSeq: true, Time: base + seq,
				Metrics: []telemetry.Metric{{Name: "temp", Value: float64(i)}, {Name: "rpm", Value: 1500}}}
			seq++
		}
		batches[g] = &telemetry.Batch{Events: evs, Protocol: "kafka", Received: base}
	}
	benchLane(b, batches[:], perGroup, 0)
}

// benchLane commits and processes batches, one a group, in turn through
// one lane of a Kafka-mode processor over an in-memory offset store
// (started afresh after the last), with backfill horizon (0: none), and
// reports rows (samples) per second; each batch holds perGroup events of
// two metrics.
func benchLane(b *testing.B, batches []*telemetry.Batch, perGroup int, horizon time.Duration) {
	p, err := New(benchSource{}, "kafka", stream.DefaultEngineConfig(), Sinks{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	if horizon > 0 {
		p.Backfill(horizon)
	}
	groups := len(batches)
	var (
		st     *offsettest.Memory
		ln     *lane
		stored int64
		out    stream.Output
	)
	reset := func() {
		st, ln, stored = offsettest.NewMemory(), &lane{}, -1
		p.reset(ln)
	}
	reset()
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		g := n % groups
		if g == 0 && n > 0 {
			b.StopTimer()
			reset()
			b.StartTimer()
		}
		next := int64((g + 1) * perGroup)
		commit := func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
			err := st.AppendWithOffsets(ctx, samples, fresh, store.OffsetCommit{Group: "g", Topic: "t", Next: next, Expected: stored})
			if err == nil {
				stored = next
			}
			return err
		}
		out.Reset()
		j := job{batch: eventlog.Batch{Entries: []*telemetry.Batch{batches[g]}, Commit: commit}, lane: ln, out: &out}
		if horizon > 0 {
			j.cut = p.backfillCut(time.Now().UnixMilli())
		}
		p.commitLane(ctx, &j)
		if !j.sink {
			b.Fatal("commit failed")
		}
		n++
	}
	b.ReportMetric(float64(n*perGroup*2)/b.Elapsed().Seconds(), "rows/s")
}
