package postgres

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// benchBatch returns 10 000 samples at 1 Hz from start, time-major as an
// ingest batch comes: 10 metrics of 1000/secs machines over secs seconds.
// With secs = 10 a batch fills one 10 s window per series (1 000 aggregate
// rows); with secs = 1 every sample is alone in its window (10 000).
func benchBatch(prefix string, start int64, secs int) []telemetry.Sample {
	out := make([]telemetry.Sample, 0, 10_000)
	for s := range int64(secs) {
		for m := range 1000 / secs {
			for k := range 10 {
				out = append(out, telemetry.Sample{
					Machine: fmt.Sprintf("%s-machine-%04d", prefix, m), Metric: fmt.Sprintf("metric_%d", k),
					Time: start + s*sec, Value: float64(m*k) + float64(s)/10,
				})
			}
		}
	}
	return out
}

// BenchmarkIngestVsBareCopy appends one 10 000-sample batch (benchBatch)
// per iteration
// through Store.Append (raw rows + aggregates, committed) and, in the same
// iteration, COPYs an equal batch with a bare pgx CopyFrom into the same
// partitioned, indexed table, and a third one with the store's own COPY
// alone (no aggregates); it reports the three rates and the ratios to bare.
func BenchmarkIngestVsBareCopy(b *testing.B) {
	b.Run("10s_per_batch", func(b *testing.B) { benchIngest(b, 10) })
	b.Run("1s_per_batch", func(b *testing.B) { benchIngest(b, 1) })
}

func benchIngest(b *testing.B, secs int) {
	s := openTest(b, "", Options{MaxConns: 2})
	ctx := context.Background()
	start := storetest.Base - 11*3600*sec // the partition of "today"
	var storeDur, bareDur, copyDur time.Duration
	rows := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		t0 := start + int64(i*secs)*sec
		batch := benchBatch("s", t0, secs)
		bare := benchBatch("b", t0, secs)
		bareRows := make([][]any, len(bare))
		for j, x := range bare {
			bareRows[j] = []any{time.UnixMilli(x.Time), x.Machine, x.Metric, x.Value}
		}
		own, _ := toRows(benchBatch("c", t0, secs), minTime, maxTime)
		viaStore := func() {
			t0 := time.Now()
			if err := s.Append(ctx, batch); err != nil {
				b.Fatal(err)
			}
			storeDur += time.Since(t0)
		}
		viaBare := func() {
			t0 := time.Now()
			err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				_, err := tx.CopyFrom(ctx, pgx.Identifier{samplesTable}, sampleColumns, pgx.CopyFromRows(bareRows))
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			bareDur += time.Since(t0)
		}
		viaOwnCopy := func() {
			t0 := time.Now()
			err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				_, err := copyRows(ctx, tx, samplesTable, own, false)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			copyDur += time.Since(t0)
		}
		// Rotate the order: a later one finds the index pages an earlier
		// one brought in.
		order := [][]func(){{viaStore, viaBare, viaOwnCopy}, {viaBare, viaOwnCopy, viaStore}, {viaOwnCopy, viaStore, viaBare}}[i%3]
		for _, f := range order {
			f()
		}
		rows += len(batch)
	}
	b.StopTimer()
	b.ReportMetric(float64(rows)/storeDur.Seconds(), "store_rows/s")
	b.ReportMetric(float64(rows)/bareDur.Seconds(), "bare_rows/s")
	b.ReportMetric(float64(rows)/copyDur.Seconds(), "copy_only_rows/s")
	b.ReportMetric(bareDur.Seconds()/storeDur.Seconds(), "store/bare")
	b.ReportMetric(bareDur.Seconds()/copyDur.Seconds(), "copy_only/bare")
}

// BenchmarkAggregateUpsert merges 10 000 aggregate rows per statement, half
// of them new, half merged into existing rows.
func BenchmarkAggregateUpsert(b *testing.B) {
	s := openTest(b, "", Options{MaxConns: 2})
	ctx := context.Background()
	start := storetest.Base - 11*3600*sec
	build := func(i int) aggColumns {
		var rows []row
		for m := range 1000 {
			for w := range 10 {
				// Windows i*5 .. i*5+9: the first five were written by the
				// previous iteration.
				rows = append(rows, row{ms: start + int64(i*5+w)*10*sec, machine: fmt.Sprintf("m%04d", m), metric: "x", value: float64(w)})
			}
		}
		return aggregate(rows, s.window)
	}
	upserts := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		a := build(i)
		b.StartTimer()
		if _, err := s.pool.Exec(ctx, upsertAggs, a.bucket, a.machine, a.metric, a.count, a.sum, a.min, a.max, a.minTime, a.maxTime); err != nil {
			b.Fatal(err)
		}
		upserts += len(a.bucket)
	}
	b.ReportMetric(float64(upserts)/b.Elapsed().Seconds(), "upserts/s")
}

// BenchmarkDownsampleDay downsamples one day of a 1 Hz series (86 400
// samples, among 9 other series) to 1 000 points, in SQL and, for
// reference, with the generic helper over Select.
func BenchmarkDownsampleDay(b *testing.B) {
	s := openTest(b, "", Options{MaxConns: 2})
	ctx := context.Background()
	day := time.UnixMilli(storetest.Base).Add(-24 * time.Hour).UnixMilli()
	for m := range 10 {
		for h := range 24 {
			batch := storetest.Samples(fmt.Sprintf("m%d", m), "x", day+int64(h)*3600*sec, time.Second, 3600,
				func(i int) float64 { return float64((i*7919)%1000) / 10 })
			mustAppend(b, s, batch)
		}
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE samples"); err != nil {
		b.Fatal(err)
	}
	key := store.SeriesKey{Machine: "m3", Metric: "x"}
	to := day + 24*3600*sec - 1
	for _, bb := range []struct {
		name string
		f    func() ([]store.Point, error)
	}{
		{"sql", func() ([]store.Point, error) { return s.DownsampleRange(ctx, key, day, to, 1000) }},
		{"generic", func() ([]store.Point, error) { return store.Downsample(ctx, s, key, day, to, 1000) }},
	} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pts, err := bb.f()
				if err != nil || len(pts) < 900 || len(pts) > 1000 {
					b.Fatalf("%d points, %v", len(pts), err)
				}
			}
		})
	}
}

// BenchmarkAppendConcurrentSmall measures many concurrent small Appends
// (10 samples each, as from many HTTP clients): one transaction each.
func BenchmarkAppendConcurrentSmall(b *testing.B) {
	s := openTest(b, "", Options{MaxConns: 4})
	ctx := context.Background()
	start := storetest.Base - 11*3600*sec
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			batch := storetest.Samples(fmt.Sprintf("m%d", i%100), "x", start+(i/100)*10*sec, time.Second, 10,
				func(j int) float64 { return float64(j) })
			if err := s.Append(ctx, batch); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(10*b.N)/b.Elapsed().Seconds(), "rows/s")
}
