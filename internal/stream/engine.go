// Package stream is the processing stage between the event log and the
// sinks: a pure engine that turns events into samples, and the Processor
// that reads the log, makes each batch durable in the store, acknowledges it,
// and hands it to the live sinks (twin state, stream hub).
package stream

import "github.com/twinline/twinline/internal/telemetry"

// Engine turns events into samples. It is pure and deterministic: no clock,
// no I/O. The event-time stages (deduplication, reordering, windows) grow
// here.
type Engine struct{}

// Process appends the samples of events to dst, in event order.
func (Engine) Process(events []telemetry.Event, dst []telemetry.Sample) []telemetry.Sample {
	for i := range events {
		ev := &events[i]
		for _, m := range ev.Metrics {
			dst = append(dst, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
		}
	}
	return dst
}
