package embedded

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/twinline/twinline/internal/store"
)

var _ store.Aggregator = (*Store)(nil)

// timeLimit bounds the times the tiers are read for: a range reaching
// beyond reads its ends raw.
const timeLimit = int64(1) << 60

// AggregateRange is store.Aggregate, read from the widest rollup tier whose
// width divides step (1 h, then 1 min) for the whole tier buckets of the
// range, and from the raw samples for its ends and for the samples not
// rolled up yet. Any other step reads the raw samples. Sums and averages
// may differ from Aggregate's in the last bits (another order of
// additions); counts, minima and maxima are the same.
func (s *Store) AggregateRange(ctx context.Context, key store.SeriesKey, from, to int64, step time.Duration, agg store.Agg) ([]store.Point, error) {
	if _, err := store.ParseAgg(string(agg)); err != nil {
		return nil, err
	}
	w := step.Milliseconds()
	if w < 1 {
		return nil, fmt.Errorf("aggregating with step %v (want at least 1ms): %w", step, store.ErrInvalidQuery)
	}
	t := s.roll.tierFor(w)
	if t == nil || from > to {
		return store.Aggregate(ctx, s, key, from, to, step, agg)
	}
	midFrom := -floorDiv(-max(from, -timeLimit), t.width) * t.width // ceiling
	midTo := floorDiv(min(to, timeLimit)+1, t.width) * t.width      // exclusive
	if midFrom >= midTo {
		return store.Aggregate(ctx, s, key, from, to, step, agg)
	}
	var parts []aggPart
	edge := func(lo, hi int64) error {
		if lo > hi {
			return nil
		}
		return s.Select(ctx, key, lo, hi, func(p store.Point) bool {
			a := aggPart{start: p.Time}
			a.add(p.Value)
			parts = append(parts, a)
			return true
		})
	}
	if err := edge(from, midFrom-1); err != nil {
		return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
	}
	mid, err := s.tierAggregates(ctx, t, key, midFrom, midTo-1)
	if errors.Is(err, errTierTorn) {
		s.roll.torn.Add(1)
		s.logger.Warn("reading raw samples instead of a rollup tier", "err", err)
		return store.Aggregate(ctx, s, key, from, to, step, agg)
	}
	if err != nil {
		return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
	}
	parts = append(parts, mid...)
	if err := edge(midTo, to); err != nil {
		return nil, fmt.Errorf("aggregating %s/%s: %w", key.Machine, key.Metric, err)
	}

	out := []store.Point{}
	var b aggPart
	for _, p := range parts {
		start := floorDiv(p.start, w) * w
		if b.n > 0 && start != b.start {
			out = append(out, point(b, agg))
			b = aggPart{}
		}
		b.merge(p)
		b.start = start
	}
	if b.n > 0 {
		out = append(out, point(b, agg))
	}
	return out, nil
}

type aggPart = agg

func point(b agg, a store.Agg) store.Point {
	p := store.Point{Time: b.start}
	switch a {
	case store.AggAvg:
		p.Value = b.sum / b.n
	case store.AggMin:
		p.Value = b.min
	case store.AggMax:
		p.Value = b.max
	case store.AggSum:
		p.Value = b.sum
	case store.AggCount:
		p.Value = b.n
	}
	return p
}

// tierAggregates returns the tier buckets of key in [mint, maxt], aligned
// to the tier, with the samples not rolled up merged in.
func (s *Store) tierAggregates(ctx context.Context, t *tier, key store.SeriesKey, mint, maxt int64) ([]agg, error) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	v, err := s.openView(ctx, t, mint, maxt)
	if err != nil {
		return nil, err
	}
	defer v.close()
	byKey, err := v.aggregatesAll([]*labels.Matcher{
		labels.MustNewMatcher(labels.MatchEqual, LabelMachine, key.Machine),
		labels.MustNewMatcher(labels.MatchEqual, LabelMetric, key.Metric),
	}, 0xf, mint, maxt)
	if err != nil {
		return nil, err
	}
	return byKey[key], nil
}
