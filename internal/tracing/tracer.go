package tracing

import (
	"context"
	"encoding/hex"
	"net/http"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The W3C trace context's names: HTTP headers, MQTT 5 user properties,
// Kafka record headers; Traceparent is also the member of the stream's
// samples messages.
const (
	TraceparentKey = "traceparent"
	TracestateKey  = "tracestate"
)

// Tracer starts the spans of one package. A nil *Tracer is tracing off:
// its methods start nothing and return what they were given, at no cost.
//
// Entry points (an ingest request, an MQTT message) call Start, which may
// begin a new trace; every other span is a child (Child, ChildOf), started
// only under a sampled parent, so that work no sampled trace asked for
// costs nothing, and no stage begins traces of its own.
type Tracer struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	roots  bool
}

// noSpan is the span of a context without one: a no-op.
func noSpan() trace.Span { return trace.SpanFromContext(context.Background()) }

// Start starts an entry span, a child of the (usually remote) span
// context in ctx, or the root of a new trace, linked to links. When that
// could not be sampled — t is nil, or the parent is not sampled and the
// sampler takes no new trace — it returns ctx and a no-op span.
func (t *Tracer) Start(ctx context.Context, name string, kind trace.SpanKind, links ...trace.Link) (context.Context, trace.Span) {
	if t == nil || !t.roots && !trace.SpanContextFromContext(ctx).IsSampled() {
		return ctx, noSpan()
	}
	if len(links) == 0 {
		return t.tracer.Start(ctx, name, trace.WithSpanKind(kind))
	}
	return t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithLinks(links...))
}

// Child starts a span under the sampled span in ctx; without one it
// returns ctx and a no-op span.
func (t *Tracer) Child(ctx context.Context, name string, kind trace.SpanKind) (context.Context, trace.Span) {
	if t == nil || !trace.SpanContextFromContext(ctx).IsSampled() {
		return ctx, noSpan()
	}
	return t.tracer.Start(ctx, name, trace.WithSpanKind(kind))
}

// ChildOf starts a span under parent (a span context carried with the
// work: a batch's, a record's), linked to links, when parent is sampled;
// otherwise it returns ctx and a no-op span.
func (t *Tracer) ChildOf(ctx context.Context, parent trace.SpanContext, name string, kind trace.SpanKind, links ...trace.Link) (context.Context, trace.Span) {
	if t == nil || !parent.IsSampled() {
		return ctx, noSpan()
	}
	ctx = trace.ContextWithSpanContext(ctx, parent)
	if len(links) == 0 {
		return t.tracer.Start(ctx, name, trace.WithSpanKind(kind))
	}
	return t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithLinks(links...))
}

// Extract returns ctx with the trace context (and baggage) carrier holds.
// A nil t returns ctx.
func (t *Tracer) Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	if t == nil {
		return ctx
	}
	return t.prop.Extract(ctx, carrier)
}

// ExtractHTTP is Extract from a request's headers. A request without a
// traceparent nor baggage header costs nothing (the propagators' lookups
// canonicalise the header names, an allocation each).
func (t *Tracer) ExtractHTTP(ctx context.Context, h http.Header) context.Context {
	if t == nil || len(h["Traceparent"]) == 0 && len(h["Baggage"]) == 0 {
		return ctx
	}
	return t.prop.Extract(ctx, propagation.HeaderCarrier(h))
}

// Sampled returns the span context of span when it is sampled, else the
// zero span context: what a batch carries (telemetry.Batch.Trace).
func Sampled(span trace.Span) trace.SpanContext {
	if sc := span.SpanContext(); sc.IsSampled() {
		return sc
	}
	return trace.SpanContext{}
}

// Traceparent returns sc as a W3C traceparent ("00-<trace id>-<span
// id>-<flags>"), or "" when sc is not valid.
func Traceparent(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	var b [55]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	copy(b[:], "00-")
	hex.Encode(b[3:35], tid[:])
	b[35] = '-'
	hex.Encode(b[36:52], sid[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{byte(sc.TraceFlags() & trace.FlagsSampled)})
	return string(b[:])
}

// Remote returns the span context a W3C traceparent and tracestate name
// (from an MQTT user property, a Kafka record header), marked remote; the
// zero span context when traceparent is absent or invalid.
func Remote(traceparent, tracestate string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	carrier := propagation.MapCarrier{TraceparentKey: traceparent}
	if tracestate != "" {
		carrier[TracestateKey] = tracestate
	}
	return trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), carrier))
}
