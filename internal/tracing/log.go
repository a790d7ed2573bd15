package tracing

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

// The log fields that join a log line to its trace: the W3C ids in lower
// case hex, as trace viewers and Loki's derived fields expect them.
const (
	TraceIDField = "trace_id"
	SpanIDField  = "span_id"
)

// LogHandler wraps h so that a record logged with a context carrying a
// valid span (logger.InfoContext(ctx, …) inside a traced operation) gets
// the trace_id and span_id fields. Records without one are passed on as
// they are.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ inner slog.Handler }

func (h logHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String(TraceIDField, sc.TraceID().String()), slog.String(SpanIDField, sc.SpanID().String()))
	}
	return h.inner.Handle(ctx, r)
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler { return logHandler{h.inner.WithAttrs(as)} }

func (h logHandler) WithGroup(name string) slog.Handler { return logHandler{h.inner.WithGroup(name)} }
