package pipeline

import (
	"context"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkProcessLaneBackfill is BenchmarkProcessLane with a backfill
// horizon of 24 h, side by side: live events (now) go through the engine's
// reorder and windows after their commit; the same events 20 days old are
// backfill, committed and dropped before the engine's event-time stages.
//
//	go test -run '^$' -bench ProcessLaneBackfill -benchtime 2000x -count 5 ./internal/pipeline
func BenchmarkProcessLaneBackfill(b *testing.B) {
	for _, c := range []struct {
		name string
		age  time.Duration
	}{{"live", 0}, {"backfill", 20 * 24 * time.Hour}} {
		b.Run(c.name, func(b *testing.B) {
			const perGroup, groups = 1000, 100
			start := time.Now().Add(-c.age - time.Hour).UnixMilli()
			var batches [groups]*telemetry.Batch
			seq := int64(0)
			for g := range groups {
				evs := make([]telemetry.Event, perGroup)
				for i := range evs {
					// 500 machines, one event each per second of event time.
					evs[i] = telemetry.Event{Machine: machineName(i % 500), Seq: uint64(seq), HasSeq: true, Time: start + seq/500*1000,
						Metrics: []telemetry.Metric{{Name: "temp", Value: float64(i)}, {Name: "rpm", Value: 1500}}}
					seq++
				}
				batches[g] = &telemetry.Batch{Events: evs, Protocol: "kafka", Received: start}
			}
			p, err := New(benchSource{}, "kafka", stream.DefaultEngineConfig(), Sinks{}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			p.Backfill(24 * time.Hour)
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
				next := int64(g+1) * perGroup
				commit := func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
					err := st.AppendWithOffsets(ctx, samples, fresh, store.OffsetCommit{Group: "g", Topic: "t", Next: next, Expected: stored})
					if err == nil {
						stored = next
					}
					return err
				}
				out.Reset()
				j := job{batch: eventlog.Batch{Entries: []*telemetry.Batch{batches[g]}, Commit: commit}, lane: ln, out: &out,
					cut: p.backfillCut(time.Now().UnixMilli())}
				p.commitLane(ctx, &j)
				if !j.sink {
					b.Fatal("commit failed")
				}
				n++
			}
			b.ReportMetric(float64(n*perGroup*2)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
