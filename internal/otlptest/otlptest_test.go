package otlptest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/otlptest"
)

// TestReceiver sends a parent and a child span through the SDK's own OTLP
// exporters, over HTTP and over gRPC, and finds them decoded.
func TestReceiver(t *testing.T) {
	rcv := otlptest.Start(t)
	for _, tc := range []struct {
		name string
		exp  func(context.Context) (*otlptrace.Exporter, error)
	}{
		{"http", func(ctx context.Context) (*otlptrace.Exporter, error) {
			return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(rcv.HTTPURL+"/v1/traces"))
		}},
		{"grpc", func(ctx context.Context) (*otlptrace.Exporter, error) {
			return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(rcv.GRPCAddr), otlptracegrpc.WithInsecure())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			exp, err := tc.exp(ctx)
			if err != nil {
				t.Fatal(err)
			}
			res := resource.NewSchemaless(attribute.String("service.name", "otlptest-"+tc.name))
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithResource(res))
			defer func() { _ = tp.Shutdown(ctx) }()
			tr := tp.Tracer("otlptest")
			pctx, parent := tr.Start(ctx, "parent-"+tc.name)
			_, child := tr.Start(pctx, "child-"+tc.name, trace.WithAttributes(attribute.Int("n", 42)))
			child.End()
			parent.End()

			spans := rcv.Wait(t, 10*time.Second, func(s []otlptest.Span) bool {
				return len(otlptest.Named(s, "parent-"+tc.name)) == 1 && len(otlptest.Named(s, "child-"+tc.name)) == 1
			})
			p, c := otlptest.Named(spans, "parent-"+tc.name)[0], otlptest.Named(spans, "child-"+tc.name)[0]
			if c.TraceID() != p.TraceID() || c.ParentID() != p.SpanID() || p.ParentID() != "" {
				t.Errorf("child %s/%s (parent %s), parent %s/%s", c.TraceID(), c.SpanID(), c.ParentID(), p.TraceID(), p.SpanID())
			}
			if c.Attr("n") != "42" || p.Resource["service.name"] != "otlptest-"+tc.name || !strings.HasPrefix(p.Scope, "otlptest") {
				t.Errorf("attributes: n=%q service.name=%q scope=%q", c.Attr("n"), p.Resource["service.name"], p.Scope)
			}
			if got := otlptest.Trace(spans, p.TraceID()); len(got) != 2 {
				t.Errorf("trace %s has %d spans, want 2", p.TraceID(), len(got))
			}
		})
	}
}
