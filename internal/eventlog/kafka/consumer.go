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
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
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
// Polls and rebalances exclude each other (kgo.BlockRebalanceOnPoll): a
// partition is revoked only between a read's Done and the next read, when
// none of its work is in flight, so nothing is written for it after the
// revocation returned. A consumer that lost its partitions without knowing
// it (a zombie after a session timeout) is stopped by the store: its commit
// expects the offset it read, which the new owner has moved; the commit
// fails with store.ErrFenced, the consumer reloads the stored offset and
// resumes from it, and the processor resets the partition's engine.
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

	// Only the reading goroutine touches these.
	inflight []*partition
	// backoff is the pause after the last failed commit (0 after a
	// successful one); no poll before pauseUntil.
	backoff    time.Duration
	pauseUntil time.Time

	lag      *prometheus.GaugeVec
	consumed prometheus.Counter
	bad      prometheus.Counter
	commits  *prometheus.CounterVec
}

// partition is the state of one assigned partition. Only the reading
// goroutine and the commit of the partition's batch (which runs between a
// read and its Done) touch its fields after it is created.
type partition struct {
	id int32
	// next is the first offset not yet stored (-1: from the log start);
	// records below it are skipped.
	next int64
	// stored is the partition's stored offset as this consumer last read
	// or wrote it (-1: none): a commit expects it.
	stored int64
	// rewind >= 0: fetch again from this offset (a failed commit).
	rewind int64
	failed bool

	// events are the decoded events of the last two reads, alternately:
	// the processor may still hold those of the previous read.
	events [2][]telemetry.Event
	flip   int
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
// (see eventlog.Batch): it connects on the first call, and after a failed
// commit it pauses (up to 2 s, growing) before it polls again. It returns
// ctx's error when ctx ended before any record came.
func (c *Consumer) Read(ctx context.Context) (eventlog.Read, error) {
	cl, err := c.connect()
	if err != nil {
		return eventlog.Read{}, err
	}
	read := eventlog.Read{Done: c.done}
	if d := time.Until(c.pauseUntil); d > 0 {
		// A read that ends within the pause leaves it as it is: the next
		// one waits for the rest.
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			read.Dropped = c.takeDropped()
			return read, ctx.Err()
		case <-t.C:
		}
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
	c.inflight = c.inflight[:0]
	read.Batches = make([]eventlog.Batch, len(works))
	ok := make([]bool, len(works))
	if len(works) == 1 {
		read.Batches[0], ok[0] = c.decode(works[0])
	} else {
		var wg sync.WaitGroup
		for i, w := range works {
			wg.Go(func() { read.Batches[i], ok[i] = c.decode(w) })
		}
		wg.Wait()
	}
	n := 0
	for i, w := range works {
		if ok[i] {
			read.Batches[n] = read.Batches[i]
			c.inflight = append(c.inflight, w.ps)
			n++
		}
	}
	read.Batches = read.Batches[:n]
	if n == 0 && ctx.Err() != nil {
		return read, ctx.Err()
	}
	return read, nil
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
func (c *Consumer) decode(w work) (b eventlog.Batch, ok bool) {
	ps := w.ps
	ps.flip ^= 1
	events := ps.events[ps.flip]
	clear(events) // let the strings of two reads ago go
	events = events[:0]
	var (
		first, last  = int64(-1), int64(-1)
		n, bad       int
		starts       []int   // index in events of each entry's first event
		received     []int64 // each entry's ingest time
		decodeOpts   = c.opts.decode
		prevReceived = int64(-1)
	)
	for _, r := range w.recs {
		if r.Offset < ps.next {
			continue // stored already (a fetch from before a seek)
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
		// sets it; an external producer's create time stands in).
		if at := r.Timestamp.UnixMilli(); at != prevReceived {
			starts, received = append(starts, from), append(received, at)
			prevReceived = at
		}
	}
	ps.events[ps.flip] = events
	if last < 0 {
		return eventlog.Batch{}, false
	}
	entries := make([]*telemetry.Batch, len(starts))
	batches := make([]telemetry.Batch, len(starts))
	for i, lo := range starts {
		hi := len(events)
		if i+1 < len(starts) {
			hi = starts[i+1]
		}
		batches[i] = telemetry.Batch{Events: events[lo:hi:hi], Protocol: "kafka", Received: received[i]}
		entries[i] = &batches[i]
	}
	next, hwm := last+1, w.hwm
	commit := func(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
		err := c.store.AppendWithOffsets(ctx, samples, fresh, store.OffsetCommit{
			Group: c.group, Topic: c.topic, Partition: ps.id, Next: next, Expected: ps.stored,
		})
		switch {
		case err == nil || errors.Is(err, store.ErrOutOfBounds):
			// Out of bounds: the offset moved with the other samples.
			c.commits.WithLabelValues("ok").Inc()
			c.consumed.Add(float64(n))
			c.bad.Add(float64(bad))
			ps.stored, ps.next = next, next
			c.lag.WithLabelValues(partLabel(ps.id)).Set(float64(max(hwm-next, 0)))
		case errors.Is(err, store.ErrFenced):
			c.commits.WithLabelValues("fenced").Inc()
			c.refence(ctx, ps, first)
		default:
			// Not stored: consume the records again.
			c.commits.WithLabelValues("error").Inc()
			ps.retry(first)
		}
		return err
	}
	return eventlog.Batch{Lane: ps.id, Entries: entries, Commit: commit, Append: c.store.AppendFresh}, true
}

// refence reloads the partition's stored offset after a fenced commit: some
// other consumer stored past what this one read. Consumption resumes from
// the stored offset (the processor resets the partition's engine).
func (c *Consumer) refence(ctx context.Context, ps *partition, first int64) {
	offs, err := c.store.Offsets(ctx, c.group, c.topic)
	if err != nil {
		c.logger.Error("reading stored offsets after a fenced commit", "partition", ps.id, "err", err)
		ps.retry(first)
		return
	}
	off, ok := offs[ps.id]
	if !ok {
		off = -1
	}
	c.logger.Warn("partition offset moved by another processor; resuming from the stored offset",
		"partition", ps.id, "expected", ps.stored, "stored", off)
	ps.stored, ps.next = off, off
	ps.retry(first)
}

// retry marks the partition's commit failed and makes the read's Done seek
// it back to its next offset, or to first (the batch's first record) when
// none is known.
func (ps *partition) retry(first int64) {
	ps.failed = true
	ps.rewind = first
	if ps.next >= 0 {
		ps.rewind = ps.next
	}
}

// done ends a read: it seeks the partitions whose commit failed, paces the
// next poll after a failure, and lets the group rebalance.
func (c *Consumer) done() {
	cl := c.client.Load()
	if cl == nil {
		return
	}
	var seek map[int32]kgo.EpochOffset
	failed := false
	for _, ps := range c.inflight {
		failed = failed || ps.failed
		ps.failed = false
		if ps.rewind >= 0 {
			if seek == nil {
				seek = map[int32]kgo.EpochOffset{}
			}
			seek[ps.id] = kgo.EpochOffset{Epoch: -1, Offset: ps.rewind}
			ps.rewind = -1
		}
	}
	if seek != nil {
		// From the polling goroutine before AllowRebalance, as kgo asks.
		cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{c.topic: seek})
	}
	switch {
	case failed:
		c.backoff = min(max(2*c.backoff, 50*time.Millisecond), maxBackoff)
		c.pauseUntil = time.Now().Add(c.backoff)
	case len(c.inflight) > 0:
		// Committed: no pause. (A read that committed nothing, idle or
		// cut short within a pause, changes nothing.)
		c.backoff = 0
	}
	c.inflight = c.inflight[:0]
	cl.AllowRebalance()
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
		ps := &partition{id: id, next: -1, stored: -1, rewind: -1}
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
// their engines. It runs between a read's Done and the next poll, so no
// work of theirs is in flight.
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

// keyText returns a record key for a log line, cut to 128 bytes.
func keyText(k []byte) string {
	if len(k) > 128 {
		return string(k[:128]) + "…"
	}
	return string(k)
}

func partLabel(id int32) string { return strconv.FormatInt(int64(id), 10) }
