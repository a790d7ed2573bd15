// Package embedded is twinline's built-in store: a store.Store on
// Prometheus' TSDB (github.com/prometheus/prometheus/tsdb) in one directory,
// with a write-ahead log, Gorilla (XOR) compressed chunks, an out-of-order
// window and retention by blocks.
//
// Each series is a TSDB series with exactly two labels, machine and metric
// (no __name__: TSDB does not need one, and no PromQL engine reads this
// data). An aggregate series can later add a third label (see
// docs/decisions/0001-embedded-store.md).
//
// # Durability
//
// Append returns nil only after TSDB's Appender.Commit returned: Commit
// encodes the samples as WAL records and hands every record to write(2) on
// the current WAL segment file before it returns (wlog.WL.Log flushes the
// page holding the final record of each Log call, see flushPage in
// tsdb/wlog/wlog.go of v0.316.0). The data is then in the kernel's page
// cache and survives a crash of the process (kill -9). TSDB fsyncs a segment
// only when it is full (128 MiB) and on Close, so the tail of the WAL can be
// lost on power loss or a kernel crash. Out-of-order samples are in the WAL
// record too, but are replayed from the separate WBL, which Commit writes
// after the WAL and before it returns; a failed WBL write is only logged by
// TSDB.
//
// # Bounds
//
// TSDB takes a sample in order if it is newer than its series' newest
// sample, at most BlockDuration/2 behind the newest sample of the whole store
// (not of the series) and not older than the newest block on disk. Any other
// sample is taken out of order if it is at most OutOfOrderWindow behind that
// newest sample. So one machine with a clock far ahead would make every
// other machine's samples too old: Append therefore refuses samples more
// than MaxFuture ahead of the server clock. A fresh store takes any time.
//
// The out-of-order window defaults to the retention: a backfill of last
// month's history is taken at any age the store keeps (TSDB's out-of-order
// head, cut into blocks of their own that compaction merges with the
// blocks they overlap, as Prometheus does). See
// docs/decisions/0031-rollups.md.
package embedded

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/compression"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// The label names of a series.
const (
	LabelMachine = "machine"
	LabelMetric  = "metric"
)

// ErrLocked reports that another Store, in this or another process, has the
// directory open.
var ErrLocked = errors.New("store directory in use by another store")

// Options configure a Store. The zero value gives the defaults.
type Options struct {
	// Retention is how long samples are kept: a block is deleted once its
	// end is Retention behind the end of the newest block (event time, not
	// wall time). Default 30 days.
	Retention time.Duration
	// MaxBytes caps the size of the persisted blocks (the WAL is not
	// counted); the oldest blocks are deleted first. 0 means no cap.
	MaxBytes int64
	// OutOfOrderWindow is how far behind the newest stored sample a sample
	// may be and still be stored. Default Retention: a sample of any age
	// the store keeps is taken (a backfill); negative disables
	// out-of-order samples (then only BlockDuration/2 applies).
	OutOfOrderWindow time.Duration
	// MaxFuture is how far ahead of Now a sample may be. Default 10
	// minutes; negative disables the check.
	MaxFuture time.Duration
	// BlockDuration is the time span of the in-memory head block cut into
	// an immutable block on disk. Default 2 hours. Half of it is the window
	// for late samples when out-of-order samples are disabled.
	BlockDuration time.Duration
	// WALCompression is the compression of WAL records: "snappy" (the
	// default), "zstd" or "none".
	WALCompression string
	// SeriesIdle is how long a series may go without samples before the
	// store forgets what it caches of it (about 200 bytes: its labels, TSDB
	// reference and newest time); its next sample takes the checked path,
	// which learns them again from the stored data. Server time (Now).
	// Default 24 hours (at most OutOfOrderWindow), or BlockDuration when
	// out-of-order samples are disabled; negative keeps every series
	// cached.
	SeriesIdle time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time

	// Retention1m and Retention1h are how long the 1 min and 1 h rollup
	// tiers are kept (docs/decisions/0031-rollups.md). Defaults 90 days
	// and 5 years; each at least the retention of the finer data.
	Retention1m, Retention1h time.Duration
	// RollupEvery is how often new blocks are rolled up into the tiers.
	// Default 30 seconds.
	RollupEvery time.Duration
}

func (o Options) withDefaults() Options {
	if o.Retention == 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.OutOfOrderWindow == 0 {
		o.OutOfOrderWindow = o.Retention
	}
	if o.MaxFuture == 0 {
		o.MaxFuture = 10 * time.Minute
	}
	if o.BlockDuration == 0 {
		o.BlockDuration = 2 * time.Hour
	}
	if o.WALCompression == "" {
		o.WALCompression = compression.Snappy
	}
	if o.SeriesIdle == 0 {
		o.SeriesIdle = min(o.OutOfOrderWindow, 24*time.Hour)
		if o.SeriesIdle < 0 {
			o.SeriesIdle = o.BlockDuration
		}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Retention1m == 0 {
		o.Retention1m = max(90*24*time.Hour, o.Retention)
	}
	if o.Retention1h == 0 {
		o.Retention1h = max(5*365*24*time.Hour, o.Retention1m)
	}
	if o.RollupEvery == 0 {
		o.RollupEvery = 30 * time.Second
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	if o.Retention < 0 {
		errs = append(errs, fmt.Errorf("retention %v is negative", o.Retention))
	}
	if o.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("max bytes %d is negative", o.MaxBytes))
	}
	if o.BlockDuration < time.Minute {
		errs = append(errs, fmt.Errorf("block duration %v is below a minute", o.BlockDuration))
	}
	if o.Retention1m < o.Retention {
		errs = append(errs, fmt.Errorf("1m rollup retention %v is below the retention %v", o.Retention1m, o.Retention))
	}
	if o.Retention1h < o.Retention1m {
		errs = append(errs, fmt.Errorf("1h rollup retention %v is below the 1m rollup retention %v", o.Retention1h, o.Retention1m))
	}
	if o.RollupEvery < 0 {
		errs = append(errs, fmt.Errorf("rollup interval %v is negative", o.RollupEvery))
	}
	switch o.WALCompression {
	case compression.None, compression.Snappy, compression.Zstd:
	default:
		errs = append(errs, fmt.Errorf("unknown WAL compression %q", o.WALCompression))
	}
	return errors.Join(errs...)
}

// unknownTime marks a series whose newest stored time is not known yet.
const unknownTime = math.MaxInt64

// series is the cached identity of one TSDB series.
type series struct {
	id   uint64 // creation order, groups samples of a series
	lset labels.Labels
	// ref is TSDB's reference of the series; it changes when the head
	// drops and recreates the series, Append then hands out the new one.
	ref atomic.Uint64
	// maxT is the newest time stored (or being stored) in the series, or
	// unknownTime. Samples at or before it take the checked path.
	maxT atomic.Int64
	// seen is the server time (Unix ms, to a second) of the latest Append
	// of a sample of the series: the sweep forgets long idle series.
	seen atomic.Int64

	// gapMu guards gapLo and gapHi: no sample is stored in the open
	// interval (gapLo, gapHi), learnt by the checked path, so that a
	// backfill that goes forward in time checks the stored data once per
	// gap rather than once per batch. Only the checked path stores
	// samples at or before maxT, and maxT >= gapHi when it is set, so the
	// fast path never stores into the gap.
	gapMu        sync.Mutex
	gapLo, gapHi int64

	// fast counts the fast-path Appends in flight that may store into the
	// series (from before they read maxT until after their Commit), and
	// checking is set while the checked path waits for them (settle): a
	// fast path seeing it sends its samples to the checked path instead.
	fast     atomic.Int32
	checking atomic.Bool
}

// raise makes the series' newest time at least t.
func (e *series) raise(t int64) {
	for {
		cur := e.maxT.Load()
		if cur != unknownTime && cur >= t {
			return
		}
		if e.maxT.CompareAndSwap(cur, t) {
			return
		}
	}
}

// Stats counts the samples Append did not store.
type Stats struct {
	// Duplicates were identical to a stored sample (idempotent).
	Duplicates uint64
	// Conflicts had the time of a stored sample but another value; the
	// stored (first) value was kept.
	Conflicts uint64
	// OutOfBounds were too old or too far in the future.
	OutOfBounds uint64
	// Invalid had an empty machine or metric.
	Invalid uint64
}

// Store is a store.Store on Prometheus' TSDB. It is safe for concurrent use.
type Store struct {
	db        *tsdb.DB
	logger    *slog.Logger
	reg       *registerer
	now       func() time.Time
	maxFuture int64 // ms; negative: unchecked
	idle      int64 // ms a series stays cached without samples; negative: forever

	// nextSweep is when (Unix ms) an Append next sweeps idle series out
	// of the cache.
	nextSweep atomic.Int64
	// appendMu is held for reading by every Append, which holds the
	// series it resolved until it returns, and for writing by the sweep.
	appendMu sync.RWMutex

	// closeMu is held for reading by every operation, for writing by Close.
	closeMu sync.RWMutex
	closed  bool

	// states holds the state series (states.go).
	states *stateFile

	// roll holds the rollup tiers (rollup.go); the rollup loop runs until
	// stop is closed, then closes done.
	roll       *rollups
	stop, done chan struct{}

	// settled is signalled (under settleMu) when the last fast-path
	// Append in flight of a series that the checked path waits for ends.
	settleMu sync.Mutex
	settled  sync.Cond
	// Test hooks: testFastCommit runs before the fast path's Commit,
	// testSettleWait before the checked path waits for fast paths.
	testFastCommit, testSettleWait func()

	mu     sync.RWMutex
	series map[store.SeriesKey]*series
	nextID uint64

	duplicates, conflicts, outOfBounds, invalid atomic.Uint64
}

var _ store.Store = (*Store)(nil)

// Open opens (creating it if needed) the store in dir, replaying its WAL.
// dir is made private to the owner (see PrepareDir) and what the TSDB
// created in it loses its group and other permission bits.
// It fails with an error wrapping ErrLocked if another Store, in this or
// another process, has dir open. logger (already carrying the caller's
// component attribute) may be nil. reg may be nil, else it receives TSDB's
// metrics under their usual names (prometheus_tsdb_*, so that existing TSDB
// dashboards work) and the store's (twinline_store_*), until Close.
func Open(dir string, opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	to := tsdb.DefaultOptions()
	to.RetentionDuration = opts.Retention.Milliseconds()
	to.MaxBytes = opts.MaxBytes
	to.MinBlockDuration = opts.BlockDuration.Milliseconds()
	// Like Prometheus: compact up to a tenth of the retention, at most 31 days.
	to.MaxBlockDuration = min(max(opts.Retention/10, opts.BlockDuration), 31*24*time.Hour).Milliseconds()
	to.OutOfOrderTimeWindow = max(opts.OutOfOrderWindow, 0).Milliseconds()
	to.WALCompression = opts.WALCompression

	if err := PrepareDir(dir); err != nil {
		return nil, fmt.Errorf("opening tsdb in %s: %w", dir, err)
	}
	roll, err := openRollups(dir, opts)
	if err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("opening store in %s: %w: %w", dir, ErrLocked, err)
		}
		return nil, fmt.Errorf("opening store in %s: %w", dir, err)
	}
	// Compaction leaves blocks not rolled up alone (and the ones after
	// them): a compacted block is either rolled up whole or not at all.
	to.BlockCompactionExcludeFunc = func(m *tsdb.BlockMeta) bool { return !roll.set().covers(m.Compaction.Sources) }
	to.BlockQuerierFunc = newBlockQuerier

	s := &Store{
		roll:   roll,
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		logger: logger,
		now:    opts.Now,
		series: make(map[store.SeriesKey]*series),
	}
	s.settled.L = &s.settleMu
	s.maxFuture = -1
	if opts.MaxFuture >= 0 {
		s.maxFuture = opts.MaxFuture.Milliseconds()
	}
	s.idle = -1
	if opts.SeriesIdle >= 0 {
		s.idle = opts.SeriesIdle.Milliseconds()
		s.nextSweep.Store(s.now().UnixMilli() + s.sweepEvery())
	}
	var r prometheus.Registerer
	if reg != nil {
		s.reg = &registerer{reg: reg, logger: logger}
		s.reg.MustRegister(s.collectors()...)
		r = s.reg
	}
	db, err := tsdb.Open(dir, logger, r, to, nil)
	if err != nil {
		s.reg.unregisterAll()
		roll.close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("opening tsdb in %s: %w: %w", dir, ErrLocked, err)
		}
		return nil, fmt.Errorf("opening tsdb in %s: %w", dir, err)
	}
	s.db = db
	if s.states, err = openStateFile(dir, opts.Retention); err != nil {
		db.Close()
		roll.close()
		s.reg.unregisterAll()
		return nil, fmt.Errorf("opening store: %w", err)
	}
	if err := restrictTree(dir); err != nil {
		close(s.done) // no rollup loop to stop
		s.Close()
		return nil, fmt.Errorf("restricting permissions in %s: %w", dir, err)
	}
	// After restrictTree: its first run (at once) writes files in dir.
	go s.rollupLoop(opts.RollupEvery, s.stop, s.done)
	return s, nil
}

func (s *Store) collectors() []prometheus.Collector {
	counter := func(name, help string, v *atomic.Uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "twinline", Subsystem: "store", Name: name, Help: help,
		}, func() float64 { return float64(v.Load()) })
	}
	return []prometheus.Collector{
		counter("duplicate_samples_total", "Samples identical to a stored one, dropped.", &s.duplicates),
		counter("conflicting_samples_total", "Samples at the time of a stored one with another value, dropped (first write wins).", &s.conflicts),
		counter("out_of_bounds_samples_total", "Samples too old or too far in the future, dropped.", &s.outOfBounds),
		counter("invalid_samples_total", "Samples with an empty machine or metric, dropped.", &s.invalid),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "twinline", Subsystem: "store", Name: "rollup_torn_reads_total",
			Help: "Reads of a rollup tier whose statistics disagreed, answered from raw samples instead.",
		}, func() float64 { return float64(s.roll.torn.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "twinline", Subsystem: "store", Name: "rollup_errors_total",
			Help: "Rollup runs that failed (logged); their blocks are rolled up again at the next run and read raw until then.",
		}, func() float64 { return float64(s.roll.failed.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "twinline", Subsystem: "store", Name: "unrolled_blocks",
			Help: "Blocks not rolled up into the tiers after the latest rollup run; compaction waits for them. Above zero for long: the rollup fails.",
		}, func() float64 { return float64(s.roll.unrolled.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "twinline", Subsystem: "store", Name: "cached_series",
			Help: "Series whose identity the store caches: those with samples appended within the series idle time.",
		}, func() float64 { return float64(s.CachedSeries()) }),
	}
}

// Stats returns what Append dropped since Open.
func (s *Store) Stats() Stats {
	return Stats{
		Duplicates:  s.duplicates.Load(),
		Conflicts:   s.conflicts.Load(),
		OutOfBounds: s.outOfBounds.Load(),
		Invalid:     s.invalid.Load(),
	}
}

// counts tallies what one Append did not store.
type counts struct {
	duplicates, conflicts, outOfBounds, invalid, other int
	otherErr                                           error
}

// rejected records an error of TSDB's Appender.Append.
func (c *counts) rejected(err error) {
	switch {
	case errors.Is(err, storage.ErrOutOfBounds), errors.Is(err, storage.ErrTooOldSample), errors.Is(err, storage.ErrOutOfOrderSample):
		c.outOfBounds++
	case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
		c.conflicts++
	default:
		c.other++
		if c.otherErr == nil {
			c.otherErr = err
		}
	}
}

// same records a sample at the time of a stored one, with value v.
func (c *counts) same(v, stored float64) {
	if math.Float64bits(v) == math.Float64bits(stored) {
		c.duplicates++
	} else {
		c.conflicts++
	}
}

func (s *Store) record(c *counts) {
	s.duplicates.Add(uint64(c.duplicates))
	s.conflicts.Add(uint64(c.conflicts))
	s.outOfBounds.Add(uint64(c.outOfBounds))
	s.invalid.Add(uint64(c.invalid))
}

func (c *counts) err(total int) error {
	var errs []error
	if c.outOfBounds > 0 {
		errs = append(errs, fmt.Errorf("storing samples: %d of %d out of bounds: %w", c.outOfBounds, total, store.ErrOutOfBounds))
	}
	if c.invalid > 0 {
		errs = append(errs, fmt.Errorf("storing samples: %d of %d without machine or metric", c.invalid, total))
	}
	if c.other > 0 {
		errs = append(errs, fmt.Errorf("storing samples: %d of %d rejected: %w", c.other, total, c.otherErr))
	}
	return errors.Join(errs...)
}

// pending is a sample that takes the checked path.
type pending struct {
	e *series
	t int64
	v float64
	i int // index in the appended samples
}

// Append stores samples durably (see the package documentation). Samples
// at the time of a stored sample of their series are dropped, whatever
// their value: the first write wins. Samples out of bounds are dropped and
// reported, after the others were stored, with an error wrapping
// store.ErrOutOfBounds.
//
// Samples newer than everything their series holds take a fast path: one
// TSDB appender, cached series references, one Commit. Older samples (late,
// duplicate, or of a series not seen since Open) are checked against the
// stored data first and committed in a second step.
func (s *Store) Append(ctx context.Context, samples []telemetry.Sample) error {
	return s.AppendFresh(ctx, samples, nil)
}

// AppendFresh is Append, and reports in fresh (when not nil) which samples
// it stored: see store.FreshAppender. Knowing costs nothing extra: a sample
// newer than its series' newest is stored on the fast path, and an older
// one is checked against the stored data anyway.
func (s *Store) AppendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
	now := s.now().UnixMilli()
	s.appendMu.RLock()
	err := s.appendFresh(ctx, samples, fresh, now)
	s.appendMu.RUnlock()
	if s.idle >= 0 {
		if next := s.nextSweep.Load(); now >= next && s.nextSweep.CompareAndSwap(next, now+s.sweepEvery()) {
			s.sweep(now)
		}
	}
	return err
}

func (s *Store) appendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool, now int64) error {
	if fresh != nil && len(fresh) != len(samples) {
		return fmt.Errorf("appending samples: %d fresh flags for %d samples", len(fresh), len(samples))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("appending samples: %w", err)
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return fmt.Errorf("appending samples: %w", store.ErrClosed)
	}
	if len(samples) == 0 {
		return nil
	}

	ents := s.resolve(samples, now)
	maxT := int64(math.MaxInt64)
	if s.maxFuture >= 0 {
		maxT = now + s.maxFuture
	}
	var (
		c       counts
		checked []pending
	)
	app := s.db.Appender(ctx)
	for i := range samples {
		smp, e := &samples[i], ents[i]
		if e != nil && (i == 0 || ents[i-1] != e) {
			e.fast.Add(1) // before maxT is read; see settle
		}
		switch {
		case e == nil:
			c.invalid++
			continue
		case smp.Time > maxT:
			c.outOfBounds++
			continue
		case smp.Time <= e.maxT.Load() || e.checking.Load():
			if checked == nil {
				checked = make([]pending, 0, len(samples)-i)
			}
			checked = append(checked, pending{e: e, t: smp.Time, v: smp.Value, i: i})
			continue
		}
		ref := e.ref.Load()
		got, err := app.Append(storage.SeriesRef(ref), e.lset, smp.Time, smp.Value)
		if err != nil {
			c.rejected(err)
			continue
		}
		if uint64(got) != ref {
			e.ref.Store(uint64(got))
		}
		e.raise(smp.Time)
		if fresh != nil {
			fresh[i] = true
		}
	}
	if s.testFastCommit != nil {
		s.testFastCommit()
	}
	err := app.Commit()
	for i, e := range ents {
		if e != nil && (i == 0 || ents[i-1] != e) && e.fast.Add(-1) == 0 && e.checking.Load() {
			s.settleMu.Lock()
			s.settled.Broadcast()
			s.settleMu.Unlock()
		}
	}
	if err != nil {
		return fmt.Errorf("committing samples: %w", err)
	}
	if len(checked) > 0 {
		if err := s.appendChecked(context.WithoutCancel(ctx), checked, &c, fresh); err != nil {
			return err
		}
	}
	s.record(&c)
	return c.err(len(samples))
}

// appendChecked stores the samples that are not newer than their series'
// newest known sample, skipping those whose time is already stored, and
// learns the newest stored time of series not seen before. It takes the
// gapMu of every series it stores into (in creation order, so concurrent
// calls cannot deadlock), waits for the fast-path Appends in flight of
// those series to commit (settle), and only then opens its querier; it
// holds the locks until its samples are committed: a concurrent call for
// the same series then reads what this one stored, and what this one
// reads includes every sample stored or being stored at or before the
// newest time it settled.
// checkedCommitSeries is how many series the checked path stores per
// commit. The TSDB's commit of out-of-order samples costs the square of
// the out-of-order chunks it fills (collectOOORecords, v0.316.0, sizes a
// slice by every chunk filled so far in the commit): a late request over
// 1 000 series × 10 metrics allocated 103 MB in one commit. On an error
// the series committed before are stored: the caller's retry finds them
// as duplicates.
const checkedCommitSeries = 256

func (s *Store) appendChecked(ctx context.Context, ps []pending, c *counts, fresh []bool) (err error) {
	slices.SortStableFunc(ps, func(a, b pending) int {
		return cmp.Or(cmp.Compare(a.e.id, b.e.id), cmp.Compare(a.t, b.t))
	})
	type group struct {
		ps   []pending
		maxT int64 // the series' newest time, settled
	}
	var groups []group
	for len(ps) > 0 {
		n := 1
		for n < len(ps) && ps[n].e == ps[0].e {
			n++
		}
		groups = append(groups, group{ps: ps[:n]})
		ps = ps[n:]
	}
	var locked []*series
	defer func() {
		for _, e := range locked {
			e.gapMu.Unlock()
		}
	}()
	for _, g := range groups {
		g.ps[0].e.gapMu.Lock()
		locked = append(locked, g.ps[0].e)
	}
	// The querier reads up to the newest known time of every series (all
	// of it for a series whose newest time is unknown): what follows the
	// samples tells how far the gap after them goes. It is opened only if
	// some series needs it.
	mint, maxt := int64(math.MaxInt64), int64(math.MinInt64)
	for i := range groups {
		g := &groups[i]
		g.maxT = s.settle(g.ps[0].e)
		mint = min(mint, g.ps[0].t)
		maxt = max(maxt, g.ps[len(g.ps)-1].t, g.maxT)
	}
	var q storage.Querier
	app := s.db.Appender(ctx)
	var it chunkenc.Iterator
	for i, g := range groups {
		if i > 0 && i%checkedCommitSeries == 0 {
			// Commit what the appender holds (see checkedCommitSeries),
			// still holding every series' lock.
			if err := app.Commit(); err != nil {
				if q != nil {
					_ = q.Close()
				}
				return fmt.Errorf("committing checked samples: %w", err)
			}
			app = s.db.Appender(ctx)
		}
		e := g.ps[0].e
		if g.ps[0].t > e.gapLo && g.ps[len(g.ps)-1].t < e.gapHi {
			appendGap(app, g.ps, c, fresh)
			continue
		}
		if q == nil {
			if q, err = s.db.Querier(mint, maxt); err != nil {
				_ = app.Rollback()
				return fmt.Errorf("opening querier: %w", err)
			}
		}
		it, err = s.appendGroup(ctx, q, app, it, g.ps, g.maxT, c, fresh)
		if err != nil {
			_ = app.Rollback()
			_ = q.Close()
			return err
		}
	}
	if q != nil {
		if err := q.Close(); err != nil {
			_ = app.Rollback()
			return fmt.Errorf("closing querier: %w", err)
		}
	}
	if err := app.Commit(); err != nil {
		return fmt.Errorf("committing checked samples: %w", err)
	}
	return nil
}

// settle waits until no fast-path Append that read e's newest time before
// is in flight, and returns that newest time: every sample of e at or
// before it is committed, or is being stored by a checked call holding
// e.gapMu. A fast-path Append starting later stores only after it. The
// caller holds e.gapMu.
func (s *Store) settle(e *series) int64 {
	e.checking.Store(true)
	if e.fast.Load() != 0 {
		if s.testSettleWait != nil {
			s.testSettleWait()
		}
		s.settleMu.Lock()
		for e.fast.Load() != 0 {
			s.settled.Wait()
		}
		s.settleMu.Unlock()
	}
	maxT := e.maxT.Load()
	e.checking.Store(false)
	return maxT
}

// appendGroup appends the time-sorted samples of one series that are not
// stored yet, and learns the gap after them. it is a reusable iterator;
// maxT is the series' newest time as settled before q was opened (the gap
// ends at it at the latest: a fast path may be storing after it). The
// caller holds the series' gapMu.
func (s *Store) appendGroup(ctx context.Context, q storage.Querier, app storage.Appender, it chunkenc.Iterator, group []pending, maxT int64, c *counts, fresh []bool) (chunkenc.Iterator, error) {
	e := group[0].e
	learn := maxT == unknownTime
	// Read up to the series' newest sample: what follows the group tells
	// how far the gap after it goes.
	hi := maxT
	if learn {
		hi = math.MaxInt64
	}
	ss := q.Select(ctx, false, &storage.SelectHints{Start: group[0].t, End: hi},
		labels.MustNewMatcher(labels.MatchEqual, LabelMachine, e.lset.Get(LabelMachine)),
		labels.MustNewMatcher(labels.MatchEqual, LabelMetric, e.lset.Get(LabelMetric)))
	found := ss.Next()
	if found {
		it = ss.At().Iterator(it)
	}
	done := !found // no stored samples left to compare with

	newest := int64(math.MinInt64)
	var (
		last    int64 // time of the previous sample of the group...
		lastV   float64
		hasLast bool // ...if it was stored or found stored
	)
	for _, p := range group {
		if hasLast && p.t == last {
			c.same(p.v, lastV)
			continue
		}
		if !done {
			if it.Seek(p.t) == chunkenc.ValNone {
				done = true
			} else if t, v := it.At(); t == p.t {
				c.same(p.v, v)
				last, lastV, hasLast = t, v, true
				newest = max(newest, t)
				continue
			}
		}
		if !appendNew(app, e, p, c, fresh) {
			continue
		}
		last, lastV, hasLast = p.t, p.v, true
		newest = max(newest, p.t)
	}
	// The gap after the group: up to the next stored sample, or to the
	// newest known time (the fast path stores only after it).
	// The newest time unknown and nothing stored after the group: no gap
	// (the fast path will take what follows).
	gapLo, gapHi := group[len(group)-1].t, maxT
	if learn {
		gapHi = math.MinInt64
	}
	if !done && it.Seek(gapLo+1) != chunkenc.ValNone {
		gapHi = it.AtT()
		if learn {
			for vt := chunkenc.ValFloat; vt != chunkenc.ValNone; vt = it.Next() {
				newest = max(newest, it.AtT())
			}
		}
	}
	e.gapLo, e.gapHi = gapLo, gapHi
	if found {
		if err := it.Err(); err != nil {
			return it, fmt.Errorf("reading stored samples of %s: %w", e.lset, err)
		}
	}
	if err := ss.Err(); err != nil {
		return it, fmt.Errorf("reading stored samples of %s: %w", e.lset, err)
	}
	if newest != math.MinInt64 {
		e.raise(newest)
	}
	return it, nil
}

// appendGap appends the time-sorted samples of one series that all fall in
// its gap, where nothing is stored: only duplicates within the group are
// dropped. The caller holds the series' gapMu.
func appendGap(app storage.Appender, group []pending, c *counts, fresh []bool) {
	e := group[0].e
	var (
		last    int64
		lastV   float64
		hasLast bool
	)
	for _, p := range group {
		if hasLast && p.t == last {
			c.same(p.v, lastV)
			continue
		}
		if !appendNew(app, e, p, c, fresh) {
			continue
		}
		last, lastV, hasLast = p.t, p.v, true
	}
	e.gapLo = group[len(group)-1].t
}

// resolve returns the cached series of every sample, nil for a sample
// without machine or metric, creating the missing ones, and marks them
// seen at now.
func (s *Store) resolve(samples []telemetry.Sample, now int64) []*series {
	ents := make([]*series, len(samples))
	missing := false
	s.mu.RLock()
	var (
		lastKey store.SeriesKey
		last    *series
	)
	for i := range samples {
		k := store.SeriesKey{Machine: samples[i].Machine, Metric: samples[i].Metric}
		if k.Machine == "" || k.Metric == "" {
			continue
		}
		if last != nil && k == lastKey {
			ents[i] = last
			continue
		}
		e := s.series[k]
		if e == nil {
			missing = true
			continue
		}
		e.see(now)
		ents[i], lastKey, last = e, k, e
	}
	s.mu.RUnlock()
	if !missing {
		return ents
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range samples {
		k := store.SeriesKey{Machine: samples[i].Machine, Metric: samples[i].Metric}
		if ents[i] != nil || k.Machine == "" || k.Metric == "" {
			continue
		}
		e := s.series[k]
		if e == nil {
			// Clone: the sample's strings may alias a decoder's buffer.
			k = store.SeriesKey{Machine: strings.Clone(k.Machine), Metric: strings.Clone(k.Metric)}
			e = &series{id: s.nextID, lset: labels.FromStrings(LabelMachine, k.Machine, LabelMetric, k.Metric)}
			e.maxT.Store(unknownTime)
			s.nextID++
			s.series[k] = e
		}
		e.see(now)
		ents[i] = e
	}
	return ents
}

// see marks e seen at now (ms), to a second: most calls only read.
func (e *series) see(now int64) {
	if now-e.seen.Load() >= 1000 {
		e.seen.Store(now)
	}
}

// sweepEvery is how often (ms) Append sweeps idle series out of the
// cache: twice per idle time, so a series goes at most 1.5 idle times
// after its last sample.
func (s *Store) sweepEvery() int64 { return max(s.idle/2, 1000) }

// sweep forgets the series not seen for the idle time. It holds appendMu
// for writing, so no Append holds a series it forgets (it waits for the
// Appends running, not for queries); a sample of a
// forgotten series creates it again, with its newest time unknown, so
// that sample takes the checked path: it is compared with the stored data,
// which also gives the series' newest time (appendGroup), and TSDB finds
// its series again by labels (reference 0). The map is rebuilt when most
// of it went, since a Go map does not shrink.
func (s *Store) sweep(now int64) {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	cutoff := now - s.idle
	dropped := 0
	for k, e := range s.series {
		if e.seen.Load() < cutoff {
			delete(s.series, k)
			dropped++
		}
	}
	if dropped > len(s.series) {
		kept := make(map[store.SeriesKey]*series, len(s.series))
		for k, e := range s.series {
			kept[k] = e
		}
		s.series = kept
	}
}

// CachedSeries returns how many series the store caches (see
// Options.SeriesIdle).
func (s *Store) CachedSeries() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.series)
}

// Select calls fn for every sample of key in [from, to] in time order, until
// fn returns false. fn must not call Close.
func (s *Store) Select(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("selecting samples: %w", err)
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return fmt.Errorf("selecting samples: %w", store.ErrClosed)
	}
	if from > to || key.Machine == "" || key.Metric == "" {
		return nil
	}
	q, err := s.db.Querier(from, to)
	if err != nil {
		return fmt.Errorf("opening querier: %w", err)
	}
	defer func() {
		if cerr := q.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing querier: %w", cerr)
		}
	}()
	ss := q.Select(ctx, false, &storage.SelectHints{Start: from, End: to},
		labels.MustNewMatcher(labels.MatchEqual, LabelMachine, key.Machine),
		labels.MustNewMatcher(labels.MatchEqual, LabelMetric, key.Metric))
	var it chunkenc.Iterator
	// The matchers select at most one series: every series has exactly
	// these two labels.
	for ss.Next() {
		it = ss.At().Iterator(it)
		n := 0
		for vt := it.Seek(from); vt != chunkenc.ValNone; vt = it.Next() {
			if vt != chunkenc.ValFloat {
				continue // never written by Append
			}
			t, v := it.At()
			if t > to {
				break
			}
			if n++; n%8192 == 0 {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("selecting samples: %w", err)
				}
			}
			if !fn(store.Point{Time: t, Value: v}) {
				return nil
			}
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("reading samples: %w", err)
		}
	}
	if err := ss.Err(); err != nil {
		return fmt.Errorf("selecting series: %w", err)
	}
	return nil
}

// Series lists the series with samples in [from, to], sorted by machine,
// then metric.
func (s *Store) Series(ctx context.Context, from, to int64) (keys []store.SeriesKey, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing series: %w", err)
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("listing series: %w", store.ErrClosed)
	}
	if from > to {
		return nil, nil
	}
	q, err := s.db.Querier(from, to)
	if err != nil {
		return nil, fmt.Errorf("opening querier: %w", err)
	}
	defer func() {
		if cerr := q.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing querier: %w", cerr)
		}
	}()
	// Sorted series are sorted by their labels: machine < metric.
	ss := q.Select(ctx, true, &storage.SelectHints{Start: from, End: to},
		labels.MustNewMatcher(labels.MatchNotEqual, LabelMachine, ""),
		labels.MustNewMatcher(labels.MatchNotEqual, LabelMetric, ""))
	var it chunkenc.Iterator
	for ss.Next() {
		sr := ss.At()
		// A series is selected if a chunk overlaps the range; check that a
		// sample falls in it.
		it = sr.Iterator(it)
		if it.Seek(from) == chunkenc.ValNone || it.AtT() > to {
			if err := it.Err(); err != nil {
				return nil, fmt.Errorf("reading samples: %w", err)
			}
			continue
		}
		lset := sr.Labels()
		keys = append(keys, store.SeriesKey{
			// Clone: label strings may point into memory-mapped index data.
			Machine: strings.Clone(lset.Get(LabelMachine)),
			Metric:  strings.Clone(lset.Get(LabelMetric)),
		})
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("listing series: %w", err)
		}
	}
	if err := ss.Err(); err != nil {
		return nil, fmt.Errorf("selecting series: %w", err)
	}
	return keys, nil
}

// Close waits for running operations, then writes the last WAL page, fsyncs
// it and releases the directory. Later calls return store.ErrClosed; a
// second Close returns nil.
func (s *Store) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	close(s.stop)
	<-s.done
	err := s.db.Close()
	if rerr := s.roll.close(); err == nil {
		err = rerr
	}
	s.reg.unregisterAll()
	serr := s.states.close()
	if err != nil {
		return fmt.Errorf("closing tsdb: %w", err)
	}
	return serr
}

// registerer passes registrations on to a prometheus.Registerer, logs
// instead of panicking when one fails (TSDB calls MustRegister), and
// unregisters everything on Close so that the directory can be reopened
// with the same registry.
type registerer struct {
	reg    prometheus.Registerer
	logger *slog.Logger

	mu sync.Mutex
	cs []prometheus.Collector
}

func (r *registerer) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.mu.Lock()
	r.cs = append(r.cs, c)
	r.mu.Unlock()
	return nil
}

func (r *registerer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			r.logger.Warn("registering store metrics", "err", err)
		}
	}
}

// Unregister passes on; unregisterAll unregistering c again is harmless.
func (r *registerer) Unregister(c prometheus.Collector) bool {
	return r.reg.Unregister(c)
}

// unregisterAll unregisters every collector registered through r. r may be
// nil.
func (r *registerer) unregisterAll() {
	if r == nil {
		return
	}
	r.mu.Lock()
	cs := r.cs
	r.cs = nil
	r.mu.Unlock()
	for _, c := range cs {
		r.reg.Unregister(c)
	}
}

// appendNew appends p, a sample not stored yet, to the series e through
// app, keeps the series' reference up to date and marks p fresh; a
// sample the TSDB refuses is counted and reported false.
func appendNew(app storage.Appender, e *series, p pending, c *counts, fresh []bool) bool {
	ref := e.ref.Load()
	got, err := app.Append(storage.SeriesRef(ref), e.lset, p.t, p.v)
	if err != nil {
		c.rejected(err)
		return false
	}
	if uint64(got) != ref {
		e.ref.Store(uint64(got))
	}
	if fresh != nil {
		fresh[p.i] = true
	}
	return true
}
