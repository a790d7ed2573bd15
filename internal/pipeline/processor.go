package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// tickInterval is how often the engines' watermarks follow the server
// clock (stream.Engine.Tick), busy or idle.
const tickInterval = time.Second

// commitGrace is how long the commits in flight when Run's context ends
// may still take: Run stops after its current commit rather than abort it
// (as long as PostgreSQL's default write timeout).
const commitGrace = 5 * time.Second

// rounds is how many reads the processor holds at once: one it reads (and,
// on a durable log, runs through the engines and shows), one it commits,
// one its sinks take.
const rounds = 3

// Processor reads a Source, runs an event-time engine per lane, commits
// each lane's new samples, then feeds the sinks and acknowledges. See the
// package documentation for its rules.
type Processor struct {
	src       Source
	engineCfg stream.EngineConfig
	sinks     Sinks
	logger    *slog.Logger
	// early: the source's log is durable before the processor reads it
	// (Source.DurableLog): a group goes to the engine and the Live sink as
	// soon as it is read, and commits while the next read is processed.
	early bool

	// lanes are the engines, by lane; only Run's goroutine touches the
	// map (each lane's engine has a lock of its own).
	lanes map[int32]*lane
	// remembered are the keys journaled by an earlier run: every new
	// lane's engine remembers them.
	remembered []stream.Key
	journal    func([]stream.Key) error
	journalMu  sync.Mutex // lanes commit in parallel; the journal is not safe for it

	// forget are the machines ForgetMachine was told of, for Run's
	// goroutine (which owns the engines) to drop.
	forgetMu sync.Mutex
	forget   []string

	// tracer, when not nil, traces the groups with a sampled entry
	// (Trace); processAttrs and commitAttrs are their spans' constant
	// attributes.
	tracer                    *tracing.Tracer
	processAttrs, commitAttrs []attribute.KeyValue

	writeSeconds prometheus.Histogram
	durable      prometheus.Histogram
	legs         Legs
	samples      *prometheus.CounterVec
	duplicates   prometheus.Counter
	windows      *prometheus.CounterVec

	// backfill is how far behind the server clock a sample's event time
	// makes it backfill (see Backfill); 0: no sample is.
	backfill   time.Duration
	backfilled prometheus.Counter
	// liveScratch is take's: an entry's samples without its backfill,
	// for the Live sink (which keeps no slice).
	liveScratch []telemetry.Sample

	// logName labels the metrics; the state series (states.go) are kept
	// when stateStore is set.
	logName                    string
	stateStore                 store.StateStore
	stateSink                  func([]store.StateChange)
	stateChanges, stateDropped prometheus.Counter
}

// Legs are the processor's legs of the sensor → screen latency, histograms
// in seconds that app makes (twinline_leg_seconds{leg}); a nil one is not
// observed.
type Legs struct {
	// LogWait: the gateway took a batch (Batch.Received, under Kafka the
	// record timestamp) → the processor read it; once per entry.
	LogWait prometheus.Observer
	// Engine: the event-time engine's work on one lane group: processing
	// it, and releasing it once durable.
	Engine prometheus.Observer
	// StoreCommit: one durable commit (as twinline_store_write_seconds).
	StoreCommit prometheus.Observer
}

// lane is one lane's engine and scratch.
type lane struct {
	// mu guards engine: on a durable log Run's goroutine processes a group
	// while the commit stage releases the one before, ticks or resets it.
	mu     sync.Mutex
	engine *stream.Engine
	fresh  []bool // the commit stage's
	// states is the commit stage's memory of the lane's state series,
	// under statesMu (the commit stage, and forgetMachines).
	statesMu sync.Mutex
	states   stateMemory
}

// New returns a processor of src, feeding sinks (whose functions may be
// nil). log names the log in the metrics' log label ("memory", "kafka").
// reg may be nil.
func New(src Source, log string, engineCfg stream.EngineConfig, sinks Sinks, logger *slog.Logger, reg prometheus.Registerer) (*Processor, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	engineCfg.StoreDedups = src.StoreDedups()
	labels := prometheus.Labels{"log": log}
	p := &Processor{
		src:       src,
		engineCfg: engineCfg,
		sinks:     sinks,
		logger:    logger,
		early:     src.DurableLog(),
		logName:   log,
		lanes:     map[int32]*lane{},
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "twinline_store_write_seconds",
			Help:        "Latency of one durable commit to the store (under Kafka: samples, aggregates and offset of one partition).",
			Buckets:     prometheus.ExponentialBuckets(0.0001, 2, 16),
			ConstLabels: labels,
		}),
		durable: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "twinline_ingest_durable_seconds",
			Help:        "Time from the gateway taking a batch to its samples committed to the store (ingest → durable), per batch.",
			Buckets:     telemetry.LatencyBuckets(),
			ConstLabels: labels,
		}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "twinline_processed_samples_total",
			Help:        "Samples processed from the event log, by outcome (stored, rejected: outside the store's time window, error).",
			ConstLabels: labels,
		}, []string{"outcome"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "twinline_duplicate_events_total",
			Help:        "Events recognised as duplicates (same id, same machine and seq, or every sample already stored) and not stored again.",
			ConstLabels: labels,
		}),
		windows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "twinline_windows_total",
			Help:        "Window aggregates emitted, by kind (final, correction, late).",
			ConstLabels: labels,
		}, []string{"kind"}),
		backfilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "twinline_backfill_samples_total",
			Help:        "Samples stored as backfill: older than --out-of-order-window behind the server clock, stored without going to the live stream, the twin, the windows or the alarms.",
			ConstLabels: labels,
		}),
	}
	p.ObserveLegs(Legs{})
	if reg != nil {
		for _, c := range []prometheus.Collector{p.writeSeconds, p.durable, p.samples, p.duplicates, p.windows, p.backfilled} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering processor metrics: %w", err)
			}
		}
	}
	return p, nil
}

// ObserveLegs makes the processor observe its legs into l. Call it before
// Run.
func (p *Processor) ObserveLegs(l Legs) {
	none := prometheus.ObserverFunc(func(float64) {})
	for _, o := range []*prometheus.Observer{&l.LogWait, &l.Engine, &l.StoreCommit} {
		if *o == nil {
			*o = none
		}
	}
	p.legs = l
}

// Backfill makes backfill of the samples whose event time is more than
// horizon behind the server clock when the processor reads them: they are
// committed like the others (durable before their acknowledgement, the
// store's first write wins, the store keeps their aggregates) and go
// nowhere else: not to the Live sink (the live stream), the Batch sink
// (the twin's latest values, the hot window, the alarms' last seen) nor
// the engine's event-time stages (reorder, windows, medians, alarms: the
// Group sink). The keys of their keyed events are still journaled. 0 (the
// default) makes no sample backfill. Call it before Run. See ADR 0033.
func (p *Processor) Backfill(horizon time.Duration) { p.backfill = max(horizon, 0) }

// backfillCut returns the event time (Unix ms) before which a sample read
// at now (Unix ms) is backfill; math.MinInt64 when none is.
func (p *Processor) backfillCut(now int64) int64 {
	if p.backfill <= 0 {
		return math.MinInt64
	}
	return now - p.backfill.Milliseconds()
}

// JournalKeys makes each commit also hand the keys of its new keyed events
// (id or seq) to journal, once the store committed them and before they are
// acknowledged. Call it before Run.
func (p *Processor) JournalKeys(journal func([]stream.Key) error) { p.journal = journal }

// Trace makes the processor trace each group that has a sampled entry
// (telemetry.Batch.Trace): a "process" span whose parent is the first
// sampled entry's span and which links to the other sampled entries'
// (links, not children: a group holds hundreds of entries), with a
// "store commit" child around the commit and a "sinks" child around the
// sinks, which get the span context each entry's live message continues
// (Sinks.Batch). A group without a sampled entry costs nothing. process
// and commit are the constant attributes of the process and store commit
// spans (messaging and database semantic conventions). Call it before Run.
func (p *Processor) Trace(tr *tracing.Tracer, process, commit []attribute.KeyValue) {
	p.tracer, p.processAttrs, p.commitAttrs = tr, process, commit
}

// Remember makes every lane's engine recognise the keys journaled by an
// earlier run, so their retries are duplicates. Call it before Run. (Under
// Kafka each assigned partition's engine remembers them all: the journal
// does not say which partition a key came from.)
func (p *Processor) Remember(keys []stream.Key) { p.remembered = keys }

// ForgetMachine makes Run drop every lane's state of a machine deleted from
// the registry, before it processes its next read. It is safe to call from
// any goroutine.
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
	if len(ids) == 0 {
		return
	}
	for _, ln := range p.lanes {
		ln.mu.Lock()
		for _, id := range ids {
			ln.engine.ForgetMachine(id)
		}
		ln.statesMu.Lock()
		for _, id := range ids {
			ln.states.forget(id)
		}
		ln.statesMu.Unlock()
		ln.mu.Unlock()
	}
}

// lane returns the lane of id, with a new engine the first time.
func (p *Processor) lane(id int32) *lane {
	ln := p.lanes[id]
	if ln == nil {
		ln = &lane{}
		p.reset(ln)
		p.lanes[id] = ln
	}
	return ln
}

// reset gives ln a new engine, which remembers the journaled keys. The
// caller holds ln.mu, or is the only one to know ln.
func (p *Processor) reset(ln *lane) {
	ln.engine = stream.NewEngine(p.engineCfg)
	ln.engine.Remember(p.remembered)
	ln.statesMu.Lock()
	ln.states = nil
	ln.statesMu.Unlock()
}

// Run processes the source until its log is closed and drained (then it
// flushes the engines to the group sink and returns nil) or ctx ends (then
// it finishes the commits in flight, given up to commitGrace, and returns
// ctx's error; what was not committed stays unacknowledged, or in Kafka).
// It closes the source when it returns.
//
// Three stages overlap, each on a read of its own: Run's goroutine reads
// (and, on a durable log, runs the engines and shows the samples live);
// the commit stage commits each lane of the read before (on the
// in-process log running the engine first), releases what is durable to
// the event-time stages and ends the read (Read.Done); the sink stage
// feeds the sinks and acknowledges the read before that. On the
// in-process log a read waits for the commit before it, so that what
// arrives during a commit goes into the next one whole.
func (p *Processor) Run(ctx context.Context) (err error) {
	defer func() {
		if cerr := p.src.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing the event log source: %w", cerr))
		}
	}()
	free := make(chan *round, rounds)
	for range rounds {
		free <- &round{}
	}
	commits := make(chan *round, rounds)
	committed := make(chan struct{}, rounds) // !p.early: each round's commit done
	feeds := make(chan *round, rounds)
	// Commits outlive ctx for a while: stopping, Run finishes the commit
	// in flight instead of rolling it back (and Kafka redoing it).
	commitCtx, stopCommits := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCommits()
	defer context.AfterFunc(ctx, func() {
		grace := time.AfterFunc(commitGrace, stopCommits)
		context.AfterFunc(commitCtx, func() { grace.Stop() }) // Run returned
	})()
	var stages sync.WaitGroup
	stages.Go(func() {
		defer close(feeds)
		for r := range commits {
			p.commitRound(commitCtx, r)
			if !p.early {
				committed <- struct{}{}
			}
			feeds <- r
		}
	})
	stages.Go(func() {
		for r := range feeds {
			p.feed(r)
			free <- r
		}
	})
	defer func() {
		close(commits)
		stages.Wait()
	}()
	lastTick := time.Now()
	for {
		// Taken before the read: the stages hold at most the two reads
		// before this one while it is read, as Source promises.
		var r *round
		select {
		case r = <-free:
		case <-ctx.Done():
			return ctx.Err()
		}
		r.reset()
		rctx, cancel := context.WithTimeout(ctx, tickInterval)
		read, err := p.src.Read(rctx)
		cancel()
		p.forgetMachines()
		for _, id := range read.Dropped {
			delete(p.lanes, id)
		}
		if err == nil {
			p.take(read.Batches, r)
		}
		r.done = read.Done
		eof := errors.Is(err, io.EOF) && ctx.Err() == nil
		if now := time.Now(); now.Sub(lastTick) >= tickInterval || eof {
			lastTick = now
			r.tick, r.flush = true, eof
			for _, ln := range p.lanes {
				r.lanes = append(r.lanes, ln)
			}
		}
		commits <- r
		if !p.early {
			// On the in-process log the next read waits for this commit:
			// what arrives meanwhile makes one bigger commit (a read taken
			// at once would commit a few entries at a time, and a
			// PostgreSQL store spends per commit: 20 000 events/s became
			// 13 000-16 500 in `twinline bench --scenario latency --rate
			// 20000 --store postgres`). The sinks still take the round
			// while the next one is read and committed.
			select {
			case <-committed:
			case <-ctx.Done():
			}
		}
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case eof:
			return nil
		case err == nil, errors.Is(err, context.DeadlineExceeded):
			// Idle: the tick above was what was due.
		default:
			return fmt.Errorf("reading the event log: %w", err)
		}
	}
}

// round is one read on its way through the stages.
type round struct {
	jobs []job
	outs []*stream.Output // jobs[i].out is outs[i]
	// done ends the read (Read.Done), once its commits are.
	done func()
	// tick: after the commits, the commit stage ticks (flush: flushes)
	// lanes into ticked.
	tick, flush bool
	lanes       []*lane
	ticked      stream.Output // what Tick and Flush released
}

// job is one lane's batch of a read.
type job struct {
	batch  eventlog.Batch
	lane   *lane
	out    *stream.Output
	bounds []int // entry i's samples are out.Samples[bounds[i]:bounds[i+1]]
	// keyBounds: entry i's keys are out.Keys[keyBounds[i]:keyBounds[i+1]].
	keyBounds []int
	// dups are the duplicate events of each entry the engine found.
	dups []int
	// processed: the engine took the batch; stale: it is not current
	// (eventlog.Batch.Current), and goes nowhere.
	processed, stale bool
	// engine is the time the engine spent on the batch so far.
	engine time.Duration
	// results are the entries' acknowledgements, sent once the Batch sink
	// took each (read your writes); nil without Ack.
	results []eventlog.Result
	// sink: the batch is durable and goes to the sinks.
	sink bool
	// changes are the state changes the commit stored, for the sinks.
	changes []store.StateChange
	// backfilled are the indexes of the entries that held backfill
	// samples, for the Backfill sink.
	backfilled []int
	// cut is the event time (Unix ms) before which the batch's samples
	// are backfill, fixed when the batch is read (take); only with
	// Processor.Backfill.
	cut int64
	// span is the group's process span, nil when no entry is sampled;
	// feed ends it once the sinks took the group, processLane if they
	// do not.
	span trace.Span
}

func (r *round) output(i int) *stream.Output {
	for len(r.outs) <= i {
		r.outs = append(r.outs, &stream.Output{})
	}
	return r.outs[i]
}

func (r *round) reset() {
	for _, o := range r.outs {
		o.Reset()
	}
	clear(r.jobs)
	r.jobs = r.jobs[:0]
	r.done, r.tick, r.flush = nil, false, false
	clear(r.lanes)
	r.lanes = r.lanes[:0]
	r.ticked.Reset()
}

// take makes the jobs of a read and observes how long its entries waited
// in the log. On a durable log it also runs the engines on them, lanes in
// parallel, and shows their samples live, before any commit.
func (p *Processor) take(batches []eventlog.Batch, r *round) {
	now := time.Now().UnixMilli()
	cut := p.backfillCut(now)
	for i, b := range batches {
		r.jobs = append(r.jobs, job{batch: b, lane: p.lane(b.Lane), out: r.output(i), cut: cut})
		for _, e := range b.Entries {
			p.legs.LogWait.Observe(sinceMilli(now, e.Received))
		}
	}
	if !p.early {
		return // each group goes to the engine next to its commit
	}
	eachJob(r.jobs, p.processJob)
	for i := range r.jobs {
		j := &r.jobs[i]
		if j.stale {
			continue
		}
		if p.sinks.Live != nil {
			ctx, live := context.Background(), trace.Span(nil)
			if j.span != nil {
				ctx, live = p.tracer.Child(trace.ContextWithSpan(ctx, j.span), "live", trace.SpanKindInternal)
			}
			for k := j.batch.Shown; k < len(j.batch.Entries); k++ {
				lo, hi := j.bounds[k], j.bounds[k+1]
				e := j.batch.Entries[k]
				samples := j.out.Samples[lo:hi:hi]
				if p.backfill > 0 {
					if samples = p.withoutBackfill(samples, j.cut); len(samples) == 0 && hi > lo {
						continue // backfill alone: nothing to show
					}
				}
				p.sinks.Live(entryContext(ctx, live, e), e, samples)
			}
			if live != nil {
				live.End()
			}
		}
		if j.batch.OnShown != nil {
			j.batch.OnShown()
		}
	}
}

// eachJob runs f on every job, in parallel when there are several.
func eachJob(jobs []job, f func(*job)) {
	if len(jobs) == 1 {
		f(&jobs[0])
		return
	}
	var wg sync.WaitGroup
	for i := range jobs {
		wg.Go(func() { f(&jobs[i]) })
	}
	wg.Wait()
}

// sinceMilli returns the seconds from the Unix ms at to now (Unix ms), 0
// if at is later.
func sinceMilli(now, at int64) float64 { return float64(max(now-at, 0)) / 1000 }

// processJob runs the lane's engine on the batch, unless it is stale.
func (p *Processor) processJob(j *job) {
	b, ln, out := &j.batch, j.lane, j.out
	n := len(b.Entries)
	ints := make([]int, 3*n+2)
	j.bounds, j.keyBounds, j.dups = ints[:n+1:n+1], ints[n+1:2*n+2:2*n+2], ints[2*n+2:]
	ln.mu.Lock()
	defer ln.mu.Unlock()
	// Under the lane's lock: a commit of the lane that fails makes the
	// source's later batches stale, then forgets their keys under it too;
	// a batch found current here has its keys forgotten with them.
	if b.Current != nil && !b.Current() {
		j.stale = true
		return
	}
	_, j.span = p.startProcess(context.Background(), b)
	start := time.Now()
	for i, e := range b.Entries {
		j.dups[i] = ln.engine.Process(e.Events, out)
		j.bounds[i+1] = len(out.Samples)
		j.keyBounds[i+1] = len(out.Keys)
	}
	j.engine += time.Since(start)
	j.processed = true
}

// commitRound commits the lanes of a read in parallel, ends the read, and
// ticks or flushes the engines when due.
func (p *Processor) commitRound(ctx context.Context, r *round) {
	if len(r.jobs) > 0 {
		eachJob(r.jobs, func(j *job) { p.commitLane(ctx, j) })
	}
	if r.done != nil {
		r.done()
	}
	if !r.tick {
		return
	}
	now := time.Now().UnixMilli()
	for _, ln := range r.lanes {
		ln.mu.Lock()
		if r.flush {
			ln.engine.Flush(&r.ticked)
		} else {
			ln.engine.Tick(now, &r.ticked)
		}
		ln.mu.Unlock()
	}
}

// feed hands a round to the sinks, acknowledging each entry once the Batch
// sink took it.
func (p *Processor) feed(r *round) {
	for i := range r.jobs {
		j := &r.jobs[i]
		if !j.sink {
			continue
		}
		ctx, sinks := context.Background(), trace.Span(nil)
		if j.span != nil {
			ctx, sinks = p.tracer.Child(trace.ContextWithSpan(ctx, j.span), "sinks", trace.SpanKindInternal)
		}
		for k, e := range j.batch.Entries {
			lo, hi := j.bounds[k], j.bounds[k+1]
			if !p.early && p.sinks.Live != nil {
				p.sinks.Live(entryContext(ctx, sinks, e), e, j.out.Samples[lo:hi:hi])
			}
			if p.sinks.Batch != nil {
				p.sinks.Batch(e, j.out.Samples[lo:hi:hi])
			}
			if len(j.backfilled) > 0 && j.backfilled[0] == k {
				j.backfilled = j.backfilled[1:]
				if p.sinks.Backfill != nil {
					p.sinks.Backfill(e)
				}
			}
			if j.results != nil {
				j.batch.Ack(k, j.results[k], nil)
			}
		}
		if p.stateSink != nil && len(j.changes) > 0 {
			p.stateSink(j.changes)
		}
		p.group(j.out)
		if j.span != nil {
			sinks.End()
			j.span.End()
		}
	}
	p.group(&r.ticked)
}

// entryContext is the context the Batch sink gets for entry e of a group
// whose sinks span is sinks (nil: the group is not traced): that span's
// for an entry of its trace, the entry's own span context for a sampled
// entry of another trace (the process span links to it), so that each
// sampled trace goes on to the live stream; none for the others.
func entryContext(ctx context.Context, sinks trace.Span, e *telemetry.Batch) context.Context {
	switch {
	case sinks == nil || !e.Trace.IsSampled():
		return context.Background()
	case e.Trace.TraceID() == sinks.SpanContext().TraceID():
		return ctx
	default:
		return trace.ContextWithSpanContext(context.Background(), e.Trace)
	}
}

// startProcess starts the process span of a group with a sampled entry,
// and returns ctx with it; otherwise ctx and nil.
func (p *Processor) startProcess(ctx context.Context, b *eventlog.Batch) (context.Context, trace.Span) {
	if p.tracer == nil {
		return ctx, nil
	}
	first := slices.IndexFunc(b.Entries, func(e *telemetry.Batch) bool { return e.Trace.IsSampled() })
	if first < 0 {
		return ctx, nil
	}
	parent := b.Entries[first].Trace
	var links []trace.Link
	last := parent
	for _, e := range b.Entries[first+1:] {
		// Entries of one request or one producer span come in runs: link
		// each span context once.
		if sc := e.Trace; sc.IsSampled() && !sc.Equal(last) && !sc.Equal(parent) {
			links = append(links, trace.Link{SpanContext: sc})
			last = sc
		}
	}
	ctx, span := p.tracer.ChildOf(ctx, parent, "process", trace.SpanKindConsumer, links...)
	if !span.IsRecording() {
		return ctx, nil
	}
	span.SetAttributes(p.processAttrs...)
	span.SetAttributes(attribute.Int("messaging.batch.message_count", len(b.Entries)),
		attribute.String("messaging.destination.partition.id", strconv.Itoa(int(b.Lane))))
	return ctx, span
}

func (p *Processor) group(out *stream.Output) {
	for _, w := range out.Windows {
		p.windows.WithLabelValues(w.Kind.String()).Inc()
	}
	if p.sinks.Group != nil && (len(out.Released) > 0 || len(out.Windows) > 0) {
		p.sinks.Group(out.Released, out.Windows)
	}
}

// commitLane commits the batch's new samples (running the engine on it
// first, unless it did already). j.sink reports whether the batch goes on
// to the sinks.
func (p *Processor) commitLane(ctx context.Context, j *job) {
	if !j.processed && !j.stale {
		p.processJob(j)
	}
	b, ln, out := &j.batch, j.lane, j.out
	if j.span != nil {
		ctx = trace.ContextWithSpan(ctx, j.span)
		defer func() {
			if !j.sink { // failed or stale: the sinks will not end it
				j.span.End()
				j.span = nil
			}
		}()
	}
	if j.stale || b.Current != nil && !b.Current() {
		// A commit of the lane failed after the batch was read: its keys
		// were forgotten then, and the source reads its records again.
		j.stale = true
		return
	}
	samples := out.Samples
	var fresh []bool
	if p.engineCfg.StoreDedups {
		fresh = slices.Grow(ln.fresh[:0], len(samples))[:len(samples)]
		clear(fresh)
		ln.fresh = fresh
	}
	start := time.Now()
	cctx, commit := p.tracer.Child(ctx, "store commit", trace.SpanKindClient)
	if commit.IsRecording() {
		commit.SetAttributes(p.commitAttrs...)
		commit.SetAttributes(attribute.Int("db.operation.batch.size", len(samples)))
	}
	var err error
	if p.stateStore != nil {
		// Before the samples: a failure fails the commit, and the retry
		// appends again (idempotent).
		j.changes, err = p.groupStates(cctx, j)
	}
	if err == nil {
		err = b.Commit(cctx, samples, fresh)
	}
	took := time.Since(start).Seconds()
	if j.span != nil {
		// A traced group: its trace is the commit histograms' exemplar.
		ex := prometheus.Labels{"trace_id": j.span.SpanContext().TraceID().String()}
		observeWithExemplar(p.writeSeconds, took, ex)
		observeWithExemplar(p.legs.StoreCommit, took, ex)
	} else {
		p.writeSeconds.Observe(took)
		p.legs.StoreCommit.Observe(took)
	}
	if j.span != nil {
		if err != nil {
			commit.RecordError(err)
			commit.SetStatus(codes.Error, "commit failed")
			j.span.SetStatus(codes.Error, "commit failed")
		}
		j.span.SetAttributes(attribute.Int("twinline.samples", len(samples)))
		commit.End()
	}
	if err == nil && p.journal != nil && len(out.Keys) > 0 {
		// After the commit, not alongside it: a key journaled for samples
		// that were not stored would make the client's retry a duplicate,
		// and lose it. A failure here loses nothing acknowledged: the
		// samples are stored; a retry with another event time after a
		// restart could be stored again.
		p.journalKeys(out.Keys)
	}
	ack := func(i int, res eventlog.Result, err error) {
		if b.Ack != nil {
			b.Ack(i, res, err)
		}
	}
	switch {
	case err == nil:
		now := time.Now().UnixMilli()
		p.samples.WithLabelValues("stored").Add(float64(len(samples)))
		if p.engineCfg.StoreDedups {
			keepFresh(out, j.bounds, fresh, j.dups)
		}
		if p.backfill > 0 {
			// Stored: the backfill goes no further.
			if n := dropBackfill(out, j.bounds, j.cut, &j.backfilled); n > 0 {
				p.backfilled.Add(float64(n))
			}
		}
		if b.Ack != nil {
			j.results = make([]eventlog.Result, len(b.Entries))
		}
		for i, e := range b.Entries {
			p.duplicates.Add(float64(j.dups[i]))
			p.observeDurable(now, e)
			if j.results != nil {
				j.results[i] = eventlog.Result{Accepted: len(e.Events) - j.dups[i], Duplicates: j.dups[i]}
			}
		}
		// Durable: now the event-time stages may take the samples.
		ln.mu.Lock()
		start := time.Now()
		ln.engine.Release(out, now)
		j.engine += time.Since(start)
		ln.mu.Unlock()
		p.legs.Engine.Observe(j.engine.Seconds())
		j.sink = true
		return
	case errors.Is(err, store.ErrFenced):
		// Another consumer owns the lane now, or did meanwhile: what the
		// engine holds may be stale. The source rewinds to the stored
		// offset.
		p.logger.WarnContext(ctx, "lane taken over by another consumer; its engine starts afresh", "lane", b.Lane, "err", err)
		for i := range b.Entries {
			ack(i, eventlog.Result{}, fmt.Errorf("storing samples: %w", err))
		}
		ln.mu.Lock()
		p.reset(ln)
		ln.mu.Unlock()
		return
	case errors.Is(err, store.ErrOutOfBounds):
		p.logger.WarnContext(ctx, "storing samples", "lane", b.Lane, "err", err)
		p.attributeOutOfBounds(ctx, j, fresh, err)
		return
	default:
		p.samples.WithLabelValues("error").Add(float64(len(samples)))
		p.logger.ErrorContext(ctx, "storing samples", "lane", b.Lane, "err", err, "samples", len(samples))
		for i := range b.Entries {
			ack(i, eventlog.Result{}, fmt.Errorf("storing samples: %w", err))
		}
	}
	// Some samples were not stored, but the engine remembered their keys:
	// forget them so a retry is not taken for a duplicate (the store's own
	// (series, time) key keeps what was stored from counting twice), with
	// those of the lane's groups processed since, which the source reads
	// again (they are stale now). The group does not go on to the
	// event-time stages nor the sinks.
	ln.mu.Lock()
	ln.engine.Forget()
	ln.mu.Unlock()
}

// journalKeys hands keys to the journal, serialising the lanes' commits; a
// failure is logged: the samples are stored already.
func (p *Processor) journalKeys(keys []stream.Key) {
	p.journalMu.Lock()
	err := p.journal(keys)
	p.journalMu.Unlock()
	if err != nil {
		p.logger.Error("journaling dedup keys", "err", err, "keys", len(keys))
	}
}

// attributeOutOfBounds acknowledges the entries of a group the store kept
// only in part (store.ErrOutOfBounds): those that lost samples with the
// error, the others normally. With more than one entry, and a source that
// can append without committing, it finds them by appending each entry
// again: what is stored already is an idempotent duplicate.
//
// The engine forgets the group's keys but for those of the events whose
// samples are stored (every event of an entry found whole, else those with
// a sample the store reported fresh): they are journaled and remembered, so
// that a retry of one, stamped with another time, is not stored twice.
func (p *Processor) attributeOutOfBounds(ctx context.Context, j *job, fresh []bool, cause error) {
	b, out, dups := &j.batch, j.out, j.dups
	samples := out.Samples
	secondLook := len(b.Entries) > 1 && b.Append != nil
	errs := make([]error, len(b.Entries))
	var kept []stream.Key
	var again []bool // the first attempt's fresh flags are the ones that count
	for i, e := range b.Entries {
		lo, hi := j.bounds[i], j.bounds[i+1]
		errs[i] = cause
		if secondLook {
			if fresh != nil {
				again = make([]bool, hi-lo)
			}
			errs[i] = b.Append(ctx, samples[lo:hi], again)
			if errs[i] == nil && fresh != nil {
				// Stored by either attempt (the store's time window may
				// have moved between them).
				for k := range again {
					fresh[lo+k] = fresh[lo+k] || again[k]
				}
			}
		}
		keys := out.Keys[j.keyBounds[i]:j.keyBounds[i+1]]
		switch {
		case errs[i] == nil:
			kept = append(kept, keys...)
		case fresh != nil:
			kept = storedKeys(kept, e.Events, keys, out.Origin[lo:hi], fresh[lo:hi])
		}
	}
	if len(kept) > 0 && p.journal != nil {
		p.journalKeys(kept)
	}
	// The lane's groups processed since are not stale (the offset moved):
	// only this group's keys go.
	j.lane.mu.Lock()
	j.lane.engine.ForgetGroup(out.Keys)
	j.lane.engine.Remember(kept)
	j.lane.mu.Unlock()
	now := time.Now().UnixMilli()
	for i, e := range b.Entries {
		lo, hi := j.bounds[i], j.bounds[i+1]
		if errs[i] != nil {
			p.samples.WithLabelValues("rejected").Add(float64(hi - lo))
			if b.Ack != nil {
				b.Ack(i, eventlog.Result{}, fmt.Errorf("storing samples: %w", errs[i]))
			}
			continue
		}
		p.samples.WithLabelValues("stored").Add(float64(hi - lo))
		p.observeDurable(now, e)
		if fresh != nil {
			_, d := stream.KeepFresh(samples[lo:hi], out.Origin[lo:hi], fresh[lo:hi])
			dups[i] += d
		}
		p.duplicates.Add(float64(dups[i]))
		if b.Ack != nil {
			b.Ack(i, eventlog.Result{Accepted: len(e.Events) - dups[i], Duplicates: dups[i]}, nil)
		}
	}
}

// storedKeys appends to dst those of keys (the keys of one entry's new
// keyed events, in event order) whose event has a sample the store
// reported fresh (origin and fresh: the entry's samples').
func storedKeys(dst []stream.Key, events []telemetry.Event, keys []stream.Key, origin []int32, fresh []bool) []stream.Key {
	ev, s := 0, 0
	for _, k := range keys {
		// k's event: the first with its key and time (the engine gave no
		// key to the duplicates among them).
		for ev < len(events) && !hasKey(&events[ev], k) {
			ev++
		}
		if ev == len(events) {
			break
		}
		for s < len(origin) && int(origin[s]) < ev {
			s++
		}
		stored := false
		for ; s < len(origin) && int(origin[s]) == ev; s++ {
			stored = stored || fresh[s]
		}
		if stored {
			dst = append(dst, k)
		}
		ev++
	}
	return dst
}

// hasKey reports whether k is the key of ev.
func hasKey(ev *telemetry.Event, k stream.Key) bool {
	return ev.Machine == k.Machine && ev.ID == k.ID && ev.HasSeq == k.HasSeq && ev.Seq == k.Seq && ev.Time == k.Time
}

// keepFresh drops from the group the samples the store held already (they
// alone go on to the event-time stages and the sinks), updating each
// entry's bounds, and adds the events that were duplicates as a whole to
// dups.
func keepFresh(out *stream.Output, bounds []int, fresh []bool, dups []int) {
	w, lo := 0, bounds[0]
	for i := range dups {
		hi := bounds[i+1] // bounds[i+1] is rewritten below: read it first
		n, d := stream.KeepFresh(out.Samples[lo:hi], out.Origin[lo:hi], fresh[lo:hi])
		if w != lo {
			copy(out.Samples[w:], out.Samples[lo:lo+n])
			copy(out.Origin[w:], out.Origin[lo:lo+n])
		}
		dups[i] += d
		bounds[i], bounds[i+1] = w, w+n
		w, lo = w+n, hi
	}
	out.Samples, out.Origin = out.Samples[:w], out.Origin[:w]
}

// withoutBackfill returns samples without those before cut (backfill),
// copied into the processor's scratch when there are some: the Live sink
// keeps no slice. Run's goroutine calls it.
func (p *Processor) withoutBackfill(samples []telemetry.Sample, cut int64) []telemetry.Sample {
	first := slices.IndexFunc(samples, func(s telemetry.Sample) bool { return s.Time < cut })
	if first < 0 {
		return samples
	}
	live := append(p.liveScratch[:0], samples[:first]...)
	for _, s := range samples[first+1:] {
		if s.Time >= cut {
			live = append(live, s)
		}
	}
	p.liveScratch = live
	return live
}

// dropBackfill drops from the group the samples before cut (backfill: they
// are stored and go no further), updating each entry's bounds, appends to
// entries the index of each entry that lost some, and returns how many it
// dropped.
func dropBackfill(out *stream.Output, bounds []int, cut int64, entries *[]int) int {
	if !slices.ContainsFunc(out.Samples, func(s telemetry.Sample) bool { return s.Time < cut }) {
		return 0 // the common case: nothing moves
	}
	origin := len(out.Origin) == len(out.Samples)
	w, lo := 0, bounds[0]
	for i := 0; i+1 < len(bounds); i++ {
		hi := bounds[i+1] // rewritten by the next round: read it first
		bounds[i] = w
		had := false
		for k := lo; k < hi; k++ {
			if out.Samples[k].Time < cut {
				if !had {
					had = true
					*entries = append(*entries, i)
				}
				continue
			}
			out.Samples[w] = out.Samples[k]
			if origin {
				out.Origin[w] = out.Origin[k]
			}
			w++
		}
		lo = hi
	}
	n := len(out.Samples) - w
	bounds[len(bounds)-1] = w
	out.Samples = out.Samples[:w]
	if origin {
		out.Origin = out.Origin[:w]
	}
	return n
}

// observeDurable observes an entry's ingest → durable time at now (Unix
// ms), with its trace as the exemplar when it is sampled.
func (p *Processor) observeDurable(now int64, e *telemetry.Batch) {
	v := sinceMilli(now, e.Received)
	if e.Trace.IsSampled() {
		observeWithExemplar(p.durable, v, prometheus.Labels{"trace_id": e.Trace.TraceID().String()})
		return
	}
	p.durable.Observe(v)
}

// observeWithExemplar observes v in o with the exemplar ex where o keeps
// exemplars (Prometheus histograms do; they show in OpenMetrics).
func observeWithExemplar(o prometheus.Observer, v float64, ex prometheus.Labels) {
	if eo, ok := o.(prometheus.ExemplarObserver); ok {
		eo.ObserveWithExemplar(v, ex)
		return
	}
	o.Observe(v)
}
