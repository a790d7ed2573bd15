package app

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
	"github.com/twinline/twinline/internal/twin"
)

// publishSamples pushes an entry's samples to its machines' stream
// subscribers. Under a sampled span context (the processor's, see
// pipeline.Sinks.Batch) it does so in a "hub publish" span, whose
// traceparent the messages carry for the client's span to continue.
func publishSamples(ctx context.Context, tr *tracing.Tracer, h *hub.Hub, samples []telemetry.Sample, received int64) {
	_, span := tr.Child(ctx, "hub publish", trace.SpanKindProducer)
	if !span.IsRecording() {
		h.PublishSamples(samples, received)
		return
	}
	span.SetAttributes(attribute.Int("twinline.samples", len(samples)))
	h.PublishTracedSamples(samples, received, tracing.Traceparent(span.SpanContext()))
	span.End()
}

// observeRemote wires what the hub hears from the other replicas (with
// Redis) into this one's twins and alarms: the samples they processed
// (status, last seen, latest values, rates; and seen elsewhere is seen, so
// no offline alarm here), the medians they computed (so /latest shows the
// owner's median, as its stream does) and, on a shared store only, their
// alarm changes (alarm ids are unique across replicas on PostgreSQL, while
// each embedded replica numbers its own).
func (a *App) observeRemote(opts *hub.Options) {
	logger := a.logger.With("component", "alarms")
	opts.OnRemoteSamples = func(_ string, ingestTs int64, samples []telemetry.Sample) {
		a.live.Observe(&telemetry.Batch{Received: ingestTs}, samples)
		if _, err := a.alarms.Seen(samples, ingestTs); err != nil {
			logger.Error("journaling alarms", "err", err)
		}
	}
	opts.OnRemoteMedians = func(ms []hub.Median) {
		us := make([]twin.MedianUpdate, len(ms))
		for i, m := range ms {
			us[i] = twin.MedianUpdate{Machine: m.Machine, Metric: m.Metric, Median: m.Median, Time: m.Time}
		}
		a.live.ApplyMedians(us)
	}
	opts.OnRemoteState = func(machine string, d hub.StateData) {
		a.live.ApplyState(machine, d.Name, d.Value, d.TS)
	}
	if a.pg != nil {
		opts.OnRemoteAlarm = func(al hub.Alarm) { a.alarms.Apply(twin.Alarm(al)) }
	}
}

// publishWindows pushes closed and corrected windows to the machines'
// stream subscribers: one message per machine. With no client to reach
// (hub.Skip) it makes nothing; else a machine's message is encoded (by
// hand, no reflection) only if a client wants it, now or on resume.
func publishWindows(h *hub.Hub, ws []stream.Window) {
	if len(ws) == 0 || h.Skip() {
		return
	}
	out := make([]hub.Window, len(ws)) // the hub keeps it until encoded
	for i, w := range ws {
		out[i] = hub.Window{
			Machine: w.Machine, Metric: w.Metric, Start: w.Start, Size: w.Size, Kind: w.Kind.String(),
			Count: w.Agg.Count, Sum: w.Agg.Sum, Min: w.Agg.Min, Max: w.Agg.Max, Avg: w.Agg.Avg(),
		}
	}
	h.PublishWindows(out)
}

// publishMedians pushes the medians updated by a released group, one
// message per machine: {"metrics":{"temp":{"median":71.2,"t":…}}}.
func publishMedians(h *hub.Hub, us []twin.MedianUpdate) {
	if len(us) == 0 || h.Skip() {
		return
	}
	out := make([]hub.Median, len(us)) // us is reused; the hub keeps out
	for i, u := range us {
		out[i] = hub.Median{Machine: u.Machine, Metric: u.Metric, Median: u.Median, Time: u.Time}
	}
	h.PublishMedians(out)
}

// publishStates sends stored state changes to the live stream.
func publishStates(h *hub.Hub, cs []store.StateChange) {
	for _, c := range cs {
		h.PublishState(c.Machine, hub.StateData{Name: c.Name, Value: c.Value, TS: c.Time})
	}
}
