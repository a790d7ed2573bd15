package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// loadTemperature appends a day of temperature from day (Unix ms) for n
// machines, one sample every every, through Store.Append in 10 000-sample
// batches (time-major, as ingest writes them).
func loadTemperature(b *testing.B, s *Store, day int64, machines int, every time.Duration) int {
	b.Helper()
	names := make([]string, machines)
	for m := range names {
		names[m] = fmt.Sprintf("m%04d", m)
	}
	batch := make([]telemetry.Sample, 0, 10_000)
	rows := 0
	step := every.Milliseconds()
	for t := day; t < day+dayMs; t += step {
		for m, name := range names {
			i := (t - day) / step
			batch = append(batch, telemetry.Sample{Machine: name, Metric: "temperature", Time: t,
				Value: 60 + float64((i*7919+int64(m)*104729)%1000)/50})
			if len(batch) == cap(batch) {
				mustAppend(b, s, batch)
				rows += len(batch)
				batch = batch[:0]
			}
		}
	}
	mustAppend(b, s, batch)
	rows += len(batch)
	for _, sql := range []string{"VACUUM ANALYZE samples", "VACUUM ANALYZE sample_aggs"} {
		if _, err := s.pool.Exec(context.Background(), sql); err != nil {
			b.Fatal(err)
		}
	}
	return rows
}

// BenchmarkPromQL runs 24-hour range queries at a 1-minute step through the
// PromQL engine over the store: one machine with a sample every second
// (86 400 rows) and 1 000 machines with a sample every 30 s (2.88 M rows);
// raw rows, aggregates where they apply (max_over_time: forced, and as
// PromQueryable chooses after its density probe), and the reads alone.
func BenchmarkPromQL(b *testing.B) {
	day := storetest.Base - dayMs // yesterday of testNow: a whole day
	start, end := time.UnixMilli(day).UTC(), time.UnixMilli(day+dayMs).UTC()
	eng := promql.NewEngine(promql.EngineOpts{MaxSamples: 100_000_000, Timeout: 10 * time.Minute, LookbackDelta: 5 * time.Minute})
	for _, ds := range []struct {
		name     string
		machines int
		every    time.Duration
	}{
		{"1_machine_1s", 1, time.Second},
		{"1000_machines_30s", 1000, 30 * time.Second},
	} {
		b.Run(ds.name, func(b *testing.B) {
			s := openTest(b, "", Options{MaxConns: 2})
			t0 := time.Now()
			rows := loadTemperature(b, s, day, ds.machines, ds.every)
			b.Logf("loaded %d rows in %v", rows, time.Since(t0).Round(time.Millisecond))
			for _, q := range []struct {
				name, expr string
				agg        bool
			}{
				{"avg_over_time", "avg_over_time(temperature[1m])", false},
				{"selector", "temperature", false},
				{"max_over_time_raw", "max_over_time(temperature[1m])", false},
				{"max_over_time_aggregates", "max_over_time(temperature[1m])", true},
				{"max_over_time_default", "max_over_time(temperature[1m])", true},
			} {
				// aggregates forced (minDensity 0), or as PromQueryable
				// decides (the density probe).
				var qa storage.Queryable = promQueryable{s: s, aggregates: q.agg}
				if q.name == "max_over_time_default" {
					qa = s.PromQueryable()
				}
				b.Run(q.name, func(b *testing.B) {
					b.ReportAllocs()
					points := 0
					for b.Loop() {
						qry, err := eng.NewRangeQuery(context.Background(), qa, nil, q.expr, start, end, time.Minute)
						if err != nil {
							b.Fatal(err)
						}
						res := qry.Exec(context.Background())
						if res.Err != nil {
							b.Fatal(res.Err)
						}
						m, _ := res.Matrix()
						points = 0
						for _, sr := range m {
							points += len(sr.Floats)
						}
						if len(m) != ds.machines {
							b.Fatalf("%d series, want %d", len(m), ds.machines)
						}
						qry.Close()
					}
					b.ReportMetric(float64(points), "points/op")
				})
			}
			// The reads alone, without the engine: the Queryable's one
			// statement, and the store's Select once per series (what a
			// Queryable over store.Store would do).
			hints := &storage.SelectHints{Start: start.UnixMilli() - 5*60*sec + 1, End: end.UnixMilli(), Step: 60 * sec}
			metric := labels.MustNewMatcher(labels.MatchEqual, "__name__", "temperature")
			b.Run("read_one_statement", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					q, _ := s.PromQueryable().Querier(hints.Start, hints.End)
					ss := q.Select(context.Background(), false, hints, metric)
					n := 0
					var it chunkenc.Iterator
					for ss.Next() {
						it = ss.At().Iterator(it)
						for it.Next() == chunkenc.ValFloat {
							n++
						}
					}
					if ss.Err() != nil || n != rows {
						b.Fatalf("%d samples, %v", n, ss.Err())
					}
				}
			})
			b.Run("read_select_per_series", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					n := 0
					for m := range ds.machines {
						key := store.SeriesKey{Machine: fmt.Sprintf("m%04d", m), Metric: "temperature"}
						err := s.Select(context.Background(), key, hints.Start, hints.End, func(store.Point) bool { n++; return true })
						if err != nil {
							b.Fatal(err)
						}
					}
					if n != rows {
						b.Fatalf("%d samples, want %d", n, rows)
					}
				}
			})
		})
	}
}
