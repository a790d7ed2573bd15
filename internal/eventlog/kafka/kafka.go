// Package kafka is the event log on Apache Kafka (franz-go): the Producer
// the gateway appends batches with, and the Consumer, a consumer-group
// member that hands each assigned partition's records to the processor
// (internal/pipeline) as an eventlog lane, whose commit stores raw samples
// together with the consumed offset in one transaction.
//
// Records are keyed by machine id, so one machine's events stay in one
// partition and in order; the value is one event as JSON, the format
// ingest.DecodeJSON reads, so external producers may write to the topic
// directly. The Producer is idempotent with acks=all, and Append returns
// only once Kafka acknowledged every record of the batch; each record's
// timestamp is the batch's ingest time.
//
// The Consumer does not use Kafka's committed offsets: on every partition
// assignment it resumes from the offsets stored next to the samples
// (OffsetStore), and each commit moves a partition's stored offset from the
// value the consumer last read to the new one, or fails with
// store.ErrFenced when another consumer moved it first. So every record is
// stored exactly once, even across rebalances and crashes. See
// docs/kafka.md and docs/decisions/0006-kafka-exactly-once.md.
package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/tracing"
)

var (
	// ErrUnavailable reports that Kafka did not acknowledge a batch: some or
	// none of its events may have been written, nothing is acknowledged, and
	// the client should retry later (HTTP 503 + Retry-After). A retry is
	// safe: the processor deduplicates by id and seq, and the store keeps
	// the first value of a (machine, metric, time).
	ErrUnavailable = errors.New("kafka unavailable")
	// ErrNotRunning reports a Consumer not connected: its processor has
	// not read yet, or has stopped.
	ErrNotRunning = errors.New("kafka consumer not running")
	// ErrInvalidEvent reports an event that cannot be encoded as JSON (a
	// non-finite value): the decoders never produce one.
	ErrInvalidEvent = errors.New("invalid event")
)

// Option configures a Producer or a Consumer.
type Option func(*options)

type options struct {
	kgo         []kgo.Opt
	tls         *tls.Config
	decode      ingest.Options
	tuning      Tuning
	readyPeriod time.Duration
	ackTimeout  time.Duration
	instanceID  string
	tracer      *tracing.Tracer
}

func buildOptions(opts []Option) options {
	o := options{decode: ingest.DefaultOptions(), tuning: DefaultTuning(), readyPeriod: 2 * time.Second, ackTimeout: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Tuning holds the settings that trade the Kafka legs' latency against
// their throughput. docs/kafka.md (Tuning) says why each default is what
// it is.
type Tuning struct {
	// Linger is how long the producer holds a partition's batch open for
	// more records before it sends it (0: send at once; batches then form
	// from the records that arrive while the requests before them are in
	// flight, up to five per broker).
	Linger time.Duration
	// BatchMaxBytes bounds one produced record batch (one partition's part
	// of a request), before compression; the topic's max.message.bytes
	// must allow it.
	BatchMaxBytes int32
	// Compression of produced batches: none, snappy, lz4, zstd or gzip.
	// A batch goes uncompressed when compressing does not shrink it.
	Compression string
	// FetchMaxWait is how long a broker may hold a fetch that has less
	// than FetchMinBytes to return; FetchMinBytes 1 answers as soon as
	// anything is there.
	FetchMaxWait  time.Duration
	FetchMinBytes int32
	// FetchMaxBytes bounds one fetch response, FetchMaxPartitionBytes one
	// partition's part of it (a batch larger than either still comes
	// whole).
	FetchMaxBytes          int32
	FetchMaxPartitionBytes int32
	// MaxPollRecords bounds the records the Consumer takes per read, and
	// so the size of one commit per partition.
	MaxPollRecords int
}

// DefaultTuning returns the defaults: low latency when the processors
// keep up (nothing waits for a batch to fill), large batches when they
// catch up (what accumulated while a request or a commit was under way
// goes in the next one).
func DefaultTuning() Tuning {
	return Tuning{
		Linger:                 0,
		BatchMaxBytes:          1 << 20,
		Compression:            "snappy",
		FetchMaxWait:           500 * time.Millisecond,
		FetchMinBytes:          1,
		FetchMaxBytes:          50 << 20,
		FetchMaxPartitionBytes: 1 << 20,
		MaxPollRecords:         16 << 10,
	}
}

// Compressions are the values Tuning.Compression takes.
var Compressions = []string{"none", "snappy", "lz4", "zstd", "gzip"}

// WithTuning sets the latency and throughput settings (default
// DefaultTuning).
func WithTuning(t Tuning) Option {
	return func(o *options) { o.tuning = t }
}

// producerOpts are the franz-go options of the producer's tuning.
// franz-go checks the ranges when the client is created.
func (t Tuning) producerOpts() ([]kgo.Opt, error) {
	codec := map[string]kgo.CompressionCodec{
		"none": kgo.NoCompression(), "snappy": kgo.SnappyCompression(), "lz4": kgo.Lz4Compression(),
		"zstd": kgo.ZstdCompression(), "gzip": kgo.GzipCompression(),
	}
	c, ok := codec[t.Compression]
	if !ok {
		return nil, fmt.Errorf("compression %q is not one of %s", t.Compression, strings.Join(Compressions, ", "))
	}
	return []kgo.Opt{
		kgo.ProducerLinger(t.Linger),
		kgo.ProducerBatchMaxBytes(t.BatchMaxBytes),
		kgo.ProducerBatchCompression(c, kgo.NoCompression()),
	}, nil
}

// consumerOpts are the franz-go options of the consumer's tuning.
func (t Tuning) consumerOpts() []kgo.Opt {
	return []kgo.Opt{
		kgo.FetchMaxWait(t.FetchMaxWait),
		kgo.FetchMinBytes(t.FetchMinBytes),
		kgo.FetchMaxBytes(t.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(t.FetchMaxPartitionBytes),
		// A response as large as a fetch may be must be readable.
		kgo.BrokerMaxReadBytes(max(t.FetchMaxBytes+1<<20, 100<<20)),
	}
}

// WithClientOptions adds franz-go client options (after twinline's own, so
// they override them), e.g. kgo.RecordDeliveryTimeout or kgo.SessionTimeout.
func WithClientOptions(opts ...kgo.Opt) Option {
	return func(o *options) { o.kgo = append(o.kgo, opts...) }
}

// WithTLS connects to the brokers over TLS with cfg (see
// tlsconf.ClientConfig); the server name of each broker is its host. nil,
// the default, connects in plaintext.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls = cfg }
}

// clientOptions returns the franz-go options of a client: own (twinline's
// defaults of the Producer or Consumer), then TLS, then the caller's
// WithClientOptions, which override both.
func (o options) clientOptions(own ...kgo.Opt) []kgo.Opt {
	out := make([]kgo.Opt, 0, len(own)+1+len(o.kgo))
	out = append(out, own...)
	if o.tls != nil {
		out = append(out, kgo.DialTLSConfig(o.tls))
	}
	return append(out, o.kgo...)
}

// WithInstanceID makes the Consumer a static member of its group under id
// (kgo.InstanceID): a consumer restarted under the same id (a crashed
// replica coming back) gets its partitions back at once, without a
// rebalance, instead of after the session timeout. Closing a static member
// does not leave the group: its partitions wait for it until the session
// timeout. Each replica needs an id of its own, stable across its restarts
// (a StatefulSet pod name); two consumers with one id fence each other.
// "" (the default) is a dynamic member.
func WithInstanceID(id string) Option {
	return func(o *options) { o.instanceID = id }
}

// WithTracer traces through Kafka with tr (nil: off, the default): the
// Producer makes a "send" span per sampled batch and writes its W3C
// traceparent and tracestate as record headers; the Consumer reads them
// back into each entry's telemetry.Batch.Trace, and starts an entry
// wherever they change. Records without them cost nothing more.
func WithTracer(tr *tracing.Tracer) Option {
	return func(o *options) { o.tracer = tr }
}

// WithDecodeOptions sets the options the Consumer decodes records with
// (limits, time bounds). Now is ignored: an event without a timestamp gets
// its record's timestamp, so a replay decodes it the same way. Default
// ingest.DefaultOptions().
func WithDecodeOptions(d ingest.Options) Option {
	return func(o *options) { o.decode = d }
}

// WithMaxPollRecords bounds the records the Consumer takes per poll, and
// so the size of one commit per partition (Tuning.MaxPollRecords). Default
// 16384.
func WithMaxPollRecords(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.tuning.MaxPollRecords = n
		}
	}
}

// WithReadyPeriod sets how long Ready caches the result of its broker ping.
// Default 2 seconds.
func WithReadyPeriod(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.readyPeriod = d
		}
	}
}

// WithAckTimeout bounds how long the Producer's Append waits for Kafka's
// acknowledgements before it fails with ErrUnavailable. Default 10 seconds.
func WithAckTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.ackTimeout = d
		}
	}
}

// readiness caches the result of a broker ping for period.
type readiness struct {
	period time.Duration
	mu     sync.Mutex
	at     time.Time
	err    error
}

// check returns the cached result, or pings when it is older than period.
// Concurrent callers share one ping.
func (r *readiness) check(cl *kgo.Client) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < r.period {
		return r.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(r.period, 2*time.Second))
	defer cancel()
	r.err = nil
	if err := cl.Ping(ctx); err != nil {
		r.err = fmt.Errorf("pinging kafka: %w: %w", ErrUnavailable, err)
	}
	r.at = time.Now()
	return r.err
}

// kgoLogger hands franz-go's warnings and errors to slog.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	if level == kgo.LogLevelError {
		lv = slog.LevelError
	}
	k.l.Log(context.Background(), lv, msg, keyvals...)
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// register registers cs with reg, stopping at the first error.
func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}
