package embedded

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/twinline/twinline/internal/store"
)

var _ store.PromQueryable = (*Store)(nil)

// PromQueryable returns the store's series as a storage.Queryable for
// PromQL: the TSDB's own querier, with the label metric renamed __name__
// (store.PromLabelName) on matchers, series, label names and values.
// avg/min/max/sum_over_time of a range selector whose evaluation
// intervals are unions of whole rollup buckets read a tier instead, one
// point per bucket (see planTier).
//
// A Querier holds the store open (Close waits) until it is closed; every
// querier opened must be closed.
func (s *Store) PromQueryable() storage.Queryable { return promQueryable{s} }

type promQueryable struct{ s *Store }

func (p promQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	s := p.s
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return nil, fmt.Errorf("opening querier: %w", store.ErrClosed)
	}
	q, err := s.db.Querier(mint, maxt)
	if err != nil {
		s.closeMu.RUnlock()
		return nil, fmt.Errorf("opening querier: %w", err)
	}
	return &promQuerier{s: s, q: q, release: s.closeMu.RUnlock}, nil
}

// promQuerier renames metric to __name__ around a TSDB querier.
type promQuerier struct {
	s       *Store
	q       storage.Querier
	release func()
	once    sync.Once
}

// tsdbMatchers translates PromQL matchers to the TSDB's labels. ok is false
// when they cannot match any series: a matcher on the TSDB's own label
// metric (which PromQL does not see: it sees __name__) that refuses the
// empty value.
func tsdbMatchers(ms []*labels.Matcher) (out []*labels.Matcher, ok bool) {
	out = make([]*labels.Matcher, 0, len(ms)+1)
	for _, m := range ms {
		switch m.Name {
		case store.PromLabelName:
			c := *m
			c.Name = LabelMetric
			out = append(out, &c)
		case LabelMetric:
			// PromQL's series have no label "metric": it is "".
			if !m.Matches("") {
				return nil, false
			}
		default:
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		out = append(out, labels.MustNewMatcher(labels.MatchNotEqual, LabelMetric, ""))
	}
	return out, true
}

// promLabels returns the PromQL labels of a TSDB series, cloning the
// strings (they may point into memory-mapped index data).
func promLabels(l labels.Labels) labels.Labels {
	return labels.FromStrings(
		store.PromLabelName, strings.Clone(l.Get(LabelMetric)),
		store.PromLabelMachine, strings.Clone(l.Get(LabelMachine)))
}

func (q *promQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	tm, ok := tsdbMatchers(ms)
	if !ok {
		return storage.EmptySeriesSet()
	}
	if p, ok := q.s.roll.planTier(hints); ok && !store.RawSamplesOnly(ctx) {
		if ss, torn := q.s.selectTier(ctx, p, hints, tm); !torn {
			return ss
		}
	}
	// The TSDB sorts by machine, then metric; PromQL by __name__ first.
	ss := q.q.Select(ctx, sortSeries, hints, tm...)
	if !sortSeries {
		return &promSeriesSet{ss: ss}
	}
	var all []storage.Series
	for ss.Next() {
		sr := ss.At()
		all = append(all, promSeries{Series: sr, lset: promLabels(sr.Labels())})
	}
	if err := ss.Err(); err != nil {
		return storage.ErrSeriesSet(err)
	}
	slices.SortFunc(all, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	return &listSeriesSet{series: all, warnings: ss.Warnings()}
}

func (q *promQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	switch name {
	case store.PromLabelName:
		name = LabelMetric
	case store.PromLabelMachine:
	default:
		return nil, nil, nil
	}
	tm, ok := tsdbMatchers(ms)
	if !ok {
		return nil, nil, nil
	}
	vs, ws, err := q.q.LabelValues(ctx, name, hints, tm...)
	if err != nil {
		return nil, ws, err
	}
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strings.Clone(v)
	}
	return out, ws, nil
}

func (q *promQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	tm, ok := tsdbMatchers(ms)
	if !ok {
		return nil, nil, nil
	}
	names, ws, err := q.q.LabelNames(ctx, hints, tm...)
	if err != nil || len(names) == 0 {
		return nil, ws, err
	}
	return []string{store.PromLabelName, store.PromLabelMachine}, ws, nil
}

func (q *promQuerier) Close() error {
	err := q.q.Close()
	q.once.Do(q.release)
	return err
}

type promSeriesSet struct {
	ss  storage.SeriesSet
	cur promSeries
}

func (s *promSeriesSet) Next() bool {
	if !s.ss.Next() {
		return false
	}
	sr := s.ss.At()
	s.cur = promSeries{Series: sr, lset: promLabels(sr.Labels())}
	return true
}

func (s *promSeriesSet) At() storage.Series                { return s.cur }
func (s *promSeriesSet) Err() error                        { return s.ss.Err() }
func (s *promSeriesSet) Warnings() annotations.Annotations { return s.ss.Warnings() }

// promSeries is a TSDB series under its PromQL labels.
type promSeries struct {
	storage.Series
	lset labels.Labels
}

func (s promSeries) Labels() labels.Labels { return s.lset }

// listSeriesSet walks series held in memory.
type listSeriesSet struct {
	series   []storage.Series
	i        int
	warnings annotations.Annotations
}

func (s *listSeriesSet) Next() bool {
	if s.i >= len(s.series) {
		return false
	}
	s.i++
	return true
}

func (s *listSeriesSet) At() storage.Series                { return s.series[s.i-1] }
func (s *listSeriesSet) Err() error                        { return nil }
func (s *listSeriesSet) Warnings() annotations.Annotations { return s.warnings }
