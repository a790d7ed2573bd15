package postgres

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// promSamples is the data of the PromQL tests: three hours of seven series
// whose timings differ (on the second, off it by 137 ms, every 2.5 s with
// a 20-minute gap, one falling within each minute, so that maxima sit on
// the minute, where evaluation windows cut the aggregate windows, and three
// sparse ones, one to three samples a window, some equal), and two counters
// with a reset.
func promSamples() []telemetry.Sample {
	start := storetest.Base + 3600*sec
	var out []telemetry.Sample
	add := func(machine, metric string, t int64, v float64) {
		out = append(out, telemetry.Sample{Machine: machine, Metric: metric, Time: t, Value: v})
	}
	var c1, c2 float64
	for i := range int64(3 * 3600) {
		t := start + i*sec
		add("m1", "temperature", t, float64((i*7919)%1000)/10)
		add("m2", "temperature", t+137, 20+float64((i*104729)%997)/7)
		if i%5 < 2 && (i < 3600 || i > 3600+1200) {
			add("m3", "temperature", t+(i%5)*1250, float64((i*31)%101))
		}
		add("m.4", "temperature", t, 100-float64(i%60)+float64(i/60%7))
		if i%7 == 0 {
			add("m5", "temperature", t, float64((i/7)*(i/7)%7)) // one or two a window, some equal
		}
		if r := i % 10; r == 0 || r == 4 || r == 7 {
			add("m7", "temperature", t, float64(i*i%11)) // three a window
		}
		if i%20 == 0 {
			add("m6", "temperature", t+3, float64(i%17))
		}
		c1 += float64(i % 13)
		c2 += 0.5
		if i == 5000 {
			c2 = 0
		}
		add("m1", "counter", t, c1)
		add("m2", "counter", t+500, c2)
	}
	return out
}

// refSample is a float sample of the reference storage.
type refSample struct {
	t int64
	f float64
}

func (s refSample) T() int64                      { return s.t }
func (s refSample) ST() int64                     { return 0 }
func (s refSample) F() float64                    { return s.f }
func (s refSample) H() *histogram.Histogram       { return nil }
func (s refSample) FH() *histogram.FloatHistogram { return nil }
func (s refSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s refSample) Copy() chunks.Sample           { return s }

// refQueryable is the reference: the same samples in memory, every
// matcher applied to the labels in Go, no SQL, no aggregates.
type refQueryable struct {
	series []refSeries // sorted by labels
}

type refSeries struct {
	lset    labels.Labels
	samples []refSample // in time order
}

func newRefQueryable(samples []telemetry.Sample) *refQueryable {
	byKey := map[store.SeriesKey][]refSample{}
	for _, s := range samples {
		k := store.SeriesKey{Machine: s.Machine, Metric: s.Metric}
		byKey[k] = append(byKey[k], refSample{t: s.Time, f: s.Value})
	}
	r := &refQueryable{}
	for k, ss := range byKey {
		slices.SortFunc(ss, func(a, b refSample) int { return int(a.t - b.t) })
		r.series = append(r.series, refSeries{lset: labels.FromStrings("__name__", k.Metric, "machine", k.Machine), samples: ss})
	}
	slices.SortFunc(r.series, func(a, b refSeries) int { return labels.Compare(a.lset, b.lset) })
	return r
}

func (r *refQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	return &refQuerier{r: r, mint: mint, maxt: maxt}, nil
}

type refQuerier struct {
	r          *refQueryable
	mint, maxt int64
}

func (q *refQuerier) Select(_ context.Context, _ bool, h *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	from, to := q.mint, q.maxt
	if h != nil {
		from, to = max(from, h.Start), min(to, h.End)
	}
	var out []storage.Series
	for _, s := range q.r.series {
		ok := true
		for _, m := range ms {
			ok = ok && m.Matches(s.lset.Get(m.Name))
		}
		var in []chunks.Sample
		for _, x := range s.samples {
			if x.t >= from && x.t <= to {
				in = append(in, x)
			}
		}
		if ok && len(in) > 0 {
			out = append(out, storage.NewListSeries(s.lset, in))
		}
	}
	return &refSeriesSet{series: out, i: -1}
}

func (q *refQuerier) LabelValues(context.Context, string, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, errors.New("not in the reference")
}

func (q *refQuerier) LabelNames(context.Context, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, errors.New("not in the reference")
}

func (q *refQuerier) Close() error { return nil }

type refSeriesSet struct {
	series []storage.Series
	i      int
}

func (s *refSeriesSet) Next() bool                        { s.i++; return s.i < len(s.series) }
func (s *refSeriesSet) At() storage.Series                { return s.series[s.i] }
func (s *refSeriesSet) Err() error                        { return nil }
func (s *refSeriesSet) Warnings() annotations.Annotations { return nil }

// planSpy records whether any Select of a query may read aggregates.
type planSpy struct {
	storage.Queryable
	window int64
	mu     sync.Mutex
	agg    bool
}

func (p *planSpy) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := p.Queryable.Querier(mint, maxt)
	return spyQuerier{Querier: q, p: p}, err
}

type spyQuerier struct {
	storage.Querier
	p *planSpy
}

func (q spyQuerier) Select(ctx context.Context, sort bool, h *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if planAggregates(h, q.p.window).col != "" {
		q.p.mu.Lock()
		q.p.agg = true
		q.p.mu.Unlock()
	}
	return q.Querier.Select(ctx, sort, h, ms...)
}

// promResult is a query result in a comparable form.
type promResult struct {
	Metric string
	T      []int64
	F      []float64
}

func runProm(t *testing.T, eng *promql.Engine, q storage.Queryable, expr string, start, end time.Time, step time.Duration) []promResult {
	t.Helper()
	return runPromCtx(t, context.Background(), eng, q, expr, start, end, step)
}

// runPromCtx is runProm with the query's context.
func runPromCtx(t *testing.T, ctx context.Context, eng *promql.Engine, q storage.Queryable, expr string, start, end time.Time, step time.Duration) []promResult {
	t.Helper()
	var (
		qry promql.Query
		err error
	)
	if step == 0 {
		qry, err = eng.NewInstantQuery(ctx, q, nil, expr, start)
	} else {
		qry, err = eng.NewRangeQuery(ctx, q, nil, expr, start, end, step)
	}
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		t.Fatalf("%s: %v", expr, res.Err)
	}
	var out []promResult
	switch v := res.Value.(type) {
	case promql.Matrix:
		for _, s := range v {
			r := promResult{Metric: s.Metric.String()}
			for _, p := range s.Floats {
				r.T, r.F = append(r.T, p.T), append(r.F, p.F)
			}
			out = append(out, r)
		}
	case promql.Vector:
		for _, s := range v {
			out = append(out, promResult{Metric: s.Metric.String(), T: []int64{s.T}, F: []float64{s.F}})
		}
	case promql.Scalar:
		out = append(out, promResult{T: []int64{v.T}, F: []float64{v.V}})
	default:
		t.Fatalf("%s: result type %T", expr, res.Value)
	}
	slices.SortFunc(out, func(a, b promResult) int {
		switch {
		case a.Metric < b.Metric:
			return -1
		case a.Metric > b.Metric:
			return 1
		}
		return 0
	})
	return out
}

func testEngine() *promql.Engine {
	return promql.NewEngine(promql.EngineOpts{
		MaxSamples: 50_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute,
		EnableAtModifier: true, EnableNegativeOffset: true,
	})
}

// TestPromQLConformance runs a table of PromQL expressions through the
// engine over the store's Queryable (raw rows only, and with aggregates
// where the hints allow them) and over an in-memory reference holding the
// same samples: the answers must be equal, bit for bit.
func TestPromQLConformance(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	samples := promSamples()
	for b := range slices.Chunk(samples, 20_000) {
		mustAppend(t, s, b)
	}
	ref := newRefQueryable(samples)
	raw := promQueryable{s: s}
	agg := &planSpy{Queryable: promQueryable{s: s, aggregates: true}, window: s.window}
	eng := testEngine()

	base := time.UnixMilli(storetest.Base).UTC()
	start, end := base.Add(2*time.Hour), base.Add(3*time.Hour+30*time.Minute)
	tests := []struct {
		expr       string
		start, end time.Time
		step       time.Duration
		wantAgg    bool // the aggregates path applies
	}{
		{expr: "rate(counter[5m])", step: time.Minute},
		{expr: "increase(counter[2m])", step: 30 * time.Second},
		{expr: "avg_over_time(temperature[1m])", step: time.Minute},
		{expr: "max by (machine) (temperature)", step: time.Minute},
		{expr: "quantile_over_time(0.9, temperature[5m])", step: time.Minute},
		{expr: "topk(2, temperature)", step: time.Minute},
		{expr: "temperature offset 10m", step: time.Minute},
		{expr: "temperature", step: 15 * time.Second},
		{expr: "count_over_time(temperature[1m])", step: time.Minute},
		{expr: "sum_over_time(temperature[1m])", step: time.Minute},
		{expr: "max_over_time(temperature[1m])", step: time.Minute, wantAgg: true},
		{expr: "min_over_time(temperature[5m])", step: time.Minute, wantAgg: true},
		{expr: "max_over_time(temperature[90s])", step: 2 * time.Minute, wantAgg: true},
		{expr: "min_over_time(temperature[10s])", step: time.Minute, wantAgg: true},
		{expr: "max_over_time(temperature[1m] offset 30s)", step: time.Minute},
		{expr: "max_over_time(temperature[1m] offset 2m)", step: time.Minute, wantAgg: true},
		{expr: "max_over_time(temperature[1m])", start: start.Add(7 * time.Second), step: time.Minute},
		{expr: "max_over_time(temperature[1m])", step: 30 * time.Second},
		{expr: `max_over_time(temperature{machine=~"m1|m2"}[1m])`, step: time.Minute, wantAgg: true},
		{expr: `max_over_time(temperature{machine=~"m.*"}[1m])`, step: time.Minute, wantAgg: true},
		{expr: `max_over_time(temperature{machine=~"m\\.4|nope"}[3m])`, step: time.Minute, wantAgg: true},
		{expr: `max_over_time(max_over_time(temperature[1m])[10m:1m])`, step: time.Minute, wantAgg: true},
		{expr: `max_over_time(max_over_time(temperature[1m])[10m:1m])`, step: 0, wantAgg: true},
		{expr: `temperature{machine!="m1"}`, step: time.Minute},
		{expr: `{__name__=~"temp.*", machine="m2"}`, step: time.Minute},
		{expr: `{__name__!="counter", machine=~".+"}`, step: 5 * time.Minute},
		{expr: `temperature{machine!~"m[12]"}`, step: time.Minute},
		{expr: `temperature{site="lyon"}`, step: time.Minute},
		{expr: `temperature{site=""}`, step: time.Minute},
		{expr: `temperature{machine="nope"}`, step: time.Minute},
		{expr: "rate(counter[5m])", step: 0},
		{expr: "avg_over_time(temperature[1m])", step: 0},
		{expr: "temperature @ end()", step: time.Minute},
	}
	for _, tt := range tests {
		if tt.start.IsZero() {
			tt.start = start
		}
		if tt.end.IsZero() {
			tt.end = end
		}
		t.Run(fmt.Sprintf("%s@%v", tt.expr, tt.step), func(t *testing.T) {
			want := runProm(t, eng, ref, tt.expr, tt.start, tt.end, tt.step)
			if tt.expr != `temperature{site="lyon"}` && tt.expr != `temperature{machine="nope"}` && len(want) == 0 {
				t.Fatalf("the reference answers nothing: a useless case")
			}
			opts := cmpopts.EquateNaNs()
			if got := runProm(t, eng, raw, tt.expr, tt.start, tt.end, tt.step); !cmp.Equal(got, want, opts) {
				t.Errorf("raw rows: (-got +want)\n%s", cmp.Diff(got, want, opts))
			}
			agg.mu.Lock()
			agg.agg = false
			agg.mu.Unlock()
			if got := runProm(t, eng, agg, tt.expr, tt.start, tt.end, tt.step); !cmp.Equal(got, want, opts) {
				t.Errorf("with aggregates: (-got +want)\n%s", cmp.Diff(got, want, opts))
			}
			if agg.agg != tt.wantAgg {
				t.Errorf("aggregates read = %v, want %v", agg.agg, tt.wantAgg)
			}
		})
	}
}

// TestPromSelect checks the Querier directly: labels, samples in range,
// sorted series, the series hint, limits, label names and values.
func TestPromSelect(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	base := storetest.Base + 3600*sec
	mustAppend(t, s, storetest.Samples("b", "x", base, time.Second, 100, func(i int) float64 { return float64(i) }))
	mustAppend(t, s, storetest.Samples("a", "x", base+500, time.Second, 100, func(i int) float64 { return -float64(i) }))
	mustAppend(t, s, storetest.Samples("a", "y", base, time.Minute, 10, func(i int) float64 { return 1 }))
	ctx := context.Background()
	q, err := s.PromQueryable().Querier(base, base+3600*sec)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	eq := func(n, v string) *labels.Matcher { return labels.MustNewMatcher(labels.MatchEqual, n, v) }
	re := func(n, v string) *labels.Matcher { return labels.MustNewMatcher(labels.MatchRegexp, n, v) }

	collect := func(ss storage.SeriesSet) map[string][]int64 {
		t.Helper()
		out := map[string][]int64{}
		var order []string
		for ss.Next() {
			sr := ss.At()
			k := sr.Labels().String()
			order = append(order, k)
			it := sr.Iterator(nil)
			out[k] = []int64{}
			for it.Next() == chunkenc.ValFloat {
				tm, _ := it.At()
				out[k] = append(out[k], tm)
			}
		}
		if err := ss.Err(); err != nil {
			t.Fatal(err)
		}
		if !slices.IsSorted(order) {
			t.Errorf("series not sorted: %v", order)
		}
		return out
	}
	got := collect(q.Select(ctx, true, &storage.SelectHints{Start: base + 10*sec, End: base + 12*sec}, re("__name__", "x|y")))
	want := map[string][]int64{
		`{__name__="x", machine="a"}`: {base + 10500, base + 11500},
		`{__name__="x", machine="b"}`: {base + 10000, base + 11000, base + 12000},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("select (-got +want)\n%s", diff)
	}
	got = collect(q.Select(ctx, true, &storage.SelectHints{Start: base, End: base + 3600*sec, Func: "series"}, eq("machine", "a")))
	want = map[string][]int64{`{__name__="x", machine="a"}`: {}, `{__name__="y", machine="a"}`: {}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("series (-got +want)\n%s", diff)
	}
	got = collect(q.Select(ctx, true, &storage.SelectHints{Start: base, End: base + 3600*sec, Limit: 1}))
	if len(got) != 1 || got[`{__name__="x", machine="a"}`] == nil {
		t.Errorf("limit 1: %v", got)
	}
	// Seek over the iterator.
	ss := q.Select(ctx, true, nil, eq("machine", "b"), eq("__name__", "x"))
	if !ss.Next() {
		t.Fatal("no series")
	}
	it := ss.At().Iterator(nil)
	if it.Seek(base+50*sec+1) != chunkenc.ValFloat {
		t.Fatal("seek found nothing")
	}
	if tm, v := it.At(); tm != base+51*sec || v != 51 {
		t.Errorf("seek: at %d %v", tm, v)
	}

	names, _, err := q.LabelNames(ctx, nil)
	if err != nil || !slices.Equal(names, []string{"__name__", "machine"}) {
		t.Errorf("label names = %v, %v", names, err)
	}
	vals, _, err := q.LabelValues(ctx, "machine", nil, eq("__name__", "y"))
	if err != nil || !slices.Equal(vals, []string{"a"}) {
		t.Errorf("machines of y = %v, %v", vals, err)
	}
	vals, _, err = q.LabelValues(ctx, "__name__", nil)
	if err != nil || !slices.Equal(vals, []string{"x", "y"}) {
		t.Errorf("metrics = %v, %v", vals, err)
	}
	vals, _, err = q.LabelValues(ctx, "__name__", &storage.LabelHints{Limit: 1})
	if err != nil || !slices.Equal(vals, []string{"x"}) {
		t.Errorf("metrics limit 1 = %v, %v", vals, err)
	}
	vals, _, err = q.LabelValues(ctx, "site", nil)
	if err != nil || len(vals) != 0 {
		t.Errorf("sites = %v, %v", vals, err)
	}
	// The density probe that keeps sparse series on raw rows.
	for _, tt := range []struct {
		f    seriesFilter
		want float64
	}{
		{seriesFilter{machines: []string{"b"}, metrics: []string{"x"}}, 10},
		{seriesFilter{machines: []string{"a"}, metrics: []string{"y"}}, 1},
		{seriesFilter{machines: []string{"nope"}}, 0},
	} {
		if d, err := s.windowDensity(ctx, &tt.f, base, base+3600*sec); err != nil || d != tt.want {
			t.Errorf("density of %v = %v, %v; want %v", tt.f.machines, d, err, tt.want)
		}
	}
	// A range with no data: no names.
	q2, _ := s.PromQueryable().Querier(base+7200*sec, base+7300*sec)
	if names, _, err := q2.LabelNames(ctx, nil); err != nil || len(names) != 0 {
		t.Errorf("label names of an empty range = %v, %v", names, err)
	}
}

// TestPlanAggregatesCuts checks the cut condition against the evaluation
// windows themselves: every aggregate window the plan reads whole lies
// inside or outside each (e-R, e].
func TestPlanAggregatesCuts(t *testing.T) {
	const w = 10_000
	for _, h := range []storage.SelectHints{
		{Start: 600_000 - 60_000 + 1, End: 1_800_000, Step: 60_000, Range: 60_000, Func: "max_over_time"},
		{Start: 600_000 - 90_000 + 1, End: 1_800_000, Step: 120_000, Range: 90_000, Func: "min_over_time"},
		{Start: 600_000 - 15_000 + 1, End: 1_800_000, Step: 60_000, Range: 15_000, Func: "max_over_time"},
		{Start: 600_000 - 300_000 + 1, End: 1_800_000, Step: 60_000, Range: 300_000, Func: "max_over_time"},
	} {
		p := planAggregates(&h, w)
		if p.col == "" {
			t.Fatalf("%+v: no plan", h)
		}
		uncut := 0
		for b := floorDiv(h.Start, w) * w; b <= h.End; b += w {
			if p.cutWindow(b, w) {
				continue
			}
			uncut++
			for e := p.anchor; e <= h.End; e += h.Step {
				in, out := b > e-h.Range && b+w-1 <= e, b+w-1 <= e-h.Range || b > e
				if !in && !out {
					t.Errorf("%+v: window %d read whole but cut by (%d, %d]", h, b, e-h.Range, e)
				}
			}
		}
		if uncut == 0 {
			t.Errorf("%+v: every window cut", h)
		}
	}
	for _, h := range []storage.SelectHints{
		{Start: 1, End: 1_800_000, Step: 60_000, Range: 60_000, Func: "rate"},
		{Start: 1, End: 1_800_000, Step: 30_000, Range: 60_000, Func: "max_over_time"},
		{Start: 7001, End: 1_807_000, Step: 60_000, Range: 60_000, Func: "max_over_time"},
		{Start: 1, End: 1_800_001, Step: 60_000, Range: 60_000, Func: "max_over_time"},
		{Start: 1, End: 1_800_000, Step: 60_000, Func: "max_over_time"},
		{Start: 59_996, End: 1_800_000, Step: 60_000, Range: 5_000, Func: "max_over_time"},
		{Start: 1, End: 1_800_000, Step: 0, Range: 60_000, Func: "max_over_time"},
	} {
		if p := planAggregates(&h, w); p.col != "" {
			t.Errorf("%+v: plan %+v, want raw", h, p)
		}
	}
	if p := planAggregates(nil, w); p.col != "" {
		t.Errorf("nil hints: plan %+v", p)
	}
}

// TestPromSelectCancel cancels a Select waiting for its rows (the samples
// table is locked by another transaction): it returns the context's error
// at once, and its statement is cancelled on the server.
func TestPromSelectCancel(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	base := storetest.Base + 3600*sec
	mustAppend(t, s, storetest.Samples("a", "x", base, time.Second, 100, func(i int) float64 { return float64(i) }))
	ctx := context.Background()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE samples IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q, _ := s.PromQueryable().Querier(base, base+3600*sec)
	done := make(chan error, 1)
	go func() {
		ss := q.Select(qctx, true, &storage.SelectHints{Start: base, End: base + 3600*sec},
			labels.MustNewMatcher(labels.MatchEqual, "machine", "a"))
		for ss.Next() {
		}
		done <- ss.Err()
	}()
	waitingSQL := `SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE NOT l.granted AND n.nspname = '` + s.schema + `' AND c.relname = 'samples'`
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := s.pool.QueryRow(ctx, waitingSQL).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the select never waited for the lock")
		}
		select {
		case err := <-done:
			t.Fatalf("select returned before the cancel: %v", err)
		default:
		}
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("select after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("select still running 30 s after its cancel")
	}
	// The server stopped the statement: nobody waits for the lock.
	for deadline := time.Now().Add(30 * time.Second); ; {
		var n int
		if err := s.pool.QueryRow(ctx, waitingSQL).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the cancelled statement still waits on the server")
		}
	}
}

// TestPromQueryPlans runs EXPLAIN on the statements of a Select over three
// days of data: each reads only the partitions of its range, through the
// (machine, metric, time) index of samples and the primary key of
// sample_aggs.
func TestPromQueryPlans(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := context.Background()
	day0 := time.UnixMilli(storetest.Base).UTC()
	var batch []telemetry.Sample
	for tm := day0.Add(-48 * time.Hour).UnixMilli(); tm <= testNow.UnixMilli(); tm += 60 * sec {
		for m := range 20 {
			for _, metric := range []string{"x", "y"} {
				batch = append(batch, telemetry.Sample{Machine: fmt.Sprintf("m%02d", m), Metric: metric, Time: tm, Value: float64(tm%1000 + int64(m))})
			}
		}
		if len(batch) >= 20_000 {
			mustAppend(t, s, batch)
			batch = batch[:0]
		}
	}
	mustAppend(t, s, batch)
	if _, err := s.pool.Exec(ctx, "ANALYZE samples; ANALYZE sample_aggs"); err != nil {
		t.Fatal(err)
	}
	dayM1 := day0.Add(-24 * time.Hour)
	raw := partitionName(samplesTable, dayNum(dayM1))
	agg := partitionName(aggsTable, dayNum(dayM1))
	hourFrom := dayM1.Add(10 * time.Hour).UnixMilli()
	hourTo := hourFrom + 3600*sec
	one := &seriesFilter{machines: []string{"m07"}, metrics: []string{"x"}}
	five := &seriesFilter{machines: []string{"m01", "m03", "m05", "m07", "m09"}, metrics: []string{"x"}}
	allX := &seriesFilter{metrics: []string{"x"}}
	plan := aggPlan{col: "max", anchor: hourFrom, rng: 60 * sec, step: 60 * sec}
	aggFrom := hourFrom - 60*sec + 1
	rawSQL := func(f *seriesFilter, from, to int64) (string, sqlArgs) { return promRawSQL(f, from, to) }
	aggSQL := func(f *seriesFilter) (string, sqlArgs) {
		return promAggSQL(f, aggFrom, hourTo, floorDiv(aggFrom+s.window-1, s.window)*s.window, floorDiv(hourTo+1, s.window)*s.window, s.window, plan)
	}
	tests := []struct {
		name  string
		sql   func() (string, sqlArgs)
		want  []string
		index string // the index every index scan uses (a suffix), "": any of ours
		seqOK bool   // a sequential scan is fine (no machine given)
	}{
		{"one series an hour", func() (string, sqlArgs) { return rawSQL(one, hourFrom, hourTo) }, []string{raw}, "machine_metric_time_idx", false},
		{"five machines an hour", func() (string, sqlArgs) { return rawSQL(five, hourFrom, hourTo) }, []string{raw}, "machine_metric_time_idx", false},
		{"one series a day", func() (string, sqlArgs) {
			return rawSQL(one, dayM1.UnixMilli(), dayM1.UnixMilli()+dayMs-1)
		}, []string{raw}, "machine_metric_time_idx", false},
		{"one metric of every machine an hour", func() (string, sqlArgs) { return rawSQL(allX, hourFrom, hourTo) }, []string{raw}, "", true},
		{"max_over_time of one series from aggregates", func() (string, sqlArgs) { return aggSQL(one) }, []string{agg, agg, agg, raw, raw, raw}, "", false},
		{"max_over_time of five machines from aggregates", func() (string, sqlArgs) { return aggSQL(five) }, []string{agg, agg, agg, raw, raw, raw}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sql, args := tt.sql()
			plan, out := explainPlan(t, ctx, s, sql, append([]any{customPlan}, args...)...)
			var rels []string
			for _, sc := range plan.scans() {
				if sc.RelationName != "" {
					rels = append(rels, sc.RelationName)
				}
				switch sc.NodeType {
				case "Index Scan", "Index Only Scan", "Bitmap Index Scan":
					if !strings.HasSuffix(sc.IndexName, tt.index) || !ourIndex(sc.IndexName) {
						t.Errorf("%s uses index %s, want *%s", sc.NodeType, sc.IndexName, tt.index)
					}
				case "Bitmap Heap Scan":
				case "Seq Scan":
					if !tt.seqOK {
						t.Errorf("Seq Scan on %s", sc.RelationName)
					}
				default:
					t.Errorf("%s on %s: not a scan the test knows", sc.NodeType, sc.RelationName)
				}
			}
			slices.Sort(rels)
			want := slices.Sorted(slices.Values(tt.want))
			if !slices.Equal(rels, want) {
				t.Errorf("relations scanned = %v, want %v (partition pruning lost?)", rels, want)
			}
			if t.Failed() {
				t.Logf("plan:\n%s", out)
			}
		})
	}
}

// TestSeriesFilter checks which matchers become SQL sets: equality, a set
// of literals however long (the query API's machine sets), and nothing
// else.
func TestSeriesFilter(t *testing.T) {
	ids := make([]string, 300)
	quoted := make([]string, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("press.%03d", i)
		quoted[i] = regexp.QuoteMeta(ids[i])
	}
	big := labels.MustNewMatcher(labels.MatchRegexp, "machine", strings.Join(quoted, "|"))
	if big.SetMatches() != nil {
		t.Log("SetMatches handles 300 ids now; literalAlternation is still needed for older versions")
	}
	f := newSeriesFilter([]*labels.Matcher{big, labels.MustNewMatcher(labels.MatchEqual, "__name__", "temp")})
	if len(f.residual) != 0 || f.none || !slices.Equal(f.machines, ids) || !slices.Equal(f.metrics, []string{"temp"}) {
		t.Errorf("300 ids: machines %d, metrics %v, residual %v", len(f.machines), f.metrics, f.residual)
	}
	for _, tt := range []struct {
		re   string
		want []string
		ok   bool
	}{
		{"a", []string{"a"}, true},
		{`a\.b|c`, []string{"a.b", "c"}, true},
		{"a||b", []string{"a", "", "b"}, true},
		{"a.*", nil, false},
		{"(a|b)", nil, false},
		{`a\|b`, nil, false},
		{"(?i)a|b", nil, false},
		{"[ab]|c", nil, false},
		{"a+|b", nil, false},
	} {
		got, ok := literalAlternation(tt.re)
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("literalAlternation(%q) = %q, %v; want %q, %v", tt.re, got, ok, tt.want, tt.ok)
		}
	}
	for _, tt := range []struct {
		ms                []*labels.Matcher
		machines, metrics []string
		residual          int
		none              bool
	}{
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "machine", "a"), labels.MustNewMatcher(labels.MatchRegexp, "machine", "a|b")}, machines: []string{"a"}},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "machine", "a"), labels.MustNewMatcher(labels.MatchEqual, "machine", "b")}, none: true},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "machine", "")}, none: true},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchNotEqual, "machine", "a")}, residual: 1},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchNotRegexp, "__name__", "a|b")}, residual: 1},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchRegexp, "__name__", "temp.*")}, residual: 1},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "site", "lyon")}, none: true},
		{ms: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, "site", "")}},
	} {
		f := newSeriesFilter(tt.ms)
		if !slices.Equal(f.machines, tt.machines) || !slices.Equal(f.metrics, tt.metrics) || len(f.residual) != tt.residual || f.none != tt.none {
			t.Errorf("%v: machines %v metrics %v residual %d none %v", tt.ms, f.machines, f.metrics, len(f.residual), f.none)
		}
	}
}

// TestPromSelectSampleLimit: a Select reads its rows whole before the
// engine iterates them, so the limit its context carries stops it while
// reading, not after.
func TestPromSelectSampleLimit(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	base := storetest.Base + 3600*sec
	mustAppend(t, s, storetest.Samples("a", "x", base, time.Second, 100, func(i int) float64 { return float64(i) }))
	q, err := s.PromQueryable().Querier(base, base+3600*sec)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var countIn func(ctx context.Context) (int, error)
	count := func(limit int) (int, error) { return countIn(store.WithSampleLimit(context.Background(), limit)) }
	countIn = func(ctx context.Context) (int, error) {
		ss := q.Select(ctx, true, &storage.SelectHints{Start: base, End: base + 3600*sec},
			labels.MustNewMatcher(labels.MatchEqual, "machine", "a"))
		n := 0
		for ss.Next() {
			it := ss.At().Iterator(nil)
			for it.Next() != chunkenc.ValNone {
				n++
			}
		}
		return n, ss.Err()
	}
	if n, err := count(100); err != nil || n != 100 {
		t.Fatalf("limit 100 over 100 samples: %d samples, %v; want 100, nil", n, err)
	}
	if n, err := count(0); err != nil || n != 100 {
		t.Fatalf("no limit: %d samples, %v; want 100, nil", n, err)
	}
	if _, err := count(99); !errors.Is(err, store.ErrTooManySamples) {
		t.Fatalf("limit 99 over 100 samples: %v; want ErrTooManySamples", err)
	}
	// One budget per query, shared by its selectors.
	ctx := store.WithSampleLimit(context.Background(), 150)
	if n, err := countIn(ctx); err != nil || n != 100 {
		t.Fatalf("first selector, 100 of a budget of 150: %d samples, %v", n, err)
	}
	if _, err := countIn(ctx); !errors.Is(err, store.ErrTooManySamples) {
		t.Fatalf("second selector, 100 more of a budget of 150: %v; want ErrTooManySamples", err)
	}
}
