// Package eventlog is the event log between ingest and processing: a bounded,
// in-process queue of batches with back-pressure and acknowledgement.
//
// Ingest appends a batch and waits for its acknowledgement; the processor
// reads batches, makes them durable, and acknowledges them. The log is
// bounded in samples: an append that does not fit fails at once with
// ErrFull (the HTTP layer answers 503 + Retry-After), so memory never grows
// without bound and nothing that was acknowledged is ever dropped. A Kafka
// log (eventlog/kafka) replaces it at scale.
//
// Both hand their events to the processor (internal/pipeline) in the same
// shape, Read: batches of events, each with its commit function (source.go).
package eventlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/telemetry"
)

var (
	// ErrFull reports that the log has no room for the batch right now.
	ErrFull = errors.New("event log full")
	// ErrClosed reports an append to a closed log.
	ErrClosed = errors.New("event log closed")
	// ErrTooLarge reports a batch larger than the whole log.
	ErrTooLarge = errors.New("batch larger than the event log")
)

// Result is what the processor reports for an acknowledged batch.
type Result struct {
	// Accepted is the number of events stored.
	Accepted int
	// Duplicates is the number of events recognised as already stored.
	Duplicates int
}

// Entry is one batch in the log, with the means to acknowledge it.
type Entry struct {
	Batch   *telemetry.Batch
	samples int
	log     *Log
	done    chan struct{}
	once    sync.Once
	res     Result
	err     error
}

// Samples returns the number of samples the entry carries.
func (e *Entry) Samples() int { return e.samples }

// Ack acknowledges the entry: err == nil means its samples are durable.
// It releases the entry's room in the log. Only the first call counts.
func (e *Entry) Ack(res Result, err error) {
	e.once.Do(func() {
		e.res, e.err = res, err
		e.log.release(e.samples)
		close(e.done)
	})
}

// Done is closed once the entry is acknowledged.
func (e *Entry) Done() <-chan struct{} { return e.done }

// Wait blocks until the entry is acknowledged or ctx ends.
func (e *Entry) Wait(ctx context.Context) (Result, error) {
	select {
	case <-e.done:
		return e.res, e.err
	case <-ctx.Done():
		return Result{}, fmt.Errorf("waiting for acknowledgement: %w", context.Cause(ctx))
	}
}

// Log is the bounded in-process event log. It is safe for concurrent use.
type Log struct {
	capacity int

	mu       sync.Mutex
	nonEmpty *sync.Cond
	queue    []*Entry
	used     int // samples appended and not yet acknowledged
	closed   bool

	depth    prometheus.GaugeFunc
	rejected prometheus.Counter
}

// New returns a log that holds at most capacity samples that are appended
// and not yet acknowledged (an event's states count as samples). reg may
// be nil.
func New(capacity int, reg prometheus.Registerer) *Log {
	l := &Log{capacity: capacity}
	l.nonEmpty = sync.NewCond(&l.mu)
	l.rejected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_log_full_total",
		Help: "Batches refused because the event log was full.",
	})
	l.depth = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "twinline_log_depth_samples",
		Help: "Samples in the event log that are not yet acknowledged.",
	}, func() float64 { return float64(l.Depth()) })
	if reg != nil {
		reg.MustRegister(l.rejected, l.depth,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "twinline_log_capacity_samples",
				Help: "Capacity of the event log in samples.",
			}, func() float64 { return float64(capacity) }))
	}
	return l
}

// Submit appends b and waits until it is durable: Append, then the entry's
// Wait.
func (l *Log) Submit(ctx context.Context, b *telemetry.Batch) (Result, error) {
	e, err := l.Append(b)
	if err != nil {
		return Result{}, err
	}
	return e.Wait(ctx)
}

// Append adds b to the log. It never blocks: when b does not fit it returns
// ErrFull, and the caller should ask its client to retry later.
func (l *Log) Append(b *telemetry.Batch) (*Entry, error) {
	n := b.NumSamples()
	for i := range b.Events {
		// States take room too: a batch of states only is not free.
		n += len(b.Events[i].States)
	}
	e := &Entry{Batch: b, samples: n, log: l, done: make(chan struct{})}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed:
		return nil, ErrClosed
	case n > l.capacity:
		return nil, fmt.Errorf("%w: %d samples, capacity %d", ErrTooLarge, n, l.capacity)
	case l.used+n > l.capacity:
		l.rejected.Inc()
		return nil, ErrFull
	}
	l.used += n
	l.queue = append(l.queue, e)
	l.nonEmpty.Signal()
	return e, nil
}

// Read blocks until at least one entry is queued, then returns queued entries
// totalling at most maxSamples samples (always at least one entry). It
// returns io.EOF once the log is closed and drained, or ctx's error.
func (l *Log) Read(ctx context.Context, maxSamples int) ([]*Entry, error) {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.nonEmpty.Broadcast()
		l.mu.Unlock()
	})
	defer stop()

	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.queue) == 0 {
		if l.closed {
			return nil, io.EOF
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		l.nonEmpty.Wait()
	}
	n, total := 0, 0
	for n < len(l.queue) && (n == 0 || total+l.queue[n].samples <= maxSamples) {
		total += l.queue[n].samples
		n++
	}
	out := make([]*Entry, n)
	copy(out, l.queue[:n])
	clear(l.queue[:n])
	l.queue = l.queue[n:]
	if len(l.queue) == 0 {
		l.queue = l.queue[:0:0] // let the backing array go
	}
	return out, nil
}

// Close stops appends; Read drains what is queued and then returns io.EOF.
func (l *Log) Close() {
	l.mu.Lock()
	l.closed = true
	l.nonEmpty.Broadcast()
	l.mu.Unlock()
}

// Depth returns the number of samples appended and not yet acknowledged.
func (l *Log) Depth() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.used
}

func (l *Log) release(n int) {
	l.mu.Lock()
	l.used -= n
	l.mu.Unlock()
}
