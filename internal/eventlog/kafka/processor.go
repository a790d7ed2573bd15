package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// tickInterval is how often the engines' watermarks follow the server
// clock (stream.Engine.Tick), busy or idle.
const tickInterval = time.Second

// maxBackoff bounds the pause after a failed commit.
const maxBackoff = 2 * time.Second

// Processor consumes the topic as a member of a consumer group: per
// assigned partition it runs its own stream.Engine, and stores each polled
// group of records' new samples together with the partition's next offset
// in one TxStore transaction, then feeds the sinks.
//
// Polls and rebalances exclude each other (kgo.BlockRebalanceOnPoll): a
// partition is revoked only between two polls, when none of its work is in
// flight, so nothing is written for it after the revocation returned. A
// processor that lost its partitions without knowing it (a zombie after a
// session timeout) is stopped by the store: its commit expects the offset it
// read, which the new owner has moved.
type Processor struct {
	brokers   []string
	topic     string
	group     string
	store     TxStore
	engineCfg stream.EngineConfig
	sinks     stream.Sinks
	logger    *slog.Logger
	opts      options

	client atomic.Pointer[kgo.Client]
	ready  readiness

	mu    sync.Mutex
	parts map[int32]*partition

	// forget are the machines ForgetMachine was told of, for the polling
	// goroutine (which owns the engines) to drop.
	forgetMu sync.Mutex
	forget   []string

	lag          *prometheus.GaugeVec
	consumed     prometheus.Counter
	bad          prometheus.Counter
	commitSecond prometheus.Histogram
	commits      *prometheus.CounterVec
	samples      *prometheus.CounterVec
	duplicates   prometheus.Counter
}

// partition is the state of one assigned partition. Only the polling
// goroutine touches its fields after it is created (a poll and the
// rebalance callbacks exclude each other).
type partition struct {
	id     int32
	engine *stream.Engine
	// next is the first offset not yet stored (-1: from the log start);
	// records below it are skipped.
	next int64
	// stored is the partition's stored offset as this processor last read
	// or wrote it (-1: none): a commit expects it.
	stored int64

	out    stream.Output
	events []telemetry.Event
	batch  telemetry.Batch

	// Results of the last poll.
	sink   bool  // out and batch go to the sinks
	rewind int64 // >= 0: fetch again from this offset
}

// NewProcessor returns a processor of topic in consumer group, storing into
// st and feeding sinks (whose functions may be nil; they are called from one
// goroutine). reg may be nil. Run starts it.
func NewProcessor(brokers []string, topic, group string, st TxStore, engineCfg stream.EngineConfig, sinks stream.Sinks, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Processor, error) {
	switch {
	case len(brokers) == 0:
		return nil, errors.New("creating kafka processor: no brokers")
	case topic == "":
		return nil, errors.New("creating kafka processor: no topic")
	case group == "":
		return nil, errors.New("creating kafka processor: no consumer group")
	case st == nil:
		return nil, errors.New("creating kafka processor: no store")
	}
	o := buildOptions(opts)
	p := &Processor{
		brokers:   brokers,
		topic:     topic,
		group:     group,
		store:     st,
		engineCfg: engineCfg,
		sinks:     sinks,
		logger:    orDiscard(logger).With("component", "kafka_processor", "topic", topic, "group", group),
		opts:      o,
		ready:     readiness{period: o.readyPeriod},
		parts:     map[int32]*partition{},
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "twinline_kafka_consumer_lag_records",
			Help: "Records of an assigned partition not yet stored: high watermark minus next offset.",
		}, []string{"partition"}),
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_kafka_consumed_records_total",
			Help: "Records consumed from Kafka (stored, or skipped as bad).",
		}),
		bad: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_kafka_bad_records_total",
			Help: "Records skipped (wholly or in part) because they do not hold valid events.",
		}),
		commitSecond: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_kafka_commit_seconds",
			Help:    "Latency of one transaction storing a partition's samples and offset.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_kafka_commits_total",
			Help: "Sample and offset transactions, by outcome (ok, fenced, error).",
		}, []string{"outcome"}),
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_kafka_processed_samples_total",
			Help: "Samples from Kafka, by outcome (stored: new after deduplication, committed).",
		}, []string{"outcome"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_kafka_duplicate_events_total",
			Help: "Events from Kafka recognised as duplicates and not stored again.",
		}),
	}
	if reg != nil {
		if err := register(reg, p.lag, p.consumed, p.bad, p.commitSecond, p.commits, p.samples, p.duplicates); err != nil {
			return nil, fmt.Errorf("creating kafka processor: %w", err)
		}
	}
	return p, nil
}

// Ready reports whether Run is running and a broker answers (cached for
// the ready period).
func (p *Processor) Ready() error {
	cl := p.client.Load()
	if cl == nil {
		return ErrNotRunning
	}
	return p.ready.check(cl)
}

// Assigned returns the partitions this processor owns now, for tests and
// diagnostics.
func (p *Processor) Assigned() []int32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int32, 0, len(p.parts))
	for id := range p.parts {
		out = append(out, id)
	}
	return out
}

// Run joins the group and processes until ctx ends, then leaves the group
// and returns ctx's error. Records polled and not yet stored are simply
// consumed again by the next owner: nothing is acknowledged before it is
// stored.
func (p *Processor) Run(ctx context.Context) error {
	kopts := p.opts.clientOptions(
		kgo.SeedBrokers(p.brokers...),
		kgo.ConsumerGroup(p.group),
		kgo.ConsumeTopics(p.topic),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(p.assigned),
		kgo.AdjustFetchOffsetsFn(p.adjust),
		kgo.OnPartitionsRevoked(p.revoked),
		kgo.OnPartitionsLost(p.revoked),
		kgo.WithLogger(kgoLogger{p.logger}),
	)
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return fmt.Errorf("creating kafka consumer: %w", err)
	}
	if !p.client.CompareAndSwap(nil, cl) {
		cl.Close()
		return errors.New("running kafka processor: already running")
	}
	defer func() {
		cl.AllowRebalance()
		cl.Close() // leaves the group: the revoke callback drops every partition
		p.client.Store(nil)
	}()

	lastTick := time.Now()
	var backoff time.Duration
	for {
		if backoff > 0 {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		pctx, cancel := context.WithTimeout(ctx, tickInterval)
		fetches := cl.PollRecords(pctx, p.opts.maxPoll)
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		if fetches.IsClientClosed() {
			return errors.New("running kafka processor: client closed")
		}
		fetches.EachError(func(topic string, part int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return
			}
			p.logger.Warn("fetching records", "partition", part, "err", err)
		})
		p.forgetMachines()
		failed := p.process(ctx, cl, fetches)
		if now := time.Now(); now.Sub(lastTick) >= tickInterval {
			lastTick = now
			p.tick(now.UnixMilli())
		}
		cl.AllowRebalance()
		if failed {
			backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
		} else {
			backoff = 0
		}
	}
}

// ForgetMachine makes Run drop every partition engine's state of a
// machine deleted from the registry, before it processes the next records
// it polled. It is safe to call from any goroutine.
func (p *Processor) ForgetMachine(machine string) {
	p.forgetMu.Lock()
	defer p.forgetMu.Unlock()
	p.forget = append(p.forget, machine)
}

// forgetMachines applies ForgetMachine to every assigned partition's
// engine (a machine's records are in one partition, but which one is the
// producer's choice); the polling goroutine calls it between a poll and
// its processing, when no partition work is in flight.
func (p *Processor) forgetMachines() {
	p.forgetMu.Lock()
	ids := p.forget
	p.forget = nil
	p.forgetMu.Unlock()
	if len(ids) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ps := range p.parts {
		for _, id := range ids {
			ps.engine.ForgetMachine(id)
		}
	}
}

// work is the records of one partition in one poll.
type work struct {
	ps   *partition
	recs []*kgo.Record
	hwm  int64
}

// process stores the polled records, partitions in parallel, then feeds the
// sinks and seeks the partitions that must be consumed again. It reports
// whether a commit failed.
func (p *Processor) process(ctx context.Context, cl *kgo.Client, fetches kgo.Fetches) (failed bool) {
	var works []work
	p.mu.Lock()
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if ftp.Topic != p.topic {
			return
		}
		ps := p.parts[ftp.Partition]
		if ps == nil {
			return // not (or no longer) ours
		}
		for i := range works {
			if works[i].ps == ps {
				works[i].recs = append(works[i].recs, ftp.Records...)
				works[i].hwm = max(works[i].hwm, ftp.HighWatermark)
				return
			}
		}
		works = append(works, work{ps: ps, recs: ftp.Records, hwm: ftp.HighWatermark})
	})
	p.mu.Unlock()
	if len(works) == 0 {
		return false
	}
	if len(works) == 1 {
		p.processPartition(ctx, works[0])
	} else {
		var wg sync.WaitGroup
		for _, w := range works {
			wg.Go(func() { p.processPartition(ctx, w) })
		}
		wg.Wait()
	}
	var seek map[int32]kgo.EpochOffset
	for _, w := range works {
		ps := w.ps
		if ps.sink {
			p.feed(ps)
		}
		if ps.rewind >= 0 {
			failed = true
			if seek == nil {
				seek = map[int32]kgo.EpochOffset{}
			}
			seek[ps.id] = kgo.EpochOffset{Epoch: -1, Offset: ps.rewind}
		}
	}
	if seek != nil {
		// From the polling goroutine before AllowRebalance, as kgo asks.
		cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{p.topic: seek})
	}
	return failed
}

// processPartition decodes one partition's records, runs its engine and
// stores the new samples with the next offset.
func (p *Processor) processPartition(ctx context.Context, w work) {
	ps := w.ps
	ps.sink, ps.rewind = false, -1
	ps.out.Reset()
	clear(ps.events)
	ps.events = ps.events[:0]
	first, last := int64(-1), int64(-1)
	n, bad := 0, 0
	for _, r := range w.recs {
		if r.Offset < ps.next {
			continue // stored already (a fetch from before a seek)
		}
		if first < 0 {
			first = r.Offset
		}
		last = r.Offset
		n++
		opts := p.opts.decode
		opts.Now = r.Timestamp.UnixMilli()
		events, rejects, err := ingest.DecodeJSON(r.Value, opts, ps.events)
		ps.events = events
		switch {
		case err != nil:
			bad++
			p.logger.Warn("skipping bad record", "partition", ps.id, "offset", r.Offset, "key", keyText(r.Key), "err", err)
		case len(rejects) > 0:
			bad++
			p.logger.Warn("skipping bad events of a record", "partition", ps.id, "offset", r.Offset, "key", keyText(r.Key),
				"rejected", len(rejects), "reason", rejects[0].String())
		}
	}
	if last < 0 {
		return // nothing new
	}
	dups := ps.engine.Process(ps.events, &ps.out)
	next := last + 1
	start := time.Now()
	err := p.store.AppendWithOffsets(ctx, ps.out.Samples, p.group, p.topic, ps.id, next, ps.stored)
	p.commitSecond.Observe(time.Since(start).Seconds())
	switch {
	case err == nil || errors.Is(err, store.ErrOutOfBounds):
		if err != nil {
			// The offset moved with the others: these samples are lost to
			// the store's window, as the in-process log would lose them.
			p.logger.Warn("storing samples", "partition", ps.id, "err", err)
		}
		p.commits.WithLabelValues("ok").Inc()
		p.consumed.Add(float64(n))
		p.bad.Add(float64(bad))
		p.duplicates.Add(float64(dups))
		p.samples.WithLabelValues("stored").Add(float64(len(ps.out.Samples)))
		ps.stored, ps.next = next, next
		p.lag.WithLabelValues(partLabel(ps.id)).Set(float64(max(w.hwm-next, 0)))
		now := time.Now().UnixMilli()
		ps.engine.Release(&ps.out, now)
		ps.batch = telemetry.Batch{Events: ps.events, Protocol: "kafka", Received: now}
		ps.sink = true
	case errors.Is(err, ErrFenced):
		p.commits.WithLabelValues("fenced").Inc()
		p.refence(ctx, ps, first)
	default:
		p.commits.WithLabelValues("error").Inc()
		p.logger.Error("storing samples and offset", "partition", ps.id, "offset", first, "records", n, "err", err)
		// Not stored: consume the records again, and forget their keys so
		// they are not taken for duplicates of themselves.
		ps.engine.Forget()
		ps.rewind = first
		if ps.next >= 0 {
			ps.rewind = ps.next
		}
	}
}

// refence reloads the partition's stored offset after a fenced commit: some
// other processor stored past what this one read. The engine restarts
// empty and consumption resumes from the stored offset.
func (p *Processor) refence(ctx context.Context, ps *partition, first int64) {
	ps.engine = stream.NewEngine(p.engineCfg)
	offs, err := p.store.Offsets(ctx, p.group, p.topic)
	if err != nil {
		p.logger.Error("reading stored offsets after a fenced commit", "partition", ps.id, "err", err)
		ps.rewind = first
		if ps.next >= 0 {
			ps.rewind = ps.next
		}
		return
	}
	off, ok := offs[ps.id]
	if !ok {
		off = -1
	}
	p.logger.Warn("partition offset moved by another processor; resuming from the stored offset",
		"partition", ps.id, "expected", ps.stored, "stored", off)
	ps.stored, ps.next = off, off
	ps.rewind = first
	if off >= 0 {
		ps.rewind = off
	}
}

// feed hands a stored group to the sinks.
func (p *Processor) feed(ps *partition) {
	if p.sinks.Batch != nil && len(ps.batch.Events) > 0 {
		p.sinks.Batch(&ps.batch, ps.out.Samples[:len(ps.out.Samples):len(ps.out.Samples)])
	}
	if p.sinks.Group != nil && (len(ps.out.Released) > 0 || len(ps.out.Windows) > 0) {
		p.sinks.Group(ps.out.Released, ps.out.Windows)
	}
	ps.batch = telemetry.Batch{}
}

// tick lets every engine's watermarks follow the server clock.
func (p *Processor) tick(now int64) {
	p.mu.Lock()
	parts := make([]*partition, 0, len(p.parts))
	for _, ps := range p.parts {
		parts = append(parts, ps)
	}
	p.mu.Unlock()
	for _, ps := range parts {
		ps.out.Reset()
		ps.engine.Tick(now, &ps.out)
		if p.sinks.Group != nil && (len(ps.out.Released) > 0 || len(ps.out.Windows) > 0) {
			p.sinks.Group(ps.out.Released, ps.out.Windows)
		}
	}
}

// assigned logs an assignment; the partitions' state is built in adjust,
// once their stored offsets are read. (Registering it also makes kgo gate
// assignments with polls.)
func (p *Processor) assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	p.logger.Info("partitions assigned", "partitions", assigned[p.topic])
}

// adjust replaces the offsets Kafka committed for the newly assigned
// partitions by the offsets stored with the samples, and gives each of
// them a fresh engine. A partition without a stored offset starts at the
// log start.
func (p *Processor) adjust(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[p.topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	stored, err := p.store.Offsets(ctx, p.group, p.topic)
	if err != nil {
		// kgo ends the session and joins again.
		p.logger.Error("reading stored offsets", "err", err)
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range parts {
		ps := &partition{id: id, engine: stream.NewEngine(p.engineCfg), next: -1, stored: -1, rewind: -1}
		if off, ok := stored[id]; ok {
			ps.next, ps.stored = off, off
			parts[id] = kgo.NewOffset().At(off).WithEpoch(-1)
		} else {
			parts[id] = kgo.NewOffset().AtStart()
		}
		p.parts[id] = ps
		p.logger.Info("resuming partition from the stored offset", "partition", id, "offset", ps.next)
	}
	return offsets, nil
}

// revoked drops the engines of revoked or lost partitions. It runs between
// polls, so no work of theirs is in flight.
func (p *Processor) revoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ids := revoked[p.topic]
	if len(ids) == 0 {
		return
	}
	p.mu.Lock()
	for _, id := range ids {
		delete(p.parts, id)
		p.lag.DeleteLabelValues(partLabel(id))
	}
	p.mu.Unlock()
	p.logger.Info("partitions revoked", "partitions", ids)
}

// keyText returns a record key for a log line, cut to 128 bytes.
func keyText(k []byte) string {
	if len(k) > 128 {
		return string(k[:128]) + "…"
	}
	return string(k)
}

func partLabel(id int32) string { return strconv.FormatInt(int64(id), 10) }
