package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// ErrInvalidQuery reports a query parameter the helpers cannot work with:
// an unknown aggregation, a step below one millisecond, too few points.
var ErrInvalidQuery = errors.New("invalid query")

// Agg names an aggregation function over the samples of one bucket.
type Agg string

// The aggregations Aggregate understands.
const (
	AggAvg   Agg = "avg"
	AggMin   Agg = "min"
	AggMax   Agg = "max"
	AggSum   Agg = "sum"
	AggCount Agg = "count"
)

// ParseAgg returns the aggregation named s (avg, min, max, sum or count).
func ParseAgg(s string) (Agg, error) {
	switch a := Agg(s); a {
	case AggAvg, AggMin, AggMax, AggSum, AggCount:
		return a, nil
	}
	return "", fmt.Errorf("parsing aggregation %q (want avg, min, max, sum or count): %w", s, ErrInvalidQuery)
}

// bucket accumulates the samples of one aggregation bucket.
type bucket struct {
	start    int64
	n        int64
	sum      float64
	min, max float64
}

func (b *bucket) add(v float64) {
	if b.n == 0 {
		b.min, b.max = v, v
	} else {
		b.min = min(b.min, v)
		b.max = max(b.max, v)
	}
	b.n++
	b.sum += v
}

func (b *bucket) point(agg Agg) Point {
	p := Point{Time: b.start}
	switch agg {
	case AggAvg:
		p.Value = b.sum / float64(b.n)
	case AggMin:
		p.Value = b.min
	case AggMax:
		p.Value = b.max
	case AggSum:
		p.Value = b.sum
	case AggCount:
		p.Value = float64(b.n)
	}
	return p
}

// Aggregate reduces the samples of key in [from, to] (ms, inclusive) to one
// point per step-wide bucket. Buckets are aligned to multiples of step since
// the Unix epoch, so the same bucket has the same start whatever the query
// range; a point's Time is its bucket's start (which may precede from, the
// bucket then only covers the samples in range). Buckets without samples are
// omitted. The samples are streamed, not loaded.
func Aggregate(ctx context.Context, s Store, key SeriesKey, from, to int64, step time.Duration, agg Agg) ([]Point, error) {
	if _, err := ParseAgg(string(agg)); err != nil {
		return nil, err
	}
	w := step.Milliseconds()
	if w < 1 {
		return nil, fmt.Errorf("aggregating with step %v (want at least 1ms): %w", step, ErrInvalidQuery)
	}
	out := []Point{}
	if from > to {
		return out, nil
	}
	var b bucket
	err := s.Select(ctx, key, from, to, func(p Point) bool {
		start := floorDiv(p.Time, w) * w
		if b.n > 0 && start != b.start {
			out = append(out, b.point(agg))
			b = bucket{}
		}
		b.start = start
		b.add(p.Value)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
	}
	if b.n > 0 {
		out = append(out, b.point(agg))
	}
	return out, nil
}

// floorDiv is a / b rounded towards negative infinity (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// Downsample returns at most n points of key in [from, to] (ms, inclusive)
// that keep the series' peaks: the range is split into n/2 equal buckets and
// each non-empty bucket contributes its minimum and its maximum point, in
// time order (a single point when they are the same point: one sample, or a
// flat bucket). Ties keep the earliest point. If the range holds at most n
// samples they are returned as they are. n must be at least 2.
//
// It makes one pass over the samples and holds at most n+1 of them.
func Downsample(ctx context.Context, s Store, key SeriesKey, from, to int64, n int) ([]Point, error) {
	if n < 2 {
		return nil, fmt.Errorf("downsampling to %d points (want at least 2): %w", n, ErrInvalidQuery)
	}
	if from > to {
		return []Point{}, nil
	}
	d := newMinMax(from, to, n/2)
	raw := make([]Point, 0, min(n, 4096))
	count := 0
	err := s.Select(ctx, key, from, to, func(p Point) bool {
		if p.Time < from || p.Time > to {
			return true // a misbehaving store; bucketOf needs t in range
		}
		if count < n {
			raw = append(raw, p)
		}
		count++
		d.add(p)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("downsampling %s/%s: %w", key.Machine, key.Metric, err)
	}
	if count <= n {
		return raw, nil
	}
	return d.finish(), nil
}

// minMax assigns time-ordered points to nb equal buckets over [from, to] and
// keeps each bucket's minimum and maximum point.
type minMax struct {
	from int64
	span uint64 // to-from+1, saturated
	nb   uint64

	idx      uint64 // current bucket
	next     int64  // first time of bucket idx+1 (exclusive end of idx)
	last     bool   // idx is the last bucket: next is meaningless
	has      bool
	min, max Point
	out      []Point
}

func newMinMax(from, to int64, nb int) *minMax {
	span := uint64(to) - uint64(from) + 1
	if span == 0 { // the whole int64 range
		span = math.MaxUint64
	}
	d := &minMax{from: from, span: span, nb: uint64(nb), out: make([]Point, 0, 2*nb)}
	d.enter(0)
	return d
}

// bucketOf returns the bucket of time t: floor((t-from)*nb/span).
func (d *minMax) bucketOf(t int64) uint64 {
	hi, lo := bits.Mul64(uint64(t)-uint64(d.from), d.nb)
	q, _ := bits.Div64(hi, lo, d.span) // hi < span as t-from < span
	return min(q, d.nb-1)
}

// enter makes i the current bucket.
func (d *minMax) enter(i uint64) {
	d.idx = i
	d.last = i+1 >= d.nb
	if d.last {
		return
	}
	// The first time of bucket i+1 is from + ceil((i+1)*span/nb).
	hi, lo := bits.Mul64(i+1, d.span)
	q, r := bits.Div64(hi, lo, d.nb) // hi < nb as i+1 <= nb
	if r != 0 {
		q++
	}
	d.next = int64(uint64(d.from) + q)
}

func (d *minMax) add(p Point) {
	if !d.last && p.Time >= d.next {
		d.flush()
		d.enter(d.bucketOf(p.Time))
	}
	if !d.has {
		d.min, d.max, d.has = p, p, true
		return
	}
	if p.Value < d.min.Value {
		d.min = p
	}
	if p.Value > d.max.Value {
		d.max = p
	}
}

func (d *minMax) flush() {
	if !d.has {
		return
	}
	switch {
	case d.min.Time == d.max.Time:
		d.out = append(d.out, d.min)
	case d.min.Time < d.max.Time:
		d.out = append(d.out, d.min, d.max)
	default:
		d.out = append(d.out, d.max, d.min)
	}
	d.has = false
}

func (d *minMax) finish() []Point {
	d.flush()
	return d.out
}

// Aggregator is implemented by stores that aggregate in the backend.
// AggregateRange has the contract and the result of Aggregate (up to
// floating-point rounding of sums and averages), so a caller may use either:
//
//	if a, ok := s.(store.Aggregator); ok {
//		return a.AggregateRange(ctx, key, from, to, step, agg)
//	}
//	return store.Aggregate(ctx, s, key, from, to, step, agg)
type Aggregator interface {
	AggregateRange(ctx context.Context, key SeriesKey, from, to int64, step time.Duration, agg Agg) ([]Point, error)
}

// Downsampler is implemented by stores that downsample in the backend.
// DownsampleRange has the contract and the result of Downsample.
type Downsampler interface {
	DownsampleRange(ctx context.Context, key SeriesKey, from, to int64, n int) ([]Point, error)
}
