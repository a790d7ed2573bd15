package embedded

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/twinline/twinline/internal/store"
)

// tierPlan is how a PromQL Select reads a tier: one point per tier bucket,
// its statistic stat, at the bucket's start.
type tierPlan struct {
	tier *tier
	stat func(agg) float64
	need uint8 // the statistics stat reads, a mask over statNames
}

// planTier decides whether a Select may read a rollup tier, from its
// hints: avg_over_time, min_over_time, max_over_time or sum_over_time of a
// range selector in a range query whose every evaluation interval is a
// union of whole tier buckets. The engine evaluates f(x[R]) at e (the
// evaluation time less the selector's offset) over the samples in
// (e-R, e]; the hints give Start = e0-R+1 (the first interval's first
// millisecond), End = the last e, Step and Range. The intervals are unions
// of buckets [b, b+w) when Start and Range are multiples of w and every e
// is Start+R-1 plus a multiple of Step, itself a multiple of w. Each
// bucket then gives one point, inside every interval that holds the
// bucket's samples and no other: min, max and sum of the points are those
// of the samples (sums up to rounding); an average only when R is one
// bucket (an average of averages is not the average). count_over_time
// counts points, so it reads raw samples, as does everything else.
// Grafana's default alignment (evaluation at multiples of the step) cuts
// every bucket by a millisecond: `[1m] offset 1ms` (or a start 1 ms
// earlier) aligns it. A subquery evaluates at multiples of its step, which
// the hints do not show: the query API marks a query with one
// (store.WithRawSamples) and its Selects read raw samples.
func (r *rollups) planTier(h *storage.SelectHints) (tierPlan, bool) {
	if h == nil || h.Step <= 0 || h.Range <= 0 || h.End < h.Start {
		return tierPlan{}, false
	}
	var stat func(agg) float64
	var need uint8 // bits: count, max, min, sum
	switch h.Func {
	case "min_over_time":
		stat, need = func(a agg) float64 { return a.min }, 1<<2
	case "max_over_time":
		stat, need = func(a agg) float64 { return a.max }, 1<<1
	case "sum_over_time":
		stat, need = func(a agg) float64 { return a.sum }, 1<<3
	case "avg_over_time":
		stat, need = func(a agg) float64 { return a.sum / a.n }, 1<<0|1<<3
	default:
		return tierPlan{}, false
	}
	for i := len(r.tiers) - 1; i >= 0; i-- {
		t := r.tiers[i]
		w := t.width
		if h.Step%w != 0 || h.Range%w != 0 || floorDiv(h.Start, w)*w != h.Start {
			continue
		}
		if h.Func == "avg_over_time" && h.Range != w {
			continue
		}
		anchor := h.Start + h.Range - 1
		if h.End < anchor || (h.End-anchor)%h.Step != 0 {
			return tierPlan{}, false
		}
		return tierPlan{tier: t, stat: stat, need: need}, true
	}
	return tierPlan{}, false
}

// selectTier answers a Select from the tier of p: the buckets of the
// series the matchers select in [hints.Start, hints.End], merged with the
// samples not rolled up, one point per bucket.
func (s *Store) selectTier(ctx context.Context, p tierPlan, hints *storage.SelectHints, tm []*labels.Matcher) (_ storage.SeriesSet, torn bool) {
	s.roll.tierSelects.Add(1)
	mint, maxt := hints.Start, hints.End
	v, err := s.openView(ctx, p.tier, mint, maxt)
	if err != nil {
		return storage.ErrSeriesSet(err), false
	}
	defer v.close()
	byKey, err := v.aggregatesAll(tm, p.need, mint, maxt)
	if errors.Is(err, errTierTorn) {
		s.roll.torn.Add(1)
		s.logger.Warn("reading raw samples instead of a rollup tier", "err", err)
		return nil, true
	}
	if err != nil {
		return storage.ErrSeriesSet(err), false
	}
	out := make([]storage.Series, 0, len(byKey))
	n := 0
	for k, aggs := range byKey {
		pts := make([]promql.FPoint, len(aggs))
		for i, a := range aggs {
			pts[i] = promql.FPoint{T: a.start, F: p.stat(a)}
		}
		n += len(pts)
		// The engine iterates the points of a StorageSeries straight
		// from the slice (storage.NewListSeriesIterator costs an
		// interface call per point: 1.44 M for a fleet heatmap).
		out = append(out, promql.NewStorageSeries(promql.Series{
			Metric: labels.FromStrings(store.PromLabelName, k.Metric, store.PromLabelMachine, k.Machine),
			Floats: pts,
		}))
	}
	if err := store.TakeSamples(ctx, n); err != nil {
		return storage.ErrSeriesSet(err), false
	}
	slices.SortFunc(out, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	return &listSeriesSet{series: out}, false
}

// aggregatesAll is aggregates for every series the TSDB matchers select,
// reading only the statistics in need (a mask over statNames).
func (v *tierView) aggregatesAll(tm []*labels.Matcher, need uint8, mint, maxt int64) (map[store.SeriesKey][]agg, error) {
	ctx := v.unrolledCtx
	out := map[store.SeriesKey][]agg{}
	need |= 1 // the count: merging with raw samples needs it
	var names []string
	for k, n := range statNames {
		if need&(1<<k) != 0 {
			names = append(names, n)
		}
	}
	ms := append(slices.Clip(tm), labels.MustNewMatcher(labels.MatchRegexp, labelStat, strings.Join(names, "|")))
	// The tier: the stat series of a key are neighbours in label order.
	ss := v.tq.Select(ctx, true, &storage.SelectHints{Start: mint, End: maxt}, ms...)
	w := v.tier.width
	var (
		it   chunkenc.Iterator
		cur  store.SeriesKey
		aggs []agg
		idx  []int // the bucket of every sample of the first stat series
		n    int   // samples of the first stat series
		seen int   // stat series of cur read
	)
	flush := func() {
		if seen > 0 {
			out[cur] = aggs
		}
		aggs, idx, n, seen = nil, idx[:0], 0, 0
	}
	for ss.Next() {
		sr := ss.At()
		lset := sr.Labels()
		k := store.SeriesKey{Machine: lset.Get(LabelMachine), Metric: lset.Get(LabelMetric)}
		if k != cur || seen == 0 {
			flush()
			cur = store.SeriesKey{Machine: strings.Clone(k.Machine), Metric: strings.Clone(k.Metric)}
		}
		col := slices.Index(statNames[:], lset.Get(labelStat))
		it = sr.Iterator(it)
		i := 0
		for vt := it.Seek(mint); vt != chunkenc.ValNone; vt = it.Next() {
			t, val := it.At()
			if t > maxt {
				break
			}
			if seen == 0 {
				// The first series lays out the buckets; a later
				// version of a bucket overwrites it.
				start := floorDiv(t, w) * w
				if aggs == nil {
					aggs = make([]agg, 0, min((maxt-start)/w+1, 1<<16))
				}
				if len(aggs) == 0 || aggs[len(aggs)-1].start != start {
					aggs = append(aggs, agg{start: start})
				}
				idx = append(idx, len(aggs)-1)
			} else if i >= n {
				return nil, fmt.Errorf("%w: tier series of %s/%s disagree", errTierTorn, cur.Machine, cur.Metric)
			}
			a := &aggs[idx[i]]
			switch col {
			case 0:
				a.n = val
			case 1:
				a.max = val
			case 2:
				a.min = val
			case 3:
				a.sum = val
			}
			i++
		}
		if err := it.Err(); err != nil {
			return nil, err
		}
		if seen == 0 {
			n = i
		} else if i != n {
			return nil, fmt.Errorf("%w: tier series of %s/%s disagree: %d and %d samples", errTierTorn, cur.Machine, cur.Metric, n, i)
		}
		seen++
	}
	if err := ss.Err(); err != nil {
		return nil, err
	}
	flush()
	// The samples not rolled up.
	rs := v.unrolled.Select(ctx, false, &storage.SelectHints{Start: mint, End: maxt}, tm...)
	for rs.Next() {
		sr := rs.At()
		lset := sr.Labels()
		k := store.SeriesKey{Machine: lset.Get(LabelMachine), Metric: lset.Get(LabelMetric)}
		extra, err := v.unrolledBuckets(sr, k, mint, maxt)
		if err != nil {
			return nil, err
		}
		if len(extra) == 0 {
			continue
		}
		old, ok := out[k]
		if !ok {
			k = store.SeriesKey{Machine: strings.Clone(k.Machine), Metric: strings.Clone(k.Metric)}
		}
		out[k] = mergeAggs(old, extra)
	}
	if err := rs.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
