package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// Processor reads a Source, runs an event-time engine per lane, commits
// each lane's new samples, then feeds the sinks and acknowledges. See the
// package documentation for its rules.
type Processor struct {
	src       Source
	engineCfg stream.EngineConfig
	sinks     Sinks
	logger    *slog.Logger

	// lanes are the engines, by lane; only Run's goroutine touches them.
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
	samples      *prometheus.CounterVec
	duplicates   prometheus.Counter
	windows      *prometheus.CounterVec
}

// lane is one lane's engine and scratch.
type lane struct {
	engine *stream.Engine
	fresh  []bool
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
		lanes:     map[int32]*lane{},
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "twinline_store_write_seconds",
			Help:        "Latency of one durable commit to the store (under Kafka: samples, aggregates and offset of one partition).",
			Buckets:     prometheus.ExponentialBuckets(0.0001, 2, 16),
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
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{p.writeSeconds, p.samples, p.duplicates, p.windows} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("registering processor metrics: %w", err)
			}
		}
	}
	return p, nil
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
	for _, ln := range p.lanes {
		for _, id := range ids {
			ln.engine.ForgetMachine(id)
		}
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

// reset gives ln a new engine, which remembers the journaled keys.
func (p *Processor) reset(ln *lane) {
	ln.engine = stream.NewEngine(p.engineCfg)
	ln.engine.Remember(p.remembered)
}

// Run processes the source until its log is closed and drained (then it
// flushes the engines to the group sink and returns nil) or ctx ends (then
// it finishes the commits in flight, given up to commitGrace, and returns
// ctx's error; what was not committed stays unacknowledged, or in Kafka).
// It closes the source when it returns.
//
// Committing and feeding the sinks overlap: while the sinks take the
// output of read N, read N+1 is processed into the other of two rounds of
// outputs and committed.
func (p *Processor) Run(ctx context.Context) (err error) {
	defer func() {
		if cerr := p.src.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing the event log source: %w", cerr))
		}
	}()
	jobs := make(chan *round, 1)
	free := make(chan *round, 2)
	free <- &round{}
	free <- &round{}
	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		for r := range jobs {
			p.feed(r)
			free <- r
		}
	}()
	defer func() {
		close(jobs)
		<-sinkDone
	}()
	// Commits outlive ctx for a while: stopping, Run finishes the commit
	// in flight instead of rolling it back (and Kafka redoing it).
	commitCtx, stopCommits := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCommits()
	defer context.AfterFunc(ctx, func() {
		grace := time.AfterFunc(commitGrace, stopCommits)
		context.AfterFunc(commitCtx, func() { grace.Stop() }) // Run returned
	})()
	lastTick := time.Now()
	for {
		// Taken before the read: the sinks hold at most the previous
		// read's batches while this one is read, as Source promises.
		r := <-free
		r.reset()
		rctx, cancel := context.WithTimeout(ctx, tickInterval)
		read, err := p.src.Read(rctx)
		cancel()
		p.forgetMachines()
		for _, id := range read.Dropped {
			delete(p.lanes, id)
		}
		if err == nil {
			p.process(commitCtx, read.Batches, r)
		}
		if read.Done != nil {
			read.Done()
		}
		if now := time.Now(); now.Sub(lastTick) >= tickInterval {
			lastTick = now
			for _, ln := range p.lanes {
				ln.engine.Tick(now.UnixMilli(), &r.tick)
			}
		}
		eof := errors.Is(err, io.EOF) && ctx.Err() == nil
		if eof {
			for _, ln := range p.lanes {
				ln.engine.Flush(&r.tick)
			}
		}
		if r.busy() {
			jobs <- r
		} else {
			free <- r
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

// round is the output of one read, on its way to the sinks.
type round struct {
	jobs []job
	outs []*stream.Output // jobs[i].out is outs[i]
	tick stream.Output    // what Tick and Flush released
}

// job is one lane's batch of a read.
type job struct {
	batch  eventlog.Batch
	lane   *lane
	out    *stream.Output
	bounds []int // entry i's samples are out.Samples[bounds[i]:bounds[i+1]]
	// keyBounds: entry i's keys are out.Keys[keyBounds[i]:keyBounds[i+1]].
	keyBounds []int
	// results are the entries' acknowledgements, sent once the Batch sink
	// took each (read your writes); nil without Ack.
	results []eventlog.Result
	// sink: the batch is durable and goes to the sinks.
	sink bool
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

// busy reports whether the round has anything for the sinks.
func (r *round) busy() bool {
	for i := range r.jobs {
		if r.jobs[i].sink {
			return true
		}
	}
	return len(r.tick.Released) > 0 || len(r.tick.Windows) > 0
}

func (r *round) reset() {
	for _, o := range r.outs {
		o.Reset()
	}
	clear(r.jobs)
	r.jobs = r.jobs[:0]
	r.tick.Reset()
}

// process runs the engines on the batches and commits them, lanes in
// parallel.
func (p *Processor) process(ctx context.Context, batches []eventlog.Batch, r *round) {
	for i, b := range batches {
		r.jobs = append(r.jobs, job{batch: b, lane: p.lane(b.Lane), out: r.output(i)})
	}
	if len(r.jobs) == 1 {
		p.processLane(ctx, &r.jobs[0])
		return
	}
	var wg sync.WaitGroup
	for i := range r.jobs {
		wg.Go(func() { p.processLane(ctx, &r.jobs[i]) })
	}
	wg.Wait()
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
			if p.sinks.Batch != nil {
				lo, hi := j.bounds[k], j.bounds[k+1]
				p.sinks.Batch(entryContext(ctx, sinks, e), e, j.out.Samples[lo:hi:hi])
			}
			if j.results != nil {
				j.batch.Ack(k, j.results[k], nil)
			}
		}
		p.group(j.out)
		if j.span != nil {
			sinks.End()
			j.span.End()
		}
	}
	p.group(&r.tick)
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

// processLane runs the lane's engine on the batch and commits its new
// samples. j.sink reports whether the batch goes on to the sinks.
func (p *Processor) processLane(ctx context.Context, j *job) {
	b, ln, out := &j.batch, j.lane, j.out
	ctx, j.span = p.startProcess(ctx, b)
	if j.span != nil {
		defer func() {
			if !j.sink { // failed: the sinks will not end it
				j.span.End()
				j.span = nil
			}
		}()
	}
	n := len(b.Entries)
	ints := make([]int, 3*n+2)
	j.bounds, j.keyBounds = ints[:n+1:n+1], ints[n+1:2*n+2:2*n+2]
	dups := ints[2*n+2:]
	for i, e := range b.Entries {
		dups[i] = ln.engine.Process(e.Events, out)
		j.bounds[i+1] = len(out.Samples)
		j.keyBounds[i+1] = len(out.Keys)
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
	err := b.Commit(cctx, samples, fresh)
	p.writeSeconds.Observe(time.Since(start).Seconds())
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
		p.samples.WithLabelValues("stored").Add(float64(len(samples)))
		if p.engineCfg.StoreDedups {
			keepFresh(out, j.bounds, fresh, dups)
		}
		if b.Ack != nil {
			j.results = make([]eventlog.Result, len(b.Entries))
		}
		for i, e := range b.Entries {
			p.duplicates.Add(float64(dups[i]))
			if j.results != nil {
				j.results[i] = eventlog.Result{Accepted: len(e.Events) - dups[i], Duplicates: dups[i]}
			}
		}
		// Durable: now the event-time stages may take the samples.
		ln.engine.Release(out, time.Now().UnixMilli())
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
		p.reset(ln)
		return
	case errors.Is(err, store.ErrOutOfBounds):
		p.logger.WarnContext(ctx, "storing samples", "lane", b.Lane, "err", err)
		p.attributeOutOfBounds(ctx, j, fresh, dups, err)
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
	// (series, time) key keeps what was stored from counting twice). The
	// group does not go on to the event-time stages nor the sinks.
	ln.engine.Forget()
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
func (p *Processor) attributeOutOfBounds(ctx context.Context, j *job, fresh []bool, dups []int, cause error) {
	b, out := &j.batch, j.out
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
	j.lane.engine.Forget()
	j.lane.engine.Remember(kept)
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
