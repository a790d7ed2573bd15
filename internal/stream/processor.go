package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/log"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// maxCommitSamples bounds one group commit to the store.
const maxCommitSamples = 64 << 10

type logReader interface {
	Read(ctx context.Context, maxSamples int) ([]*log.Entry, error)
}

// Sink receives the samples of a batch once they are durable. It must not
// retain samples: the slice is reused for the next batch.
type Sink func(b *telemetry.Batch, samples []telemetry.Sample)

// Processor reads the event log, writes each group of batches to the store in
// one commit, acknowledges them, then feeds the sinks.
type Processor struct {
	log    logReader
	append func(context.Context, []telemetry.Sample) error
	sink   Sink
	logger *slog.Logger
	engine Engine

	writeSeconds prometheus.Histogram
	samples      *prometheus.CounterVec
}

// NewProcessor returns a processor reading l, storing with appendFn and
// feeding sink (which may be nil). reg may be nil.
func NewProcessor(l logReader, appendFn func(context.Context, []telemetry.Sample) error, sink Sink, logger *slog.Logger, reg prometheus.Registerer) *Processor {
	p := &Processor{
		log:    l,
		append: appendFn,
		sink:   sink,
		logger: logger,
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_store_write_seconds",
			Help:    "Latency of one durable group commit to the store.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_processed_samples_total",
			Help: "Samples processed from the event log, by outcome (stored, rejected: outside the store's time window, error).",
		}, []string{"outcome"}),
	}
	if reg != nil {
		reg.MustRegister(p.writeSeconds, p.samples)
	}
	return p
}

// Run processes the log until it is closed and drained (then it returns nil)
// or ctx ends (then it returns ctx's error; unprocessed entries stay
// unacknowledged, so their clients get no 2xx).
//
// Storing and feeding the sinks overlap: while the sinks take group N, group
// N+1 is decoded into the other of two sample buffers and committed.
func (p *Processor) Run(ctx context.Context) error {
	jobs := make(chan sinkJob, 1)
	free := make(chan []telemetry.Sample, 2)
	free <- nil
	free <- nil
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		for j := range jobs {
			if p.sink != nil {
				for i, e := range j.entries {
					p.sink(e.Batch, j.samples[j.bounds[i]:j.bounds[i+1]:j.bounds[i+1]])
				}
			}
			free <- j.samples[:0]
		}
	}()
	defer func() {
		close(jobs)
		<-sinkDone
	}()
	for {
		entries, err := p.log.Read(ctx, maxCommitSamples)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if j, ok := p.process(ctx, entries, <-free); ok {
			jobs <- j
		} else {
			free <- j.samples[:0]
		}
	}
}

// sinkJob is a durable group of entries on its way to the sinks.
type sinkJob struct {
	entries []*log.Entry
	samples []telemetry.Sample
	bounds  []int // entry i's samples are samples[bounds[i]:bounds[i+1]]
}

// process stores the samples of entries in one commit and acknowledges
// them. ok reports whether they go on to the sinks.
func (p *Processor) process(ctx context.Context, entries []*log.Entry, buf []telemetry.Sample) (j sinkJob, ok bool) {
	bounds := make([]int, len(entries)+1)
	for i, e := range entries {
		buf = p.engine.Process(e.Batch.Events, buf)
		bounds[i+1] = len(buf)
	}
	j = sinkJob{entries: entries, samples: buf, bounds: bounds}
	start := time.Now()
	err := p.append(ctx, buf)
	p.writeSeconds.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		p.samples.WithLabelValues("stored").Add(float64(len(buf)))
		for _, e := range entries {
			e.Ack(log.Result{Accepted: len(e.Batch.Events)}, nil)
		}
		return j, true
	case errors.Is(err, store.ErrOutOfBounds):
		// Ingest rejects event times outside the store's window before
		// anything is acknowledged, so this is rare (a clock jump). The
		// store kept the rest; find which entries lost samples by storing
		// each again: what is stored already is an idempotent duplicate.
		p.logger.Warn("storing samples", "err", err)
		for i, e := range entries {
			if err := p.append(ctx, buf[bounds[i]:bounds[i+1]]); err != nil {
				p.samples.WithLabelValues("rejected").Add(float64(bounds[i+1] - bounds[i]))
				e.Ack(log.Result{}, fmt.Errorf("storing samples: %w", err))
				continue
			}
			p.samples.WithLabelValues("stored").Add(float64(bounds[i+1] - bounds[i]))
			e.Ack(log.Result{Accepted: len(e.Batch.Events)}, nil)
		}
		// The sinks skip this group: it is rare, and a live view that
		// misses it recovers from the query API.
		return j, false
	default:
		p.samples.WithLabelValues("error").Add(float64(len(buf)))
		p.logger.Error("storing samples", "err", err, "samples", len(buf))
		for _, e := range entries {
			e.Ack(log.Result{}, fmt.Errorf("storing samples: %w", err))
		}
		return j, false
	}
}
