package postgres

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// tsbsBatch returns one TSBS-iot-like batch: every metric of every machine
// at time t (10 s apart from the previous batch), random-walk values with
// two decimals, as a truck's readings are.
func tsbsBatch(machines, metrics []string, t int64, walk []float64, rng *rand.Rand) []telemetry.Sample {
	out := make([]telemetry.Sample, 0, len(machines)*len(metrics))
	for i, m := range machines {
		for j, k := range metrics {
			w := &walk[i*len(metrics)+j]
			*w += rng.NormFloat64()
			out = append(out, telemetry.Sample{Machine: m, Metric: k, Time: t, Value: math.Round(*w*100) / 100})
		}
	}
	return out
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkLayoutsTSBS loads the same TSBS-like workload (TWINLINE_BENCH_MACHINES
// machines, default 1 000, × 10 metrics at a 10 s interval over
// TWINLINE_BENCH_MINUTES, default 30, of yesterday) into a store of each
// layout, batch by batch alternately (one batch = one timestamp of every
// series, 10 000 samples), and reports per layout the Append rate, then
// compacts the packed store and reports the compaction rate and, after
// VACUUM, the bytes per sample of all the store's tables (heap, TOAST,
// indexes, aggregates, rollups), then loads the same workload into a third
// store, packed, alone, and into a fourth with two writers. One iteration
// is the whole load.
func BenchmarkLayoutsTSBS(b *testing.B) {
	nm, minutes := envInt("TWINLINE_BENCH_MACHINES", 1000), envInt("TWINLINE_BENCH_MINUTES", 30)
	machines := make([]string, nm)
	for i := range machines {
		machines[i] = fmt.Sprintf("truck_%d", i)
	}
	metrics := []string{"latitude", "longitude", "elevation", "velocity", "heading", "grade", "fuel_consumption", "load_capacity", "fuel_capacity", "nominal_fuel_consumption"}
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		stores := map[string]*Store{
			LayoutRows:   openTest(b, "", Options{Layout: LayoutRows, MaxConns: 2}),
			LayoutPacked: openTest(b, "", Options{Layout: LayoutPacked, MaxConns: 2}),
		}
		order := []string{LayoutRows, LayoutPacked}
		dur := map[string]time.Duration{}
		start := storetest.Base - 24*hourMs
		walk := make([]float64, nm*len(metrics))
		rng := rand.New(rand.NewPCG(1, 2))
		n := 0
		for i := range minutes * 6 {
			batch := tsbsBatch(machines, metrics, start+int64(i)*10_000, walk, rng)
			order[0], order[1] = order[1], order[0]
			for _, l := range order {
				t0 := time.Now()
				if err := stores[l].Append(ctx, batch); err != nil {
					b.Fatal(err)
				}
				dur[l] += time.Since(t0)
			}
			n += len(batch)
		}
		t0 := time.Now()
		moved, err := stores[LayoutPacked].Compact(ctx, afterAll)
		if err != nil || moved != int64(n) {
			b.Fatalf("Compact: %d rows, %v; want %d", moved, err, n)
		}
		compact := time.Since(t0)
		for _, l := range order {
			s := stores[l]
			tables := s.tables()
			if s.packed {
				tables = append(tables, "series")
			}
			if _, err := s.pool.Exec(ctx, "VACUUM ANALYZE "+strings.Join(tables, ", ")); err != nil {
				b.Fatal(err)
			}
			var bytes int64
			if err := s.pool.QueryRow(ctx, `
				SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c
				JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = $1 AND c.relkind = 'r'`, s.schema).Scan(&bytes); err != nil {
				b.Fatal(err)
			}
			rows, err := s.pool.Query(ctx, `
				SELECT coalesce(p.relname, c.relname), sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c
				JOIN pg_namespace n ON n.oid = c.relnamespace
				LEFT JOIN pg_inherits i ON i.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = i.inhparent
				WHERE n.nspname = $1 AND c.relkind = 'r' GROUP BY 1 HAVING sum(pg_total_relation_size(c.oid)) > 65536 ORDER BY 2 DESC`, s.schema)
			if err != nil {
				b.Fatal(err)
			}
			for rows.Next() {
				var name string
				var size int64
				if err := rows.Scan(&name, &size); err != nil {
					b.Fatal(err)
				}
				b.Logf("%s: %s %d bytes, %.1f bytes/sample", l, name, size, float64(size)/float64(n))
			}
			rows.Close()
			b.ReportMetric(float64(n)/dur[l].Seconds(), l+"_points/s")
			b.ReportMetric(float64(bytes)/float64(n), l+"_bytes/sample")
		}
		// The packed layout alone (no rows-layout writes competing for WAL,
		// checkpoints and the buffer cache), on a store of its own.
		alone := openTest(b, "", Options{Layout: LayoutPacked, MaxConns: 2})
		walk = make([]float64, nm*len(metrics))
		rng = rand.New(rand.NewPCG(1, 2))
		var aloneDur time.Duration
		for i := range minutes * 6 {
			batch := tsbsBatch(machines, metrics, start+int64(i)*10_000, walk, rng)
			t0 := time.Now()
			if err := alone.Append(ctx, batch); err != nil {
				b.Fatal(err)
			}
			aloneDur += time.Since(t0)
		}
		b.ReportMetric(float64(n)/aloneDur.Seconds(), "packed_alone_points/s")
		// Two writers (two Appends in flight, as two ingest flushes or
		// Kafka partitions give), on a fourth store.
		two := openTest(b, "", Options{Layout: LayoutPacked, MaxConns: 4})
		walk = make([]float64, nm*len(metrics))
		rng = rand.New(rand.NewPCG(1, 2))
		batches := make([][]telemetry.Sample, minutes*6)
		for i := range batches {
			batches[i] = tsbsBatch(machines, metrics, start+int64(i)*10_000, walk, rng)
		}
		t0 = time.Now()
		var wg sync.WaitGroup
		for w := range 2 {
			wg.Go(func() {
				for i := w; i < len(batches); i += 2 {
					if err := two.Append(ctx, batches[i]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		b.ReportMetric(float64(n)/time.Since(t0).Seconds(), "packed_2writers_points/s")
		b.ReportMetric(float64(n)/compact.Seconds(), "packed_compact_points/s")
		b.ReportMetric(dur[LayoutRows].Seconds()/dur[LayoutPacked].Seconds(), "packed/rows_speed")
		b.StartTimer()
	}
}

// BenchmarkLayoutsLongRange reads 30 days of one machine's metric (one
// sample every 10 s, 259 200 samples, among 4 other series) in each
// layout: DownsampleRange to 1 000 points and AggregateRange by hour. The
// packed store is compacted (every day but today) first.
func BenchmarkLayoutsLongRange(b *testing.B) {
	ctx := context.Background()
	from := storetest.Base - 29*24*hourMs
	to := storetest.Base + 12*hourMs - 1
	stores := map[string]*Store{
		LayoutRows:   openTest(b, "", Options{Layout: LayoutRows, MaxConns: 2}),
		LayoutPacked: openTest(b, "", Options{Layout: LayoutPacked, MaxConns: 2}),
	}
	for _, s := range stores {
		for m := range 5 {
			for day := from; day < to; day += 24 * hourMs {
				batch := storetest.Samples(fmt.Sprintf("m%d", m), "temp", day, 10*time.Second, 8640,
					func(i int) float64 { return float64((i*7919)%1000) / 10 })
				batch = slices.DeleteFunc(batch, func(x telemetry.Sample) bool { return x.Time > to })
				if err := s.Append(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
		}
		if _, err := s.Compact(ctx, testNow); err != nil {
			b.Fatal(err)
		}
		tables := s.tables()
		if s.packed {
			tables = append(tables, "series")
		}
		if _, err := s.pool.Exec(ctx, "VACUUM ANALYZE "+strings.Join(tables, ", ")); err != nil {
			b.Fatal(err)
		}
	}
	key := store.SeriesKey{Machine: "m2", Metric: "temp"}
	// The packed layout's SQL downsampling plan (1 min rollups in SQL),
	// on the same tables, next to its Go plan.
	sqlPlan := openTest(b, "", Options{Layout: LayoutPacked, MaxConns: 2, Schema: stores[LayoutPacked].schema})
	sqlPlan.downsampleSQL = true
	b.Run("packed_sqlplan/downsample_30d_1000", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			pts, err := sqlPlan.DownsampleRange(ctx, key, from, to, 1000)
			if err != nil || len(pts) < 900 {
				b.Fatalf("%d points, %v", len(pts), err)
			}
		}
	})
	for _, l := range []string{LayoutRows, LayoutPacked} {
		s := stores[l]
		b.Run(l+"/downsample_30d_1000", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pts, err := s.DownsampleRange(ctx, key, from, to, 1000)
				if err != nil || len(pts) < 900 {
					b.Fatalf("%d points, %v", len(pts), err)
				}
			}
		})
		b.Run(l+"/aggregate_30d_1h", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pts, err := s.AggregateRange(ctx, key, from, to, time.Hour, store.AggAvg)
				if err != nil || len(pts) != 29*24+12 {
					b.Fatalf("%d points, %v", len(pts), err)
				}
			}
		})
	}
}

// BenchmarkPackedFleetHeatmap is the Grafana fleet heatmap on a packed
// store: `avg by (machine) (avg_over_time(temperature[1m]))` over a
// compacted day (yesterday) at a 1 min step, TWINLINE_BENCH_MACHINES
// machines (default 1 000) with a sample every TWINLINE_BENCH_EVERY_S
// seconds (default 10: 8.64 M samples), through Prometheus' engine. Cases:
// evaluation windows on whole minutes (start 1 ms before the minute: the
// 1 min rollups), Grafana's default alignment (start on the minute: every
// window cuts a minute by 1 ms, raw chunk samples), and the raw read of
// the aligned query (rollups off), side by side.
func BenchmarkPackedFleetHeatmap(b *testing.B) {
	nm, every := envInt("TWINLINE_BENCH_MACHINES", 1000), int64(envInt("TWINLINE_BENCH_EVERY_S", 10))*1000
	ctx := context.Background()
	s := openTest(b, "", Options{Layout: LayoutPacked, MaxConns: 2})
	day := storetest.Base - dayMs
	names := make([]string, nm)
	for m := range names {
		names[m] = fmt.Sprintf("m%04d", m)
	}
	t0 := time.Now()
	n := 0
	batch := make([]telemetry.Sample, 0, 10_000)
	for t := day; t < day+dayMs; t += every {
		for m, name := range names {
			i := (t - day) / every
			batch = append(batch, telemetry.Sample{Machine: name, Metric: "temperature", Time: t,
				Value: 60 + float64((i*7919+int64(m)*104729)%1000)/50})
			if len(batch) == cap(batch) {
				mustAppend(b, s, batch)
				n, batch = n+len(batch), batch[:0]
			}
		}
	}
	mustAppend(b, s, batch)
	n += len(batch)
	if _, err := s.Compact(ctx, testNow); err != nil {
		b.Fatal(err)
	}
	tables := append(s.tables(), "series")
	if _, err := s.pool.Exec(ctx, "VACUUM ANALYZE "+strings.Join(tables, ", ")); err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded and compacted %d samples in %v", n, time.Since(t0).Round(time.Millisecond))
	eng := testEngine()
	const expr = "avg by (machine) (avg_over_time(temperature[1m]))"
	end := time.UnixMilli(day + dayMs - 1).UTC()
	for _, c := range []struct {
		name  string
		q     storage.Queryable
		start time.Time
	}{
		{"rollup_aligned", s.PromQueryable(), time.UnixMilli(day + 60_000 - 1).UTC()},
		{"grafana_alignment", s.PromQueryable(), time.UnixMilli(day + 60_000).UTC()},
		{"raw_aligned", promQueryable{s: s}, time.UnixMilli(day + 60_000 - 1).UTC()},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				qry, err := eng.NewRangeQuery(ctx, c.q, nil, expr, c.start, end, time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				res := qry.Exec(ctx)
				if res.Err != nil {
					b.Fatal(res.Err)
				}
				if m, ok := res.Value.(promql.Matrix); !ok || len(m) != nm {
					b.Fatalf("%d series, want %d", len(m), nm)
				}
				qry.Close()
			}
		})
	}
}
