package postgres

import (
	"context"
	bin "encoding/binary"
	"math"
	"math/bits"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
)

// The long-range downsampling of the packed layout, done in Go (ADR 0030,
// issue 18 second round): one REPEATABLE READ snapshot reads
//   - the 1 h rollups of the range's whole hours (min and max with their
//     times, and the count of samples each stands for),
//   - the chunks (arrays, decoded by pgx) of the hours that a downsampling
//     bucket boundary cuts and of the two ends of the range,
//   - the head rows (never in a tier) and the legacy rows in range,
// and folds them into the n/2 buckets as store.Downsample does. Per cut
// hour a whole chunk comes back (360 samples at 10 s) instead of one SQL
// row per sample or per minute: at 30 days to 1 000 points that is ~700
// tier rows and ~500 arrays, where the SQL plan read 41 k rows of agg_1m.
// Dense series (too many samples in the cut hours) keep the SQL plan.

// maxGoDownsampleSamples bounds the samples of the cut hours read as
// arrays; above it downsamplePacked keeps the SQL plan (1 min rollups).
const maxGoDownsampleSamples = 400_000

// pgLess orders float8 as PostgreSQL does (NaN above everything, equal to
// itself), so that the fold agrees with the rollups' min and max.
func pgLess(a, b float64) bool {
	switch an, bn := math.IsNaN(a), math.IsNaN(b); {
	case an:
		return false
	case bn:
		return true
	}
	return a < b
}

// mmFold is the minimum and maximum point of each of nb buckets over
// [from, from+span): on equal values the earliest time wins, as the tiers'
// min_time/max_time and store.Downsample (time-ordered, strict) choose.
type mmFold struct {
	from     int64
	span, nb uint64
	has      []bool
	lo, hi   []store.Point
}

func newMMFold(from int64, span, nb uint64) *mmFold {
	return &mmFold{from: from, span: span, nb: nb, has: make([]bool, nb), lo: make([]store.Point, nb), hi: make([]store.Point, nb)}
}

// bucketOf is floor((t-from)*nb/span), clamped to the last bucket.
func (f *mmFold) bucketOf(t int64) uint64 {
	h, l := bits.Mul64(uint64(t)-uint64(f.from), f.nb)
	q, _ := bits.Div64(h, l, f.span)
	return min(q, f.nb-1)
}

func (f *mmFold) add(b uint64, lo, hi store.Point) {
	if !f.has[b] {
		f.has[b], f.lo[b], f.hi[b] = true, lo, hi
		return
	}
	if c := f.lo[b]; pgLess(lo.Value, c.Value) || (!pgLess(c.Value, lo.Value) && lo.Time < c.Time) {
		f.lo[b] = lo
	}
	if c := f.hi[b]; pgLess(c.Value, hi.Value) || (!pgLess(hi.Value, c.Value) && hi.Time < c.Time) {
		f.hi[b] = hi
	}
}

func (f *mmFold) sample(p store.Point) { f.add(f.bucketOf(p.Time), p, p) }

func (f *mmFold) points(n int) []store.Point {
	out := make([]store.Point, 0, n)
	for b := range f.nb {
		if !f.has[b] {
			continue
		}
		lo, hi := f.lo[b], f.hi[b]
		switch {
		case lo.Time == hi.Time:
			out = append(out, lo)
		case lo.Time < hi.Time:
			out = append(out, lo, hi)
		default:
			out = append(out, hi, lo)
		}
	}
	return out
}

// downsampleGo is downsamplePacked's plan on the 1 h rollups and the cut
// hours' chunks; ok false (and no error) when the cut hours hold more than
// maxGoDownsampleSamples samples or the range has no whole hour, for the
// SQL plan to run instead. The caller holds s.life and passed the
// series id.
func (s *Store) downsampleGo(ctx context.Context, id int32, from, cfrom, cto int64, nb, span uint64, n int) (out []store.Point, ok bool, err error) {
	midFrom := floorDiv(cfrom+hourMs-1, hourMs) * hourMs
	midTo := floorDiv(cto+1, hourMs) * hourMs
	if midFrom >= midTo {
		return nil, false, nil
	}
	f := newMMFold(from, span, nb)
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// The whole hours: a tier row when no bucket boundary cuts the hour,
	// else the hour's chunk, raw.
	rows, err := tx.Query(ctx, `SELECT bucket, count, min, min_time, max, max_time FROM `+agg1hTable+`
		WHERE series_id = $1 AND bucket >= $2 AND bucket < $3`, customPlan, id, ts(midFrom), ts(midTo))
	if err != nil {
		return nil, false, err
	}
	var (
		bucket, minT, maxT time.Time
		count              int64
		lo, hi             float64
		cut                []time.Time
		cutSamples         int64
	)
	for rows.Next() {
		if err := rows.Scan(&bucket, &count, &lo, &minT, &hi, &maxT); err != nil {
			rows.Close()
			return nil, false, err
		}
		h := bucket.UnixMilli()
		if b := f.bucketOf(h); b == f.bucketOf(h+hourMs-1) {
			f.add(b, store.Point{Time: minT.UnixMilli(), Value: lo}, store.Point{Time: maxT.UnixMilli(), Value: hi})
			continue
		}
		cut = append(cut, bucket)
		cutSamples += count
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	if cutSamples > maxGoDownsampleSamples {
		return nil, false, nil
	}
	// The ends of the range, partial hours: their chunks, filtered.
	if cfrom < midFrom {
		cut = append(cut, ts(midFrom-hourMs))
	}
	if midTo <= cto {
		cut = append(cut, ts(midTo))
	}
	// Every chunk of the range comes back, the others skipped here: with
	// the cut hours as start = ANY($2) the plan took longer than the read
	// (partition pruning tries each element on each daily partition).
	cutSet := make(map[int64]bool, len(cut))
	for _, c := range cut {
		cutSet[c.UnixMilli()] = true
	}
	rows, err = tx.Query(ctx, `SELECT start, offsets, vals FROM `+chunksTable+`
		WHERE series_id = $1 AND start >= $2 AND start <= $3`,
		customPlan, id, chunkStart(cfrom), ts(cto))
	if err != nil {
		return nil, false, err
	}
	var (
		start time.Time
		offs  []int32
		vals  []float64
	)
	fds := rows.FieldDescriptions()
	binary := len(fds) == 3 && fds[0].Format == pgx.BinaryFormatCode && fds[1].Format == pgx.BinaryFormatCode && fds[2].Format == pgx.BinaryFormatCode
	for rows.Next() {
		// pgx decodes an array element by element through its codecs, a
		// third of the read: the binary arrays are walked here instead.
		raw := rows.RawValues()
		var okRaw bool
		if binary && len(raw[0]) == 8 {
			start = ts(floorDiv(int64(bin.BigEndian.Uint64(raw[0]))+pgEpochMicros, 1000))
			if !cutSet[start.UnixMilli()] {
				continue
			}
			offs, okRaw = pgArrayInt4(raw[1], offs[:0])
			if okRaw {
				vals, okRaw = pgArrayFloat8(raw[2], vals[:0])
			}
		}
		if !okRaw {
			if err := rows.Scan(&start, &offs, &vals); err != nil {
				rows.Close()
				return nil, false, err
			}
			if !cutSet[start.UnixMilli()] {
				continue
			}
		}
		base := start.UnixMilli()
		for i, o := range offs {
			if t := base + int64(o); t >= cfrom && t <= cto && i < len(vals) {
				f.sample(store.Point{Time: t, Value: vals[i]})
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	// The head rows and the legacy rows in range.
	raw := `SELECT time, value FROM sample_head WHERE series_id = $1 AND time >= $2 AND time <= $3`
	if s.legacy.Load() {
		raw += legacyRaw
	}
	rows, err = tx.Query(ctx, raw, customPlan, id, ts(cfrom), ts(cto))
	if err != nil {
		return nil, false, err
	}
	var t time.Time
	var v float64
	for rows.Next() {
		if err := rows.Scan(&t, &v); err != nil {
			rows.Close()
			return nil, false, err
		}
		f.sample(store.Point{Time: t.UnixMilli(), Value: v})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	return f.points(n), true, nil
}

// pgArrayElems walks a one-dimensional PostgreSQL array without NULLs in
// binary format (ndim, has-null flag, element type, length, lower bound,
// then length-prefixed elements) of elements of size bytes each, calling
// fn with each; ok false for anything else.
func pgArrayElems(b []byte, size int, fn func([]byte)) bool {
	if len(b) < 12 {
		return false
	}
	ndim, hasNull := bin.BigEndian.Uint32(b), bin.BigEndian.Uint32(b[4:])
	if ndim == 0 {
		return len(b) == 12
	}
	if ndim != 1 || hasNull != 0 || len(b) < 20 {
		return false
	}
	n := int(bin.BigEndian.Uint32(b[12:]))
	b = b[20:]
	if n < 0 || len(b) != n*(4+size) {
		return false
	}
	for i := 0; i < n; i++ {
		if int32(bin.BigEndian.Uint32(b)) != int32(size) {
			return false
		}
		fn(b[4 : 4+size])
		b = b[4+size:]
	}
	return true
}

func pgArrayInt4(b []byte, out []int32) ([]int32, bool) {
	ok := pgArrayElems(b, 4, func(e []byte) { out = append(out, int32(bin.BigEndian.Uint32(e))) })
	return out, ok
}

func pgArrayFloat8(b []byte, out []float64) ([]float64, bool) {
	ok := pgArrayElems(b, 8, func(e []byte) { out = append(out, math.Float64frombits(bin.BigEndian.Uint64(e))) })
	return out, ok
}
