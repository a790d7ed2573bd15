package postgres

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// afterAll is a compaction clock at which every day the tests write is
// closed.
var afterAll = time.UnixMilli(storetest.Base).Add(72 * time.Hour)

// TestPackedProperty appends random batches, replays (as they were, or
// with other values), late samples and concurrent overlapping batches to
// a packed store around a day boundary, compacting at random points
// (samples then move to chunks and later ones land on compacted days),
// and checks after each run: the raw samples and the fresh flags are those
// of a first-write-wins oracle; every aggregate tier holds the aggregates
// of the raw samples of its compacted hours; AggregateRange and
// DownsampleRange equal the generic helpers over the oracle.
func TestPackedProperty(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{Layout: LayoutPacked})
	var iter atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		prefix := fmt.Sprintf("it%d-", iter.Add(1))
		// Times within ±3 min of midnight: minutes and hours on both
		// sides of a partition boundary, several samples per window.
		w := newPropWorld(s, prefix, 180_000, 500, 60)
		oracle, batchGen, keyed, apply := w.oracle, w.batch, keyedValues, w.apply
		ctx := context.Background()
		steps := rapid.IntRange(1, 8).Draw(rt, "steps")
		for range steps {
			switch op := rapid.IntRange(0, 4).Draw(rt, "op"); {
			case op == 0 || len(w.history) == 0:
				apply(rt, batchGen("new").Draw(rt, "batch"))
			case op == 1:
				apply(rt, w.history[rapid.IntRange(0, len(w.history)-1).Draw(rt, "replay")])
			case op == 2:
				old := w.history[rapid.IntRange(0, len(w.history)-1).Draw(rt, "replay")]
				b := append([]telemetry.Sample(nil), old...)
				for i := range b {
					b[i].Value += 1000
				}
				apply(rt, append(b, batchGen("late").Draw(rt, "late")...))
			case op == 3:
				if _, err := s.Compact(ctx, afterAll); err != nil {
					rt.Fatalf("Compact: %v", err)
				}
			default:
				b1 := keyed(batchGen("c1").Draw(rt, "c1"))
				b2 := keyed(append(batchGen("c2").Draw(rt, "c2"), b1...))
				var wg sync.WaitGroup
				errs := make([]error, 2)
				for i, b := range [][]telemetry.Sample{b1, b2} {
					wg.Go(func() { errs[i] = s.Append(ctx, b) })
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						rt.Fatalf("concurrent Append: %v", err)
					}
				}
				_ = oracle.Append(ctx, b1)
				_ = oracle.Append(ctx, b2)
				w.history = append(w.history, b1, b2)
			}
		}
		for _, m := range w.machines {
			for _, k := range w.metrics {
				key := store.SeriesKey{Machine: m, Metric: k}
				got := selectAll(rt, s, key)
				want := selectAll(rt, oracle, key)
				if diff := cmp.Diff(got, want); diff != "" {
					rt.Fatalf("samples of %v differ from the oracle (-got +want):\n%s", key, diff)
				}
				from := storetest.Base + rapid.Int64Range(-200_000, 0).Draw(rt, "from")
				to := from + rapid.Int64Range(0, 400_000).Draw(rt, "len")
				step := time.Duration(rapid.SampledFrom([]int64{7_000, 10_000, 30_000, 60_000, 120_000, 3_600_000}).Draw(rt, "step")) * time.Millisecond
				for _, agg := range []store.Agg{store.AggAvg, store.AggMin, store.AggMax, store.AggSum, store.AggCount} {
					wantA, err := store.Aggregate(ctx, oracle, key, from, to, step, agg)
					if err != nil {
						rt.Fatal(err)
					}
					gotA, err := s.AggregateRange(ctx, key, from, to, step, agg)
					if err != nil {
						rt.Fatal(err)
					}
					if diff := cmp.Diff(gotA, wantA, cmpopts.EquateApprox(1e-12, 1e-9)); diff != "" {
						rt.Fatalf("AggregateRange(%v, %d, %d, %v, %s) (-got +want):\n%s", key, from, to, step, agg, diff)
					}
				}
				points := rapid.IntRange(2, 100).Draw(rt, "points")
				wantD, err := store.Downsample(ctx, oracle, key, from, to, points)
				if err != nil {
					rt.Fatal(err)
				}
				gotD, err := s.DownsampleRange(ctx, key, from, to, points)
				if err != nil {
					rt.Fatal(err)
				}
				if diff := cmp.Diff(gotD, wantD); diff != "" {
					rt.Fatalf("DownsampleRange(%v, %d, %d, %d) (-got +want):\n%s", key, from, to, points, diff)
				}
			}
		}
		checkTiers(rt, s, prefix)
	})
}

// checkTiers compares every aggregate tier with the aggregates of the
// compacted samples (chunks) of the series named prefix*: the rollups of
// every compacted hour, the window aggregates of the dense chunks.
func checkTiers(t tb, s *Store, prefix string) {
	t.Helper()
	ctx := context.Background()
	read := func(q string, args ...any) []aggRowT {
		rows, err := s.pool.Query(ctx, q, args...)
		if err != nil {
			t.Fatalf("reading aggregates: %v", err)
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (aggRowT, error) {
			var a aggRowT
			var b, mint, maxt time.Time
			err := r.Scan(&b, &a.Machine, &a.Metric, &a.Count, &a.Sum, &a.Min, &a.Max, &mint, &maxt)
			a.Bucket, a.MinTime, a.MaxTime = b.UnixMilli(), mint.UnixMilli(), maxt.UnixMilli()
			return a, err
		})
		if err != nil {
			t.Fatalf("reading aggregates: %v", err)
		}
		return out
	}
	for _, tr := range s.tiers() {
		got := read(`SELECT a.bucket, s.machine, s.metric, a.count, a.sum, a.min, a.max, a.min_time, a.max_time
			FROM `+tr.table+` a JOIN series s ON s.id = a.series_id WHERE s.machine LIKE $1
			ORDER BY s.machine, s.metric, a.bucket`, prefix+"%")
		dense := ""
		if tr.table == aggWinTable {
			dense = " AND c.has_aggs"
		}
		want := read(`SELECT date_bin($2::interval, t, timestamptz 'epoch') b, machine, metric, count(*), sum(v), min(v), max(v),
				(array_agg(t ORDER BY v, t))[1], (array_agg(t ORDER BY v DESC, t))[1]
			FROM (SELECT s.machine, s.metric, c.start + u.o * interval '1 millisecond' AS t, u.v
				FROM sample_chunks c JOIN series s ON s.id = c.series_id
				CROSS JOIN LATERAL unnest(c.offsets, c.vals) AS u(o, v)
				WHERE s.machine LIKE $1`+dense+`) x
			GROUP BY 1, 2, 3 ORDER BY machine, metric, b`, prefix+"%", time.Duration(tr.ms)*time.Millisecond)
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("%s differs from the aggregates of the chunks (-got +want):\n%s", tr.table, diff)
		}
	}
}

// TestPackedCompactsClosedDaysOnly checks that compaction leaves the days
// not closed CompactAfter ago in the head, packs the others into one chunk
// per series and hour, and keeps window aggregates only for dense chunks.
func TestPackedCompactsClosedDaysOnly(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{Layout: LayoutPacked, CompactAfter: time.Hour})
	ctx := context.Background()
	day := storetest.Base - 24*hourMs // yesterday, as testNow sees it
	// Dense: 1 Hz; sparse: one sample per 10 s window; today: 1 Hz.
	mustAppend(t, s, storetest.Samples("m", "dense", day, time.Second, 7200, func(i int) float64 { return float64(i % 13) }))
	mustAppend(t, s, storetest.Samples("m", "sparse", day, 10*time.Second, 720, func(i int) float64 { return float64(i % 7) }))
	mustAppend(t, s, storetest.Samples("m", "today", storetest.Base, time.Second, 600, func(i int) float64 { return float64(i) }))
	count := func(q string) (n int64) {
		t.Helper()
		if err := s.pool.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	// At Base + 30 min yesterday is closed but not CompactAfter ago.
	if n, err := s.Compact(ctx, time.UnixMilli(storetest.Base).Add(30*time.Minute)); err != nil || n != 0 {
		t.Fatalf("Compact before CompactAfter: %d rows, %v; want 0, nil", n, err)
	}
	n, err := s.Compact(ctx, time.UnixMilli(storetest.Base).Add(time.Hour))
	if err != nil || n != 7200+720 {
		t.Fatalf("Compact: %d rows, %v; want %d, nil", n, err, 7200+720)
	}
	if got := count("SELECT count(*) FROM sample_head"); got != 600 {
		t.Errorf("head holds %d rows, want today's 600", got)
	}
	if got := count("SELECT count(*) FROM sample_chunks"); got != 4 {
		t.Errorf("%d chunks, want 4 (2 series × 2 hours)", got)
	}
	if got := count("SELECT count(*) FROM sample_chunks c JOIN series s ON s.id = c.series_id WHERE c.has_aggs <> (s.metric = 'dense')"); got != 0 {
		t.Errorf("%d chunks with has_aggs wrong, want only the dense ones", got)
	}
	if got := count("SELECT count(*) FROM agg_window"); got != 720 {
		t.Errorf("agg_window holds %d rows, want 720 (the dense series' windows)", got)
	}
	if got := count("SELECT count(*) FROM agg_1m"); got != 240 {
		t.Errorf("agg_1m holds %d rows, want 240", got)
	}
	if got := count("SELECT count(*) FROM agg_1h"); got != 4 {
		t.Errorf("agg_1h holds %d rows, want 4", got)
	}
	checkTiers(t, s, "")
	// A late sample and a repeat of a packed one: the repeat is not fresh.
	late := []telemetry.Sample{
		{Machine: "m", Metric: "sparse", Time: day + 5_000, Value: 100},
		{Machine: "m", Metric: "sparse", Time: day + 10_000, Value: 100},
	}
	fresh := make([]bool, 2)
	if err := s.AppendFresh(ctx, late, fresh); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fresh, []bool{true, false}); diff != "" {
		t.Errorf("fresh (-got +want):\n%s", diff)
	}
	if n, err := s.Compact(ctx, time.UnixMilli(storetest.Base).Add(time.Hour)); err != nil || n != 1 {
		t.Fatalf("second Compact: %d rows, %v; want 1, nil", n, err)
	}
	checkTiers(t, s, "")
	got, err := s.AggregateRange(ctx, store.SeriesKey{Machine: "m", Metric: "sparse"}, day, day+hourMs-1, time.Hour, store.AggMax)
	if err != nil || len(got) != 1 || got[0].Value != 100 {
		t.Errorf("max of the first hour after the late sample: %v, %v; want 100", got, err)
	}
	// Downsampling through the rollups (1 h and 1 min tiers, buckets cut
	// anywhere) equals the generic downsampling of the samples, with a
	// late head row in a compacted day.
	mustAppend(t, s, []telemetry.Sample{{Machine: "m", Metric: "dense", Time: day + 1800_000 + 1, Value: -50}})
	for _, key := range []store.SeriesKey{{Machine: "m", Metric: "dense"}, {Machine: "m", Metric: "sparse"}} {
		for _, r := range []struct {
			from, to int64
			n        int
		}{{day, day + 2*hourMs - 1, 4}, {day, day + 2*hourMs - 1, 100}, {day + 12_345, day + 2*hourMs - 7_777, 37}, {day - hourMs, day + 3*hourMs, 9},
			{day + 61_234, day + 3*hourMs + 17, 4}, {day - 3_600_001, day + 2*hourMs + 59_999, 5}, {day + 1, day + 2*hourMs - 2, 3}, {day + 7_000, day + 5*hourMs, 7}} {
			want, err := store.Downsample(ctx, s, key, r.from, r.to, r.n)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.DownsampleRange(ctx, key, r.from, r.to, r.n)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("DownsampleRange(%v, %d, %d, %d) (-got +want):\n%s", key, r.from, r.to, r.n, diff)
			}
		}
	}
}

// TestPromQLPacked runs PromQL expressions over a packed store whose
// samples are partly compacted (chunks and rollups), partly late head rows
// of compacted hours, and over the in-memory reference: the answers must be
// equal, bit for bit, with the rollup reads of aligned max_over_time and
// min_over_time too.
func TestPromQLPacked(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{Layout: LayoutPacked})
	samples := promSamples()
	for b := range slices.Chunk(samples, 20_000) {
		mustAppend(t, s, b)
	}
	ctx := context.Background()
	if _, err := s.Compact(ctx, afterAll); err != nil {
		t.Fatal(err)
	}
	// Late samples in compacted hours, extremes among them.
	late := []telemetry.Sample{
		{Machine: "m1", Metric: "temperature", Time: storetest.Base + 2*hourMs + 1_500, Value: 1000},
		{Machine: "m2", Metric: "temperature", Time: storetest.Base + 2*hourMs + 61_001, Value: -1000},
		{Machine: "m6", Metric: "temperature", Time: storetest.Base + 3*hourMs + 7, Value: 5},
	}
	mustAppend(t, s, late)
	samples = append(samples, late...)
	ref := newRefQueryable(samples)
	q := s.PromQueryable()
	eng := testEngine()
	base := time.UnixMilli(storetest.Base).UTC()
	start, end := base.Add(2*time.Hour), base.Add(3*time.Hour+30*time.Minute)
	tests := []struct {
		expr     string
		start    time.Time
		step     time.Duration
		wantTier bool
	}{
		{expr: "rate(counter[5m])", step: time.Minute},
		{expr: "avg_over_time(temperature[1m])", step: time.Minute},
		{expr: "temperature", step: 15 * time.Second},
		{expr: "sum_over_time(temperature[1m])", step: time.Minute},
		{expr: "max_over_time(temperature[1m])", start: start.Add(-time.Millisecond), step: time.Minute, wantTier: true},
		{expr: "min_over_time(temperature[5m])", start: start.Add(-time.Millisecond), step: time.Minute, wantTier: true},
		{expr: "max_over_time(temperature[1h])", start: start.Add(-time.Millisecond), step: time.Hour, wantTier: true},
		{expr: "max_over_time(temperature[1m])", step: time.Minute},
		{expr: "max_over_time(temperature[90s])", step: 2 * time.Minute},
		{expr: `max_over_time(temperature{machine=~"m1|m2"}[2m])`, start: start.Add(-time.Millisecond), step: 2 * time.Minute, wantTier: true},
		{expr: `temperature{machine!~"m[12]"}`, step: time.Minute},
		{expr: "avg_over_time(temperature[1m])", step: 0},
	}
	for _, tt := range tests {
		if tt.start.IsZero() {
			tt.start = start
		}
		t.Run(fmt.Sprintf("%s@%v@%v", tt.expr, tt.step, tt.start.Sub(start)), func(t *testing.T) {
			want := runProm(t, eng, ref, tt.expr, tt.start, end, tt.step)
			if len(want) == 0 {
				t.Fatalf("the reference answers nothing: a useless case")
			}
			opts := cmpopts.EquateNaNs()
			if got := runProm(t, eng, q, tt.expr, tt.start, end, tt.step); !cmp.Equal(got, want, opts) {
				t.Errorf("(-got +want)\n%s", cmp.Diff(got, want, opts))
			}
			spy := &tierSpy{Queryable: q, window: s.window}
			runProm(t, eng, spy, tt.expr, tt.start, end, tt.step)
			if spy.tier != tt.wantTier {
				t.Errorf("rollups read = %v, want %v", spy.tier, tt.wantTier)
			}
		})
	}
}

// tierSpy records whether a Select of a query may read the rollups.
type tierSpy struct {
	storage.Queryable
	window int64
	mu     sync.Mutex
	tier   bool
}

func (p *tierSpy) Querier(mint, maxt int64) (storage.Querier, error) {
	q, err := p.Queryable.Querier(mint, maxt)
	return tierSpyQuerier{Querier: q, p: p}, err
}

type tierSpyQuerier struct {
	storage.Querier
	p *tierSpy
}

func (q tierSpyQuerier) Select(ctx context.Context, sort bool, h *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if _, ok := planTiers(h).alignedTier(); ok {
		q.p.mu.Lock()
		q.p.tier = true
		q.p.mu.Unlock()
	}
	return q.Querier.Select(ctx, sort, h, ms...)
}
