package tracing

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// TestSampler: --trace-sample (a fraction, parent-based) wins; a negative
// one leaves the choice to OTEL_TRACES_SAMPLER(_ARG), default
// parentbased_always_on. roots says whether a trace may start here.
func TestSampler(t *testing.T) {
	tests := []struct {
		sample   float64
		env, arg string
		// root: a trace starting here is sampled; parent: one under a
		// sampled remote parent is; roots: what newSampler reports.
		root, parent, roots bool
	}{
		{sample: 0, env: "always_on", root: false, parent: true, roots: false},
		{sample: 1, env: "always_off", root: true, parent: true, roots: true},
		{sample: -1, root: true, parent: true, roots: true},
		{sample: -1, env: "parentbased_always_off", root: false, parent: true, roots: false},
		{sample: -1, env: "always_off", root: false, parent: false, roots: false},
		{sample: -1, env: "parentbased_traceidratio", arg: "0", root: false, parent: true, roots: false},
		{sample: -1, env: "parentbased_traceidratio", arg: "1", root: true, parent: true, roots: true},
		{sample: -1, env: "traceidratio", arg: "0", root: false, parent: false, roots: false},
		{sample: -1, env: "always_on", root: true, parent: true, roots: true},
	}
	parent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled, Remote: true})
	for _, tt := range tests {
		env := map[string]string{"OTEL_TRACES_SAMPLER": tt.env, "OTEL_TRACES_SAMPLER_ARG": tt.arg}
		s, roots, err := newSampler(tt.sample, func(k string) string { return env[k] })
		if err != nil {
			t.Errorf("sample %g %s %s: %v", tt.sample, tt.env, tt.arg, err)
			continue
		}
		decide := func(ctx context.Context) bool {
			return s.ShouldSample(sdktrace.SamplingParameters{ParentContext: ctx, TraceID: trace.TraceID{0xff, 2}, Name: "s"}).Decision == sdktrace.RecordAndSample
		}
		root, under := decide(context.Background()), decide(trace.ContextWithRemoteSpanContext(context.Background(), parent))
		if root != tt.root || under != tt.parent || roots != tt.roots {
			t.Errorf("sample %g %s %s: root %v, under a sampled parent %v, roots %v; want %v, %v, %v",
				tt.sample, tt.env, tt.arg, root, under, roots, tt.root, tt.parent, tt.roots)
		}
	}
}
