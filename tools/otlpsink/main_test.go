package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// TestSinkPrintsSpans: a span exported by the OTLP/HTTP client twinline
// uses comes out as one JSON line; closing stdin stops the sink.
func TestSinkPrintsSpans(t *testing.T) {
	stdinR, stdinW := io.Pipe()
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- run("127.0.0.1:0", stdinR, stdoutW); stdoutW.Close() }()
	lines := bufio.NewScanner(stdoutR)
	next := func(v any) {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("no line: %v", lines.Err())
		}
		if err := json.Unmarshal(lines.Bytes(), v); err != nil {
			t.Fatalf("line %s: %v", lines.Bytes(), err)
		}
	}
	var hello struct{ Listen string }
	next(&hello)

	c := otlptracehttp.NewClient(otlptracehttp.WithEndpointURL(hello.Listen + "/v1/traces"))
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	str := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	go func() {
		_ = c.UploadTraces(ctx, []*tracepb.ResourceSpans{{
			Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: str("twinline-dashboard")}}},
			ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{
				TraceId: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, SpanId: []byte{1, 1, 1, 1, 1, 1, 1, 1},
				ParentSpanId: []byte{2, 2, 2, 2, 2, 2, 2, 2}, Name: "render", Kind: tracepb.Span_SPAN_KIND_CONSUMER,
				Attributes: []*commonpb.KeyValue{{Key: "twinline.machine", Value: str("m1")}, {Key: "twinline.samples",
					Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 3}}}},
			}}}},
		}})
	}()
	var got span
	next(&got)
	want := span{TraceID: "0102030405060708090a0b0c0d0e0f10", SpanID: "0101010101010101", ParentID: "0202020202020202", Name: "render",
		Kind: 5, Service: "twinline-dashboard", Attributes: map[string]string{"twinline.machine": "m1", "twinline.samples": "3"}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("printed span (-got +want):\n%s", diff)
	}
	_ = c.Stop(ctx)
	stdinW.Close()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}
