package pipeline

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/otlptest"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

func newTracing(t testing.TB, sample float64) (*tracing.Tracing, *otlptest.Receiver) {
	t.Helper()
	rcv := otlptest.Start(t)
	tr, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: rcv.HTTPURL, Sample: sample}, tracing.Identity{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, rcv
}

var (
	processAttrs = []attribute.KeyValue{attribute.String("messaging.system", "twinline.memory"), attribute.String("messaging.operation.type", "process")}
	commitAttrs  = []attribute.KeyValue{attribute.String("db.system.name", "postgresql")}
)

// TestProcessSpan: a group with sampled entries of two traces is one
// process span, under the first sampled entry's span and linked (once) to
// the other trace's; store commit and sinks are its children; the Batch
// sink gets, per entry, the sinks span for the entries of its trace, the
// entry's own span context for the other sampled one, and nothing for
// the untraced ones. A group without a sampled entry makes no span.
func TestProcessSpan(t *testing.T) {
	tr, rcv := newTracing(t, 0)
	a := tracing.Remote("00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-aaaaaaaaaaaaaaaa-01", "")
	b := tracing.Remote("00-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-bbbbbbbbbbbbbbbb-01", "")
	unsampled := tracing.Remote("00-cccccccccccccccccccccccccccccccc-cccccccccccccccc-00", "")
	traces := []trace.SpanContext{{}, a, unsampled, b, a}
	log := eventlog.New(1<<20, nil)
	for i, sc := range traces {
		if _, err := log.Append(&telemetry.Batch{Events: []telemetry.Event{event(fmt.Sprint("m", i), int64(i), "temp", "rpm")}, Trace: sc}); err != nil {
			t.Fatal(err)
		}
	}
	var sl sinkLog
	p, err := New(NewLogSource(log, &faultyStore{inner: offsettest.NewMemory()}), "memory", stream.DefaultEngineConfig(), sl.sinks(), testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Trace(tr.Tracer("pipeline"), processAttrs, commitAttrs)
	r := run(p)
	sunk := func(n int) func() bool {
		return func() bool {
			sl.mu.Lock()
			defer sl.mu.Unlock()
			return len(sl.batches) == n
		}
	}
	waitFor(t, 10*time.Second, "the traced group sunk", sunk(len(traces)))
	// An untraced group: no span.
	for i := range 2 {
		if _, err := log.Append(&telemetry.Batch{Events: []telemetry.Event{event(fmt.Sprint("u", i), int64(i), "temp")}}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "the untraced group sunk", sunk(len(traces)+2))
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	spans := rcv.Spans()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3 (process, store commit, sinks): %v", len(spans), spans)
	}
	proc, commit, sinks := otlptest.Named(spans, "process"), otlptest.Named(spans, "store commit"), otlptest.Named(spans, "sinks")
	if len(proc) != 1 || len(commit) != 1 || len(sinks) != 1 {
		t.Fatalf("spans %v, want one process, one store commit, one sinks", spans)
	}
	ps := proc[0]
	if ps.TraceID() != a.TraceID().String() || ps.ParentID() != a.SpanID().String() || ps.Kind.String() != "SPAN_KIND_CONSUMER" {
		t.Errorf("process span %s under %s (kind %v), want in trace a under its span, a consumer span", ps.TraceID(), ps.ParentID(), ps.Kind)
	}
	if len(ps.Links) != 1 || fmt.Sprintf("%x/%x", ps.Links[0].TraceId, ps.Links[0].SpanId) != b.TraceID().String()+"/"+b.SpanID().String() {
		t.Errorf("process span links %v, want one, to b", ps.Links)
	}
	for k, v := range map[string]string{"messaging.system": "twinline.memory", "messaging.operation.type": "process",
		"messaging.batch.message_count": "5", "messaging.destination.partition.id": "0", "twinline.samples": "10"} {
		if got := ps.Attr(k); got != v {
			t.Errorf("process %s = %q, want %q", k, got, v)
		}
	}
	if c := commit[0]; c.ParentID() != ps.SpanID() || c.Attr("db.system.name") != "postgresql" || c.Attr("db.operation.batch.size") != "10" || c.Kind.String() != "SPAN_KIND_CLIENT" {
		t.Errorf("store commit: parent %s (process %s), db.system.name %q, batch size %q, kind %v", c.ParentID(), ps.SpanID(), c.Attr("db.system.name"), c.Attr("db.operation.batch.size"), c.Kind)
	}
	ss := sinks[0]
	if ss.ParentID() != ps.SpanID() {
		t.Errorf("sinks span under %s, want under process %s", ss.ParentID(), ps.SpanID())
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	want := []string{"", a.TraceID().String() + "/" + ss.SpanID(), "", b.TraceID().String() + "/" + b.SpanID().String(), a.TraceID().String() + "/" + ss.SpanID(), "", ""}
	for i, sc := range sl.live {
		got := ""
		if sc.IsValid() {
			got = sc.TraceID().String() + "/" + sc.SpanID().String()
		}
		if got != want[i] {
			t.Errorf("entry %d: the Live sink's span context %s, want %s", i, got, want[i])
		}
	}
}

// BenchmarkProcessTracing: processing and feeding groups of 10 entries of
// 10 two-metric events with tracing off, on at sampler 0 with no sampled
// entry, and with one sampled entry per group: off and sampler 0
// allocate the same.
func BenchmarkProcessTracing(b *testing.B) {
	for _, tc := range []struct {
		name    string
		on      bool
		sampled bool
	}{{"off", false, false}, {"sampler=0", true, false}, {"one sampled entry", true, true}} {
		b.Run(tc.name, func(b *testing.B) {
			p, err := New(benchSource{}, "kafka", stream.DefaultEngineConfig(), Sinks{Live: func(context.Context, *telemetry.Batch, []telemetry.Sample) {}}, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			if tc.on {
				tr, _ := newTracing(b, 0)
				p.Trace(tr.Tracer("bench"), processAttrs, commitAttrs)
			}
			const entries, perEntry = 10, 10
			st, stored := offsettest.NewMemory(), int64(-1)
			var r round
			seq := int64(0)
			batches := make([]*telemetry.Batch, entries)
			for i := range batches {
				batches[i] = &telemetry.Batch{Events: make([]telemetry.Event, perEntry), Received: base}
			}
			if tc.sampled {
				batches[3].Trace = tracing.Remote("00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-aaaaaaaaaaaaaaaa-01", "")
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				for _, bt := range batches {
					for i := range bt.Events {
						bt.Events[i] = telemetry.Event{Machine: machineName(i), Time: base + seq,
							Metrics: []telemetry.Metric{{Name: "temp", Value: 1}, {Name: "rpm", Value: 2}}}
						seq++
					}
				}
				next := seq
				commit := func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
					err := st.AppendWithOffsets(ctx, samples, fresh, store.OffsetCommit{Group: "g", Topic: "t", Next: next, Expected: stored})
					if err == nil {
						stored = next
					}
					return err
				}
				r.reset()
				p.take([]eventlog.Batch{{Entries: batches, Commit: commit}}, &r)
				p.commitRound(ctx, &r)
				p.feed(&r)
			}
		})
	}
}
