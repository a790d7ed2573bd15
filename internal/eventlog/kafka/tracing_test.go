package kafka

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/otlptest"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// TestTraceThroughKafka: the producer sends a sampled batch under a send
// span (messaging conventions) whose traceparent every record carries in
// its headers; the consumer reads it back into the entry's Trace (remote,
// the send span's), keeps batches of different traces in different
// entries even with one ingest time, and leaves untraced batches
// untraced. Without a tracer the consumer reads no trace context.
func TestTraceThroughKafka(t *testing.T) {
	t.Parallel()
	rcv := otlptest.Start(t)
	tr, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: rcv.HTTPURL, Sample: 0}, tracing.Identity{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic, WithTracer(tr.Tracer("kafka")))

	traceA := tracing.Remote("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=a")
	traceC := tracing.Remote("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "")
	received := time.Now().Add(-time.Second).UnixMilli() // one ingest time for all three
	batches := []*telemetry.Batch{
		{Events: events(2, 2, 0), Received: received, Trace: traceA},
		{Events: events(2, 2, 2), Received: received},
		{Events: events(2, 2, 4), Received: received, Trace: traceC},
	}
	for _, b := range batches {
		if err := prod.Append(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	sends := otlptest.Named(rcv.Spans(), "send")
	if len(sends) != 2 {
		t.Fatalf("%d send spans, want 2 (the sampled batches)", len(sends))
	}
	sendOf := map[string]otlptest.Span{} // by trace id
	for _, s := range sends {
		sendOf[s.TraceID()] = s
		want := map[string]string{"messaging.system": "kafka", "messaging.destination.name": topic, "messaging.operation.type": "send",
			"messaging.batch.message_count": "4"}
		for k, v := range want {
			if got := s.Attr(k); got != v {
				t.Errorf("send span %s = %q, want %q", k, got, v)
			}
		}
		if s.Kind.String() != "SPAN_KIND_PRODUCER" {
			t.Errorf("send span kind %v", s.Kind)
		}
	}
	for _, parent := range []trace.SpanContext{traceA, traceC} {
		if s := sendOf[parent.TraceID().String()]; s.ParentID() != parent.SpanID().String() {
			t.Errorf("send span of trace %s under %s, want under the batch's %s", parent.TraceID(), s.ParentID(), parent.SpanID())
		}
	}

	// Which batch each event came from, by its seq (distinct per batch).
	batchOf := func(e telemetry.Event) int { return int(e.Seq) / 2 }
	for _, traced := range []bool{true, false} {
		var mu sync.Mutex
		var entries []*telemetry.Batch
		var opts []Option
		if traced {
			opts = append(opts, WithTracer(tr.Tracer("kafka")))
		}
		group := "untraced"
		if traced {
			group = "traced"
		}
		startConsumer(t, brokers, topic, group, offsettest.NewMemory(), func(b *telemetry.Batch) {
			mu.Lock()
			defer mu.Unlock()
			entries = append(entries, &telemetry.Batch{Events: append([]telemetry.Event(nil), b.Events...), Trace: b.Trace, Received: b.Received})
		}, opts...)
		waitFor(t, 20*time.Second, "every event consumed", func() bool {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, e := range entries {
				n += len(e.Events)
			}
			return n == 12
		})
		mu.Lock()
		for _, e := range entries {
			if !traced {
				if e.Trace.IsValid() {
					t.Errorf("a consumer without a tracer read trace context %v", e.Trace)
				}
				continue
			}
			from := batchOf(e.Events[0])
			for _, ev := range e.Events {
				if batchOf(ev) != from {
					t.Fatalf("one entry holds events of batches %d and %d: traces mixed", from, batchOf(ev))
				}
			}
			want := batches[from].Trace
			switch {
			case !want.IsValid():
				if e.Trace.IsValid() {
					t.Errorf("untraced batch %d came back with %v", from, e.Trace)
				}
			default:
				send := sendOf[want.TraceID().String()]
				if !e.Trace.IsSampled() || !e.Trace.IsRemote() || e.Trace.TraceID() != want.TraceID() || e.Trace.SpanID().String() != send.SpanID() {
					t.Errorf("batch %d came back with %v, want the remote span context of its send span %s/%s", from, e.Trace, send.TraceID(), send.SpanID())
				}
				if from == 0 && e.Trace.TraceState().String() != "vendor=a" {
					t.Errorf("batch 0's tracestate = %q, want vendor=a", e.Trace.TraceState().String())
				}
			}
		}
		mu.Unlock()
	}

	// The records themselves: a traceparent header on the traced batches'
	// records only.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for n := 0; n < 12; {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d records: %v", n, ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			n++
			tp, _ := traceHeaders(r.Headers)
			ev := decodeOne(t, r)
			want := ""
			if sc := batches[batchOf(ev)].Trace; sc.IsValid() {
				s := sendOf[sc.TraceID().String()]
				want = "00-" + s.TraceID() + "-" + s.SpanID() + "-01"
			}
			if string(tp) != want {
				t.Errorf("record of batch %d: traceparent %q, want %q", batchOf(ev), tp, want)
			}
		})
	}
}

// BenchmarkDecodeTracing: decoding a poll of 1000 records of one gateway
// batch with tracing off, on without trace headers (an untraced batch),
// and on with them: off and on-untraced allocate the same.
func BenchmarkDecodeTracing(b *testing.B) {
	rcv := otlptest.Start(b)
	tr, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: rcv.HTTPURL, Sample: 0}, tracing.Identity{})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	for _, tc := range []struct {
		name    string
		on      bool
		headers []kgo.RecordHeader
	}{
		{"off", false, nil},
		{"on, untraced", true, nil},
		{"on, traced", true, []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var recs []*kgo.Record
			for i := range 1000 {
				ev := telemetry.Event{Machine: benchMachine(i % 500), Time: base + int64(i), Metrics: []telemetry.Metric{{Name: "temp", Value: float64(i)}}}
				v, _ := AppendEvent(nil, &ev)
				recs = append(recs, &kgo.Record{Key: []byte(ev.Machine), Value: v, Offset: int64(i), Timestamp: time.UnixMilli(base), Headers: tc.headers})
			}
			var opts []Option
			if tc.on {
				opts = append(opts, WithTracer(tr.Tracer("bench")))
			}
			c, err := NewConsumer([]string{"unused:9092"}, "t", "g", offsettest.NewMemory(), nil, nil, opts...)
			if err != nil {
				b.Fatal(err)
			}
			ps := &partition{next: -1, stored: -1, rewind: -1, shown: -1}
			b.ReportAllocs()
			for b.Loop() {
				ps.next = -1
				if batch, ok := c.decode(work{ps: ps, recs: recs, hwm: 1000}, &inflight{}); !ok || len(batch.Entries) != 1 {
					b.Fatalf("decoded %d entries, ok %v", len(batch.Entries), ok)
				}
			}
		})
	}
}
