package pipeline

import (
	"testing"
	"time"

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
			benchLane(b, batches[:], perGroup, 24*time.Hour)
		})
	}
}
