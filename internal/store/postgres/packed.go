package postgres

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The packed layout (docs/decisions/0030-postgres-at-scale.md): series
// have integer ids (table series); a sample is first a narrow row of
// sample_head (series_id, time, value), and once its day is closed
// (Options.CompactAfter after its end) Compact packs the day's rows into
// one row per series and hour of sample_chunks, and writes the aggregates
// of the day's windows, once: agg_window (the store window, for chunks
// with two samples or more per window on average), agg_1m and agg_1h.
// Nothing is aggregated on the write path.
//
// First-write-wins: the unique index of sample_head catches a repeated
// sample of a day not compacted yet; a write into a compacted day (late
// data, a backfill over compacted data, a replay) takes the checked path,
// which also looks the sample up in its chunk. Writers take a shared
// advisory lock on each day they write, compaction an exclusive one on the
// day it packs, so a writer never misses a sample being moved.

const (
	hourMs  = int64(time.Hour / time.Millisecond)
	chunkMs = hourMs // the span of a chunk

	headTable   = "sample_head"
	chunksTable = "sample_chunks"
	aggWinTable = "agg_window"
	agg1mTable  = "agg_1m"
	agg1hTable  = "agg_1h"
)

// denseChunk is the mean number of samples per window at which compaction
// keeps a chunk's window aggregates in agg_window: below it a window's
// aggregate row costs more than reading its sample or two.
const denseChunk = 2

// denseReplay is the mean number of rows per series and hour of a batch
// on the checked path from which each touched chunk is unnested once
// rather than searched per row (insertStagedHead).
const denseReplay = 128

// testForceDense, when set, picks insertStagedHead's plan (the benchmark).
var testForceDense *bool

// seriesIDs caches the ids of series; series rows are never deleted, so
// an id, once known, stays right.
type seriesIDs struct {
	mu     sync.RWMutex
	byName map[string]int32
}

func seriesName(machine, metric string) string { return machine + "\x00" + metric }

func (c *seriesIDs) get(machine, metric string) (int32, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.byName[seriesName(machine, metric)]
	return id, ok
}

// checkLayout records the layout on a new store, and picks or checks the
// one the options ask for.
func (s *Store) checkLayout(ctx context.Context) error {
	want := s.opts.Layout
	if want == "" {
		want = LayoutPacked
	}
	var got string
	err := s.pool.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO settings (name, value) VALUES ('layout', $1)
			ON CONFLICT (name) DO NOTHING RETURNING value
		)
		SELECT value FROM ins UNION ALL SELECT value FROM settings WHERE name = 'layout'
		LIMIT 1`, want).Scan(&got)
	if err != nil {
		return fmt.Errorf("checking the layout: %w", err)
	}
	if s.opts.Layout != "" && got != s.opts.Layout {
		return fmt.Errorf("checking the layout: the store's layout is %s, not %s (twinline migrate --packed moves rows to packed)", got, s.opts.Layout)
	}
	s.packed = got == LayoutPacked
	if s.packed {
		return s.checkLegacy(ctx)
	}
	return nil
}

// checkLegacy sets s.legacy: whether the legacy table samples holds rows
// still (partitions MigratePacked has not dropped yet).
func (s *Store) checkLegacy(ctx context.Context) error {
	var legacy bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = 'samples'::regclass)
		OR NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'samples'::regclass)`).Scan(&legacy)
	if err != nil {
		return fmt.Errorf("checking for legacy samples: %w", err)
	}
	s.legacy.Store(legacy)
	return nil
}

// tables returns the partitioned tables of the store's layout.
func (s *Store) tables() []string {
	if s.packed {
		return []string{headTable, chunksTable, aggWinTable, agg1mTable, agg1hTable}
	}
	return []string{samplesTable, aggsTable}
}

// tableMinDay is the first day the retention of table keeps at now.
func (s *Store) tableMinDay(table string, now time.Time) (int64, bool) {
	keep := s.opts.Retention
	if keep < 0 {
		return 0, false
	}
	switch table {
	case agg1mTable:
		keep = s.opts.Retention1m
	case agg1hTable:
		keep = s.opts.Retention1h
	}
	if keep < 0 {
		return 0, false
	}
	keep = max(keep, s.opts.Retention) // a rollup outlives the raw samples
	return dayOf(now.Add(-keep).UnixMilli()), true
}

// resolveSeries sets the series id of every row, creating the series that
// have none yet (outside the write's transaction: an id with no sample
// behind it is harmless). Only the series not in the table are inserted:
// an attempted insert uses up an identity value even when it conflicts,
// and every process start resolves every series again.
func (s *Store) resolveSeries(ctx context.Context, rows []row) error {
	var missM, missK []string
	seen := map[string]bool{}
	s.ids.mu.RLock()
	for i := range rows {
		r := &rows[i]
		id, ok := s.ids.byName[seriesName(r.machine, r.metric)]
		if ok {
			r.sid = id
			continue
		}
		if n := seriesName(r.machine, r.metric); !seen[n] {
			seen[n] = true
			missM, missK = append(missM, r.machine), append(missK, r.metric)
		}
	}
	s.ids.mu.RUnlock()
	if len(missM) == 0 {
		return nil
	}
	res, err := s.pool.Query(ctx, `
		WITH want AS (SELECT * FROM unnest($1::text[], $2::text[]) AS w(machine, metric)),
		ins AS (
			INSERT INTO series (machine, metric) SELECT machine, metric FROM want w
			WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.machine = w.machine AND s.metric = w.metric)
			ORDER BY 1, 2
			ON CONFLICT (machine, metric) DO NOTHING RETURNING id, machine, metric
		)
		SELECT id, machine, metric FROM ins
		UNION ALL
		SELECT s.id, s.machine, s.metric FROM series s JOIN want w USING (machine, metric)`, missM, missK)
	if err != nil {
		return fmt.Errorf("resolving series ids: %w", err)
	}
	type idRow struct {
		id              int32
		machine, metric string
	}
	got, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (idRow, error) {
		var x idRow
		err := r.Scan(&x.id, &x.machine, &x.metric)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("resolving series ids: %w", err)
	}
	s.ids.mu.Lock()
	for _, x := range got {
		s.ids.byName[seriesName(x.machine, x.metric)] = x.id
	}
	s.ids.mu.Unlock()
	if len(got) < len(missM) {
		// A concurrent writer inserted some after this statement's
		// snapshot (ON CONFLICT waited for it): read them now.
		res, err := s.pool.Query(ctx, `SELECT s.id, s.machine, s.metric FROM series s
			JOIN unnest($1::text[], $2::text[]) AS w(machine, metric) USING (machine, metric)`, missM, missK)
		if err != nil {
			return fmt.Errorf("resolving series ids: %w", err)
		}
		var x idRow
		_, err = pgx.ForEachRow(res, []any{&x.id, &x.machine, &x.metric}, func() error {
			s.ids.mu.Lock()
			s.ids.byName[seriesName(x.machine, x.metric)] = x.id
			s.ids.mu.Unlock()
			return nil
		})
		if err != nil {
			return fmt.Errorf("resolving series ids: %w", err)
		}
	}
	s.ids.mu.RLock()
	defer s.ids.mu.RUnlock()
	for i := range rows {
		r := &rows[i]
		id, ok := s.ids.byName[seriesName(r.machine, r.metric)]
		if !ok {
			return &refusal{fmt.Errorf("resolving series ids: no id for %s/%s", r.machine, r.metric)}
		}
		r.sid = id
	}
	return nil
}

// lookupSeries returns the id of a series, ok false when it has none (no
// sample was ever written to it).
func (s *Store) lookupSeries(ctx context.Context, machine, metric string) (int32, bool, error) {
	if id, ok := s.ids.get(machine, metric); ok {
		return id, true, nil
	}
	var id int32
	err := s.pool.QueryRow(ctx, "SELECT id FROM series WHERE machine = $1 AND metric = $2", machine, metric).Scan(&id)
	if err == pgx.ErrNoRows {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	s.ids.mu.Lock()
	s.ids.byName[seriesName(machine, metric)] = id
	s.ids.mu.Unlock()
	return id, true, nil
}

// dayLockClass is the first key of the day advisory locks of the store.
func (s *Store) dayLockClass() string { return "twinline.day." + s.schema }

// rowDays returns the sorted distinct days of rows.
func rowDays(rows []row) []int32 {
	var days []int32
	last := int64(math.MinInt64)
	for i := range rows {
		d := dayOf(rows[i].ms)
		if d != last {
			last = d
			days = append(days, int32(d))
		}
	}
	slices.Sort(days)
	return slices.Compact(days)
}

// insertPacked writes rows to sample_head in tx and returns how many it
// inserted and, on the slow path, their keys. The fast path is a COPY; it
// fails with a unique violation on a repeated sample (the caller retries
// with slow). A batch touching a compacted day takes the slow path at once.
func (s *Store) insertPacked(ctx context.Context, tx pgx.Tx, rows []row, slow bool) (int64, []rowKey, error) {
	days := rowDays(rows)
	b := &pgx.Batch{}
	b.Queue("SELECT count(pg_advisory_xact_lock_shared(hashtext($1), d)) FROM unnest($2::integer[]) AS d", s.dayLockClass(), days)
	// A statement of its own: its snapshot is taken once the locks are held.
	b.Queue("SELECT count(*) FROM compacted_days WHERE day = ANY($1)", days)
	br := tx.SendBatch(ctx, b)
	var locked, compacted int64
	err := br.QueryRow().Scan(&locked)
	if err == nil {
		err = br.QueryRow().Scan(&compacted)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, nil, err
	}
	s.noteHeadWrite(days)
	legacy := s.legacy.Load()
	if !slow && compacted == 0 && !legacy {
		// In index order: the unique index's leaf pages are then visited
		// once each, in order, instead of once per row at random.
		sorted := slices.Clone(rows)
		slices.SortFunc(sorted, func(a, b row) int {
			if a.sid != b.sid {
				return int(a.sid) - int(b.sid)
			}
			return cmp.Compare(a.ms, b.ms)
		})
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, &copyReader{rows: sorted, head: true},
			"COPY sample_head (series_id, time, value) FROM STDIN (FORMAT binary)")
		if err != nil {
			return 0, nil, err
		}
		return tag.RowsAffected(), nil, nil
	}
	if _, err := tx.Exec(ctx, createStagingHead); err != nil {
		return 0, nil, err
	}
	if _, err := tx.Conn().PgConn().CopyFrom(ctx, &copyReader{rows: rows, seq: true, head: true},
		"COPY staging_head (seq, series_id, time, value) FROM STDIN (FORMAT binary)"); err != nil {
		return 0, nil, err
	}
	lo, hi := rows[0].ms, rows[0].ms
	names := make(map[int32]*row, 16)
	chunks := make(map[[2]int64]struct{}, 16)
	for i := range rows {
		lo, hi = min(lo, rows[i].ms), max(hi, rows[i].ms)
		names[rows[i].sid] = &rows[i]
		chunks[[2]int64{int64(rows[i].sid), floorDiv(rows[i].ms, chunkMs)}] = struct{}{}
	}
	dense := len(rows) >= denseReplay*len(chunks)
	if testForceDense != nil {
		dense = *testForceDense
	}
	res, err := tx.Query(ctx, insertStagedHead(legacy, dense), ts(floorDiv(lo, chunkMs)*chunkMs), ts(hi))
	if err != nil {
		return 0, nil, err
	}
	keys, err := pgx.CollectRows(res, func(r pgx.CollectableRow) (rowKey, error) {
		var sid int32
		var t time.Time
		if err := r.Scan(&sid, &t); err != nil {
			return rowKey{}, err
		}
		x := names[sid]
		return rowKey{machine: x.machine, metric: x.metric, ms: t.UnixMilli()}, nil
	})
	if err != nil {
		return 0, nil, err
	}
	if keys == nil {
		keys = []rowKey{} // non-nil: the slow path was taken (markFresh)
	}
	return int64(len(keys)), keys, nil
}

const createStagingHead = `
CREATE TEMP TABLE IF NOT EXISTS staging_head (
	seq       bigint           NOT NULL,
	series_id integer          NOT NULL,
	time      timestamptz      NOT NULL,
	value     double precision NOT NULL
) ON COMMIT DELETE ROWS`

// insertStagedHead inserts the staged rows that are neither in
// sample_head (ON CONFLICT) nor in their chunk (nor, with legacy, in the
// legacy table), the first of each key in batch order, and returns the keys
// it inserted. $1 and $2 bound the chunks to look in (partition pruning).
// Sparse batches look each row up in its chunk's offsets (which
// de-TOASTs and scans the array once per row); dense ones (denseReplay
// rows or more per series and hour) unnest each touched chunk once and
// anti-join: 36 000 rows over 10 full chunks 99 ms against 1 005 ms,
// 5 000 rows over 100 chunks 291 ms against 134 ms (medians,
// BenchmarkPackedReplayCompacted).
func insertStagedHead(legacy, dense bool) string {
	check := ""
	if legacy {
		check = `
		AND NOT EXISTS (
			SELECT 1 FROM series ls JOIN samples l ON l.machine = ls.machine AND l.metric = ls.metric
			WHERE ls.id = st.series_id AND l.time = st.time)`
	}
	if dense {
		return `
WITH packed AS MATERIALIZED (` + packedTimes("staging_head", "$1", "$2") + `
), ins AS (
	INSERT INTO sample_head (series_id, time, value)
	SELECT st.series_id, st.time, st.value FROM staging_head st
	WHERE NOT EXISTS (SELECT 1 FROM packed p WHERE p.series_id = st.series_id AND p.time = st.time)` + check + `
	ORDER BY st.seq
	ON CONFLICT (series_id, time) DO NOTHING
	RETURNING series_id, time
)
SELECT series_id, time FROM ins`
	}
	return `
WITH ins AS (
	INSERT INTO sample_head (series_id, time, value)
	SELECT st.series_id, st.time, st.value FROM staging_head st
	WHERE NOT EXISTS (
		SELECT 1 FROM sample_chunks c
		WHERE c.series_id = st.series_id AND c.start = date_bin('1 hour', st.time, timestamptz 'epoch')
			AND c.start >= $1 AND c.start <= $2
			AND (extract(epoch FROM st.time - c.start) * 1000)::integer = ANY (c.offsets))` + check + `
	ORDER BY st.seq
	ON CONFLICT (series_id, time) DO NOTHING
	RETURNING series_id, time
)
SELECT series_id, time FROM ins`
}

// packedTimes returns the query of the (series_id, time) of every sample
// of the chunks the rows of from (series_id, time) fall in, chunks starting
// in [lo, hi] (partition pruning): each touched chunk is unnested once, and
// the rows are anti-joined with the result, instead of each row searching
// its chunk's offsets (which de-TOASTs and scans the array once per row).
func packedTimes(from, lo, hi string) string {
	return `
	SELECT c.series_id, c.start + u.o * interval '1 millisecond' AS time
	FROM (SELECT DISTINCT series_id, date_bin('1 hour', time, timestamptz 'epoch') AS start FROM ` + from + `) t
	JOIN sample_chunks c ON c.series_id = t.series_id AND c.start = t.start AND c.start >= ` + lo + ` AND c.start <= ` + hi + `
	CROSS JOIN LATERAL unnest(c.offsets) AS u(o)`
}
