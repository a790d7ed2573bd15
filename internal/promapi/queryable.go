package promapi

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

// The labels the registry adds to every series.
const (
	LabelSite = "site"
	LabelLine = "line"
)

// visibleKey carries the sites a request's identity sees.
type visibleKey struct{}

// WithVisibleSites returns ctx restricting the API's answers to the
// machines of the sites for which sees reports true (a site-restricted
// identity); without it every machine is visible.
func WithVisibleSites(ctx context.Context, sees func(site string) bool) context.Context {
	return context.WithValue(ctx, visibleKey{}, sees)
}

func visibleSites(ctx context.Context) func(string) bool {
	f, _ := ctx.Value(visibleKey{}).(func(string) bool)
	return f
}

// enriched is a storage.Queryable above a store's PromQueryable: it adds
// the registry's labels (site, line and the chosen attributes) to each
// series, resolves matchers on them (and the identity's sites, from the
// Select context) to a machine set sent down as one machine=~"…" matcher,
// and applies every matcher on the enriched labels.
type enriched struct {
	inner storage.Queryable
	list  func() []twin.Info
	attrs []string
}

// machineLabels are the registry's labels of one machine.
type machineLabels struct {
	site, line string
	attrs      []string // values of enriched.attrs, "" when absent
}

func (e *enriched) registryLabel(name string) bool {
	return name == LabelSite || name == LabelLine || slices.Contains(e.attrs, name)
}

func (e *enriched) labelsOf(in twin.Info) machineLabels {
	ml := machineLabels{site: in.Site, line: in.Line}
	if len(e.attrs) > 0 {
		ml.attrs = make([]string, len(e.attrs))
		for i, a := range e.attrs {
			ml.attrs[i] = attributeValue(in.Attributes[a])
		}
	}
	return ml
}

// attributeValue is a registry attribute as a label value: strings as they
// are, numbers and booleans in their JSON form, anything else (objects,
// lists, null) absent.
func attributeValue(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case bool:
		return strconv.FormatBool(v)
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64)
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return ""
}

func (e *enriched) get(ml machineLabels, name string) string {
	switch name {
	case LabelSite:
		return ml.site
	case LabelLine:
		return ml.line
	}
	if i := slices.Index(e.attrs, name); i >= 0 && ml.attrs != nil {
		return ml.attrs[i]
	}
	return ""
}

func (e *enriched) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := e.inner.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return &enrichedQuerier{e: e, q: q, mint: mint, maxt: maxt}, nil
}

type enrichedQuerier struct {
	e          *enriched
	q          storage.Querier
	mint, maxt int64
	// maxSeries > 0 bounds the series the querier's Selects give out,
	// all together (a PromQL query's, see limited); selected counts them.
	maxSeries int64
	selected  atomic.Int64
}

// limited is the enriched queryable of PromQL queries: their querier
// gives out at most maxSeries series over all of a query's Selects, and
// fails past it with promql.ErrTooManySeries (422 cost_limit), the
// engine's own query-cost series limit. The engine's (EnableQueryCost)
// wraps every sample iterator in a check of the context, twice per sample
// read: a fifth of a day's fleet heatmap through HTTP (see
// docs/benchmarks.md, "H2-heat"); counting series here costs nothing per
// sample. The engine still checks its context per series and per step,
// and the stores theirs while reading.
type limited struct {
	e         *enriched
	maxSeries int
}

func (l limited) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := l.e.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	eq := q.(*enrichedQuerier)
	eq.maxSeries = int64(l.maxSeries)
	return eq, nil
}

func (q *enrichedQuerier) Close() error { return q.q.Close() }

// plan is how one Select reaches the store.
type plan struct {
	// down are the matchers sent to the store.
	down []*labels.Matcher
	// machines are the registry's labels by machine id.
	machines map[string]machineLabels
	// registered: only machines of the registry can match (a machine set
	// was sent down).
	registered bool
	// none: nothing can match.
	none bool
}

func (q *enrichedQuerier) plan(ctx context.Context, ms []*labels.Matcher) plan {
	e := q.e
	sees := visibleSites(ctx)
	var p plan
	var regMatchers, machineMatchers []*labels.Matcher
	// A machine outside the registry has empty registry labels: it can
	// match only if every registry matcher takes the empty value, and the
	// identity sees every site.
	unregisteredMatch := sees == nil
	for _, m := range ms {
		switch {
		case m.Name == store.PromLabelName:
			p.down = append(p.down, m)
		case m.Name == store.PromLabelMachine:
			p.down = append(p.down, m)
			machineMatchers = append(machineMatchers, m)
		case e.registryLabel(m.Name):
			regMatchers = append(regMatchers, m)
			if !m.Matches("") {
				unregisteredMatch = false
			}
		}
	}
	infos := e.list()
	p.machines = make(map[string]machineLabels, len(infos))
	var ids []string
	for _, in := range infos {
		ml := e.labelsOf(in)
		p.machines[in.ID] = ml
		if unregisteredMatch {
			continue
		}
		if sees != nil && !sees(in.Site) {
			continue
		}
		if !matchAll(machineMatchers, in.ID) {
			continue
		}
		ok := true
		for _, m := range regMatchers {
			if !m.Matches(e.get(ml, m.Name)) {
				ok = false
				break
			}
		}
		if ok {
			ids = append(ids, in.ID)
		}
	}
	if unregisteredMatch {
		return p
	}
	p.registered = true
	if len(ids) == 0 {
		p.none = true
		return p
	}
	p.down = append(p.down, MachineSetMatcher(ids))
	return p
}

// MachineSetMatcher returns the matcher machine=~"id1|id2|…" of ids, each
// regexp-quoted, so that its SetMatches gives the ids back.
func MachineSetMatcher(ids []string) *labels.Matcher {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte('|')
		}
		b.WriteString(regexp.QuoteMeta(id))
	}
	return labels.MustNewMatcher(labels.MatchRegexp, store.PromLabelMachine, b.String())
}

func matchAll(ms []*labels.Matcher, v string) bool {
	for _, m := range ms {
		if !m.Matches(v) {
			return false
		}
	}
	return true
}

func (q *enrichedQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	p := q.plan(ctx, ms)
	if p.none {
		return storage.EmptySeriesSet()
	}
	if len(p.down) == 0 {
		p.down = []*labels.Matcher{labels.MustNewMatcher(labels.MatchNotEqual, store.PromLabelName, "")}
	}
	set := &enrichedSet{q: q, p: p, ms: ms, ss: q.q.Select(ctx, false, hints, p.down...)}
	if !sortSeries {
		return set
	}
	// The registry's labels change the order: sort here.
	var all []storage.Series
	for set.Next() {
		all = append(all, set.At())
	}
	if err := set.Err(); err != nil {
		return storage.ErrSeriesSet(err)
	}
	slices.SortFunc(all, func(a, b storage.Series) int { return labels.Compare(a.Labels(), b.Labels()) })
	return &listSet{series: all, warnings: set.Warnings()}
}

// enrich returns the labels of a store series with the registry's, and
// whether it belongs to the answer.
func (q *enrichedQuerier) enrich(p *plan, ls labels.Labels, b *labels.Builder) (labels.Labels, bool) {
	machine := ls.Get(store.PromLabelMachine)
	ml, ok := p.machines[machine]
	if !ok && p.registered {
		return labels.EmptyLabels(), false
	}
	b.Reset(ls)
	if ml.site != "" {
		b.Set(LabelSite, ml.site)
	}
	if ml.line != "" {
		b.Set(LabelLine, ml.line)
	}
	for i, a := range q.e.attrs {
		if ml.attrs != nil && ml.attrs[i] != "" {
			b.Set(a, ml.attrs[i])
		}
	}
	return b.Labels(), true
}

type enrichedSet struct {
	q   *enrichedQuerier
	p   plan
	ms  []*labels.Matcher
	ss  storage.SeriesSet
	b   labels.Builder
	cur storage.Series
	err error
}

func (s *enrichedSet) Next() bool {
	if s.err != nil {
		return false
	}
	for s.ss.Next() {
		sr := s.ss.At()
		ls, ok := s.q.enrich(&s.p, sr.Labels(), &s.b)
		if !ok {
			continue
		}
		match := true
		for _, m := range s.ms {
			if !m.Matches(ls.Get(m.Name)) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		if m := s.q.maxSeries; m > 0 && s.q.selected.Add(1) > m {
			s.err = promql.ErrTooManySeries("query execution")
			return false
		}
		s.cur = series{Series: sr, lset: ls}
		return true
	}
	return false
}

func (s *enrichedSet) At() storage.Series { return s.cur }

func (s *enrichedSet) Err() error {
	if s.err != nil {
		return s.err
	}
	return s.ss.Err()
}
func (s *enrichedSet) Warnings() annotations.Annotations { return s.ss.Warnings() }

type series struct {
	storage.Series
	lset labels.Labels
}

func (s series) Labels() labels.Labels { return s.lset }

type listSet struct {
	series   []storage.Series
	i        int
	warnings annotations.Annotations
}

func (s *listSet) Next() bool {
	if s.i >= len(s.series) {
		return false
	}
	s.i++
	return true
}

func (s *listSet) At() storage.Series                { return s.series[s.i-1] }
func (s *listSet) Err() error                        { return nil }
func (s *listSet) Warnings() annotations.Annotations { return s.warnings }

// seriesOnly are the hints of a Select that reads no samples (Prometheus'
// own convention for the series and label APIs). A label call's limit is
// on its values, not on the series they come from: it is applied to the
// answer (limitValues).
func seriesOnly(mint, maxt int64) *storage.SelectHints {
	return &storage.SelectHints{Start: mint, End: maxt, Func: "series"}
}

// limitValues cuts sorted values to the label hints' limit.
func limitValues(vs []string, h *storage.LabelHints) []string {
	if h != nil && h.Limit > 0 && len(vs) > h.Limit {
		return vs[:h.Limit]
	}
	return vs
}

// LabelValues answers from the store when it can (the metric names or
// machines, no other matcher, every site visible), else from the enriched
// series.
func (q *enrichedQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	if visibleSites(ctx) == nil && (name == store.PromLabelName || name == store.PromLabelMachine) &&
		!slices.ContainsFunc(ms, func(m *labels.Matcher) bool { return q.e.registryLabel(m.Name) }) {
		return q.q.LabelValues(ctx, name, hints, ms...)
	}
	set := map[string]struct{}{}
	ws, err := q.each(ctx, ms, func(ls labels.Labels) {
		if v := ls.Get(name); v != "" {
			set[v] = struct{}{}
		}
	})
	if err != nil {
		return nil, ws, err
	}
	return limitValues(sortedKeys(set), hints), ws, nil
}

// LabelNames answers from the enriched series.
func (q *enrichedQuerier) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	set := map[string]struct{}{}
	ws, err := q.each(ctx, ms, func(ls labels.Labels) {
		ls.Range(func(l labels.Label) { set[l.Name] = struct{}{} })
	})
	if err != nil {
		return nil, ws, err
	}
	return limitValues(sortedKeys(set), hints), ws, nil
}

// each calls fn with the labels of every series matching ms (all series
// when ms is empty).
func (q *enrichedQuerier) each(ctx context.Context, ms []*labels.Matcher, fn func(labels.Labels)) (annotations.Annotations, error) {
	ss := q.Select(ctx, false, seriesOnly(q.mint, q.maxt), ms...)
	n := 0
	for ss.Next() {
		fn(ss.At().Labels())
		if n++; n%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return ss.Warnings(), fmt.Errorf("listing labels: %w", err)
			}
		}
	}
	return ss.Warnings(), ss.Err()
}

func sortedKeys(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
