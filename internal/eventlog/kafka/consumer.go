package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
)

// maxBackoff bounds the pause after a failed commit.
const maxBackoff = 2 * time.Second

// OffsetStore is what the Consumer needs of the store: samples and the
// consumed offset of a partition in one transaction, fenced by the offset
// read before (store/postgres implements it).
type OffsetStore interface {
	// AppendWithOffsets stores samples and moves the stored offset of c
	// from c.Expected to c.Next in one transaction, or stores nothing and
	// returns an error wrapping store.ErrFenced. fresh (nil, or as long as
	// samples) reports which samples it stored, see store.FreshAppender.
	// An error wrapping store.ErrOutOfBounds means the offset moved and
	// the other samples were stored.
	AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error
	// Offsets returns the stored offsets of a group's partitions of topic:
	// the next offset to consume, by partition.
	Offsets(ctx context.Context, group, topic string) (map[int32]int64, error)
	// AppendFresh stores samples and nothing else (see
	// store.FreshAppender): the processor's second look after an
	// out-of-bounds commit.
	AppendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool) error
}

// Consumer reads the topic as a member of a consumer group and hands the
// records to the processor (internal/pipeline) as eventlog batches: each
// assigned partition is a lane, and a batch's commit stores its samples (and
// their window aggregates) together with the partition's next offset in one
// OffsetStore transaction.
//
// The log is durable (DurableLog): the processor may read on while a read
// commits, and show what it read before its commit. The consumer hands
// out each record once, in offset order, and a partition's commits come in
// that order. When one fails, the partition's batches read since are
// stale (Batch.Current reports false: they are neither processed further
// nor committed), no record of it is handed out until the read of the
// failed commit is done, and the next read seeks it back to the stored
// offset. A batch read again that way has Shown set to the entries the
// processor showed already.
//
// Polls and rebalances exclude each other (kgo.BlockRebalanceOnPoll): the
// group rebalances only when no read is in flight — every read returned
// has its Done called — and a read waits for that when a rebalance is
// waiting (kgo.OnPartitionsCallbackBlocked). So a partition is revoked
// only when none of its work is in flight, and nothing is written for it
// after the revocation returned. A consumer that lost its partitions
// without knowing it (a zombie after a session timeout) is stopped by the
// store: its commit expects the offset it read, which the new owner has
// moved; the commit fails with store.ErrFenced, the consumer reloads the
// stored offset and resumes from it, and the processor resets the
// partition's engine.
type Consumer struct {
	brokers []string
	topic   string
	group   string
	store   OffsetStore
	logger  *slog.Logger
	opts    options

	client atomic.Pointer[kgo.Client]
	ready  readiness

	mu      sync.Mutex
	parts   map[int32]*partition
	dropped []int32
	// reads are the reads returned with batches whose Done is not called
	// yet; doneC gets a token at each Done.
	reads int
	doneC chan struct{}
	// backoff is the pause after the last failed commit (0 after a
	// successful one); no poll before pauseUntil.
	backoff    time.Duration
	pauseUntil time.Time

	// blocked: a rebalance waits for the reads in flight (set by kgo,
	// cleared by the read that lets it happen).
	blocked atomic.Bool

	lag      *prometheus.GaugeVec
	consumed prometheus.Counter
	bad      prometheus.Counter
	commits  *prometheus.CounterVec
}

// partition is the state of one assigned partition. The reading goroutine
// and the commits of the partition's batches (the processor's commit
// stage, while later reads go on) share it.
type partition struct {
	id int32

	mu sync.Mutex
	// next is the first offset not handed out yet (-1: from the log
	// start); records below it are skipped.
	next int64
	// stored is the partition's stored offset as this consumer last read
	// or wrote it (-1: none): a commit expects it.
	stored int64
	// gen counts the failed commits: a batch read at another gen is stale.
	gen uint64
	// rewind >= 0: a commit failed; fetch again from this offset once
	// seek is set (the read of the failed commit is done). Until the
	// seek, no record of the partition is handed out.
	rewind int64
	seek   bool
	// shown: the records below it went to the processor's live sinks.
	shown int64

	// events are the decoded events of the last three reads, in turn: the
	// processor may still hold those of the two reads before. Only the
	// reading goroutine touches them.
	events [3][]telemetry.Event
	turn   int
}

// fail records a failed commit of a batch whose first record is first:
// the batches read since are stale, and the partition is to be read again
// from the stored offset (or, when none is known, from first). The caller
// holds ps.mu.
func (ps *partition) fail(first int64) {
	ps.gen++
	ps.rewind = first
	if ps.stored >= 0 {
		ps.rewind = ps.stored
	}
}

// NewConsumer returns a consumer of topic in consumer group, storing into
// st. reg may be nil. The processor's first Read connects it.
func NewConsumer(brokers []string, topic, group string, st OffsetStore, logger *slog.Logger, reg prometheus.Registerer, opts ...Option) (*Consumer, error) {
	switch {
	case len(brokers) == 0:
		return nil, errors.New("creating kafka consumer: no brokers")
	case topic == "":
		return nil, errors.New("creating kafka consumer: no topic")
	case group == "":
		return nil, errors.New("creating kafka consumer: no consumer group")
	case st == nil:
		return nil, errors.New("creating kafka consumer: no store")
	}
	o := buildOptions(opts)
	c := &Consumer{
		brokers: brokers,
		topic:   topic,
		group:   group,
		store:   st,
		logger:  orDiscard(logger).With("component", "kafka_consumer", "topic", topic, "group", group),
		opts:    o,
		ready:   readiness{period: o.readyPeriod},
		parts:   map[int32]*partition{},
		doneC:   make(chan struct{}, 1),
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
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_kafka_commits_total",
			Help: "Sample and offset transactions, by outcome (ok, fenced, error).",
		}, []string{"outcome"}),
	}
	if reg != nil {
		if err := register(reg, c.lag, c.consumed, c.bad, c.commits); err != nil {
			return nil, fmt.Errorf("creating kafka consumer: %w", err)
		}
	}
	return c, nil
}

// StoreDedups reports that the consumer's commits report which samples the
// store held already: the store decides sample duplicates.
func (c *Consumer) StoreDedups() bool { return true }

// DurableLog reports that the log is durable: a record is in Kafka before
// the consumer reads it (the gateway acknowledged its client once Kafka
// had), so the processor may show it before its commit.
func (c *Consumer) DurableLog() bool { return true }

// Ready reports whether the consumer is connected and a broker answers
// (cached for the ready period).
func (c *Consumer) Ready() error {
	cl := c.client.Load()
	if cl == nil {
		return ErrNotRunning
	}
	return c.ready.check(cl)
}

// Assigned returns the partitions this consumer owns now, for tests and
// diagnostics.
func (c *Consumer) Assigned() []int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int32, 0, len(c.parts))
	for id := range c.parts {
		out = append(out, id)
	}
	return out
}

// connect returns the client, joining the group on the first call.
func (c *Consumer) connect() (*kgo.Client, error) {
	if cl := c.client.Load(); cl != nil {
		return cl, nil
	}
	own := []kgo.Opt{
		kgo.SeedBrokers(c.brokers...),
		kgo.ConsumerGroup(c.group),
		kgo.ConsumeTopics(c.topic),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsAssigned(c.assigned),
		kgo.AdjustFetchOffsetsFn(c.adjust),
		kgo.OnPartitionsRevoked(c.revoked),
		kgo.OnPartitionsLost(c.revoked),
		kgo.OnPartitionsCallbackBlocked(func(context.Context, *kgo.Client) {
			c.blocked.Store(true)
			c.signalDone() // a read waiting for nothing in particular looks again
		}),
		kgo.WithLogger(kgoLogger{c.logger}),
	}
	own = append(own, c.opts.tuning.consumerOpts()...)
	if c.opts.instanceID != "" {
		// Static membership: a replica restarted under the same id gets its
		// partitions back at once instead of after the session timeout.
		own = append(own, kgo.InstanceID(c.opts.instanceID))
	}
	cl, err := kgo.NewClient(c.opts.clientOptions(own...)...)
	if err != nil {
		return nil, fmt.Errorf("creating kafka consumer: %w", err)
	}
	c.client.Store(cl)
	return cl, nil
}

// Close closes the client. A dynamic member leaves the group, and the
// revoke callback drops every partition; a static one (WithInstanceID)
// stays a member until its session times out, or until it comes back.
func (c *Consumer) Close() error {
	if cl := c.client.Swap(nil); cl != nil {
		cl.AllowRebalance()
		cl.Close()
	}
	return nil
}

// Read polls the next records and returns them as one batch per partition
// (see eventlog.Batch): it connects on the first call, seeks the
// partitions whose failed commit's read is done, and after a failed commit
// it pauses (up to 2 s, growing) before it polls again. When a rebalance
// waits, it first waits until no read is in flight, then lets it happen.
// It returns ctx's error when ctx ended before any record came. The read's
// Done, set when it has batches, must be called once they are committed
// (or failed, or stale).
func (c *Consumer) Read(ctx context.Context) (eventlog.Read, error) {
	cl, err := c.connect()
	if err != nil {
		return eventlog.Read{}, err
	}
	var read eventlog.Read
	// Seeks first, from the polling goroutine while no revocation can run
	// (the last poll holds rebalances off until AllowRebalance), as kgo
	// asks.
	c.seek(cl)
	c.mu.Lock()
	pause := time.Until(c.pauseUntil)
	c.mu.Unlock()
	if pause > 0 {
		// A read that ends within the pause leaves it as it is: the next
		// one waits for the rest.
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			read.Dropped = c.takeDropped()
			return read, ctx.Err()
		case <-t.C:
		}
	}
	if err := c.allowRebalance(ctx, cl); err != nil {
		read.Dropped = c.takeDropped()
		return read, err
	}
	fetches := cl.PollRecords(ctx, c.opts.tuning.MaxPollRecords)
	if fetches.IsClientClosed() {
		return read, errors.New("reading kafka: client closed")
	}
	var fenced error
	fetches.EachError(func(_ string, part int32, err error) {
		switch {
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled):
		case errors.Is(err, kerr.FencedInstanceID):
			fenced = err
		default:
			c.logger.Warn("fetching records", "partition", part, "err", err)
		}
	})
	if fenced != nil {
		// Another member joined with this --kafka-instance-id and took its
		// place: going on would fight it for the slot. Its partitions are
		// gone (nothing of this poll is committed; their new owner reads
		// them again), so stop, loudly.
		read.Dropped = c.takeDropped()
		return read, fmt.Errorf("reading kafka: %w: another replica uses --kafka-instance-id %q; give each replica its own", fenced, c.opts.instanceID)
	}
	works := c.collect(fetches)
	read.Dropped = c.takeDropped()
	rd := &inflight{}
	read.Batches = make([]eventlog.Batch, len(works))
	ok := make([]bool, len(works))
	if len(works) == 1 {
		read.Batches[0], ok[0] = c.decode(works[0], rd)
	} else {
		var wg sync.WaitGroup
		for i, w := range works {
			wg.Go(func() { read.Batches[i], ok[i] = c.decode(w, rd) })
		}
		wg.Wait()
	}
	n := 0
	for i, w := range works {
		if ok[i] {
			read.Batches[n] = read.Batches[i]
			rd.parts = append(rd.parts, w.ps)
			n++
		}
	}
	read.Batches = read.Batches[:n]
	if n == 0 {
		return read, ctx.Err()
	}
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	read.Done = func() { c.done(rd) }
	return read, nil
}

// inflight is a read whose Done is not called yet.
type inflight struct {
	parts []*partition
	// failed: a commit of the read failed; committed: one succeeded.
	failed, committed atomic.Bool
}

// seek seeks the partitions whose failed commit's read is done back to
// where they are to be read again.
func (c *Consumer) seek(cl *kgo.Client) {
	var seek map[int32]kgo.EpochOffset
	c.mu.Lock()
	for _, ps := range c.parts {
		ps.mu.Lock()
		if ps.seek {
			if seek == nil {
				seek = map[int32]kgo.EpochOffset{}
			}
			seek[ps.id] = kgo.EpochOffset{Epoch: -1, Offset: ps.rewind}
			ps.next, ps.rewind, ps.seek = ps.rewind, -1, false
		}
		ps.mu.Unlock()
	}
	c.mu.Unlock()
	if seek != nil {
		cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{c.topic: seek})
	}
}

// allowRebalance lets the group rebalance when no read is in flight: at
// once when none is, after waiting for them when a rebalance waits, and
// not at all otherwise (the poll goes on, holding rebalances off).
func (c *Consumer) allowRebalance(ctx context.Context, cl *kgo.Client) error {
	for {
		c.mu.Lock()
		reads := c.reads
		c.mu.Unlock()
		switch {
		case reads == 0:
			c.blocked.Store(false)
			cl.AllowRebalance()
			return nil
		case !c.blocked.Load():
			return nil
		}
		select {
		case <-c.doneC:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// signalDone wakes a read waiting for the reads in flight.
func (c *Consumer) signalDone() {
	select {
	case c.doneC <- struct{}{}:
	default:
	}
}

// work is the records of one partition in one poll.
type work struct {
	ps   *partition
	recs []*kgo.Record
	hwm  int64
}

// collect groups the polled records of the partitions this consumer owns.
func (c *Consumer) collect(fetches kgo.Fetches) []work {
	var works []work
	c.mu.Lock()
	defer c.mu.Unlock()
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if ftp.Topic != c.topic || len(ftp.Records) == 0 {
			return
		}
		ps := c.parts[ftp.Partition]
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
	return works
}

// decode decodes one partition's new records into a batch whose entries
// are the runs of records of one ingest time (one gateway batch, usually),
// and whose commit stores them with the partition's next offset. ok is
// false when every record was stored already.
func (c *Consumer) decode(w work, rd *inflight) (b eventlog.Batch, ok bool) {
	ps := w.ps
	ps.mu.Lock()
	if ps.rewind >= 0 {
		// A commit failed since: these records follow the stale batches;
		// the partition is read again once that commit's read is done.
		ps.mu.Unlock()
		return eventlog.Batch{}, false
	}
	from, gen, shown := ps.next, ps.gen, ps.shown
	ps.mu.Unlock()
	ps.turn = (ps.turn + 1) % len(ps.events)
	events := ps.events[ps.turn]
	clear(events) // let the strings of three reads ago go
	events = events[:0]
	var (
		first, last  = int64(-1), int64(-1)
		n, bad       int
		starts       []int   // index in events of each entry's first event
		received     []int64 // each entry's ingest time
		decodeOpts   = c.opts.decode
		prevReceived = int64(-1)
		// With tracing, each entry's trace context (from its first
		// record's headers; nil while none had any), and the raw headers
		// of the last entry.
		traces            []trace.SpanContext
		prevTP, prevState []byte
		nshown            = 0     // entries of records below shown
		crossed           = false // a record at or past shown came
	)
	for _, r := range w.recs {
		if r.Offset < from {
			continue // handed out already (a fetch from before a seek)
		}
		if first < 0 {
			first = r.Offset
		}
		last = r.Offset
		n++
		decodeOpts.Now = r.Timestamp.UnixMilli()
		from := len(events)
		var rejects []ingest.Reject
		var err error
		events, rejects, err = ingest.DecodeJSON(r.Value, decodeOpts, events)
		switch {
		case err != nil:
			bad++
			c.logger.Warn("skipping bad record", "partition", ps.id, "offset", r.Offset, "key", keyText(r.Key), "err", err)
		case len(rejects) > 0:
			bad++
			c.logger.Warn("skipping bad events of a record", "partition", ps.id, "offset", r.Offset, "key", keyText(r.Key),
				"rejected", len(rejects), "reason", rejects[0].String())
		}
		if len(events) == from {
			continue
		}
		// The record timestamp is the gateway's ingest time (the producer
		// sets it; an external producer's create time stands in). An entry
		// starts at each new one, where the records shown end, and at a
		// new trace context (one gateway batch's records carry the same).
		cross := !crossed && r.Offset >= shown
		crossed = crossed || cross
		newTrace := false
		var tp, state []byte
		if c.opts.tracer != nil {
			tp, state = traceHeaders(r.Headers)
			newTrace = len(starts) == 0 || !bytes.Equal(tp, prevTP) || !bytes.Equal(state, prevState)
		}
		if at := r.Timestamp.UnixMilli(); at != prevReceived || cross || newTrace {
			starts, received = append(starts, from), append(received, at)
			prevReceived = at
			if !crossed {
				nshown++
			}
			if tp != nil || traces != nil { // allocated at the first traced entry
				if traces == nil {
					traces = make([]trace.SpanContext, len(starts)-1, len(starts))
				}
				traces = append(traces, tracing.Remote(string(tp), string(state)))
			}
			prevTP, prevState = tp, state
		}
	}
	ps.events[ps.turn] = events
	if last < 0 {
		return eventlog.Batch{}, false
	}
	next, hwm := last+1, w.hwm
	ps.mu.Lock()
	ps.next = next
	ps.mu.Unlock()
	entries := make([]*telemetry.Batch, len(starts))
	batches := make([]telemetry.Batch, len(starts))
	for i, lo := range starts {
		hi := len(events)
		if i+1 < len(starts) {
			hi = starts[i+1]
		}
		batches[i] = telemetry.Batch{Events: events[lo:hi:hi], Protocol: "kafka", Received: received[i]}
		if traces != nil {
			batches[i].Trace = traces[i]
		}
		entries[i] = &batches[i]
	}
	commit := func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
		// The processor commits a partition's batches one after the
		// other, in order, and only current ones: the stored offset is
		// where this batch starts.
		ps.mu.Lock()
		expected := ps.stored
		ps.mu.Unlock()
		err := c.store.AppendWithOffsets(ctx, samples, fresh, store.OffsetCommit{
			Group: c.group, Topic: c.topic, Partition: ps.id, Next: next, Expected: expected,
		})
		switch {
		case err == nil || errors.Is(err, store.ErrOutOfBounds):
			// Out of bounds: the offset moved with the other samples.
			c.commits.WithLabelValues("ok").Inc()
			rd.committed.Store(true)
			c.consumed.Add(float64(n))
			c.bad.Add(float64(bad))
			ps.mu.Lock()
			ps.stored = next
			ps.mu.Unlock()
			c.lag.WithLabelValues(partLabel(ps.id)).Set(float64(max(hwm-next, 0)))
		case errors.Is(err, store.ErrFenced):
			c.commits.WithLabelValues("fenced").Inc()
			rd.failed.Store(true)
			c.refence(ctx, ps, first)
		default:
			// Not stored: consume the records again.
			c.commits.WithLabelValues("error").Inc()
			rd.failed.Store(true)
			ps.mu.Lock()
			ps.fail(first)
			ps.mu.Unlock()
		}
		return err
	}
	return eventlog.Batch{
		Lane:    ps.id,
		Entries: entries,
		Shown:   nshown,
		OnShown: func() {
			ps.mu.Lock()
			ps.shown = max(ps.shown, next)
			ps.mu.Unlock()
		},
		Current: func() bool {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			return ps.gen == gen
		},
		Commit: commit,
		Append: c.store.AppendFresh,
	}, true
}

// refence reloads the partition's stored offset after a fenced commit: some
// other consumer stored past what this one read. Consumption resumes from
// the stored offset (the processor resets the partition's engine).
func (c *Consumer) refence(ctx context.Context, ps *partition, first int64) {
	offs, err := c.store.Offsets(ctx, c.group, c.topic)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if err != nil {
		c.logger.Error("reading stored offsets after a fenced commit", "partition", ps.id, "err", err)
		ps.fail(first)
		return
	}
	off, ok := offs[ps.id]
	if !ok {
		off = -1
	}
	c.logger.Warn("partition offset moved by another processor; resuming from the stored offset",
		"partition", ps.id, "expected", ps.stored, "stored", off)
	ps.stored = off
	ps.fail(first)
}

// done ends a read: the partitions whose commit failed may be sought back
// by the next read, which pauses after a failure; with no read left in
// flight, the group may rebalance.
func (c *Consumer) done(rd *inflight) {
	failed := rd.failed.Load()
	if failed {
		for _, ps := range rd.parts {
			ps.mu.Lock()
			ps.seek = ps.rewind >= 0
			ps.mu.Unlock()
		}
	}
	c.mu.Lock()
	c.reads--
	switch {
	case failed:
		c.backoff = min(max(2*c.backoff, 50*time.Millisecond), maxBackoff)
		c.pauseUntil = time.Now().Add(c.backoff)
	case rd.committed.Load():
		// Committed: no pause. (A read whose batches were all stale,
		// after another read's failure, changes nothing.)
		c.backoff = 0
	}
	c.mu.Unlock()
	c.signalDone()
}

// takeDropped returns the partitions revoked since the last call.
func (c *Consumer) takeDropped() []int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.dropped
	c.dropped = nil
	return d
}

// assigned logs an assignment; the partitions' state is built in adjust,
// once their stored offsets are read. (Registering it also makes kgo gate
// assignments with polls.)
func (c *Consumer) assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	c.logger.Info("partitions assigned", "partitions", assigned[c.topic])
}

// adjust replaces the offsets Kafka committed for the newly assigned
// partitions by the offsets stored with the samples. A partition without a
// stored offset starts at the log start.
func (c *Consumer) adjust(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[c.topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	stored, err := c.store.Offsets(ctx, c.group, c.topic)
	if err != nil {
		// kgo ends the session and joins again.
		c.logger.Error("reading stored offsets", "err", err)
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range parts {
		ps := &partition{id: id, next: -1, stored: -1, rewind: -1, shown: -1}
		if off, ok := stored[id]; ok {
			ps.next, ps.stored = off, off
			parts[id] = kgo.NewOffset().At(off).WithEpoch(-1)
		} else {
			parts[id] = kgo.NewOffset().AtStart()
		}
		if old := c.parts[id]; old != nil {
			c.dropped = append(c.dropped, id) // assigned anew: its engine starts afresh
		}
		c.parts[id] = ps
		c.logger.Info("resuming partition from the stored offset", "partition", id, "offset", ps.next)
	}
	return offsets, nil
}

// revoked drops revoked or lost partitions, for the processor to drop
// their engines. It runs once no read is in flight (allowRebalance), so no
// work of theirs is.
func (c *Consumer) revoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	ids := revoked[c.topic]
	if len(ids) == 0 {
		return
	}
	c.mu.Lock()
	for _, id := range ids {
		if _, ok := c.parts[id]; ok {
			delete(c.parts, id)
			c.dropped = append(c.dropped, id)
		}
		c.lag.DeleteLabelValues(partLabel(id))
	}
	c.mu.Unlock()
	c.logger.Info("partitions revoked", "partitions", ids)
}

// traceHeaders returns the values of a record's traceparent and
// tracestate headers (nil when absent).
func traceHeaders(hs []kgo.RecordHeader) (traceparent, tracestate []byte) {
	for i := range hs {
		switch hs[i].Key {
		case tracing.TraceparentKey:
			traceparent = hs[i].Value
		case tracing.TracestateKey:
			tracestate = hs[i].Value
		}
	}
	return traceparent, tracestate
}

// keyText returns a record key for a log line, cut to 128 bytes.
func keyText(k []byte) string {
	if len(k) > 128 {
		return string(k[:128]) + "…"
	}
	return string(k)
}

func partLabel(id int32) string { return strconv.FormatInt(int64(id), 10) }
