package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// row is one sample on its way to the database.
type row struct {
	ms      int64
	machine string
	metric  string
	value   float64
	idx     int   // index of the sample in the Append call
	sid     int32 // series id (packed layout), set by writeTx
}

// rowKey is the first-write-wins key of a row.
type rowKey struct {
	machine, metric string
	ms              int64
}

// sampleColumns are the columns of samples, in table order.
var sampleColumns = []string{"time", "machine", "metric", "value"}

// Append stores samples; it returns nil once they are committed, or spooled
// while PostgreSQL is unreachable. Samples outside the retention or
// MaxFuture bounds are reported with an error wrapping store.ErrOutOfBounds
// after the others were stored.
func (s *Store) Append(ctx context.Context, samples []telemetry.Sample) error {
	return s.append(ctx, samples, nil, nil)
}

// AppendFresh is Append, and sets fresh[i] (len(fresh) must equal
// len(samples)) to whether samples[i] was stored by this call, see
// store.FreshAppender. Samples spooled during an outage are flagged fresh:
// whether they repeat stored ones is only known when they are replayed.
func (s *Store) AppendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
	if fresh != nil && len(fresh) != len(samples) {
		return fmt.Errorf("appending samples: %d fresh flags for %d samples: %w", len(fresh), len(samples), ErrInvalidSample)
	}
	clear(fresh)
	return s.append(ctx, samples, nil, fresh)
}

// appendTx is AppendFresh with extra run in the same transaction before
// COMMIT, e.g. to move the Kafka offsets the samples were consumed up to
// (AppendWithOffsets): the offsets then move if and only if the samples are
// stored. extra may run more than once (a retried transaction). An error of
// extra's own (not the database's, with the connection still open) is the
// callback refusing the write: it is returned as is, neither retried nor
// taken for a lost connection. The samples are never spooled: when
// PostgreSQL is unreachable appendTx returns an error wrapping
// ErrUnavailable.
func (s *Store) appendTx(ctx context.Context, samples []telemetry.Sample, fresh []bool, extra func(pgx.Tx) error) error {
	if fresh != nil && len(fresh) != len(samples) {
		return fmt.Errorf("appending samples: %d fresh flags for %d samples: %w", len(fresh), len(samples), ErrInvalidSample)
	}
	clear(fresh)
	if extra == nil {
		extra = func(pgx.Tx) error { return nil }
	}
	return s.append(ctx, samples, extra, fresh)
}

// refusal is an error of appendTx's extra callback that does not come from
// the database: the callback refused the write (a fenced offset). The store
// neither retries it nor takes it for a lost connection.
type refusal struct{ err error }

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func (s *Store) append(ctx context.Context, samples []telemetry.Sample, extra func(pgx.Tx) error, fresh []bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("appending samples: %w", err)
	}
	if err := s.acquire(); err != nil {
		return fmt.Errorf("appending samples: %w", err)
	}
	defer s.life.RUnlock()
	if err := checkSamples(samples); err != nil {
		return fmt.Errorf("appending samples: %w", err)
	}
	start := time.Now()
	lo, hi := s.bounds()
	rows, oob := toRows(samples, lo, hi)
	if len(rows) > 0 || extra != nil {
		if err := s.write(ctx, rows, extra, fresh); err != nil {
			return fmt.Errorf("appending %d samples: %w", len(rows), err)
		}
	}
	s.metrics.appendSeconds.Observe(time.Since(start).Seconds())
	if oob > 0 {
		return fmt.Errorf("appending samples: %d of %d samples outside [%s, %s]: %w", oob, len(samples),
			time.UnixMilli(lo).UTC().Format(time.RFC3339), time.UnixMilli(hi).UTC().Format(time.RFC3339), store.ErrOutOfBounds)
	}
	return nil
}

// bounds returns the sample times the store accepts now, inclusive.
func (s *Store) bounds() (lo, hi int64) {
	now := s.opts.Now()
	lo, hi = minTime, maxTime
	if s.opts.Retention >= 0 {
		lo = max(lo, s.minDay(now)*dayMs)
	}
	if s.opts.MaxFuture >= 0 {
		hi = min(hi, now.Add(s.opts.MaxFuture).UnixMilli())
	}
	return lo, hi
}

// toRows converts the samples in [lo, hi] and counts the others.
func toRows(samples []telemetry.Sample, lo, hi int64) ([]row, int) {
	rows := make([]row, 0, len(samples))
	for i := range samples {
		x := &samples[i]
		if x.Time < lo || x.Time > hi {
			continue
		}
		rows = append(rows, row{ms: x.Time, machine: x.Machine, metric: x.Metric, value: x.Value, idx: i})
	}
	return rows, len(samples) - len(rows)
}

// write commits rows (and extra), or spools them while the database is
// unreachable.
func (s *Store) write(ctx context.Context, rows []row, extra func(pgx.Tx) error, fresh []bool) error {
	spooling := s.spool != nil && extra == nil
	spool := func(cause error) error {
		if err := s.spoolRows(rows, cause); err != nil {
			return err
		}
		for _, r := range rows {
			if fresh != nil {
				fresh[r.idx] = true
			}
		}
		return nil
	}
	if spooling && (s.unreachable.Load() || s.spool.size() > 0) {
		// What is spooled was acknowledged first, so it goes in first:
		// first-write-wins follows the acknowledgements.
		if s.unreachable.Load() && !s.probeDue() {
			return spool(s.lastError())
		}
		// Replay a little of the spool (Run replays the rest): an Append
		// does not wait for a whole spool to drain.
		if _, err := s.replaySpool(ctx, appendReplayFiles); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return spool(err)
		}
		if s.spool.size() > 0 {
			return spool(errBehindSpool)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	err := s.writeTx(wctx, rows, extra, false, fresh)
	if err == nil {
		s.setReachable()
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // the caller gave up: nothing acknowledged
	}
	if !isUnavailable(err) {
		return err
	}
	s.setUnreachable(err)
	if !spooling {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return spool(err)
}

// appendReplayFiles is how many spool files an Append replays before its
// own batch; with more left, the batch is spooled behind them.
const appendReplayFiles = 8

// errBehindSpool is why a batch is spooled while the database is reachable:
// older spooled batches are still being replayed.
var errBehindSpool = errors.New("older batches still spooled")

func (s *Store) probeDue() bool {
	return time.Since(time.Unix(0, s.lastFailure.Load())) >= s.opts.ReplayInterval
}

func (s *Store) lastError() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return errors.New("unknown error")
}

// spoolRows writes rows to the spool; cause is why they are not committed.
func (s *Store) spoolRows(rows []row, cause error) error {
	if err := s.spool.write(rows); err != nil {
		return fmt.Errorf("spooling (postgres: %v): %w: %w", cause, ErrUnavailable, err)
	}
	s.metrics.spooledRows.Add(float64(len(rows)))
	return nil
}

// isUnavailable reports whether err means the database could not be reached
// or went away, rather than that it refused the statement.
func isUnavailable(err error) bool {
	var r *refusal
	if errors.As(err, &r) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		c := pe.Code
		return strings.HasPrefix(c, "08") || // connection exception
			strings.HasPrefix(c, "53") || // insufficient resources (too many connections, disk full)
			c == "57P01" || c == "57P02" || c == "57P03" // shutdown, crash, cannot connect now
	}
	return true // network errors, timeouts, closed connections
}

// writeTx commits rows and extra in one transaction, with retries for
// the recoverable conflicts.
//
// With fresh, it flags the samples whose rows it inserted.
func (s *Store) writeTx(ctx context.Context, rows []row, extra func(pgx.Tx) error, slow bool, fresh []bool) error {
	if err := s.ensureDays(ctx, rows); err != nil {
		return err
	}
	if s.packed {
		if err := s.resolveSeries(ctx, rows); err != nil {
			return err
		}
	}
	for attempt := 0; ; attempt++ {
		inserted, keys, err := s.tryWrite(ctx, rows, extra, slow)
		if err == nil {
			s.metrics.rowsWritten.Add(float64(inserted))
			s.metrics.rowsDuplicate.Add(float64(int64(len(rows)) - inserted))
			if fresh != nil {
				// keys is non-nil when the packed layout took the slow
				// path on its own (a compacted day).
				markFresh(fresh, rows, keys, slow || keys != nil)
			}
			return nil
		}
		var pe *pgconn.PgError
		if attempt >= 3 || !errors.As(err, &pe) {
			return err
		}
		switch pe.Code {
		case "23505": // unique_violation: a replay or duplicates in the batch
			if slow {
				return err
			}
			slow = true
		case "40P01", "40001": // deadlock, serialization failure: retry
		case "23514": // no partition for a row: dropped or created elsewhere
			if err := s.repairHead(ctx); err != nil {
				return err
			}
			if err := s.loadPartitions(ctx); err != nil {
				return err
			}
			if err := s.ensureDays(ctx, rows); err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// markFresh flags the samples of the inserted rows: all of them after the
// fast path, else the first row of each inserted key.
func markFresh(fresh []bool, rows []row, inserted []rowKey, slow bool) {
	if !slow {
		for _, r := range rows {
			fresh[r.idx] = true
		}
		return
	}
	first := make(map[rowKey]int, len(inserted))
	for _, k := range inserted {
		first[k] = -1
	}
	for _, r := range rows {
		k := rowKey{machine: r.machine, metric: r.metric, ms: r.ms}
		if i, ok := first[k]; ok && i < 0 {
			first[k] = r.idx
			fresh[r.idx] = true
		}
	}
}

// tryWrite runs one write transaction and returns how many rows it
// inserted, and on the slow path their keys.
//
// The fast path COPYs the rows straight into samples and merges their
// aggregates, computed here, with one upsert. It fails with a unique
// violation when any row is already stored or repeated in the batch; the
// caller then retries with slow: COPY into a temporary staging table and one
// statement that inserts the new rows (first occurrence wins) and merges the
// aggregates of exactly the rows it inserted.
func (s *Store) tryWrite(ctx context.Context, rows []row, extra func(pgx.Tx) error, slow bool) (inserted int64, keys []rowKey, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, nil, err
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = tx.Rollback(rctx) // the error that made us roll back is the one to report
			cancel()
		}
	}()
	if len(rows) > 0 && s.packed {
		inserted, keys, err = s.insertPacked(ctx, tx, rows, slow)
		if err != nil {
			return 0, nil, err
		}
	} else if len(rows) > 0 {
		if err := s.fenceRows(ctx, tx); err != nil {
			return 0, nil, err
		}
		if slow {
			keys, err = s.insertSlow(ctx, tx, rows)
			inserted = int64(len(keys))
		} else {
			inserted, err = s.insertFast(ctx, tx, rows)
		}
		if err != nil {
			return 0, nil, err
		}
	}
	if extra != nil {
		if err := extra(tx); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) && !tx.Conn().IsClosed() {
				err = &refusal{err}
			}
			return 0, nil, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, nil, err
	}
	return inserted, keys, nil
}

func (s *Store) insertFast(ctx context.Context, tx pgx.Tx, rows []row) (int64, error) {
	n, err := copyRows(ctx, tx, samplesTable, rows, false)
	if err != nil {
		return 0, err
	}
	a := aggregate(rows, s.window)
	if _, err := tx.Exec(ctx, upsertAggs, a.bucket, a.machine, a.metric, a.count, a.sum, a.min, a.max, a.minTime, a.maxTime); err != nil {
		return 0, err
	}
	s.metrics.aggUpserts.Add(float64(len(a.bucket)))
	return n, nil
}

const upsertAggs = `
INSERT INTO sample_aggs AS a (bucket, machine, metric, count, sum, min, max, min_time, max_time)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[],
	$5::double precision[], $6::double precision[], $7::double precision[],
	$8::timestamptz[], $9::timestamptz[])
` + mergeAggs

// mergeAggs merges a window's new aggregates into the stored ones. Every
// expression reads the stored row as it was (a.*): min_time moves only
// when the minimum does, or to an earlier time of an equal minimum.
const mergeAggs = `
ON CONFLICT (machine, metric, bucket) DO UPDATE SET
	count = a.count + EXCLUDED.count,
	sum = a.sum + EXCLUDED.sum,
	min = LEAST(a.min, EXCLUDED.min),
	max = GREATEST(a.max, EXCLUDED.max),
	min_time = CASE WHEN EXCLUDED.min < a.min OR (EXCLUDED.min = a.min AND EXCLUDED.min_time < a.min_time)
		THEN EXCLUDED.min_time ELSE a.min_time END,
	max_time = CASE WHEN EXCLUDED.max > a.max OR (EXCLUDED.max = a.max AND EXCLUDED.max_time < a.max_time)
		THEN EXCLUDED.max_time ELSE a.max_time END`

const createStaging = `
CREATE TEMP TABLE IF NOT EXISTS staging_samples (
	seq     bigint           NOT NULL,
	time    timestamptz      NOT NULL,
	machine text             NOT NULL,
	metric  text             NOT NULL,
	value   double precision NOT NULL
) ON COMMIT DELETE ROWS`

// insertStaged inserts the staged rows that are new, first occurrence
// first, merges the aggregates of exactly those rows (a data-modifying CTE
// runs to completion whether read or not), and returns the inserted keys.
const insertStaged = `
WITH ins AS (
	INSERT INTO samples (time, machine, metric, value)
	SELECT time, machine, metric, value FROM staging_samples ORDER BY seq
	ON CONFLICT (machine, metric, time) DO NOTHING
	RETURNING time, machine, metric, value
), agg AS (
	INSERT INTO sample_aggs AS a (bucket, machine, metric, count, sum, min, max, min_time, max_time)
	SELECT date_bin($1::interval, time, timestamptz 'epoch'), machine, metric,
		count(*), sum(value), min(value), max(value),
		(array_agg(time ORDER BY value, time))[1], (array_agg(time ORDER BY value DESC, time))[1]
	FROM ins GROUP BY 1, 2, 3 ORDER BY 2, 3, 1
	` + mergeAggs + `
)
SELECT machine, metric, time FROM ins`

func (s *Store) insertSlow(ctx context.Context, tx pgx.Tx, rows []row) ([]rowKey, error) {
	if _, err := tx.Exec(ctx, createStaging); err != nil {
		return nil, err
	}
	if _, err := copyRows(ctx, tx, "staging_samples", rows, true); err != nil {
		return nil, err
	}
	res, err := tx.Query(ctx, insertStaged, s.opts.Window)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(res, func(r pgx.CollectableRow) (rowKey, error) {
		var k rowKey
		var t time.Time
		err := r.Scan(&k.machine, &k.metric, &t)
		k.ms = t.UnixMilli()
		return k, err
	})
}

// aggColumns are the aggregates of a batch, one element per bucket, as the
// arrays upsertAggs takes.
type aggColumns struct {
	bucket          []time.Time
	machine, metric []string
	count           []int64
	sum, min, max   []float64
	minTime         []time.Time
	maxTime         []time.Time
}

type aggKey struct {
	machine, metric string
	bucket          int64
}

type aggVal struct {
	n                int64
	sum, min, max    float64
	minTime, maxTime int64 // earliest times of min and max
}

// aggregate returns the per-window aggregates of rows, sorted by key.
func aggregate(rows []row, window int64) aggColumns {
	index := make(map[aggKey]int, len(rows)/8+1)
	var keys []aggKey
	var vals []aggVal
	lastKey, last := aggKey{}, -1
	for i := range rows {
		r := &rows[i]
		b := floorDiv(r.ms, window) * window
		if last < 0 || b != lastKey.bucket || r.machine != lastKey.machine || r.metric != lastKey.metric {
			lastKey = aggKey{machine: r.machine, metric: r.metric, bucket: b}
			j, ok := index[lastKey]
			if !ok {
				j = len(vals)
				index[lastKey] = j
				keys = append(keys, lastKey)
				vals = append(vals, aggVal{min: r.value, max: r.value, minTime: r.ms, maxTime: r.ms})
			}
			last = j
		}
		v := &vals[last]
		v.n++
		v.sum += r.value
		if r.value < v.min || (r.value == v.min && r.ms < v.minTime) {
			v.min, v.minTime = r.value, r.ms
		}
		if r.value > v.max || (r.value == v.max && r.ms < v.maxTime) {
			v.max, v.maxTime = r.value, r.ms
		}
	}
	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		ka, kb := &keys[a], &keys[b]
		return cmp.Or(strings.Compare(ka.machine, kb.machine), strings.Compare(ka.metric, kb.metric), cmp.Compare(ka.bucket, kb.bucket))
	})
	n := len(keys)
	c := aggColumns{
		bucket: make([]time.Time, n), machine: make([]string, n), metric: make([]string, n),
		count: make([]int64, n), sum: make([]float64, n), min: make([]float64, n), max: make([]float64, n),
		minTime: make([]time.Time, n), maxTime: make([]time.Time, n),
	}
	for i, j := range order {
		k, v := &keys[j], &vals[j]
		c.bucket[i], c.machine[i], c.metric[i] = time.UnixMilli(k.bucket), k.machine, k.metric
		c.count[i], c.sum[i], c.min[i], c.max[i] = v.n, v.sum, v.min, v.max
		c.minTime[i], c.maxTime[i] = time.UnixMilli(v.minTime), time.UnixMilli(v.maxTime)
	}
	return c
}
