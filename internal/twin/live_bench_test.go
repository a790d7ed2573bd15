package twin

import (
	"fmt"
	"testing"

	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkObserveReleased feeds the sliding medians with a released
// group of 1 000 machines × 10 metrics, 2 events each (as the engine
// releases them: per machine in event-time order, an event's metrics
// together); per sample.
func BenchmarkObserveReleased(b *testing.B) {
	const machines, metrics, events = 1000, 10, 2
	l := NewLive(LiveOptions{MedianWindow: 60})
	var samples []telemetry.Sample
	for m := range machines {
		for t := range events {
			for k := range metrics {
				samples = append(samples, telemetry.Sample{Machine: fmt.Sprintf("machine-%04d", m), Metric: fmt.Sprintf("metric_%d", k), Time: int64(t), Value: float64(t*k + m)})
			}
		}
	}
	l.Observe(&telemetry.Batch{Received: 1}, samples)
	var dst []MedianUpdate
	for range 60 { // the medians' windows full
		dst = l.ObserveReleased(samples, dst[:0])
	}
	b.ReportAllocs()
	for b.Loop() {
		dst = l.ObserveReleased(samples, dst[:0])
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(samples)), "ns/sample")
}
