// Package postgres is twinline's PostgreSQL store: a store.Store on
// PostgreSQL's native declarative partitioning, with pgx v5.
//
// It has two layouts (Options.Layout). The packed one, the default for a
// new store, gives series integer ids, writes samples as narrow head rows
// and packs each closed day into one row per series and hour, writing the
// aggregate tiers (window, 1 min, 1 h) once, at compaction: see packed.go,
// compact.go and docs/decisions/0030-postgres-at-scale.md. The rows layout,
// described below, is that of stores created before migration 0010, until
// MigratePacked moves them.
//
// Raw samples go to the table samples, partitioned by range on time into
// daily partitions; the aggregates of every window (10 s by default) go to
// sample_aggs, partitioned the same way. Both are written in one
// transaction, so the stored aggregates always equal the aggregates of the
// deduplicated raw samples: a replayed batch changes nothing and a late
// sample is merged exactly once. See docs/postgres.md and
// docs/decisions/0003-postgres-store.md.
//
// # Write path
//
// Append returns nil only after COMMIT returned. It first COPYs the rows
// straight into samples (the fast path, no staging). A unique violation
// there means the batch repeats stored samples (a replay, or duplicates
// within the batch): the transaction is rolled back and the rows take the
// slow path, COPY into a temporary staging table, then INSERT … ON CONFLICT
// DO NOTHING RETURNING, whose returned rows, and only those, are merged into
// the aggregates. Partitions are created ahead by Run and on demand for any
// day a batch touches.
//
// # Outage
//
// When PostgreSQL is unreachable Append writes the rows to a local spool
// (fsync'ed files in Options.SpoolDir, at most Options.SpoolBytes) and
// returns nil; Run replays the spool on recovery through the slow path, so
// nothing is stored twice. When the spool is full, or there is none, Append
// returns an error wrapping ErrUnavailable.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// ErrUnavailable reports that PostgreSQL is unreachable and the samples could
// not be spooled either (the spool is full or disabled): nothing was
// acknowledged, the caller should retry later (HTTP 503 + Retry-After).
var ErrUnavailable = errors.New("postgres unavailable")

// ErrInvalidSample reports a sample PostgreSQL cannot store as given: a
// machine or metric name that is not UTF-8 or contains a NUL byte, or a NaN
// value. Nothing of the call is stored.
var ErrInvalidSample = errors.New("invalid sample")

const dayMs = int64(24 * time.Hour / time.Millisecond)

// The absolute bounds of a sample time: from the Unix epoch to the end of
// year 9999 (partition names have four-digit years).
var (
	minTime = int64(0)
	maxTime = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli() - 1
)

// Options configure a Store. The zero value gives the defaults.
type Options struct {
	// Schema is the schema holding the store's tables, created if missing.
	// Default: the search_path of the URL, else "public".
	Schema string
	// Retention is how long samples are kept, by wall clock: a daily
	// partition is dropped once its end is Retention behind Now, and older
	// samples are refused (ErrOutOfBounds). Default 30 days; negative keeps
	// everything.
	Retention time.Duration
	// MaxFuture is how far ahead of Now a sample may be. Default 10
	// minutes; negative disables the check.
	MaxFuture time.Duration
	// Window is the bucket width of the aggregates table. It must divide a
	// day and cannot change once the store has data. Default 10 seconds.
	Window time.Duration
	// PartitionsAhead is how many daily partitions after today Run keeps
	// created. Default 2.
	PartitionsAhead int
	// SpoolDir is the directory of the outage spool; empty disables the
	// spool (an outage then fails Append with ErrUnavailable at once).
	SpoolDir string
	// SpoolBytes bounds the spool's size on disk. Default 256 MiB.
	SpoolBytes int64
	// WriteTimeout bounds one write transaction; when it expires the
	// database counts as unreachable and the samples are spooled.
	// Default 5 seconds.
	WriteTimeout time.Duration
	// ReplayInterval is how often Run probes the database and replays the
	// spool while it is not empty. Default 1 second.
	ReplayInterval time.Duration
	// MaintenanceInterval is how often Run creates partitions ahead and
	// enforces retention. Default 1 hour.
	MaintenanceInterval time.Duration
	// StartWait is how long Open waits for the database to be reachable
	// (a restart during an outage: retrying with backoff and logging each
	// failure) before it gives up; errors other than an unreachable or
	// starting database fail at once. Default 2 minutes; negative: no
	// retry.
	StartWait time.Duration
	// MaxConns caps the connection pool. Default: pgxpool's (the URL's
	// pool_max_conns, else max(4, CPUs)).
	MaxConns int32
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Layout is how samples are stored: LayoutPacked (integer series ids,
	// samples packed per series and hour, aggregates written once by
	// compaction) or LayoutRows (a row per sample with its names, the
	// aggregates merged on every write: the layout before version 0010).
	// Default: the layout the store was created with, LayoutPacked for a
	// new store. A store in the rows layout moves to the packed one with
	// `twinline migrate --packed` (MigratePacked).
	Layout string
	// Retention1m and Retention1h are how long the 1 min and 1 h rollups
	// of the packed layout are kept (at least Retention). Defaults
	// max(90 days, Retention) and max(5 × 365 days, Retention1m); negative
	// keeps everything.
	Retention1m time.Duration
	Retention1h time.Duration
	// CompactAfter is how long after a day ends its samples are packed
	// (packed layout): late samples up to then cost a row each, as before.
	// Default 1 hour.
	CompactAfter time.Duration
}

// The layouts of Options.Layout.
const (
	LayoutRows   = "rows"
	LayoutPacked = "packed"
)

func (o Options) withDefaults() Options {
	if o.Retention == 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.MaxFuture == 0 {
		o.MaxFuture = 10 * time.Minute
	}
	if o.Window == 0 {
		o.Window = 10 * time.Second
	}
	if o.PartitionsAhead == 0 {
		o.PartitionsAhead = 2
	}
	if o.SpoolBytes == 0 {
		o.SpoolBytes = 256 << 20
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = 5 * time.Second
	}
	if o.ReplayInterval == 0 {
		o.ReplayInterval = time.Second
	}
	if o.MaintenanceInterval == 0 {
		o.MaintenanceInterval = time.Hour
	}
	if o.StartWait == 0 {
		o.StartWait = 2 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	// The tiers' defaults are the embedded store's (--retention-1m,
	// --retention-1h): each keeps at least what the finer one keeps.
	// A negative retention (keep everything) keeps the tiers too.
	switch {
	case o.Retention1m == 0 && o.Retention < 0:
		o.Retention1m = o.Retention
	case o.Retention1m == 0:
		o.Retention1m = max(90*24*time.Hour, o.Retention)
	}
	switch {
	case o.Retention1h == 0 && o.Retention1m < 0:
		o.Retention1h = o.Retention1m
	case o.Retention1h == 0:
		o.Retention1h = max(5*365*24*time.Hour, o.Retention1m)
	}
	if o.CompactAfter == 0 {
		o.CompactAfter = time.Hour
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	w := o.Window.Milliseconds()
	if w < 1 || time.Duration(w)*time.Millisecond != o.Window || dayMs%w != 0 {
		errs = append(errs, fmt.Errorf("window %v must be a whole number of milliseconds dividing a day", o.Window))
	}
	if o.PartitionsAhead < 0 {
		errs = append(errs, fmt.Errorf("partitions ahead %d must not be negative", o.PartitionsAhead))
	}
	if o.SpoolBytes < 0 {
		errs = append(errs, fmt.Errorf("spool bytes %d must not be negative", o.SpoolBytes))
	}
	if o.WriteTimeout < 0 || o.ReplayInterval < 0 || o.MaintenanceInterval < 0 {
		errs = append(errs, errors.New("timeouts and intervals must not be negative"))
	}
	if o.Layout != "" && o.Layout != LayoutRows && o.Layout != LayoutPacked {
		errs = append(errs, fmt.Errorf("layout %q must be %q or %q", o.Layout, LayoutPacked, LayoutRows))
	}
	if o.Layout != LayoutRows && (w < 1 || hourMs%w != 0) {
		errs = append(errs, fmt.Errorf("window %v must divide an hour in the packed layout", o.Window))
	}
	if o.CompactAfter < 0 {
		errs = append(errs, fmt.Errorf("compact after %v must not be negative", o.CompactAfter))
	}
	if o.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("max conns %d must not be negative", o.MaxConns))
	}
	return errors.Join(errs...)
}

// Store is a store.Store on PostgreSQL. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	opts Options
	// logger names the store (component postgres_store); base is the
	// caller's, from which the registry and the token store name
	// themselves: slog's With appends, so a second "component" would be
	// a duplicate key in every JSON line.
	logger  *slog.Logger
	base    *slog.Logger
	schema  string
	window  int64 // ms
	metrics *metrics

	parts partitions
	// unmanaged: samples is not natively partitioned (a TimescaleDB
	// hypertable, see docs/postgres.md): the store creates no partitions,
	// and retention is drop_chunks when timescale is set.
	unmanaged bool
	timescale bool
	// packed: the store is in the packed layout (Options.Layout).
	packed bool
	ids    seriesIDs
	// legacy: the packed store still has rows in the legacy table samples
	// (MigratePacked is moving them): reads include them, writes check them.
	legacy atomic.Bool
	// downsampleSQL: DownsampleRange keeps its SQL plan (tests compare the
	// Go plan of packed_downsample.go with it); set before use.
	downsampleSQL bool
	// tierSelects counts the PromQL Selects that read a rollup tier
	// (tests).
	tierSelects atomic.Int64
	spool       *spool // nil without SpoolDir
	// headWrites: when this process last wrote head rows of each day
	// (compactQuiet).
	headWritesMu sync.Mutex
	headWrites   map[int64]time.Time

	// life is held shared by every operation and exclusively by Close.
	life   sync.RWMutex
	closed bool

	drainMu     sync.Mutex   // one spool replay at a time
	unreachable atomic.Bool  // the last write found the database unreachable
	lastFailure atomic.Int64 // unix ns of the last outage error
	lastErr     atomic.Pointer[error]

	testHookReplayed func(n int, err error) // called by Run after each replay

	// locks are the advisory locks taken with TryLock, released by Close.
	locksMu sync.Mutex
	locks   []*Lock
}

var (
	_ store.Store         = (*Store)(nil)
	_ store.FreshAppender = (*Store)(nil)
	_ store.Aggregator    = (*Store)(nil)
	_ store.Downsampler   = (*Store)(nil)
)

// Open connects to the database at url (a PostgreSQL URL or DSN), applies
// the migrations, checks the settings, creates the partitions around now and
// loads the spool of an earlier run. reg may be nil. The spool is replayed by
// Run (and by the first Append that finds the database reachable).
func Open(ctx context.Context, url string, opts Options, logger *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base := logger
	logger = base.With("component", "postgres_store")
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("opening postgres store: parsing url: %w", err)
	}
	schema := schemaOf(cfg.ConnConfig, opts.Schema)
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	if _, set := cfg.ConnConfig.RuntimeParams["jit"]; !set {
		// The queries read at most a few hundred thousand rows through
		// indexes; JIT compilation costs more than it saves (tens of ms,
		// triggered by the row estimates of the lateral range probes).
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	if _, set := cfg.ConnConfig.RuntimeParams["max_parallel_workers_per_gather"]; !set {
		// Per-series index reads: starting workers costs more than it
		// saves, and takes CPU from ingest.
		cfg.ConnConfig.RuntimeParams["max_parallel_workers_per_gather"] = "0"
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > opts.WriteTimeout {
		cfg.ConnConfig.ConnectTimeout = opts.WriteTimeout
	}
	s := &Store{
		opts:   opts,
		logger: logger,
		base:   base,
		schema: schema,
		window: opts.Window.Milliseconds(),
		parts:  partitions{known: map[int64]bool{}},
		ids:    seriesIDs{byName: map[string]int32{}},
	}
	if opts.SpoolDir != "" {
		s.spool, err = openSpool(opts.SpoolDir, opts.SpoolBytes, logger)
		if err != nil {
			return nil, fmt.Errorf("opening postgres store: %w", err)
		}
	}
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	s.metrics = newMetrics(s)
	if err := s.initWaiting(ctx); err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("opening postgres store: %w", err)
	}
	if reg != nil {
		if err := s.metrics.register(reg); err != nil {
			s.pool.Close()
			return nil, fmt.Errorf("opening postgres store: registering metrics: %w", err)
		}
	}
	return s, nil
}

// initWaiting runs init, retrying while the database is unreachable or
// starting up, for up to StartWait: a replica restarted during an outage
// waits for the database instead of exiting (and a supervisor restarting
// it in a loop). It logs each failed attempt.
func (s *Store) initWaiting(ctx context.Context) error {
	deadline := time.Now().Add(s.opts.StartWait)
	backoff := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := s.init(ctx)
		if err == nil || !unreachable(err) || s.opts.StartWait < 0 || ctx.Err() != nil {
			return err
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			return fmt.Errorf("database unreachable for %v: %w", s.opts.StartWait, err)
		}
		s.logger.Warn("waiting for PostgreSQL", "attempt", attempt, "err", err, "gives_up_in", wait.Round(time.Second).String())
		t := time.NewTimer(min(backoff, wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the database: %w", ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// unreachable reports whether err says the database cannot be reached or
// cannot take connections yet (starting up, shutting down), as opposed to
// refusing this client (authentication, a wrong database, a settings
// mismatch), which waiting does not mend.
func unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 57: operator intervention (admin_shutdown, crash_shutdown,
		// cannot_connect_now); class 08: connection exceptions.
		return strings.HasPrefix(pgErr.Code, "57") || strings.HasPrefix(pgErr.Code, "08")
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	return errors.As(err, &netErr) || errors.As(err, &connectErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (s *Store) init(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	err = migrate(ctx, conn.Conn(), s.schema, s.logger)
	conn.Release()
	if err != nil {
		return err
	}
	if err := s.checkSettings(ctx); err != nil {
		return err
	}
	if err := s.checkLayout(ctx); err != nil {
		return err
	}
	if err := s.detectLayout(ctx); err != nil {
		return err
	}
	if err := s.repairHead(ctx); err != nil {
		return err
	}
	if err := s.loadPartitions(ctx); err != nil {
		return err
	}
	return s.createAhead(ctx, s.opts.Now())
}

// checkSettings records the aggregate window on first use and refuses a
// different one later: the stored aggregates would not match it.
func (s *Store) checkSettings(ctx context.Context) error {
	want := s.opts.Window.String()
	var got string
	err := s.pool.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO settings (name, value) VALUES ('window', $1)
			ON CONFLICT (name) DO NOTHING RETURNING value
		)
		SELECT value FROM ins UNION ALL SELECT value FROM settings WHERE name = 'window'
		LIMIT 1`, want).Scan(&got)
	if err != nil {
		return fmt.Errorf("checking settings: %w", err)
	}
	if got != want {
		return fmt.Errorf("checking settings: the store's aggregate window is %s, not %s", got, want)
	}
	return nil
}

// schemaOf returns the schema: explicit, else the first of the URL's
// search_path, else public.
func schemaOf(cfg *pgx.ConnConfig, explicit string) string {
	if explicit != "" {
		return explicit
	}
	if sp := cfg.RuntimeParams["search_path"]; sp != "" {
		for i := range len(sp) {
			if sp[i] == ',' {
				sp = sp[:i]
				break
			}
		}
		if sp = trimQuotes(sp); sp != "" {
			return sp
		}
	}
	return "public"
}

func trimQuotes(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '"') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '"') {
		s = s[:len(s)-1]
	}
	return s
}

// Pool returns the connection pool, for the registry and alarm tables.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Schema returns the schema of the store's tables.
func (s *Store) Schema() string { return s.schema }

// Close waits for running operations, releases the pool and then the
// advisory locks taken with TryLock. The spool stays on disk and is
// replayed by the next Open's Run.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.closed {
		return fmt.Errorf("closing postgres store: %w", store.ErrClosed)
	}
	s.closed = true
	s.pool.Close()
	s.locksMu.Lock()
	defer s.locksMu.Unlock()
	var errs []error
	for _, l := range s.locks {
		errs = append(errs, l.Release())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing postgres store: %w", err)
	}
	return nil
}

// acquire holds the store open for one operation; release with s.life.RUnlock.
func (s *Store) acquire() error {
	s.life.RLock()
	if s.closed {
		s.life.RUnlock()
		return store.ErrClosed
	}
	return nil
}

// Ready reports whether the store can take writes: an error wrapping
// ErrUnavailable while the last write found PostgreSQL unreachable (the
// samples then go to the spool), nil otherwise.
func (s *Store) Ready() error {
	if !s.unreachable.Load() {
		return nil
	}
	var spooled int64
	if s.spool != nil {
		spooled = s.spool.size()
	}
	cause := "unknown error"
	if p := s.lastErr.Load(); p != nil {
		cause = (*p).Error()
	}
	return fmt.Errorf("postgres unreachable, %d bytes spooled (%s): %w", spooled, cause, ErrUnavailable)
}

// Run keeps partitions created ahead, enforces retention, and replays the
// spool when the database is back, until ctx ends. It returns nil then.
func (s *Store) Run(ctx context.Context) error {
	replay := time.NewTicker(s.opts.ReplayInterval)
	defer replay.Stop()
	maint := time.NewTicker(s.opts.MaintenanceInterval)
	defer maint.Stop()
	s.maintain(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-replay.C:
			if s.spool == nil || s.spool.size() == 0 {
				if s.unreachable.Load() {
					s.probe(ctx)
				}
				continue
			}
			n, err := s.ReplaySpool(ctx)
			switch {
			case errors.Is(err, store.ErrClosed):
				return nil
			case err != nil && ctx.Err() == nil:
				s.logger.Warn("replaying spool", "err", err, "spool_bytes", s.spool.size())
			case n > 0:
				s.logger.Info("replayed spool", "samples", n)
			}
			if s.testHookReplayed != nil {
				s.testHookReplayed(n, err)
			}
		case <-maint.C:
			s.maintain(ctx)
		}
	}
}

func (s *Store) maintain(ctx context.Context) {
	if err := s.acquire(); err != nil {
		return
	}
	defer s.life.RUnlock()
	now := s.opts.Now()
	if err := s.createAhead(ctx, now); err != nil && ctx.Err() == nil {
		s.logger.Warn("creating partitions ahead", "err", err)
	}
	if s.packed {
		// MigratePacked may have moved the last legacy rows (writes then
		// leave the slow path), or started since this store opened.
		if err := s.checkLegacy(ctx); err != nil && ctx.Err() == nil {
			s.logger.Warn("checking for legacy samples", "err", err)
		}
	}
	if n, err := s.compact(ctx, now, true); err != nil && ctx.Err() == nil {
		s.logger.Warn("compacting", "err", err)
	} else if n > 0 {
		s.logger.Info("compacted head rows into chunks", "rows", n)
	}
	if n, err := s.enforceRetention(ctx, now); err != nil && ctx.Err() == nil {
		s.logger.Warn("enforcing retention", "err", err)
	} else if n > 0 {
		s.logger.Info("retention dropped partitions", "partitions", n)
	}
}

// probe pings the database and clears the unreachable state on success.
func (s *Store) probe(ctx context.Context) {
	if err := s.acquire(); err != nil {
		return
	}
	defer s.life.RUnlock()
	pctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	if err := s.pool.Ping(pctx); err == nil {
		s.setReachable()
	}
}

func (s *Store) setReachable() {
	if s.unreachable.Swap(false) {
		s.logger.Info("postgres reachable again")
	}
}

func (s *Store) setUnreachable(err error) {
	s.lastErr.Store(&err)
	s.lastFailure.Store(time.Now().UnixNano())
	if !s.unreachable.Swap(true) {
		s.logger.Warn("postgres unreachable", "err", err)
	}
}

// validName reports whether PostgreSQL can store name as text.
func validName(name string) bool {
	if !utf8.ValidString(name) {
		return false
	}
	for i := range len(name) {
		if name[i] == 0 {
			return false
		}
	}
	return true
}

// checkSamples rejects samples with names PostgreSQL cannot store, and NaN
// values: NaN has no order, so the minimum and maximum of a window would
// depend on the order the samples arrived in.
func checkSamples(samples []telemetry.Sample) error {
	for i := range samples {
		if !validName(samples[i].Machine) || !validName(samples[i].Metric) {
			return fmt.Errorf("sample %d (machine %q, metric %q): names must be UTF-8 without NUL: %w",
				i, samples[i].Machine, samples[i].Metric, ErrInvalidSample)
		}
		if math.IsNaN(samples[i].Value) {
			return fmt.Errorf("sample %d (machine %q, metric %q): value is NaN: %w",
				i, samples[i].Machine, samples[i].Metric, ErrInvalidSample)
		}
	}
	return nil
}
