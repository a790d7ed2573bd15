package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// maxIngestAge is the oldest ingest time a record is stamped with; an
// older batch is stamped at produce time (see Append).
const maxIngestAge = 5 * time.Second

// Producer appends batches to the topic: the gateway side of the log.
type Producer struct {
	cl         *kgo.Client
	topic      string
	logger     *slog.Logger
	ready      readiness
	ackTimeout time.Duration
	tracer     *tracing.Tracer

	seconds  prometheus.Histogram
	records  prometheus.Counter
	errCount prometheus.Counter
}

// NewProducer returns a producer writing to topic on brokers: idempotent,
// acks=all, records keyed by machine id (franz-go's sticky key partitioner
// hashes keys as the Java client does, so other clients agree on the
// partition of a machine). reg may be nil.
func NewProducer(brokers []string, topic string, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Producer, error) {
	if len(brokers) == 0 {
		return nil, errors.New("creating kafka producer: no brokers")
	}
	if topic == "" {
		return nil, errors.New("creating kafka producer: no topic")
	}
	o := buildOptions(opts)
	logger = orDiscard(logger).With("component", "kafka_producer")
	own := []kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.DefaultProduceTopic(topic),
		kgo.RequiredAcks(kgo.AllISRAcks()), // the default, stated: acks=all
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.MaxBufferedRecords(256 << 10),
		// A record that cannot be delivered fails (when idempotence allows)
		// rather than holding its client forever.
		kgo.RecordDeliveryTimeout(30 * time.Second),
		kgo.WithLogger(kgoLogger{logger}),
	}
	tuned, err := o.tuning.producerOpts()
	if err != nil {
		return nil, fmt.Errorf("creating kafka producer: %w", err)
	}
	kopts := o.clientOptions(append(own, tuned...)...)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("creating kafka producer: %w", err)
	}
	p := &Producer{
		cl:         cl,
		topic:      topic,
		logger:     logger,
		ready:      readiness{period: o.readyPeriod},
		ackTimeout: o.ackTimeout,
		tracer:     o.tracer,
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_kafka_produce_seconds",
			Help:    "Latency of appending one batch to Kafka, until every record is acknowledged.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		records: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_kafka_produced_records_total",
			Help: "Records (events) acknowledged by Kafka.",
		}),
		errCount: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_kafka_produce_errors_total",
			Help: "Batches Kafka did not acknowledge in full.",
		}),
	}
	if reg != nil {
		if err := register(reg, p.seconds, p.records, p.errCount); err != nil {
			cl.Close()
			return nil, fmt.Errorf("creating kafka producer: %w", err)
		}
	}
	return p, nil
}

// appendCall collects the acknowledgements of one Append.
type appendCall struct {
	left atomic.Int64
	done chan struct{}
	mu   sync.Mutex
	err  error
	acks atomic.Int64
}

func (c *appendCall) promise(_ *kgo.Record, err error) {
	if err != nil {
		c.mu.Lock()
		if c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
	} else {
		c.acks.Add(1)
	}
	if c.left.Add(-1) == 0 {
		close(c.done)
	}
}

// IdentityHeader is the record header naming the identity ("token:name")
// whose request the gateway verified and produced the record for.
const IdentityHeader = "twinline-identity"

// Append writes one record per event of b and returns nil once Kafka has
// acknowledged all of them (acks=all). Otherwise it returns an error
// wrapping ErrUnavailable (and ctx's error when ctx ended), or
// ErrInvalidEvent, and the batch must not be acknowledged to its client;
// some of its records may have been written. It waits at most the ack
// timeout (WithAckTimeout, default 10 s), and never for room in a full
// client buffer: it fails.
//
// A sampled batch (b.Trace) is sent under a "send" span, whose trace
// context every record carries in its traceparent and tracestate headers.
func (p *Producer) Append(ctx context.Context, b *telemetry.Batch) error {
	if len(b.Events) == 0 {
		return nil
	}
	ctx, span := p.tracer.ChildOf(ctx, b.Trace, "send", trace.SpanKindProducer)
	if !span.IsRecording() {
		return p.append(ctx, b, nil)
	}
	span.SetAttributes(semconv.MessagingSystemKafka, semconv.MessagingOperationTypeSend, semconv.MessagingOperationName("send"),
		semconv.MessagingDestinationName(p.topic), semconv.MessagingBatchMessageCount(len(b.Events)))
	sc := span.SpanContext()
	headers := []kgo.RecordHeader{{Key: tracing.TraceparentKey, Value: []byte(tracing.Traceparent(sc))}}
	if ts := sc.TraceState().String(); ts != "" {
		headers = append(headers, kgo.RecordHeader{Key: tracing.TracestateKey, Value: []byte(ts)})
	}
	err := p.append(ctx, b, headers)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "not acknowledged")
	}
	span.End()
	return err
}

// append is Append, each record carrying headers too.
func (p *Producer) append(ctx context.Context, b *telemetry.Batch, headers []kgo.RecordHeader) error {
	n := len(b.Events)
	start := time.Now()
	// One buffer for every value, one slice of records: two allocations.
	buf := make([]byte, 0, 96*n)
	ends := make([]int, n)
	for i := range b.Events {
		var err error
		if buf, err = AppendEvent(buf, &b.Events[i]); err != nil {
			p.errCount.Inc()
			return err
		}
		ends[i] = len(buf)
	}
	// The identity the gateway verified travels with each record, for
	// the record's sake: consumers trust the topic (only gateways may
	// write it), never a header.
	if id, ok := auth.FromContext(ctx); ok && id.Kind != auth.KindAnonymous {
		headers = append(headers, kgo.RecordHeader{Key: IdentityHeader, Value: []byte(string(id.Kind) + ":" + id.Name)})
	}
	recs := make([]kgo.Record, n)
	call := &appendCall{done: make(chan struct{})}
	call.left.Store(int64(n))
	from := 0
	// The record timestamp is the batch's ingest time, so the processor's
	// live latency covers gateway → Kafka → processor at no cost in bytes
	// (each value carries its own event time). The client times a record's
	// delivery out from its timestamp: a batch taken longer ago than
	// maxIngestAge (a slow body, a retried submit) is stamped now instead,
	// so it gets the whole delivery timeout.
	var ts time.Time
	if b.Received > 0 && time.Since(time.UnixMilli(b.Received)) < maxIngestAge {
		ts = time.UnixMilli(b.Received)
	}
	for i := range recs {
		r := &recs[i]
		r.Timestamp = ts
		r.Key = []byte(b.Events[i].Machine)
		r.Value = buf[from:ends[i]:ends[i]]
		r.Headers = headers
		from = ends[i]
		p.cl.TryProduce(ctx, r, call.promise)
	}
	timer := time.NewTimer(p.ackTimeout)
	defer timer.Stop()
	select {
	case <-call.done:
	case <-ctx.Done():
		p.errCount.Inc()
		return fmt.Errorf("waiting for kafka acknowledgements: %w: %w", ErrUnavailable, context.Cause(ctx))
	case <-timer.C:
		// The records may still be delivered: the client's retry is then
		// a duplicate, which is harmless.
		p.errCount.Inc()
		return fmt.Errorf("waiting for kafka acknowledgements: %w: not all acknowledged within %v", ErrUnavailable, p.ackTimeout)
	}
	p.records.Add(float64(call.acks.Load()))
	if call.err != nil {
		p.errCount.Inc()
		return fmt.Errorf("producing %d records: %w: %w", n, ErrUnavailable, call.err)
	}
	p.seconds.Observe(time.Since(start).Seconds())
	return nil
}

// Ready reports whether a broker answers (cached for the ready period).
func (p *Producer) Ready() error { return p.ready.check(p.cl) }

// Close waits up to 5 seconds for buffered records, then closes the client.
// Call it after the ingest endpoints stopped.
func (p *Producer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.cl.Flush(ctx); err != nil {
		p.logger.Warn("flushing kafka producer", "err", err)
	}
	p.cl.Close()
}
