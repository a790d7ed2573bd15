package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"regexp/syntax"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/twinline/twinline/internal/store"
)

// The PromQL side of the store: a storage.Queryable whose series are
// {__name__=<metric>, machine=<id>} with float samples (see
// store.PromQueryable and docs/postgres.md, section PromQL).
//
// A Select is one SQL statement, whatever the number of series: the
// matchers on machine and __name__ become machine = ANY($n) and
// metric = ANY($m) (equality, and regexes that are a set of literals, as
// the query API sends a site's machines), the time range becomes the range
// condition on the (machine, metric, time) index; other matchers (negations,
// real regexes) are resolved to such sets first, against the series that
// have data in the range (Store.Series), with the matcher itself in Go:
// PostgreSQL's regexes are not RE2.
//
// For max_over_time and min_over_time in a range query at a step of a
// minute or more, over series dense enough (windowDensity), Select reads
// sample_aggs (one row per 10 s window) in place of the raw rows of every
// window no evaluation window cuts, and the raw samples of the others: see
// planAggregates for why the answer is exactly the raw one. In the packed
// layout the rollups serve instead (planTiers, alignedTier): a tier read is
// two statements in one snapshot (selectPromTier).

var _ store.PromQueryable = (*Store)(nil)

// PromQueryable returns the store's series for the PromQL engine.
func (s *Store) PromQueryable() storage.Queryable {
	return promQueryable{s: s, aggregates: true, minDensity: aggMinDensity}
}

// aggMinDensity is the mean number of samples per aggregate window below
// which a Select that may read aggregates reads raw rows all the same: the
// aggregates read scans sample_aggs three times and probes the cut
// windows, which costs more than it saves on sparse series (measured: 2.4
// times the raw read at one sample per window, 0.75 times at ten; see
// docs/benchmarks.md, Issue 17).
const aggMinDensity = 5

// promQueryable is the Queryable; without aggregates every Select reads
// raw rows (the tests compare both); minDensity 0 reads aggregates
// whenever the plan allows (the tests, to cover sparse windows).
type promQueryable struct {
	s          *Store
	aggregates bool
	minDensity float64
}

func (q promQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	return &promQuerier{s: q.s, mint: mint, maxt: maxt, aggregates: q.aggregates, minDensity: q.minDensity}, nil
}

type promQuerier struct {
	s          *Store
	mint, maxt int64
	aggregates bool
	minDensity float64
}

func (q *promQuerier) Close() error { return nil }

// seriesFilter is a Select's matchers, sorted out: the sets of metrics and
// machines to push into SQL (nil: any) and the matchers checked in Go.
type seriesFilter struct {
	metrics, machines []string
	residual          []*labels.Matcher // on __name__ or machine, not a set
	all               []*labels.Matcher
	none              bool // no series can match
}

func newSeriesFilter(ms []*labels.Matcher) seriesFilter {
	f := seriesFilter{all: ms}
	for _, m := range ms {
		var set *[]string
		switch m.Name {
		case store.PromLabelName:
			set = &f.metrics
		case store.PromLabelMachine:
			set = &f.machines
		default:
			// A label the series lack: the matcher sees "".
			if !m.Matches("") {
				f.none = true
			}
			continue
		}
		var vals []string
		switch {
		case m.Type == labels.MatchEqual:
			vals = []string{m.Value}
		case m.Type == labels.MatchRegexp && m.SetMatches() != nil:
			vals = m.SetMatches()
		case m.Type == labels.MatchRegexp:
			var ok bool
			if vals, ok = literalAlternation(m.Value); !ok {
				f.residual = append(f.residual, m)
				continue
			}
		default:
			f.residual = append(f.residual, m)
			continue
		}
		// Neither label is ever empty, and PostgreSQL cannot hold what
		// validName refuses: such values match nothing.
		vals = slices.DeleteFunc(slices.Clone(vals), func(v string) bool { return v == "" || !validName(v) })
		if *set == nil {
			*set = vals
		} else {
			*set = slices.DeleteFunc(*set, func(v string) bool { return !slices.Contains(vals, v) })
		}
		slices.Sort(*set)
		*set = slices.Compact(*set)
		if len(*set) == 0 {
			f.none = true
		}
	}
	return f
}

// literalAlternation returns the strings of a regex that is an
// alternation of literals, "a|b\\.c|…", as the query API writes a machine
// set: labels.Matcher.SetMatches gives up past 256 of them (a site can
// have more machines). Anything else (a group, a class, a flag, an
// escaped |) is not one: ok is false.
func literalAlternation(re string) ([]string, bool) {
	var out []string
	for part := range strings.SplitSeq(re, "|") {
		if part == "" {
			out = append(out, "")
			continue
		}
		p, err := syntax.Parse(part, syntax.Perl)
		if err != nil || p.Op != syntax.OpLiteral || p.Flags&syntax.FoldCase != 0 {
			return nil, false
		}
		out = append(out, string(p.Rune))
	}
	return out, true
}

// matches applies every matcher to the series machine/metric.
func (f *seriesFilter) matches(machine, metric string) bool {
	for _, m := range f.all {
		switch m.Name {
		case store.PromLabelName:
			if !m.Matches(metric) {
				return false
			}
		case store.PromLabelMachine:
			if !m.Matches(machine) {
				return false
			}
		default:
			if !m.Matches("") {
				return false
			}
		}
	}
	return true
}

// keys lists the series with samples in [from, to] that match f.
func (q *promQuerier) keys(ctx context.Context, f *seriesFilter, from, to int64) ([]store.SeriesKey, error) {
	if f.none {
		return nil, nil
	}
	keys, err := q.s.Series(ctx, from, to)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(keys, func(k store.SeriesKey) bool { return !f.matches(k.Machine, k.Metric) }), nil
}

// bounds is the querier's range narrowed by the hints.
func (q *promQuerier) bounds(start, end int64) (int64, int64) {
	return max(q.mint, start), min(q.maxt, end)
}

func (q *promQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, matchers ...*labels.Matcher) storage.SeriesSet {
	from, to := q.mint, q.maxt
	if hints != nil {
		from, to = q.bounds(hints.Start, hints.End)
	}
	f := newSeriesFilter(matchers)
	if f.none || from > to {
		return storage.EmptySeriesSet()
	}
	if hints != nil && hints.Func == "series" {
		// The series API: labels only.
		keys, err := q.keys(ctx, &f, from, to)
		if err != nil {
			return storage.ErrSeriesSet(err)
		}
		out := make([]*promSeries, len(keys))
		for i, k := range keys {
			out[i] = newPromSeries(k.Machine, k.Metric)
		}
		return newPromSeriesSet(out, hints)
	}
	if len(f.residual) > 0 {
		keys, err := q.keys(ctx, &f, from, to)
		if err != nil {
			return storage.ErrSeriesSet(err)
		}
		if len(keys) == 0 {
			return storage.EmptySeriesSet()
		}
		// Every matcher is on one label, so the matching series are
		// exactly machines × metrics of the matching keys.
		f.machines, f.metrics = make([]string, 0, len(keys)), make([]string, 0, len(keys))
		for _, k := range keys {
			f.machines, f.metrics = append(f.machines, k.Machine), append(f.metrics, k.Metric)
		}
		slices.Sort(f.machines)
		slices.Sort(f.metrics)
		f.machines, f.metrics = slices.Compact(f.machines), slices.Compact(f.metrics)
	}
	series, err := q.s.selectProm(ctx, &f, from, to, q.plan(ctx, hints), q.minDensity)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	return newPromSeriesSet(series, hints)
}

// plan is how a Select reads: raw samples, or the aggregates or rollups
// its hints allow — raw under a subquery (store.RawSamplesOnly), whose
// evaluation times the hints do not describe.
func (q *promQuerier) plan(ctx context.Context, hints *storage.SelectHints) aggPlan {
	if !q.aggregates || store.RawSamplesOnly(ctx) {
		return aggPlan{}
	}
	if q.s.packed {
		return planTiers(hints)
	}
	return planAggregates(hints, q.s.window)
}

func (q *promQuerier) LabelNames(ctx context.Context, _ *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	f := newSeriesFilter(matchers)
	keys, err := q.keys(ctx, &f, q.mint, q.maxt)
	if err != nil || len(keys) == 0 {
		return nil, nil, err
	}
	return []string{store.PromLabelName, store.PromLabelMachine}, nil, nil
}

func (q *promQuerier) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	if name != store.PromLabelName && name != store.PromLabelMachine {
		return nil, nil, nil
	}
	f := newSeriesFilter(matchers)
	keys, err := q.keys(ctx, &f, q.mint, q.maxt)
	if err != nil {
		return nil, nil, err
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if name == store.PromLabelName {
			out = append(out, k.Metric)
		} else {
			out = append(out, k.Machine)
		}
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if hints != nil && hints.Limit > 0 && len(out) > hints.Limit {
		out = out[:hints.Limit]
	}
	return out, nil, nil
}

// aggPlan says how a Select may read sample_aggs: col is "max" or "min"
// ("" reads raw rows only); the evaluation windows are (e-rng, e] for e on
// anchor + k*step.
type aggPlan struct {
	col               string
	anchor, rng, step int64
}

// planAggregates decides whether a Select may read the aggregates, from
// its hints: max_over_time or min_over_time (Func) of a range selector
// (Range > 0) in a range query at a step of a minute or more.
//
// Exactness. The engine evaluates max_over_time(x[R]) at e = t - offset
// for every step t: the maximum of the raw samples in (e-R, e]. Select
// returns, for every window [b, b+w) of sample_aggs that no such interval
// cuts, one point: its maximum at its time (max_time), and the raw samples
// of every other window. An uncut window lies wholly inside or wholly
// outside each interval, and so does its point; the maximum over an
// interval of these points is the maximum of its raw samples, bit for bit
// (min alike). An interval (e-R, e] cuts [b, b+w) when e or e-R lies in
// [b, b+w-2]; the evaluation times are taken to be anchor + k*step with
// anchor = Start + Range - 1 (the first evaluation time: the engine asks for
// (t0-offset-R, end-offset]), and the windows cut by any point of that
// lattice (all k, a superset) are read raw. The windows at both ends of
// [Start, End] that are only partly inside are read raw too.
//
// The hints do not say whether the selector sits in a subquery, whose
// evaluation times are multiples of the subquery's step (not start + k*step)
// shifted by the selector's offset: the plan requires the anchor to be a
// multiple of the step, and End to be on the lattice, so a subquery is on
// the lattice too unless its range selector has an offset that is not a
// multiple of the subquery step and the anchor falls on a multiple by
// chance (see docs/decisions/0025-promql-on-postgres.md). Anything else
// reads raw rows: rate, increase, *_over_time but max and min, plain
// selectors (the lookback picks the last sample, which a window's maximum
// is not), instant queries.
func planAggregates(h *storage.SelectHints, window int64) aggPlan {
	if h == nil || h.Step < 60_000 || h.Range <= 0 || h.End < h.Start {
		return aggPlan{}
	}
	col := ""
	switch h.Func {
	case "max_over_time":
		col = "max"
	case "min_over_time":
		col = "min"
	default:
		return aggPlan{}
	}
	anchor := h.Start + h.Range - 1
	if floorMod(anchor, h.Step) != 0 || h.End < anchor || (h.End-anchor)%h.Step != 0 {
		return aggPlan{}
	}
	if h.Range < window {
		return aggPlan{} // every window cut: nothing to gain
	}
	return aggPlan{col: col, anchor: anchor, rng: h.Range, step: h.Step}
}

func floorMod(a, b int64) int64 { return ((a % b) + b) % b }

// cutWindow reports whether the evaluation windows of p cut the aggregate
// window [b, b+w): the Go twin of the SQL condition, for the tests.
func (p aggPlan) cutWindow(b, w int64) bool {
	return floorMod(p.anchor-b, p.step) <= w-2 || floorMod(p.anchor-p.rng-b, p.step) <= w-2
}

// sqlArgs numbers a statement's arguments.
type sqlArgs []any

func (a *sqlArgs) add(v any) string {
	*a = append(*a, v)
	return "$" + strconv.Itoa(len(*a))
}

// seriesCond is the SQL condition of f's sets on the columns of alias.
func seriesCond(alias string, f *seriesFilter, args *sqlArgs) string {
	conds := []string{"TRUE"}
	if f.machines != nil {
		conds = append(conds, alias+"machine = ANY("+args.add(f.machines)+"::text[])")
	}
	if f.metrics != nil {
		conds = append(conds, alias+"metric = ANY("+args.add(f.metrics)+"::text[])")
	}
	return strings.Join(conds, " AND ")
}

// promRawSQL is the raw read of a Select. It has no ORDER BY: an index
// scan returns a series' rows together and in time order anyway, and a
// sequential scan (a metric of every machine) returns them in the order
// they were written, mostly time order; gatherSeries groups and sorts
// them for less than PostgreSQL's sort of the whole result would cost
// (which spills to disk past work_mem).
func promRawSQL(f *seriesFilter, from, to int64) (string, sqlArgs) {
	var a sqlArgs
	sql := `SELECT machine, metric, time, value FROM samples WHERE ` + seriesCond("", f, &a) +
		` AND time >= ` + a.add(ts(from)) + ` AND time <= ` + a.add(ts(to))
	return sql, a
}

// promAggSQL reads, for p, the whole windows of [from, to] from
// sample_aggs and the partial windows at both ends from samples. A window
// no evaluation interval cuts gives one point, its extreme at its time. A
// cut window gives its raw samples: read from the window itself when it
// has one sample (its max at max_time) or two at different times (its min
// and its max), else with a probe of the index — so sparse series (a
// sample or two per window) cost no probe. Three plain scans of
// sample_aggs: a lateral subquery per window row, choosing among the
// three, cost five times the raw read. The rows of a series come in no
// particular order (gatherSeries sorts them).
func promAggSQL(f *seriesFilter, from, to, midFrom, midTo, w int64, p aggPlan) (string, sqlArgs) {
	var a sqlArgs
	fromA, toA, midFromA, midToA := a.add(ts(from)), a.add(ts(to)), a.add(ts(midFrom)), a.add(ts(midTo))
	wA, wIvA := a.add(w), a.add(time.Duration(w)*time.Millisecond)
	anchorA, anchorRA, stepA := a.add(p.anchor), a.add(p.anchor-p.rng), a.add(p.step)
	bucketMs := `(date_part('epoch', a.bucket) * 1000)::bigint`
	cut := `(mod(mod(` + anchorA + `::bigint - ` + bucketMs + `, ` + stepA + `::bigint) + ` + stepA + `::bigint, ` + stepA + `::bigint) <= ` + wA + `::bigint - 2` +
		` OR mod(mod(` + anchorRA + `::bigint - ` + bucketMs + `, ` + stepA + `::bigint) + ` + stepA + `::bigint, ` + stepA + `::bigint) <= ` + wA + `::bigint - 2)`
	other := "min"
	if p.col == "min" {
		other = "max"
	}
	aggs := func(cond string) string {
		return `FROM sample_aggs a WHERE ` + seriesCond("a.", f, &a) + ` AND a.bucket >= ` + midFromA + ` AND a.bucket < ` + midToA + ` AND ` + cond
	}
	// The window's own samples: one, or two at different times.
	known := `(a.count = 1 OR (a.count = 2 AND a.min_time <> a.max_time))`
	sql := `
SELECT a.machine, a.metric, a.` + p.col + `_time, a.` + p.col + ` ` + aggs(`(NOT `+cut+` OR `+known+`)`) + `
UNION ALL
SELECT a.machine, a.metric, a.` + other + `_time, a.` + other + ` ` + aggs(cut+` AND a.count = 2 AND a.min_time <> a.max_time`) + `
UNION ALL
SELECT a.machine, a.metric, r.time, r.value FROM sample_aggs a CROSS JOIN LATERAL (
	SELECT s.time, s.value FROM samples s
	WHERE s.machine = a.machine AND s.metric = a.metric
		AND s.time >= a.bucket AND s.time < a.bucket + ` + wIvA + `::interval
		AND s.time >= ` + fromA + ` AND s.time <= ` + toA + ` -- prunes partitions at plan time
	OFFSET 0 -- a probe of the index per window, not a join over the whole range
) r
WHERE ` + strings.TrimPrefix(aggs(cut+` AND NOT `+known), "FROM sample_aggs a WHERE ") + `
UNION ALL
SELECT machine, metric, time, value FROM samples
WHERE ` + seriesCond("", f, &a) + ` AND time >= ` + fromA + ` AND time < ` + midFromA + `
UNION ALL
SELECT machine, metric, time, value FROM samples
WHERE ` + seriesCond("", f, &a) + ` AND time >= ` + midToA + ` AND time <= ` + toA
	return sql, a
}

// windowDensity is the mean number of samples in the first 1 000 windows
// of the selected series in [midFrom, midTo): an index read of a
// millisecond that tells whether aggregates would pay.
func (s *Store) windowDensity(ctx context.Context, f *seriesFilter, midFrom, midTo int64) (float64, error) {
	var a sqlArgs
	sql := `SELECT coalesce(sum(n)::float8 / count(*), 0) FROM (SELECT a.count AS n FROM sample_aggs a WHERE ` +
		seriesCond("a.", f, &a) + ` AND a.bucket >= ` + a.add(ts(midFrom)) + ` AND a.bucket < ` + a.add(ts(midTo)) + ` LIMIT 1000) x`
	var d float64
	err := s.pool.QueryRow(ctx, sql, append([]any{customPlan}, a...)...).Scan(&d)
	return d, err
}

// selectProm runs a Select's one statement and gathers its rows by series.
func (s *Store) selectProm(ctx context.Context, f *seriesFilter, from, to int64, p aggPlan, minDensity float64) ([]*promSeries, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("selecting series: %w", err)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("selecting series: %w", err)
	}
	defer s.life.RUnlock()
	from, to, ok := clampRange(from, to)
	if !ok {
		return nil, nil
	}
	sql, args := promRawSQL(f, from, to)
	if s.packed {
		sql, args = promRawPackedSQL(f, from, to, s.legacy.Load())
		if t, ok := p.alignedTier(); ok {
			midFrom, midTo := floorDiv(from+t.ms-1, t.ms)*t.ms, floorDiv(to+1, t.ms)*t.ms
			if midFrom < midTo {
				tierSQL, tierArgs, rawSQL, rawArgs := promTierPackedSQL(f, from, to, midFrom, midTo, t, p.col, s.legacy.Load())
				check := p.col == "sum" || p.col == "avg" || p.col == "count"
				out, ok, err := s.selectPromTier(ctx, tierSQL, tierArgs, rawSQL, rawArgs, check, f, midFrom, midTo)
				if err != nil {
					return nil, fmt.Errorf("selecting series: %w", err)
				}
				if ok {
					return out, nil
				}
			}
		}
		p = aggPlan{} // the rows layout's sample_aggs plan does not apply
	}
	if p.col != "" {
		midFrom := floorDiv(from+s.window-1, s.window) * s.window
		midTo := floorDiv(to+1, s.window) * s.window
		dense := true
		if midFrom < midTo && minDensity > 0 {
			d, err := s.windowDensity(ctx, f, midFrom, midTo)
			if err != nil {
				return nil, fmt.Errorf("selecting series: %w", err)
			}
			dense = d >= minDensity
		}
		if midFrom < midTo && dense {
			sql, args = promAggSQL(f, from, to, midFrom, midTo, s.window, p)
		}
	}
	rows, err := s.pool.Query(ctx, sql, append([]any{customPlan}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("selecting series: %w", err)
	}
	defer rows.Close()
	out, err := gatherSeries(ctx, rows)
	if err != nil {
		return nil, fmt.Errorf("selecting series: %w", err)
	}
	return out, nil
}

// selectPromTier runs a tier read's two statements (promTierPackedSQL) in
// one REPEATABLE READ snapshot: compaction moving head rows into a chunk
// and its tier rows between them would lose or double them.
// With checkHead, a selected series with head rows in [midFrom, midTo)
// (headRowsIn) makes it answer ok false, reading nothing.
func (s *Store) selectPromTier(ctx context.Context, tierSQL string, tierArgs sqlArgs, rawSQL string, rawArgs sqlArgs,
	checkHead bool, f *seriesFilter, midFrom, midTo int64) (_ []*promSeries, ok bool, _ error) {
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if checkHead {
		if late, err := headRowsIn(ctx, tx, f, midFrom, midTo); err != nil || late {
			return nil, false, err
		}
	}
	s.tierSelects.Add(1)
	g := newSeriesGather()
	rows, err := tx.Query(ctx, tierSQL, append([]any{customPlan}, tierArgs...)...)
	if err != nil {
		return nil, false, err
	}
	err = gatherTierArrays(ctx, rows, g)
	rows.Close()
	if err != nil {
		return nil, false, err
	}
	rows, err = tx.Query(ctx, rawSQL, append([]any{customPlan}, rawArgs...)...)
	if err != nil {
		return nil, false, err
	}
	err = g.gather(ctx, rows)
	rows.Close()
	if err != nil {
		return nil, false, err
	}
	return g.finish(), true, nil
}

// gatherSeries groups the rows (machine, metric, time, value) by series,
// decoding the binary time and value in place: a row costs no allocation
// (the names are compared as bytes with the previous row's series, else
// looked up without a copy; only a new series copies them). The points of
// a series that did not come in time order are sorted at the end.
func gatherSeries(ctx context.Context, rows pgx.Rows) ([]*promSeries, error) {
	g := newSeriesGather()
	if err := g.gather(ctx, rows); err != nil {
		return nil, err
	}
	return g.finish(), nil
}

// seriesGather is the series of one or more reads, by name.
type seriesGather struct {
	out    []*promSeries
	cur    *promSeries
	byName map[string]*promSeries
	key    []byte
}

func newSeriesGather() *seriesGather { return &seriesGather{byName: map[string]*promSeries{}} }

// series returns the series machine/metric, added if new; the bytes are
// not kept.
func (g *seriesGather) series(machine, metric []byte) *promSeries {
	if g.cur == nil || !bytes.Equal(machine, g.cur.machine) || !bytes.Equal(metric, g.cur.metric) {
		g.key = append(append(append(g.key[:0], machine...), 0), metric...)
		if g.cur = g.byName[string(g.key)]; g.cur == nil {
			g.cur = newPromSeries(string(machine), string(metric))
			g.byName[string(g.key)] = g.cur
			g.out = append(g.out, g.cur)
		}
	}
	return g.cur
}

// finish sorts the points of the series that did not come in time order.
func (g *seriesGather) finish() []*promSeries {
	for _, s := range g.out {
		if !slices.IsSortedFunc(s.pts, comparePoints) {
			slices.SortFunc(s.pts, comparePoints)
		}
	}
	return g.out
}

func (g *seriesGather) gather(ctx context.Context, rows pgx.Rows) error {
	fds := rows.FieldDescriptions()
	if len(fds) != 4 {
		return fmt.Errorf("want 4 columns, got %d", len(fds))
	}
	binTime, binValue := fds[2].Format == pgx.BinaryFormatCode, fds[3].Format == pgx.BinaryFormatCode
	var n int
	// The selection is read whole before the engine sees it, so its own
	// sample limit would come too late: the rows are drawn from the
	// query's budget as they come, a block at a time.
	const block = 4096
	for rows.Next() {
		if n++; n%block == 0 {
			if err := store.TakeSamples(ctx, block); err != nil {
				return err
			}
			if n%65536 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
		raw := rows.RawValues()
		cur := g.series(raw[0], raw[1])
		var p promPoint
		if binTime && binValue && len(raw[2]) == 8 && len(raw[3]) == 8 {
			p.t = floorDiv(int64(binary.BigEndian.Uint64(raw[2]))+pgEpochMicros, 1000)
			p.f = math.Float64frombits(binary.BigEndian.Uint64(raw[3]))
		} else {
			var err error
			if p, err = scanPromPoint(rows); err != nil {
				return err
			}
		}
		cur.pts = append(cur.pts, p)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return store.TakeSamples(ctx, n%block)
}

// scanPromPoint scans a row in text format (never seen: pgx asks for
// binary), out of line so that its variables do not escape in the loop.
func scanPromPoint(rows pgx.Rows) (promPoint, error) {
	var (
		m, k string
		t    time.Time
		v    float64
	)
	err := rows.Scan(&m, &k, &t, &v)
	return promPoint{t: t.UnixMilli(), f: v}, err
}

func comparePoints(a, b promPoint) int {
	switch {
	case a.t < b.t:
		return -1
	case a.t > b.t:
		return 1
	}
	return 0
}

// promPoint is a float sample; a pointer to one is a chunks.Sample.
type promPoint struct {
	t int64
	f float64
}

func (p *promPoint) T() int64                      { return p.t }
func (p *promPoint) ST() int64                     { return 0 }
func (p *promPoint) F() float64                    { return p.f }
func (p *promPoint) H() *histogram.Histogram       { return nil }
func (p *promPoint) FH() *histogram.FloatHistogram { return nil }
func (p *promPoint) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (p *promPoint) Copy() chunks.Sample           { c := *p; return &c }

// promPoints are a series' samples for storage.NewListSeriesIterator:
// Get points into the slice, allocating nothing.
type promPoints []promPoint

func (ps promPoints) Get(i int) chunks.Sample { return &ps[i] }
func (ps promPoints) Len() int                { return len(ps) }

// promSeries is one series of a Select with its samples.
type promSeries struct {
	machine, metric []byte // for gatherSeries
	lset            labels.Labels
	pts             []promPoint
}

func newPromSeries(machine, metric string) *promSeries {
	return &promSeries{
		machine: []byte(machine), metric: []byte(metric),
		lset: labels.FromStrings(store.PromLabelName, metric, store.PromLabelMachine, machine),
	}
}

func (s *promSeries) Labels() labels.Labels { return s.lset }

func (s *promSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	if r, ok := it.(interface{ Reset(storage.Samples) }); ok {
		r.Reset(promPoints(s.pts))
		return it
	}
	return storage.NewListSeriesIterator(promPoints(s.pts))
}

// promSeriesSet serves the series of a Select, sorted by labels.
type promSeriesSet struct {
	series []*promSeries
	i      int
}

func newPromSeriesSet(series []*promSeries, hints *storage.SelectHints) *promSeriesSet {
	sort.Slice(series, func(i, j int) bool { return labels.Compare(series[i].lset, series[j].lset) < 0 })
	if hints != nil && hints.Limit > 0 && len(series) > hints.Limit {
		series = series[:hints.Limit]
	}
	return &promSeriesSet{series: series, i: -1}
}

func (ss *promSeriesSet) Next() bool {
	if ss.i+1 >= len(ss.series) {
		ss.i = len(ss.series)
		return false
	}
	ss.i++
	return true
}

func (ss *promSeriesSet) At() storage.Series                { return ss.series[ss.i] }
func (ss *promSeriesSet) Err() error                        { return nil }
func (ss *promSeriesSet) Warnings() annotations.Annotations { return nil }
