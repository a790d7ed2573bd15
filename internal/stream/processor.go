package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// maxCommitSamples bounds one group commit to the store.
const maxCommitSamples = 64 << 10

// tickInterval is how often the engine's watermarks follow the server
// clock (Engine.Tick), busy or idle.
const tickInterval = time.Second

type logReader interface {
	Read(ctx context.Context, maxSamples int) ([]*eventlog.Entry, error)
}

// Sinks receive what the processor made durable. Neither may retain the
// slices it is given: they are reused for a later group.
type Sinks struct {
	// Batch receives each acknowledged batch with its new (deduplicated)
	// samples, in arrival order.
	Batch func(b *telemetry.Batch, samples []telemetry.Sample)
	// Group receives, once per group of batches, the samples released in
	// event-time order and the windows that closed or changed.
	Group func(released []telemetry.Sample, windows []Window)
}

// Processor reads the event log, runs the engine, writes each group of
// batches to the store in one commit, acknowledges them, then feeds the
// sinks.
type Processor struct {
	log    logReader
	append AppendFunc
	// storeDedups: the store reports which samples it held already.
	storeDedups bool
	fresh       []bool // scratch for append
	sinks       Sinks
	logger      *slog.Logger
	engine      *Engine
	// journal makes the keys of new keyed events durable with each commit.
	journal func([]Key) error

	// forget are the machines ForgetMachine was told of, for Run's
	// goroutine (which owns the engine) to drop.
	forgetMu sync.Mutex
	forget   []string

	writeSeconds prometheus.Histogram
	samples      *prometheus.CounterVec
	duplicates   prometheus.Counter
	windows      *prometheus.CounterVec
}

// AppendFunc stores samples durably, returning nil only once they are. With
// EngineConfig.StoreDedups it sets fresh[i] (len(fresh) == len(samples)) to
// whether samples[i] was stored by this call — false when the store already
// held a sample of its machine, metric and time (see store.FreshAppender);
// otherwise fresh is nil.
type AppendFunc func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error

// NewProcessor returns a processor reading l, storing with appendFn and
// feeding sinks (whose functions may be nil). reg may be nil.
func NewProcessor(l logReader, appendFn AppendFunc, sinks Sinks, cfg EngineConfig, logger *slog.Logger, reg prometheus.Registerer) *Processor {
	p := &Processor{
		log:         l,
		append:      appendFn,
		storeDedups: cfg.StoreDedups,
		sinks:       sinks,
		logger:      logger,
		engine:      NewEngine(cfg),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_store_write_seconds",
			Help:    "Latency of one durable group commit to the store.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_processed_samples_total",
			Help: "Samples processed from the event log, by outcome (stored, rejected: outside the store's time window, error).",
		}, []string{"outcome"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_duplicate_events_total",
			Help: "Events recognised as duplicates (same id, same machine and seq, or every sample already seen) and not stored again.",
		}),
		windows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_windows_total",
			Help: "Window aggregates emitted, by kind (final, correction, late).",
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(p.writeSeconds, p.samples, p.duplicates, p.windows)
	}
	return p
}

// JournalKeys makes each group commit also hand the keys of its new keyed
// events (id or seq) to journal, once the store committed them and before
// they are acknowledged. Call it before Run.
func (p *Processor) JournalKeys(journal func([]Key) error) { p.journal = journal }

// Remember feeds the engine the keys journaled by an earlier run, so their
// retries are recognised as duplicates. Call it before Run.
func (p *Processor) Remember(keys []Key) { p.engine.Remember(keys) }

// ForgetMachine makes Run drop the engine's state of a machine deleted
// from the registry, before it processes its next group. It is safe to
// call from any goroutine.
func (p *Processor) ForgetMachine(machine string) {
	p.forgetMu.Lock()
	defer p.forgetMu.Unlock()
	p.forget = append(p.forget, machine)
}

// forgetMachines applies ForgetMachine; Run's goroutine calls it.
func (p *Processor) forgetMachines() {
	p.forgetMu.Lock()
	ids := p.forget
	p.forget = nil
	p.forgetMu.Unlock()
	for _, id := range ids {
		p.engine.ForgetMachine(id)
	}
}

// Run processes the log until it is closed and drained (then it flushes
// the engine to the group sink and returns nil) or ctx ends (then it returns
// ctx's error; unprocessed entries stay unacknowledged, so their clients get
// no 2xx).
//
// Storing and feeding the sinks overlap: while the sinks take group N, group
// N+1 is processed into the other of two outputs and committed.
func (p *Processor) Run(ctx context.Context) error {
	jobs := make(chan sinkJob, 1)
	free := make(chan *Output, 2)
	free <- &Output{}
	free <- &Output{}
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		for j := range jobs {
			p.feed(j)
			j.out.Reset()
			free <- j.out
		}
	}()
	defer func() {
		close(jobs)
		<-sinkDone
	}()
	lastTick := time.Now()
	for {
		rctx, cancel := context.WithTimeout(ctx, tickInterval)
		entries, err := p.log.Read(rctx, maxCommitSamples)
		cancel()
		p.forgetMachines()
		if now := time.Now(); now.Sub(lastTick) >= tickInterval {
			lastTick = now
			out := <-free
			p.engine.Tick(now.UnixMilli(), out)
			if len(out.Released) > 0 || len(out.Windows) > 0 {
				jobs <- sinkJob{out: out}
			} else {
				free <- out
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			continue // idle: the tick above is what was due
		}
		if errors.Is(err, io.EOF) {
			out := <-free
			p.engine.Flush(out)
			jobs <- sinkJob{out: out}
			return nil
		}
		if err != nil {
			return err
		}
		out := <-free
		if j, ok := p.process(ctx, entries, out); ok {
			jobs <- j
		} else {
			out.Reset()
			free <- out
		}
	}
}

// keepFresh drops from the group the samples the store held already (they
// alone go on to the event-time stages and the sinks), updating each
// entry's bounds, and adds the events that were duplicates as a whole to
// dups.
func (p *Processor) keepFresh(out *Output, bounds []int, fresh []bool, dups []int) {
	w, lo := 0, bounds[0]
	for i := range dups {
		hi := bounds[i+1] // bounds[i+1] is rewritten below: read it first
		n, d := KeepFresh(out.Samples[lo:hi], out.Origin[lo:hi], fresh[lo:hi])
		copy(out.Samples[w:], out.Samples[lo:lo+n])
		copy(out.Origin[w:], out.Origin[lo:lo+n])
		dups[i] += d
		bounds[i], bounds[i+1] = w, w+n
		w, lo = w+n, hi
	}
	out.Samples, out.Origin = out.Samples[:w], out.Origin[:w]
}

// sinkJob is a durable group of entries on its way to the sinks.
type sinkJob struct {
	entries []*eventlog.Entry
	out     *Output
	bounds  []int // entry i's samples are out.Samples[bounds[i]:bounds[i+1]]
	// results are the acknowledgements of the entries, sent once the Batch
	// sink took each: a client that reads right after its 2xx (the twin's
	// latest values, the fleet list) sees its events.
	results []eventlog.Result
}

func (p *Processor) feed(j sinkJob) {
	for i, e := range j.entries {
		if p.sinks.Batch != nil {
			p.sinks.Batch(e.Batch, j.out.Samples[j.bounds[i]:j.bounds[i+1]:j.bounds[i+1]])
		}
		if j.results != nil {
			e.Ack(j.results[i], nil)
		}
	}
	for _, w := range j.out.Windows {
		p.windows.WithLabelValues(w.Kind.String()).Inc()
	}
	if p.sinks.Group != nil && (len(j.out.Released) > 0 || len(j.out.Windows) > 0) {
		p.sinks.Group(j.out.Released, j.out.Windows)
	}
}

// process runs the engine on entries, stores their new samples in one
// commit and acknowledges them. ok reports whether they go on to the sinks.
func (p *Processor) process(ctx context.Context, entries []*eventlog.Entry, out *Output) (j sinkJob, ok bool) {
	bounds := make([]int, len(entries)+1)
	dups := make([]int, len(entries))
	for i, e := range entries {
		dups[i] = p.engine.Process(e.Batch.Events, out)
		bounds[i+1] = len(out.Samples)
	}
	j = sinkJob{entries: entries, out: out, bounds: bounds}
	samples := out.Samples

	start := time.Now()
	var fresh []bool
	if p.storeDedups {
		fresh = slices.Grow(p.fresh[:0], len(samples))[:len(samples)]
		clear(fresh)
		p.fresh = fresh
	}
	err := p.append(ctx, samples, fresh)
	if err == nil && p.journal != nil && len(out.Keys) > 0 {
		// After the commit, not alongside it: a key journaled for samples
		// that were not stored would make the client's retry a duplicate,
		// and lose it. A failure here loses nothing acknowledged: the
		// samples are stored; a retry with another event time after a
		// restart could be stored again.
		if jerr := p.journal(out.Keys); jerr != nil {
			p.logger.Error("journaling dedup keys", "err", jerr, "keys", len(out.Keys))
		}
	}
	p.writeSeconds.Observe(time.Since(start).Seconds())
	ack := func(i int, e *eventlog.Entry) {
		p.duplicates.Add(float64(dups[i]))
		e.Ack(eventlog.Result{Accepted: len(e.Batch.Events) - dups[i], Duplicates: dups[i]}, nil)
	}
	switch {
	case err == nil:
		p.samples.WithLabelValues("stored").Add(float64(len(samples)))
		if p.storeDedups {
			p.keepFresh(out, bounds, fresh, dups)
		}
		// Durable; acknowledged by feed, once the Batch sink took them.
		j.results = make([]eventlog.Result, len(entries))
		for i, e := range entries {
			p.duplicates.Add(float64(dups[i]))
			j.results[i] = eventlog.Result{Accepted: len(e.Batch.Events) - dups[i], Duplicates: dups[i]}
		}
		// Durable: now the event-time stages may take the samples.
		p.engine.Release(out, time.Now().UnixMilli())
		return j, true
	case errors.Is(err, store.ErrOutOfBounds):
		// Ingest rejects event times outside the store's window before
		// anything is acknowledged, so this is rare (a clock jump). The
		// store kept the rest; find which entries lost samples by storing
		// each again: what is stored already is an idempotent duplicate.
		p.logger.Warn("storing samples", "err", err)
		var again []bool // the first attempt's fresh flags are the ones that count
		for i, e := range entries {
			lo, hi := bounds[i], bounds[i+1]
			if p.storeDedups {
				again = make([]bool, hi-lo)
			}
			if err := p.append(ctx, samples[lo:hi], again); err != nil {
				p.samples.WithLabelValues("rejected").Add(float64(hi - lo))
				e.Ack(eventlog.Result{}, fmt.Errorf("storing samples: %w", err))
				continue
			}
			p.samples.WithLabelValues("stored").Add(float64(hi - lo))
			if p.storeDedups {
				// Stored by either attempt (the store's time window may
				// have moved between them).
				for k := range again {
					fresh[lo+k] = fresh[lo+k] || again[k]
				}
				_, d := KeepFresh(samples[lo:hi], out.Origin[lo:hi], fresh[lo:hi])
				dups[i] += d
			}
			ack(i, e)
		}
	default:
		p.samples.WithLabelValues("error").Add(float64(len(samples)))
		p.logger.Error("storing samples", "err", err, "samples", len(samples))
		for _, e := range entries {
			e.Ack(eventlog.Result{}, fmt.Errorf("storing samples: %w", err))
		}
	}
	// Some samples were not stored, but the engine remembered their keys:
	// forget them so a retry is not taken for a duplicate (the store's own
	// (series, time) key keeps what was stored from counting twice). The
	// group does not go on to the event-time stages nor the sinks: a live
	// view recovers from the query API.
	p.engine.Forget()
	return j, false
}
