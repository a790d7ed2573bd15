package tracing_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/twinline/twinline/internal/otlptest"
	"github.com/twinline/twinline/internal/tracing"
)

// A W3C example trace context, sampled.
const (
	exampleTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	exampleSpanID      = "00f067aa0ba902b7"
	exampleTraceparent = "00-" + exampleTraceID + "-" + exampleSpanID + "-01"
)

// clearEnv empties the OTEL_* variables Setup reads, for the test.
func clearEnv(t *testing.T) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME",
		"OTEL_RESOURCE_ATTRIBUTES", "OTEL_EXPORTER_OTLP_HEADERS"} {
		t.Setenv(k, "")
	}
}

func setup(t *testing.T, cfg tracing.Config) *tracing.Tracing {
	t.Helper()
	tr, err := tracing.Setup(context.Background(), cfg, tracing.Identity{Version: "v9", Role: "gateway", Replica: "replica-1"})
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr
}

// TestSetupOff: without an endpoint, from the flags or the environment,
// tracing is off: no tracer, a no-op provider, uploads refused, and a
// Shutdown that does nothing.
func TestSetupOff(t *testing.T) {
	clearEnv(t)
	t.Setenv("OTEL_TRACES_SAMPLER", "always_on") // a sampler alone turns nothing on
	tr := setup(t, tracing.Config{Sample: -1})
	if tr.Enabled() || tr.Tracer("x") != nil {
		t.Errorf("Enabled() = %v, Tracer() = %v; want off", tr.Enabled(), tr.Tracer("x"))
	}
	if _, span := tr.TracerProvider().Tracer("x").Start(context.Background(), "s"); span.IsRecording() {
		t.Error("the provider of tracing off records spans")
	}
	if err := tr.Upload(context.Background(), nil); !errors.Is(err, tracing.ErrOff) {
		t.Errorf("Upload = %v, want ErrOff", err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown = %v", err)
	}
}

// TestSetupExports: an endpoint from the flags or from the environment,
// over OTLP/HTTP or gRPC, gets the spans, with the resource the
// environment and the process describe: OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES, but the role, replica and version of the
// process.
func TestSetupExports(t *testing.T) {
	rcv := otlptest.Start(t)
	tests := []struct {
		name string
		cfg  tracing.Config
		env  map[string]string
	}{
		{"flag http", tracing.Config{Endpoint: rcv.HTTPURL, Sample: 1}, nil},
		{"flag grpc", tracing.Config{Endpoint: "http://" + rcv.GRPCAddr, Protocol: "grpc", Sample: 1}, nil},
		{"env http", tracing.Config{Sample: -1}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.HTTPURL}},
		{"env traces endpoint", tracing.Config{Sample: -1}, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rcv.HTTPURL + "/v1/traces"}},
		{"env grpc", tracing.Config{Sample: -1}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + rcv.GRPCAddr, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}},
		{"env http/json", tracing.Config{Sample: -1}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rcv.HTTPURL, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("OTEL_SERVICE_NAME", "press-line")
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test,twinline.role=bogus")
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			tr := setup(t, tt.cfg)
			if !tr.Enabled() {
				t.Fatal("tracing off")
			}
			name := "span " + tt.name
			_, span := tr.Tracer("test").Start(context.Background(), name, trace.SpanKindServer)
			span.End()
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := otlptest.Named(rcv.Spans(), name)
			if len(got) != 1 {
				t.Fatalf("%d spans named %q received, want 1", len(got), name)
			}
			want := map[string]string{"service.name": "press-line", "service.version": "v9", "service.instance.id": "replica-1",
				"twinline.role": "gateway", "deployment.environment.name": "test"}
			for k, v := range want {
				if got[0].Resource[k] != v {
					t.Errorf("resource %s = %q, want %q", k, got[0].Resource[k], v)
				}
			}
		})
	}
}

// TestFlagsWinOverEnv: the flags' endpoint, protocol and sampler beat the
// environment's.
func TestFlagsWinOverEnv(t *testing.T) {
	rcv := otlptest.Start(t)
	clearEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	tr := setup(t, tracing.Config{Endpoint: "http://" + rcv.GRPCAddr, Protocol: "grpc", Sample: 1})
	_, span := tr.Tracer("test").Start(context.Background(), "flags win", trace.SpanKindInternal)
	if !span.IsRecording() {
		t.Fatal("--trace-sample 1 did not win over OTEL_TRACES_SAMPLER=always_off")
	}
	span.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := otlptest.Named(rcv.Spans(), "flags win"); len(got) != 1 {
		t.Errorf("the gRPC endpoint of the flags got %d spans, want 1", len(got))
	}
}

// TestSetupRefuses: a bad endpoint or sampler fails Setup with the
// setting named.
func TestSetupRefuses(t *testing.T) {
	tests := []struct {
		name string
		cfg  tracing.Config
		env  map[string]string
		want string
	}{
		{"endpoint without scheme", tracing.Config{Endpoint: "collector:4318", Sample: -1}, nil, "--otlp-endpoint"},
		{"unknown sampler", tracing.Config{Endpoint: "http://127.0.0.1:1", Sample: -1}, map[string]string{"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"},
		{"bad ratio", tracing.Config{Endpoint: "http://127.0.0.1:1", Sample: -1},
			map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"},
		{"unknown protocol", tracing.Config{Endpoint: "http://127.0.0.1:1", Sample: -1}, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "udp"}, "protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := tracing.Setup(context.Background(), tt.cfg, tracing.Identity{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Setup = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

// sampledParent returns a context holding the example remote span
// context, sampled or not.
func sampledParent(sampled bool) context.Context {
	flags := "-01"
	if !sampled {
		flags = "-00"
	}
	sc := tracing.Remote("00-"+exampleTraceID+"-"+exampleSpanID+flags, "")
	return trace.ContextWithRemoteSpanContext(context.Background(), sc)
}

// TestTracerStartsOnlyWhatCanBeSampled: entry spans follow the sampler
// (parent-based), child spans exist only under a sampled parent, and with
// sampler 0 nothing without a sampled parent is started at all.
func TestTracerStartsOnlyWhatCanBeSampled(t *testing.T) {
	rcv := otlptest.Start(t)
	clearEnv(t)
	for _, sample := range []float64{0, 1} {
		tr := setup(t, tracing.Config{Endpoint: rcv.HTTPURL, Sample: sample}).Tracer("test")
		bg := context.Background()
		if sc := trace.SpanContextFromContext(tr.ExtractHTTP(bg, http.Header{"Traceparent": {exampleTraceparent}})); !sc.IsSampled() || sc.TraceID().String() != exampleTraceID {
			t.Errorf("sample %g: ExtractHTTP = %+v, want the traceparent's", sample, sc)
		}
		check := func(what string, ctx context.Context, span trace.Span, recording bool, in context.Context) {
			t.Helper()
			if span.IsRecording() != recording {
				t.Errorf("sample %g: %s: recording %v, want %v", sample, what, span.IsRecording(), recording)
			}
			if !recording && ctx != in {
				t.Errorf("sample %g: %s: a span not started changed the context", sample, what)
			}
			span.End()
		}
		ctx, span := tr.Start(bg, "root", trace.SpanKindServer)
		check("Start without a parent", ctx, span, sample > 0, bg)
		in := sampledParent(true)
		ctx, span = tr.Start(in, "entry", trace.SpanKindServer)
		check("Start under a sampled parent", ctx, span, true, in)
		if got := span.SpanContext().TraceID().String(); got != exampleTraceID {
			t.Errorf("sample %g: entry span in trace %s, want the parent's %s", sample, got, exampleTraceID)
		}
		_, span = tr.Start(sampledParent(false), "entry", trace.SpanKindServer)
		check("Start under a parent not sampled", nil, span, false, nil) // the SDK's non-recording span may take its place
		ctx, span = tr.Child(bg, "child", trace.SpanKindInternal)
		check("Child without a parent", ctx, span, false, bg)
		ctx, span = tr.ChildOf(bg, trace.SpanContextFromContext(sampledParent(false)), "child", trace.SpanKindInternal)
		check("ChildOf a span context not sampled", ctx, span, false, bg)
		link := trace.Link{SpanContext: trace.SpanContextFromContext(sampledParent(true))}
		_, span = tr.ChildOf(bg, trace.SpanContextFromContext(sampledParent(true)), "child", trace.SpanKindInternal, link)
		check("ChildOf a sampled span context", nil, span, true, nil)
	}
	var off *tracing.Tracer
	bg := context.Background()
	ctx, span := off.Start(sampledParent(true), "x", trace.SpanKindServer)
	if span.IsRecording() || ctx == nil {
		t.Error("a nil Tracer started a span")
	}
	if got := off.Extract(bg, propagation.HeaderCarrier(http.Header{"Traceparent": {exampleTraceparent}})); got != bg {
		t.Error("a nil Tracer extracted a trace context")
	}
	if got := off.ExtractHTTP(bg, http.Header{"Traceparent": {exampleTraceparent}}); got != bg {
		t.Error("a nil Tracer extracted a trace context from HTTP headers")
	}
}

// TestFreeWhenUnsampled: tracing off, and sampler 0 for work without a
// sampled trace context, allocate nothing on the paths every batch takes.
func TestFreeWhenUnsampled(t *testing.T) {
	rcv := otlptest.Start(t)
	clearEnv(t)
	zero := setup(t, tracing.Config{Endpoint: rcv.HTTPURL, Sample: 0}).Tracer("test")
	h := http.Header{"Content-Type": {"application/json"}}
	for name, tr := range map[string]*tracing.Tracer{"off": nil, "sampler 0": zero} {
		allocs := testing.AllocsPerRun(100, func() { hops(tr, h) })
		if allocs != 0 {
			t.Errorf("%s: %v allocations per batch, want 0", name, allocs)
		}
	}
}

// hops is what the hot paths do with one untraced batch: the ingest
// request's extraction and entry span, the producer's, processor's and
// publisher's child spans.
func hops(tr *tracing.Tracer, h http.Header) {
	ctx := tr.ExtractHTTP(context.Background(), h)
	ctx, span := tr.Start(ctx, "ingest", trace.SpanKindServer)
	sc := tracing.Sampled(span)
	_, send := tr.ChildOf(ctx, sc, "send", trace.SpanKindProducer)
	send.End()
	pctx, process := tr.ChildOf(context.Background(), sc, "process", trace.SpanKindConsumer)
	_, commit := tr.Child(pctx, "store commit", trace.SpanKindClient)
	commit.End()
	process.End()
	span.End()
}

// BenchmarkHops: the tracing work of one batch across the hops (hops),
// with tracing off, sampler 0 and sampler 1 (no traceparent).
func BenchmarkHops(b *testing.B) {
	for _, tc := range []struct {
		name   string
		sample float64
		off    bool
	}{{"off", 0, true}, {"sampler=0", 0, false}, {"sampler=1", 1, false}} {
		b.Run(tc.name, func(b *testing.B) {
			var tr *tracing.Tracer
			if !tc.off {
				rcv := otlptest.Start(b)
				t, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: rcv.HTTPURL, Sample: tc.sample}, tracing.Identity{})
				if err != nil {
					b.Fatal(err)
				}
				defer t.Shutdown(context.Background())
				tr = t.Tracer("bench")
			}
			h := http.Header{"Content-Type": {"application/json"}}
			b.ReportAllocs()
			for b.Loop() {
				hops(tr, h)
			}
		})
	}
}

// TestTraceparentRoundTrip: Remote reads what Traceparent writes, and
// refuses what is not a W3C traceparent.
func TestTraceparentRoundTrip(t *testing.T) {
	sc := tracing.Remote(exampleTraceparent, "vendor=abc")
	if !sc.IsValid() || !sc.IsSampled() || !sc.IsRemote() || sc.TraceState().String() != "vendor=abc" {
		t.Fatalf("Remote(%q) = %+v", exampleTraceparent, sc)
	}
	if got := tracing.Traceparent(sc); got != exampleTraceparent {
		t.Errorf("Traceparent = %q, want %q", got, exampleTraceparent)
	}
	for _, bad := range []string{"", "00-" + exampleTraceID + "-" + exampleSpanID, "00-00000000000000000000000000000000-" + exampleSpanID + "-01", "garbage"} {
		if sc := tracing.Remote(bad, ""); sc.IsValid() {
			t.Errorf("Remote(%q) is valid", bad)
		}
	}
	if got := tracing.Traceparent(trace.SpanContext{}); got != "" {
		t.Errorf("Traceparent of the zero span context = %q, want \"\"", got)
	}
}

// TestLogHandler: a line logged inside a traced operation carries its
// trace and span ids next to the logger's own fields; others do not.
func TestLogHandler(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(tracing.LogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "processor")
	logger.InfoContext(sampledParent(true), "traced")
	logger.Info("untraced")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines: %s", len(lines), buf.String())
	}
	var traced, untraced map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &traced); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &untraced); err != nil {
		t.Fatal(err)
	}
	if traced[tracing.TraceIDField] != exampleTraceID || traced[tracing.SpanIDField] != exampleSpanID || traced["component"] != "processor" {
		t.Errorf("traced line: %s", lines[0])
	}
	if _, ok := untraced[tracing.TraceIDField]; ok {
		t.Errorf("untraced line has a trace id: %s", lines[1])
	}
}

// TestUpload: spans made elsewhere (the browser's) reach the collector
// through the process's exporter client, over either protocol.
func TestUpload(t *testing.T) {
	rcv := otlptest.Start(t)
	clearEnv(t)
	for _, cfg := range []tracing.Config{
		{Endpoint: rcv.HTTPURL, Sample: 0},
		{Endpoint: "http://" + rcv.GRPCAddr, Protocol: "grpc", Sample: 0},
	} {
		tr := setup(t, cfg)
		name := "browser render " + cfg.Protocol
		tid, sid := trace.SpanContextFromContext(sampledParent(true)).TraceID(), trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}
		now := uint64(time.Now().UnixNano())
		rs := []*tracepb.ResourceSpans{{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "twinline-web"}}}}},
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{
				TraceId: tid[:], SpanId: sid[:], Name: name, StartTimeUnixNano: now, EndTimeUnixNano: now + 1000,
			}}}},
		}}
		if err := tr.Upload(context.Background(), rs); err != nil {
			t.Fatalf("Upload over %q: %v", cfg.Protocol, err)
		}
		got := otlptest.Named(rcv.Spans(), name)
		if len(got) != 1 || got[0].TraceID() != exampleTraceID || got[0].Resource["service.name"] != "twinline-web" {
			t.Errorf("received %+v", got)
		}
	}
}
