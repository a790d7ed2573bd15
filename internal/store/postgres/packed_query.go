package postgres

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/prometheus/storage"

	"github.com/twinline/twinline/internal/store"
)

// The reads of the packed layout. A chunk's samples are unnested in the
// target list of a subquery, (SELECT …, unnest(offsets), unnest(vals) FROM
// sample_chunks c) c: the conditions on series and start are pushed into it
// (index scans), and no join is made per chunk, which the planner would
// memoize on the arrays' bytes.
// A series' samples in [from, to] are its
// head rows in range and the unnested samples of its chunks that overlap
// the range; the two never hold the same sample (first-write-wins checks
// both), so no read deduplicates.

// packedRaw is the raw read of one series ($1) in [$2, $3]; $4 is the start
// of the chunk holding $2 (the first chunk to read).
var packedRaw = `
SELECT time, value FROM sample_head WHERE series_id = $1 AND time >= $2 AND time <= $3
UNION ALL
SELECT c.start + c.o * interval '1 millisecond', c.v
FROM ` + chunkRows("c.series_id = $1 AND c.start >= $4 AND c.start <= $3") + `
WHERE c.start + c.o * interval '1 millisecond' >= $2 AND c.start + c.o * interval '1 millisecond' <= $3`

// legacyRaw is the raw read of the rows of the legacy table samples not
// migrated yet (MigratePacked moves them, a batch at a time, in the
// transaction that deletes them: a sample is in one table or the other).
const legacyRaw = `
UNION ALL
SELECT l.time, l.value FROM series ls JOIN samples l ON l.machine = ls.machine AND l.metric = ls.metric
WHERE ls.id = $1 AND l.time >= $2 AND l.time <= $3`

// rawSQL is packedRaw, with the legacy rows while there are some.
func (s *Store) rawSQL() string {
	if s.legacy.Load() {
		return packedRaw + legacyRaw
	}
	return packedRaw
}

// chunkRows is the samples of the chunks matching cond (on c.series_id,
// c.start, c.has_aggs) as rows (start, has_aggs, o, v) of alias c.
func chunkRows(cond string) string {
	return "(SELECT c.start, c.has_aggs, unnest(c.offsets) AS o, unnest(c.vals) AS v FROM sample_chunks c WHERE " + cond + ") c"
}

func chunkStart(ms int64) time.Time { return ts(floorDiv(ms, chunkMs) * chunkMs) }

// selectPacked is Select in the packed layout.
func (s *Store) selectPacked(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	id, ok, err := s.lookupSeries(ctx, key.Machine, key.Metric)
	if err != nil || !ok {
		return err
	}
	rows, err := s.pool.Query(ctx, "SELECT time, value FROM ("+s.rawSQL()+") r ORDER BY time", customPlan,
		id, ts(from), ts(to), chunkStart(from))
	if err != nil {
		return err
	}
	defer rows.Close()
	var t time.Time
	var v float64
	for rows.Next() {
		if err := rows.Scan(&t, &v); err != nil {
			return err
		}
		if !fn(store.Point{Time: t.UnixMilli(), Value: v}) {
			return nil
		}
	}
	return rows.Err()
}

// listSeriesPacked lists the series with a head row or a chunk sample in
// [$1, $2] ($3: the chunk holding $1): two index probes per series.
var listSeriesPacked = `
SELECT s.machine, s.metric FROM series s
WHERE EXISTS (SELECT 1 FROM sample_head h WHERE h.series_id = s.id AND h.time >= $1 AND h.time <= $2)
	OR EXISTS (
		SELECT 1 FROM (SELECT c.start, unnest(c.offsets) AS o FROM sample_chunks c
			WHERE c.series_id = s.id AND c.start >= $3 AND c.start <= $2) c
		WHERE c.start + c.o * interval '1 millisecond' >= $1 AND c.start + c.o * interval '1 millisecond' <= $2)`

// listSeriesLegacy adds the series with legacy rows in range.
const listSeriesLegacy = `
	OR EXISTS (SELECT 1 FROM samples l WHERE l.machine = s.machine AND l.metric = s.metric AND l.time >= $1 AND l.time <= $2)`

func (s *Store) seriesPacked(ctx context.Context, from, to int64) ([]store.SeriesKey, error) {
	sql := listSeriesPacked
	if s.legacy.Load() {
		sql += listSeriesLegacy
	}
	rows, err := s.pool.Query(ctx, sql+" ORDER BY 1, 2", customPlan, ts(from), ts(to), chunkStart(from))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.SeriesKey, error) {
		var k store.SeriesKey
		err := r.Scan(&k.Machine, &k.Metric)
		return k, err
	})
}

// tier is an aggregate table and its bucket width in ms.
type tier struct {
	table string
	ms    int64
}

// tiers returns the aggregate tiers, widest first.
func (s *Store) tiers() []tier {
	return []tier{{agg1hTable, hourMs}, {agg1mTable, 60_000}, {aggWinTable, s.window}}
}

// pickTier returns the widest tier whose buckets tile the step w (ms) and
// that has a whole bucket in [from, to]: ok false when none does.
func (s *Store) pickTier(from, to, w int64) (t tier, midFrom, midTo int64, ok bool) {
	for _, t := range s.tiers() {
		if w%t.ms != 0 {
			continue
		}
		midFrom = floorDiv(from+t.ms-1, t.ms) * t.ms
		midTo = floorDiv(to+1, t.ms) * t.ms
		if midFrom < midTo {
			return t, midFrom, midTo, true
		}
	}
	return tier{}, 0, 0, false
}

// packedAggSQL aggregates one series by step ($5) over [$2, $3]: the whole
// buckets [$6, $7) of the tier's table (written by compaction), and as
// single samples the head rows (never in a tier), the chunk samples of the
// edges, and, for the window tier, those of chunks without window
// aggregates. $8 is $7 - 1 h: a chunk starting after it reaches past $7.
func packedAggSQL(t tier, legacy bool) string {
	rawChunks := "c.start < $6 OR c.start > $8"
	rawSample := "(c.start + c.o * interval '1 millisecond' < $6 OR c.start + c.o * interval '1 millisecond' >= $7)"
	if t.table == aggWinTable {
		rawChunks += " OR NOT c.has_aggs"
		rawSample = "(" + rawSample + " OR NOT c.has_aggs)"
	}
	return `
SELECT date_bin($5::interval, t, timestamptz 'epoch') AS b, sum(n)::bigint, sum(s), min(lo), max(hi)
FROM (
	SELECT bucket AS t, count AS n, sum AS s, min AS lo, max AS hi FROM ` + t.table + `
	WHERE series_id = $1 AND bucket >= $6 AND bucket < $7
	UNION ALL
	SELECT time, 1, value, value, value FROM sample_head WHERE series_id = $1 AND time >= $2 AND time <= $3
	UNION ALL
	SELECT c.start + c.o * interval '1 millisecond', 1, c.v, c.v, c.v
	FROM ` + chunkRows("c.series_id = $1 AND c.start >= $4 AND c.start <= $3 AND ("+rawChunks+")") + `
	WHERE ` + rawSample + `
		AND c.start + c.o * interval '1 millisecond' >= $2 AND c.start + c.o * interval '1 millisecond' <= $3` +
		legacyAgg(legacy) + `
) x
GROUP BY b ORDER BY b`
}

// legacyAgg is the legacy rows as single samples, for packedAggSQL.
func legacyAgg(legacy bool) string {
	if !legacy {
		return ""
	}
	return `
	UNION ALL
	SELECT l.time, 1, l.value, l.value, l.value FROM series ls JOIN samples l ON l.machine = ls.machine AND l.metric = ls.metric
	WHERE ls.id = $1 AND l.time >= $2 AND l.time <= $3`
}

// packedAggRaw aggregates one series by step ($5) from its samples.
func packedAggRaw(raw string) string {
	return `
SELECT date_bin($5::interval, time, timestamptz 'epoch') AS b, count(*), sum(value), min(value), max(value)
FROM (` + raw + `) r
GROUP BY b ORDER BY b`
}

func (s *Store) aggregatePackedRows(ctx context.Context, key store.SeriesKey, from, to, w int64) (pgx.Rows, bool, error) {
	id, ok, err := s.lookupSeries(ctx, key.Machine, key.Metric)
	if err != nil || !ok {
		return nil, false, err
	}
	stepIv := time.Duration(w) * time.Millisecond
	if t, midFrom, midTo, ok := s.pickTier(from, to, w); ok {
		rows, err := s.pool.Query(ctx, packedAggSQL(t, s.legacy.Load()), customPlan, id, ts(from), ts(to), chunkStart(from), stepIv,
			ts(midFrom), ts(midTo), ts(midTo-chunkMs))
		return rows, true, err
	}
	rows, err := s.pool.Query(ctx, packedAggRaw(s.rawSQL()), customPlan, id, ts(from), ts(to), chunkStart(from), stepIv)
	return rows, true, err
}

// promRawPackedSQL is a PromQL Select's raw read in the packed layout: the
// series matching f's sets, each read as packedRaw.
func promRawPackedSQL(f *seriesFilter, from, to int64, legacy bool) (string, sqlArgs) {
	var a sqlArgs
	fromA, toA, chunkA := a.add(ts(from)), a.add(ts(to)), a.add(chunkStart(from))
	raw := packedRaw
	if legacy {
		raw += legacyRaw
	}
	raw = strings.NewReplacer("$1", "s.id", "$2", fromA, "$3", toA, "$4", chunkA).Replace(raw)
	sql := `SELECT s.machine, s.metric, r.time, r.value FROM series s CROSS JOIN LATERAL (` + raw + `) r WHERE ` + seriesCond("s.", f, &a)
	return sql, a
}

// planTiers is planAggregates for the packed layout's rollups: the
// evaluation times anchor + k*step need not be multiples of the step, but
// alignedTier must find a tier no window cuts. Prometheus windows are
// (e-R, e]: with e on the minute every minute bucket is cut at its first
// millisecond, so the rollups serve only queries whose evaluation times end
// a bucket (start one millisecond before a multiple of the tier). A selector
// in a subquery is evaluated at multiples of the subquery's step, which
// never end a bucket unless its offset is 1 ms modulo the tier.
func planTiers(h *storage.SelectHints) aggPlan {
	if h == nil || h.Step < 60_000 || h.Range <= 0 || h.End < h.Start {
		return aggPlan{}
	}
	col := ""
	switch h.Func {
	case "max_over_time":
		col = "max"
	case "min_over_time":
		col = "min"
	case "sum_over_time":
		col = "sum"
	case "avg_over_time":
		col = "avg"
	case "count_over_time":
		col = "count"
	default:
		return aggPlan{}
	}
	// End need not be on the lattice: the last evaluation time ends a
	// bucket, so the buckets after it are in no window.
	anchor := h.Start + h.Range - 1
	if h.End < anchor {
		return aggPlan{}
	}
	p := aggPlan{col: col, anchor: anchor, rng: h.Range, step: h.Step}
	if _, ok := p.alignedTier(); !ok {
		return aggPlan{}
	}
	return p
}

// alignedTier returns the widest rollup tier (1 h, 1 min) whose buckets no
// evaluation window of p cuts: every window (e-R, e] starts and ends on a
// bucket boundary (e+1 and R multiples of the tier, and so the step). Each
// bucket is then wholly inside or outside each window, and stands for its
// samples by what promTierPackedSQL gives: its extreme at its time (bit for
// bit, the argument of planAggregates with no cut bucket to read raw); its
// sum (the sum of the window's sums, equal up to rounding); its average,
// only when the window is one bucket (an average of averages is not the
// average); or count points at its first count milliseconds (a bucket's
// samples have distinct times in it, so count ≤ its width), whose values
// count_over_time ignores. A bucket's late head rows come as samples too:
// right for min and max; sum, avg and count then read raw (selectProm).
func (p aggPlan) alignedTier() (tier, bool) {
	if p.col == "" {
		return tier{}, false
	}
	for _, t := range []tier{{agg1hTable, hourMs}, {agg1mTable, 60_000}} {
		if p.col == "avg" && p.rng != t.ms {
			continue
		}
		if floorMod(p.anchor+1, t.ms) == 0 && p.rng%t.ms == 0 && p.step%t.ms == 0 {
			return t, true
		}
	}
	return tier{}, false
}

// promTierPackedSQL is a PromQL Select reading, for col (max_over_time,
// min_over_time, sum_over_time, avg_over_time, count_over_time) on an
// aligned tier, the points of every compacted tier bucket of
// [midFrom, midTo) (see alignedTier), and raw samples for the rest: the
// head (never in a tier), the chunk samples outside [midFrom, midTo), the
// legacy rows. Two statements: tierSQL gives a row per series, its points'
// times and values as arrays (a row per point cost PostgreSQL more than
// the rest of the query), rawSQL rows (machine, metric, time, value).
func promTierPackedSQL(f *seriesFilter, from, to, midFrom, midTo int64, t tier, col string, legacy bool) (tierSQL string, tierArgs sqlArgs, rawSQL string, rawArgs sqlArgs) {
	var ta sqlArgs
	point := "a." + col + "_time, a." + col // max, min
	lateral := ""
	switch col {
	case "sum":
		point = "a.bucket, a.sum"
	case "avg":
		point = "a.bucket, a.sum / a.count"
	case "count":
		point = "a.bucket + g.i * interval '1 millisecond', 1::float8"
		lateral = " CROSS JOIN LATERAL generate_series(0, a.count - 1) g(i)"
	}
	tm, v, _ := strings.Cut(point, ", ")
	tierSQL = `
SELECT s.machine, s.metric, array_agg(` + tm + `), array_agg(` + v + `) FROM series s JOIN ` + t.table + ` a ON a.series_id = s.id` + lateral + `
WHERE ` + seriesCond("s.", f, &ta) + ` AND a.bucket >= ` + ta.add(ts(midFrom)) + ` AND a.bucket < ` + ta.add(ts(midTo)) + `
GROUP BY s.machine, s.metric`
	var a sqlArgs
	fromA, toA, chunkA := a.add(ts(from)), a.add(ts(to)), a.add(chunkStart(from))
	midFromA, midToA, lastChunkA := a.add(ts(midFrom)), a.add(ts(midTo)), a.add(ts(midTo-chunkMs))
	legacyRows := ""
	if legacy {
		legacyRows = strings.NewReplacer("$1", "s.id", "$2", fromA, "$3", toA).Replace(legacyRaw)
	}
	rawSQL = `
SELECT s.machine, s.metric, r.time, r.value FROM series s CROSS JOIN LATERAL (
	SELECT time, value FROM sample_head WHERE series_id = s.id AND time >= ` + fromA + ` AND time <= ` + toA + `
	UNION ALL
	SELECT c.start + c.o * interval '1 millisecond', c.v
	FROM ` + chunkRows("c.series_id = s.id AND c.start >= "+chunkA+" AND c.start <= "+toA+
		" AND (c.start < "+midFromA+" OR c.start > "+lastChunkA+")") + `
	WHERE (c.start + c.o * interval '1 millisecond' < ` + midFromA + ` OR c.start + c.o * interval '1 millisecond' >= ` + midToA + `)
		AND c.start + c.o * interval '1 millisecond' >= ` + fromA + ` AND c.start + c.o * interval '1 millisecond' <= ` + toA +
		legacyRows + `
) r WHERE ` + seriesCond("s.", f, &a)
	return tierSQL, ta, rawSQL, a
}

// gatherTierArrays adds the rows (machine, metric, times[], values[]) of
// a tier read to the series of g.
func gatherTierArrays(ctx context.Context, rows pgx.Rows, g *seriesGather) error {
	var (
		tms  []int64
		vals []float64
	)
	for rows.Next() {
		raw := rows.RawValues()
		if len(raw) != 4 {
			return fmt.Errorf("want 4 columns, got %d", len(raw))
		}
		tms, vals = tms[:0], vals[:0]
		okT := pgArrayElems(raw[2], 8, func(e []byte) {
			tms = append(tms, floorDiv(int64(binary.BigEndian.Uint64(e))+pgEpochMicros, 1000))
		})
		okV := pgArrayElems(raw[3], 8, func(e []byte) { vals = append(vals, math.Float64frombits(binary.BigEndian.Uint64(e))) })
		if !okT || !okV || len(tms) != len(vals) {
			var ts []time.Time
			var m, k string
			if err := rows.Scan(&m, &k, &ts, &vals); err != nil {
				return err
			}
			tms = tms[:0]
			for _, t := range ts {
				tms = append(tms, t.UnixMilli())
			}
		}
		if err := store.TakeSamples(ctx, len(tms)); err != nil {
			return err
		}
		cur := g.series(raw[0], raw[1])
		for i, t := range tms {
			cur.pts = append(cur.pts, promPoint{t: t, f: vals[i]})
		}
	}
	return rows.Err()
}

// headRowsIn reports whether a series of f has head rows in [midFrom,
// midTo): late samples of compacted hours, or hours not compacted yet,
// which a tier bucket's average or count points cannot merge with.
func headRowsIn(ctx context.Context, tx pgx.Tx, f *seriesFilter, midFrom, midTo int64) (bool, error) {
	var a sqlArgs
	sql := `SELECT EXISTS (SELECT 1 FROM series s JOIN sample_head h ON h.series_id = s.id WHERE ` + seriesCond("s.", f, &a) +
		` AND h.time >= ` + a.add(ts(midFrom)) + ` AND h.time < ` + a.add(ts(midTo)) + `)`
	var late bool
	err := tx.QueryRow(ctx, sql, append([]any{customPlan}, a...)...).Scan(&late)
	return late, err
}

// errPacked wraps an error of a packed read.
func errPacked(op string, key store.SeriesKey, err error) error {
	return fmt.Errorf("%s %s/%s: %w", op, key.Machine, key.Metric, err)
}

// transformPacked is TransformRange in the packed layout: the transform
// of Select, in Go.
func (s *Store) transformPacked(ctx context.Context, key store.SeriesKey, from, to int64, tr store.Transform, limit int) ([]store.Point, error) {
	switch {
	case tr.Fn == "rolling_avg" && tr.Window < 1:
		return nil, fmt.Errorf("rolling_avg over %d samples: %w", tr.Window, store.ErrInvalidQuery)
	case tr.Fn != "delta" && tr.Fn != "rolling_avg":
		return nil, fmt.Errorf("transform %q: %w", tr.Fn, store.ErrInvalidQuery)
	}
	var pts []store.Point
	want := limit
	if tr.Fn == "delta" {
		want++ // the first point has no delta
	}
	err := s.Select(ctx, key, from, to, func(p store.Point) bool {
		pts = append(pts, p)
		return limit < 0 || len(pts) < want
	})
	if err != nil {
		return nil, fmt.Errorf("transforming: %w", err)
	}
	out := tr.Apply(pts)
	if limit >= 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// downsamplePacked is DownsampleRange in the packed layout: at most n
// points, the minimum and maximum of each of n/2 equal buckets. With
// buckets of a minute or more it reads the rollups (1 h, else 1 min) of
// the tier buckets that lie inside one downsampling bucket, their extremes
// at their times, and as samples the rest: the head (and legacy) rows, and
// the chunk samples of the tier buckets cut by a bucket boundary or at the
// ends of the range (windowPlan), reading only the chunks they fall in.
func (s *Store) downsamplePacked(ctx context.Context, key store.SeriesKey, from, to int64, n int) ([]store.Point, error) {
	nb := uint64(n / 2)
	span := uint64(to) - uint64(from) + 1
	if hi, lo := bits.Mul64(span, nb); span == 0 || hi != 0 || lo > math.MaxInt64 {
		return store.Downsample(ctx, s, key, from, to, n)
	}
	// At most n samples come back as they are. Reading up to n+1 of them
	// unordered (sorting here when there are no more) stops after the
	// first chunks: ORDER BY time would sort the whole range first.
	raw, err := s.firstPacked(ctx, key, from, to, n+1)
	if err != nil {
		return nil, err
	}
	if len(raw) <= n {
		slices.SortFunc(raw, func(a, b store.Point) int { return cmp.Compare(a.Time, b.Time) })
		return raw, nil
	}
	cfrom, cto, _ := clampRange(from, to)
	var (
		t              tier
		midFrom, midTo int64
		loR, hiR       []time.Time
		ok             bool
	)
	// The tier with the fewest rows to read: its buckets over the span,
	// and the samples of the cut ones (one per downsampling bucket),
	// counted at a sample every 10 s.
	best := math.Inf(1)
	for _, c := range []tier{{agg1hTable, hourMs}, {agg1mTable, 60_000}} {
		mf, mt, l, h, fits := windowPlan(from, to, cfrom, cto, nb, span, c.ms)
		if !fits {
			continue
		}
		if cost := float64(span)/float64(c.ms) + float64(nb)*float64(c.ms)/10_000; cost < best {
			best, t, midFrom, midTo, loR, hiR, ok = cost, c, mf, mt, l, h, true
		}
	}
	if !ok {
		return store.Downsample(ctx, s, key, from, to, n)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("downsampling: %w", err)
	}
	defer s.life.RUnlock()
	id, found, err := s.lookupSeries(ctx, key.Machine, key.Metric)
	if err != nil || !found {
		return []store.Point{}, err
	}
	if s.downsampleSQL {
		// The SQL plan only (tests comparing the two).
	} else if out, ok, err := s.downsampleGo(ctx, id, from, cfrom, cto, nb, span, n); err != nil {
		return nil, errPacked("downsampling", key, err)
	} else if ok {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, downsamplePackedSQL(t.table, s.legacy.Load()), customPlan, id, ts(midFrom), ts(midTo),
		nil, from, int64(nb), int64(span), t.ms, loR, hiR, ts(cfrom), ts(cto), chunkStart(cfrom))
	if err != nil {
		return nil, errPacked("downsampling", key, err)
	}
	defer rows.Close()
	out := make([]store.Point, 0, n)
	var (
		b      int64
		lo, hi []float64
	)
	for rows.Next() {
		if err := rows.Scan(&b, &lo, &hi); err != nil {
			return nil, errPacked("downsampling", key, err)
		}
		out = appendMinMax(out, lo, hi)
	}
	if err := rows.Err(); err != nil {
		return nil, errPacked("downsampling", key, err)
	}
	return out, nil
}

// firstPacked returns up to limit samples of a series in [from, to], in
// no particular order.
func (s *Store) firstPacked(ctx context.Context, key store.SeriesKey, from, to int64, limit int) ([]store.Point, error) {
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("downsampling: %w", err)
	}
	defer s.life.RUnlock()
	from, to, ok := clampRange(from, to)
	if !ok || !validName(key.Machine) || !validName(key.Metric) {
		return []store.Point{}, nil
	}
	id, ok, err := s.lookupSeries(ctx, key.Machine, key.Metric)
	if err != nil || !ok {
		return []store.Point{}, err
	}
	rows, err := s.pool.Query(ctx, "SELECT time, value FROM ("+s.rawSQL()+") r LIMIT $5", customPlan,
		id, ts(from), ts(to), chunkStart(from), limit)
	if err != nil {
		return nil, errPacked("downsampling", key, err)
	}
	defer rows.Close()
	out := []store.Point{}
	var t time.Time
	var v float64
	for rows.Next() {
		if err := rows.Scan(&t, &v); err != nil {
			return nil, errPacked("downsampling", key, err)
		}
		out = append(out, store.Point{Time: t.UnixMilli(), Value: v})
	}
	if err := rows.Err(); err != nil {
		return nil, errPacked("downsampling", key, err)
	}
	return out, nil
}

// downsamplePackedSQL: $1 series, [$2, $3) the whole tier buckets, $5 from,
// $6 buckets, $7 span, $8 tier width (ms), $9/$10 the raw ranges [lo, hi),
// [$11, $12] the clamped range, $13 the chunk holding $11. ($4 unused.)
func downsamplePackedSQL(table string, legacy bool) string {
	legacyRows := ""
	if legacy {
		legacyRows = `
		UNION ALL
		SELECT l.value, (date_part('epoch', l.time) * 1000)::bigint
		FROM series ls JOIN samples l ON l.machine = ls.machine AND l.metric = ls.metric
		WHERE ls.id = $1 AND l.time >= $11 AND l.time <= $12`
	}
	return `
SELECT b, min(ARRAY[lo, lo_ms]), max(ARRAY[hi, -hi_ms])
FROM (
	SELECT ((date_part('epoch', bucket) * 1000)::bigint - $5) * $6 / $7 AS b,
		min AS lo, (date_part('epoch', min_time) * 1000)::bigint::double precision AS lo_ms,
		max AS hi, (date_part('epoch', max_time) * 1000)::bigint::double precision AS hi_ms
	FROM ` + table + `
	WHERE series_id = $1 AND bucket >= $2 AND bucket < $3 AND $4::text IS NULL
		AND ((date_part('epoch', bucket) * 1000)::bigint - $5) * $6 / $7
			= ((date_part('epoch', bucket) * 1000)::bigint + $8 - 1 - $5) * $6 / $7
	UNION ALL
	SELECT LEAST((ms - $5) * $6 / $7, $6 - 1), v, ms::double precision, v, ms::double precision
	FROM (
		SELECT value AS v, (date_part('epoch', time) * 1000)::bigint AS ms
		FROM sample_head WHERE series_id = $1 AND time >= $11 AND time <= $12` + legacyRows + `
		UNION ALL
		SELECT x.v, x.ms FROM unnest($9::timestamptz[], $10::timestamptz[]) AS r(lo, hi)
		CROSS JOIN LATERAL (
			SELECT c.v, (date_part('epoch', c.start) * 1000)::bigint + c.o AS ms
			FROM ` + chunkRows("c.series_id = $1 AND c.start > r.lo - interval '1 hour' AND c.start < r.hi"+
		" AND c.start >= $13 AND c.start <= $12") + ` -- [$13, $12]: prunes partitions at plan time
			WHERE c.start + c.o * interval '1 millisecond' >= r.lo AND c.start + c.o * interval '1 millisecond' < r.hi
		) x
	) r
) x
GROUP BY b ORDER BY b`
}
