package postgres

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
)

// clampRange limits [from, to] to the times a sample can have; ok is false
// when nothing can match.
func clampRange(from, to int64) (int64, int64, bool) {
	from, to = max(from, minTime), min(to, maxTime)
	return from, to, from <= to
}

func ts(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// customPlan makes a query run as an unnamed statement, planned with its
// arguments every time: partitions are pruned at plan time and the plan
// fits the range, where a cached generic plan (pgx prepares statements,
// PostgreSQL switches to a generic plan after five runs) can pick a plan
// that is good on average and terrible for a day at 1 Hz.
const customPlan = pgx.QueryExecModeCacheDescribe

const selectRange = `
SELECT time, value FROM samples
WHERE machine = $1 AND metric = $2 AND time >= $3 AND time <= $4
ORDER BY time`

// Select calls fn for every sample of key in [from, to] in time order, until
// fn returns false. fn must not call the store.
func (s *Store) Select(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("selecting samples: %w", err)
	}
	if err := s.acquire(); err != nil {
		return fmt.Errorf("selecting samples: %w", err)
	}
	defer s.life.RUnlock()
	from, to, ok := clampRange(from, to)
	if !ok || !validName(key.Machine) || !validName(key.Metric) {
		return nil
	}
	if s.packed {
		if err := s.selectPacked(ctx, key, from, to, fn); err != nil {
			return errPacked("selecting", key, err)
		}
		return nil
	}
	rows, err := s.pool.Query(ctx, selectRange, customPlan, key.Machine, key.Metric, ts(from), ts(to))
	if err != nil {
		return fmt.Errorf("selecting %s/%s: %w", key.Machine, key.Metric, err)
	}
	defer rows.Close()
	var t time.Time
	var v float64
	for rows.Next() {
		if err := rows.Scan(&t, &v); err != nil {
			return fmt.Errorf("selecting %s/%s: %w", key.Machine, key.Metric, err)
		}
		if !fn(store.Point{Time: t.UnixMilli(), Value: v}) {
			return nil
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("selecting %s/%s: %w", key.Machine, key.Metric, err)
	}
	return nil
}

// listSeries walks the distinct series of the aggregates table (one row per
// window, not per sample) with a skip scan on its primary key, keeps those
// with a window overlapping [$1, $2] (one index probe each), then those
// with a raw sample in range (another probe: only the edge windows can
// disagree). No index on time is needed: samples and sample_aggs each keep
// one index, for ingest speed.
const listSeries = `
WITH RECURSIVE k AS (
	(SELECT machine, metric FROM sample_aggs
	 WHERE bucket >= date_bin($3::interval, $1::timestamptz, timestamptz 'epoch') AND bucket <= $2
	 ORDER BY machine, metric LIMIT 1)
	UNION ALL
	SELECT n.machine, n.metric FROM k CROSS JOIN LATERAL (
		SELECT a.machine, a.metric FROM sample_aggs a
		WHERE (a.machine, a.metric) > (k.machine, k.metric)
			AND a.bucket >= date_bin($3::interval, $1::timestamptz, timestamptz 'epoch') AND a.bucket <= $2
		ORDER BY a.machine, a.metric LIMIT 1
	) n
)
SELECT k.machine, k.metric FROM k
CROSS JOIN LATERAL (
	SELECT 1 FROM samples s
	WHERE s.machine = k.machine AND s.metric = k.metric AND s.time >= $1 AND s.time <= $2
	LIMIT 1 -- keeps it a probe per series (an EXISTS becomes a hash semi-join)
) e
ORDER BY 1, 2`

// Series lists the series with samples in [from, to], sorted.
func (s *Store) Series(ctx context.Context, from, to int64) ([]store.SeriesKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing series: %w", err)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("listing series: %w", err)
	}
	defer s.life.RUnlock()
	from, to, ok := clampRange(from, to)
	if !ok {
		return nil, nil
	}
	if s.packed {
		keys, err := s.seriesPacked(ctx, from, to)
		if err != nil {
			return nil, fmt.Errorf("listing series: %w", err)
		}
		return keys, nil
	}
	rows, err := s.pool.Query(ctx, listSeries, customPlan, ts(from), ts(to), s.opts.Window)
	if err != nil {
		return nil, fmt.Errorf("listing series: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (store.SeriesKey, error) {
		var k store.SeriesKey
		err := r.Scan(&k.Machine, &k.Metric)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing series: %w", err)
	}
	return keys, nil
}

// aggregateRaw aggregates the raw samples by step.
const aggregateRaw = `
SELECT date_bin($5::interval, time, timestamptz 'epoch') AS b,
	count(*), sum(value), min(value), max(value)
FROM samples
WHERE machine = $1 AND metric = $2 AND time >= $3 AND time <= $4
GROUP BY b ORDER BY b`

// aggregateMixed takes whole windows from the aggregates table and the
// partial windows at either end of the range from the raw samples.
const aggregateMixed = `
SELECT date_bin($5::interval, t, timestamptz 'epoch') AS b,
	sum(n)::bigint, sum(s), min(lo), max(hi)
FROM (
	SELECT bucket AS t, count AS n, sum AS s, min AS lo, max AS hi FROM sample_aggs
	WHERE machine = $1 AND metric = $2 AND bucket >= $6 AND bucket < $7
	UNION ALL
	SELECT time, 1, value, value, value FROM samples
	WHERE machine = $1 AND metric = $2 AND time >= $3 AND time < $6
	UNION ALL
	SELECT time, 1, value, value, value FROM samples
	WHERE machine = $1 AND metric = $2 AND time >= $7 AND time <= $4
) x
GROUP BY b ORDER BY b`

// AggregateRange is store.Aggregate computed in SQL: from the aggregates
// table for the whole windows in range when step is a multiple of the
// window, else from the raw samples.
func (s *Store) AggregateRange(ctx context.Context, key store.SeriesKey, from, to int64, step time.Duration, agg store.Agg) ([]store.Point, error) {
	if _, err := store.ParseAgg(string(agg)); err != nil {
		return nil, err
	}
	w := step.Milliseconds()
	if w < 1 {
		return nil, fmt.Errorf("aggregating with step %v (want at least 1ms): %w", step, store.ErrInvalidQuery)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("aggregating: %w", err)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("aggregating: %w", err)
	}
	defer s.life.RUnlock()
	out := []store.Point{}
	from, to, ok := clampRange(from, to)
	if !ok || !validName(key.Machine) || !validName(key.Metric) {
		return out, nil
	}
	stepIv := time.Duration(w) * time.Millisecond
	var rows pgx.Rows
	var err error
	midFrom := floorDiv(from+s.window-1, s.window) * s.window // first whole window
	midTo := floorDiv(to+1, s.window) * s.window              // end of the last whole window
	if s.packed {
		var found bool
		if rows, found, err = s.aggregatePackedRows(ctx, key, from, to, w); err == nil && !found {
			return out, nil
		}
	} else if w%s.window == 0 && midFrom < midTo {
		rows, err = s.pool.Query(ctx, aggregateMixed, customPlan, key.Machine, key.Metric, ts(from), ts(to), stepIv, ts(midFrom), ts(midTo))
	} else {
		rows, err = s.pool.Query(ctx, aggregateRaw, customPlan, key.Machine, key.Metric, ts(from), ts(to), stepIv)
	}
	if err != nil {
		return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
	}
	defer rows.Close()
	var (
		b           time.Time
		n           int64
		sum, lo, hi float64
	)
	for rows.Next() {
		if err := rows.Scan(&b, &n, &sum, &lo, &hi); err != nil {
			return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
		}
		p := store.Point{Time: b.UnixMilli()}
		switch agg {
		case store.AggAvg:
			p.Value = sum / float64(n)
		case store.AggMin:
			p.Value = lo
		case store.AggMax:
			p.Value = hi
		case store.AggSum:
			p.Value = sum
		case store.AggCount:
			p.Value = float64(n)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
	}
	return out, nil
}

const selectFirst = `
SELECT time, value FROM samples
WHERE machine = $1 AND metric = $2 AND time >= $3 AND time <= $4
ORDER BY time LIMIT $5`

// downsampleMinMax returns, per bucket b = (t - from) * nb / span, the
// minimum as [value, time] and the maximum as [value, -time] of the raw
// samples: array order makes the earliest point win ties, as in
// store.Downsample.
const downsampleMinMax = `
SELECT b, min(ARRAY[value, ms::double precision]), max(ARRAY[value, (-ms)::double precision])
FROM (
	SELECT value, ms, LEAST((ms - $5) * $6 / $7, $6 - 1) AS b
	FROM (
		SELECT value, (date_part('epoch', time) * 1000)::bigint AS ms FROM samples
		WHERE machine = $1 AND metric = $2 AND time >= $3 AND time <= $4
	) r
) x
GROUP BY b ORDER BY b`

// downsampleWindows is downsampleMinMax reading the windows that lie inside
// one bucket from sample_aggs (their minimum, maximum and the earliest times
// of both) and only the rest from samples: the windows cut by a bucket
// boundary ($8) and the partial windows at the ends of the range ($9, $10:
// the start and end of each raw range). A day at 1 Hz is then 8 640 rows of
// aggregates and a few thousand samples instead of 86 400 samples.
const downsampleWindows = `
SELECT b, min(ARRAY[lo, lo_ms]), max(ARRAY[hi, -hi_ms])
FROM (
	SELECT ((date_part('epoch', bucket) * 1000)::bigint - $5) * $6 / $7 AS b,
		min AS lo, (date_part('epoch', min_time) * 1000)::bigint::double precision AS lo_ms,
		max AS hi, (date_part('epoch', max_time) * 1000)::bigint::double precision AS hi_ms
	FROM sample_aggs
	WHERE machine = $1 AND metric = $2 AND bucket >= $3 AND bucket < $4
		-- the window lies inside one bucket: its first and last ms agree
		AND ((date_part('epoch', bucket) * 1000)::bigint - $5) * $6 / $7
			= ((date_part('epoch', bucket) * 1000)::bigint + $8 - 1 - $5) * $6 / $7
	UNION ALL
	SELECT LEAST((ms - $5) * $6 / $7, $6 - 1), value, ms::double precision, value, ms::double precision
	FROM (
		SELECT s.value, (date_part('epoch', s.time) * 1000)::bigint AS ms
		FROM unnest($9::timestamptz[], $10::timestamptz[]) AS r(lo, hi)
		CROSS JOIN LATERAL (
			SELECT time, value FROM samples
			WHERE machine = $1 AND metric = $2 AND time >= r.lo AND time < r.hi
				AND time >= $11 AND time <= $12 -- the whole range: prunes partitions at plan time
		) s
	) r
) x
GROUP BY b ORDER BY b`

// windowPlan splits [from, to] for downsampleWindows: the whole windows
// [midFrom, midTo) and the raw ranges [lo, hi) to read from samples (the
// partial windows at both ends and the windows cut by a bucket boundary). ok is false when aggregates do
// not help: no whole window, or buckets narrower than a window.
func windowPlan(from, to, cfrom, cto int64, nb, span uint64, w int64) (midFrom, midTo int64, lo, hi []time.Time, ok bool) {
	midFrom = floorDiv(cfrom+w-1, w) * w
	midTo = floorDiv(cto+1, w) * w
	if midFrom >= midTo || span/nb < uint64(w) {
		return 0, 0, nil, nil, false
	}
	// Empty, not nil: unnest(NULL) is no rows, but say what we mean.
	lo, hi = []time.Time{}, []time.Time{}
	if cfrom < midFrom {
		lo, hi = append(lo, ts(cfrom)), append(hi, ts(midFrom))
	}
	last := int64(math.MinInt64)
	for i := uint64(1); i < nb; i++ {
		// The first time of bucket i, as store.Downsample computes it.
		h, l := bits.Mul64(i, span)
		q, r := bits.Div64(h, l, nb)
		if r != 0 {
			q++
		}
		b := int64(uint64(from) + q)
		if b <= midFrom || b >= midTo || b%w == 0 {
			continue // outside the whole windows, or on a window's start
		}
		ws := floorDiv(b, w) * w
		if ws == last {
			continue
		}
		last = ws
		lo, hi = append(lo, ts(ws)), append(hi, ts(ws+w))
	}
	if midTo <= cto {
		lo, hi = append(lo, ts(midTo)), append(hi, ts(cto+1))
	}
	return midFrom, midTo, lo, hi, true
}

// DownsampleRange is store.Downsample computed in SQL: at most n points,
// the minimum and maximum of each of n/2 equal buckets.
func (s *Store) DownsampleRange(ctx context.Context, key store.SeriesKey, from, to int64, n int) ([]store.Point, error) {
	if n < 2 {
		return nil, fmt.Errorf("downsampling to %d points (want at least 2): %w", n, store.ErrInvalidQuery)
	}
	if from > to {
		return []store.Point{}, nil
	}
	if s.packed {
		return s.downsamplePacked(ctx, key, from, to, n)
	}
	nb := uint64(n / 2)
	span := uint64(to) - uint64(from) + 1
	if hi, lo := bits.Mul64(span, nb); span == 0 || hi != 0 || lo > math.MaxInt64 {
		// The bucket arithmetic would overflow a bigint: do it here.
		return store.Downsample(ctx, s, key, from, to, n)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("downsampling: %w", err)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("downsampling: %w", err)
	}
	defer s.life.RUnlock()
	cfrom, cto, ok := clampRange(from, to)
	if !ok || !validName(key.Machine) || !validName(key.Metric) {
		return []store.Point{}, nil
	}
	// At most n samples come back as they are.
	rows, err := s.pool.Query(ctx, selectFirst, customPlan, key.Machine, key.Metric, ts(cfrom), ts(cto), n+1)
	if err != nil {
		return nil, fmt.Errorf("downsampling %s/%s: %w", key.Machine, key.Metric, err)
	}
	raw, err := pgx.CollectRows(rows, scanPoint)
	if err != nil {
		return nil, fmt.Errorf("downsampling %s/%s: %w", key.Machine, key.Metric, err)
	}
	if len(raw) <= n {
		return raw, nil
	}
	if midFrom, midTo, lo, hi, ok := windowPlan(from, to, cfrom, cto, nb, span, s.window); ok {
		rows, err = s.pool.Query(ctx, downsampleWindows, customPlan, key.Machine, key.Metric, ts(midFrom), ts(midTo),
			from, int64(nb), int64(span), s.window, lo, hi, ts(cfrom), ts(cto))
	} else {
		rows, err = s.pool.Query(ctx, downsampleMinMax, customPlan, key.Machine, key.Metric, ts(cfrom), ts(cto), from, int64(nb), int64(span))
	}
	if err != nil {
		return nil, fmt.Errorf("downsampling %s/%s: %w", key.Machine, key.Metric, err)
	}
	defer rows.Close()
	out := make([]store.Point, 0, n)
	var (
		b      int64
		lo, hi []float64
	)
	for rows.Next() {
		if err := rows.Scan(&b, &lo, &hi); err != nil {
			return nil, fmt.Errorf("downsampling %s/%s: %w", key.Machine, key.Metric, err)
		}
		out = appendMinMax(out, lo, hi)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("downsampling %s/%s: %w", key.Machine, key.Metric, err)
	}
	return out, nil
}

// scanPoint scans a (time, value) row into a point.
func scanPoint(r pgx.CollectableRow) (store.Point, error) {
	var t time.Time
	var p store.Point
	err := r.Scan(&t, &p.Value)
	p.Time = t.UnixMilli()
	return p, err
}

// appendMinMax appends a bucket's minimum and maximum in time order (one
// point when they are the same sample), from the (value, time) and
// (value, −time) pairs the min–max downsampling queries select.
func appendMinMax(out []store.Point, lo, hi []float64) []store.Point {
	pmin := store.Point{Time: int64(lo[1]), Value: lo[0]}
	pmax := store.Point{Time: -int64(hi[1]), Value: hi[0]}
	switch {
	case pmin.Time == pmax.Time:
		return append(out, pmin)
	case pmin.Time < pmax.Time:
		return append(out, pmin, pmax)
	default:
		return append(out, pmax, pmin)
	}
}
