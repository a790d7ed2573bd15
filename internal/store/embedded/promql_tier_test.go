package embedded

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// rawQueryable hides the function from the hints: the store reads raw
// samples, the reference the tiers must match.
type rawQueryable struct{ q storage.Queryable }

func (r rawQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := r.q.Querier(mint, maxt)
	if err != nil {
		return nil, err
	}
	return rawQuerier{q}, nil
}

type rawQuerier struct{ storage.Querier }

func (r rawQuerier) Select(ctx context.Context, sorted bool, h *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if h != nil {
		c := *h
		c.Func = ""
		h = &c
	}
	return r.Querier.Select(ctx, sorted, h, ms...)
}

func rangeQuery(t testing.TB, eng *promql.Engine, q storage.Queryable, qs string, start, end time.Time, step time.Duration) promql.Matrix {
	t.Helper()
	qry, err := eng.NewRangeQuery(context.Background(), q, nil, qs, start, end, step)
	if err != nil {
		t.Fatal(err)
	}
	defer qry.Close()
	res := qry.Exec(context.Background())
	if res.Err != nil {
		t.Fatalf("%s: %v", qs, res.Err)
	}
	m, err := res.Matrix()
	if err != nil {
		t.Fatal(err)
	}
	// Close gives the points back to the engine's pool: copy them.
	out := make(promql.Matrix, len(m))
	for i, sr := range m {
		out[i] = promql.Series{Metric: sr.Metric.Copy(), Floats: append([]promql.FPoint(nil), sr.Floats...)}
	}
	return out
}

func sameMatrix(a, b promql.Matrix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !labels.Equal(a[i].Metric, b[i].Metric) || len(a[i].Floats) != len(b[i].Floats) {
			return false
		}
		for j, p := range a[i].Floats {
			q := b[i].Floats[j]
			if p.T != q.T || (p.F != q.F && math.Abs(p.F-q.F) > 1e-9*math.Max(math.Abs(p.F), math.Abs(q.F))) {
				return false
			}
		}
	}
	return true
}

// TestPromQLTiers runs range queries through Prometheus' engine on the
// tiers and on the raw samples: the same answers, and the aligned ones
// read a tier. Some samples are rolled up, some are in blocks not rolled
// up, some in the head, late ones among them.
func TestPromQLTiers(t *testing.T) {
	now := base + 3*day
	s := open(t, t.TempDir(), Options{Now: func() time.Time { return time.UnixMilli(now) }, RollupEvery: time.Hour, BlockDuration: time.Hour})
	ctx := context.Background()
	var in []telemetry.Sample
	for _, m := range []string{"m1", "m2", "m3"} {
		in = append(in, storetest.Samples(m, "temp", now-day, 10*time.Second, 8640, func(i int) float64 { return float64((i*7919)%1001) / 10 })...)
	}
	sortSamples(in)
	for i := 0; i < len(in); i += 1000 {
		mustAppend(t, s, in[i:min(i+1000, len(in))])
	}
	if err := s.db.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.rollup(ctx); err != nil {
		t.Fatal(err)
	}
	// Late samples, between the others, in rolled up and head ranges.
	mustAppend(t, s, storetest.Samples("m1", "temp", now-20*hour+5, 10*time.Second, 600, func(i int) float64 { return -float64(i) }))
	mustAppend(t, s, storetest.Samples("m2", "temp", now-hour+5, 10*time.Second, 60, func(i int) float64 { return 1e3 }))

	eng := promql.NewEngine(promql.EngineOpts{MaxSamples: 50_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	start, end := time.UnixMilli(now-day), time.UnixMilli(now)
	for _, c := range []struct {
		q     string
		step  time.Duration
		tiers bool
	}{
		{"avg by (machine) (avg_over_time(temp[1m] offset 1ms))", time.Minute, true},
		{"avg_over_time(temp[1m] offset 1ms)", 5 * time.Minute, true},
		{"max_over_time(temp[5m] offset 1ms)", time.Minute, true},
		{"min_over_time(temp[1h] offset 1ms)", time.Hour, true},
		{"sum_over_time(temp[2h] offset 1ms)", time.Hour, true},
		{"avg_over_time(temp[1m])", time.Minute, false},            // Grafana's alignment cuts the buckets
		{"avg_over_time(temp[5m] offset 1ms)", time.Minute, false}, // an average of averages
		{"count_over_time(temp[1m] offset 1ms)", time.Minute, false},
	} {
		before := s.roll.tierSelects.Load()
		got := rangeQuery(t, eng, s.PromQueryable(), c.q, start, end, c.step)
		used := s.roll.tierSelects.Load() > before
		want := rangeQuery(t, eng, rawQueryable{s.PromQueryable()}, c.q, start, end, c.step)
		if used != c.tiers {
			t.Errorf("%s step %v: read a tier %v, want %v", c.q, c.step, used, c.tiers)
		}
		if len(want) == 0 {
			t.Errorf("%s: no result", c.q)
		}
		if !sameMatrix(got, want) {
			t.Errorf("%s step %v: tiers and raw samples differ: %s", c.q, c.step, matrixDiff(got, want))
		}
	}
}

func matrixDiff(a, b promql.Matrix) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d series, want %d", len(a), len(b))
	}
	for i := range a {
		if !labels.Equal(a[i].Metric, b[i].Metric) || len(a[i].Floats) != len(b[i].Floats) {
			return fmt.Sprintf("series %d: %v with %d points, want %v with %d", i, a[i].Metric, len(a[i].Floats), b[i].Metric, len(b[i].Floats))
		}
		for j, p := range a[i].Floats {
			if q := b[i].Floats[j]; p.T != q.T || (p.F != q.F && math.Abs(p.F-q.F) > 1e-9*math.Max(math.Abs(p.F), math.Abs(q.F))) {
				return fmt.Sprintf("series %v point %d: %v, want %v", a[i].Metric, j, p, q)
			}
		}
	}
	return ""
}

// TestPromQLSubqueryReadsRaw checks that a query marked as the query API
// marks one with a subquery (store.WithRawSamples) reads no tier: the
// subquery evaluates at multiples of its step, which the hints do not
// show, so at an outer time one millisecond before a minute the hints look
// aligned to the buckets while every inner interval is a bucket off.
func TestPromQLSubqueryReadsRaw(t *testing.T) {
	now := base + 3*day
	s := open(t, t.TempDir(), Options{Now: func() time.Time { return time.UnixMilli(now) }, RollupEvery: time.Hour, BlockDuration: time.Hour})
	ctx := context.Background()
	in := storetest.Samples("m1", "temp", now-day, 10*time.Second, 8640, func(i int) float64 { return float64((i*7919)%1001) / 10 })
	for i := 0; i < len(in); i += 1000 {
		mustAppend(t, s, in[i:min(i+1000, len(in))])
	}
	if err := s.db.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.rollup(ctx); err != nil {
		t.Fatal(err)
	}
	eng := promql.NewEngine(promql.EngineOpts{MaxSamples: 50_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	at := time.UnixMilli(now - 10*hour - 1) // one millisecond before a minute
	const qs = "max_over_time(sum_over_time(temp[1m])[1h:1m])"
	instant := func(ctx context.Context, q storage.Queryable) promql.Vector {
		t.Helper()
		qry, err := eng.NewInstantQuery(ctx, q, nil, qs, at)
		if err != nil {
			t.Fatal(err)
		}
		defer qry.Close()
		res := qry.Exec(ctx)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		v, err := res.Vector()
		if err != nil {
			t.Fatal(err)
		}
		return slices.Clone(v)
	}
	want := instant(ctx, rawQueryable{s.PromQueryable()})
	before := s.roll.tierSelects.Load()
	got := instant(store.WithRawSamples(ctx), s.PromQueryable())
	if s.roll.tierSelects.Load() != before {
		t.Errorf("a query marked raw-only read a tier")
	}
	if len(want) != 1 || len(got) != 1 || got[0].F != want[0].F {
		t.Errorf("%s at %v: got %v, want %v (raw samples)", qs, at, got, want)
	}
}
