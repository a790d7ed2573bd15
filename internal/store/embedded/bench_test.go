package embedded

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"

	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// benchBatch fills batch with samples of machines × metrics series, one per
// series and timestamp, from time t on in 1 s steps; it returns the next
// time.
func benchBatch(batch []telemetry.Sample, machines, metrics []string, t int64) int64 {
	i := 0
	for i < len(batch) {
		for _, m := range machines {
			for k, metric := range metrics {
				if i == len(batch) {
					return t
				}
				batch[i] = telemetry.Sample{Machine: m, Metric: metric, Time: t, Value: float64((t/sec)%600) + float64(k)}
				i++
			}
		}
		t += sec
	}
	return t
}

func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// BenchmarkAppend appends batches of 1000 samples over 100 machines × 5
// metrics (two timestamps per batch), as the ingest path does.
func BenchmarkAppend(b *testing.B) {
	for _, c := range []string{"snappy", "zstd", "none"} {
		b.Run("wal="+c, func(b *testing.B) {
			s := open(b, b.TempDir(), Options{WALCompression: c})
			machines, metrics := names("machine", 100), names("metric", 5)
			batch := make([]telemetry.Sample, 1000)
			t := base
			// Warm the series cache: the first batch of a series takes the
			// checked path.
			t = benchBatch(batch, machines, metrics, t)
			mustAppend(b, s, batch)
			b.ReportAllocs()
			for b.Loop() {
				t = benchBatch(batch, machines, metrics, t)
				if err := s.Append(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// BenchmarkAppendParallel appends from GOMAXPROCS goroutines, each with its
// own 100 machines.
func BenchmarkAppendParallel(b *testing.B) {
	s := open(b, b.TempDir(), Options{})
	var worker atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		machines, metrics := names(fmt.Sprintf("w%d-machine", worker.Add(1)), 100), names("metric", 5)
		batch := make([]telemetry.Sample, 1000)
		t := base
		for pb.Next() {
			t = benchBatch(batch, machines, metrics, t)
			if err := s.Append(context.Background(), batch); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "samples/s")
}

// dayStore returns a store holding one day at 1 Hz of the series m/x (and
// of 9 neighbours), compacted into blocks as a day-old range would be.
func dayStore(b *testing.B) (*Store, store.SeriesKey, int64, int64) {
	b.Helper()
	s := open(b, b.TempDir(), Options{})
	machines, metrics := names("m", 10), []string{"x"}
	batch := make([]telemetry.Sample, 10*3600)
	t := base
	for range 24 {
		t = benchBatch(batch, machines, metrics, t)
		mustAppend(b, s, batch)
	}
	if err := s.db.Compact(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s, store.SeriesKey{Machine: machines[0], Metric: "x"}, base, t - sec
}

// BenchmarkSelect reads one day at 1 Hz (86 400 samples) of one series.
func BenchmarkSelect(b *testing.B) {
	s, key, from, to := dayStore(b)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		n = 0
		if err := s.Select(context.Background(), key, from, to, func(store.Point) bool { n++; return true }); err != nil {
			b.Fatal(err)
		}
	}
	if n != 86400 {
		b.Fatalf("selected %d samples, want 86400", n)
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "samples/s")
}

// BenchmarkDownsample reduces one day at 1 Hz to 1000 points.
func BenchmarkDownsample(b *testing.B) {
	s, key, from, to := dayStore(b)
	b.ReportAllocs()
	var pts []store.Point
	for b.Loop() {
		var err error
		if pts, err = store.Downsample(context.Background(), s, key, from, to, 1000); err != nil {
			b.Fatal(err)
		}
	}
	if len(pts) > 1000 || len(pts) < 900 {
		b.Fatalf("downsampled to %d points", len(pts))
	}
}

// BenchmarkAggregate reduces one day at 1 Hz to 10 s averages.
func BenchmarkAggregate(b *testing.B) {
	s, key, from, to := dayStore(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := store.Aggregate(context.Background(), s, key, from, to, 10*time.Second, store.AggAvg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBackfill compares appending the present (in order) with
// appending history 20 days old to series that hold the present already
// (the checked, out-of-order path), batches of 1000 samples over 100
// machines × 5 metrics in time order, as a loader replays a file.
func BenchmarkBackfill(b *testing.B) {
	for _, c := range []string{"in-order", "20-days-old"} {
		b.Run(c, func(b *testing.B) {
			now := base + 40*24*3600*sec
			s := open(b, b.TempDir(), Options{Now: func() time.Time { return time.UnixMilli(now) }})
			machines, metrics := names("machine", 100), names("metric", 5)
			batch := make([]telemetry.Sample, 1000)
			// The present, so that every series is known and newer.
			t := benchBatch(batch, machines, metrics, now-3*3600*sec)
			mustAppend(b, s, batch)
			if c != "in-order" {
				t = now - 20*24*3600*sec
			}
			b.ReportAllocs()
			for b.Loop() {
				t = benchBatch(batch, machines, metrics, t)
				if err := s.Append(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// rolledStore returns a store holding span of 10 s samples of machines
// (one metric, temp) ending at its clock's now, compacted and rolled up as
// the background loops would have it (the last hours stay in the head).
func rolledStore(b *testing.B, machines []string, span time.Duration) (*Store, int64) {
	b.Helper()
	now := base + int64(40*24*time.Hour/time.Millisecond)
	s := open(b, b.TempDir(), Options{
		Retention: 60 * 24 * time.Hour, RollupEvery: time.Hour,
		Now: func() time.Time { return time.UnixMilli(now) },
	})
	ctx := context.Background()
	batch := make([]telemetry.Sample, 0, 10_000)
	for t := now - span.Milliseconds(); t < now; t += 10 * sec {
		for i, m := range machines {
			batch = append(batch, telemetry.Sample{Machine: m, Metric: "temp", Time: t, Value: float64((t/sec+int64(i))%600) / 10})
		}
		if len(batch) >= 9_000 {
			mustAppend(b, s, batch)
			batch = batch[:0]
		}
	}
	mustAppend(b, s, batch)
	for range 3 { // compaction stops at blocks not rolled up
		if err := s.db.Compact(ctx); err != nil {
			b.Fatal(err)
		}
		if err := s.rollup(ctx); err != nil {
			b.Fatal(err)
		}
	}
	// The tiers' own heads into blocks, as their compaction loop would,
	// and no compaction during the measurement.
	for _, t := range s.roll.tiers {
		if err := t.db.Compact(ctx); err != nil {
			b.Fatal(err)
		}
	}
	s.db.DisableCompactions()
	return s, now
}

// BenchmarkLongRange reads 30 days of one 10 s series (259 200 samples)
// to about 1 000 points: through the tiers (AggregateRange) and from the
// raw samples (store.Aggregate), side by side.
func BenchmarkLongRange(b *testing.B) {
	s, now := rolledStore(b, names("m", 3), 30*24*time.Hour)
	key := store.SeriesKey{Machine: "m-000", Metric: "temp"}
	from, to := now-30*24*3600*sec, now
	for _, c := range []struct {
		name string
		step time.Duration
		raw  bool
	}{
		{"step=45m/tier=1m", 45 * time.Minute, false},
		{"step=45m/raw", 45 * time.Minute, true},
		{"step=1h/tier=1h", time.Hour, false},
		{"step=1h/raw", time.Hour, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var pts []store.Point
			var err error
			for b.Loop() {
				if c.raw {
					pts, err = store.Aggregate(context.Background(), s, key, from, to, c.step, store.AggAvg)
				} else {
					pts, err = s.AggregateRange(context.Background(), key, from, to, c.step, store.AggAvg)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(pts)), "points")
		})
	}
}

// BenchmarkFleetHeatmap runs the Grafana fleet heatmap, a day at 1 min
// over 1 000 machines (8.64 M samples), through Prometheus' engine: with
// the evaluation aligned to the 1 min buckets (offset 1ms, read from the
// 1 min tier) and with Grafana's default alignment (raw samples).
func BenchmarkFleetHeatmap(b *testing.B) {
	s, now := rolledStore(b, names("m", 1000), 24*time.Hour)
	eng := promql.NewEngine(promql.EngineOpts{MaxSamples: 100_000_000, Timeout: 10 * time.Minute, LookbackDelta: 5 * time.Minute})
	start, end := time.UnixMilli(now-24*3600*sec), time.UnixMilli(now)
	// The engine with its query-cost budget (which the HTTP handler had
	// until issue 18: it checks the context twice per sample read).
	costEng := promql.NewEngine(promql.EngineOpts{MaxSamples: 100_000_000, Timeout: 10 * time.Minute, LookbackDelta: 5 * time.Minute, EnableQueryCost: true})
	costEng.SetQueryLimits(10_000, 0, 0)
	for _, c := range []struct {
		name, q string
		eng     *promql.Engine
	}{
		{"aligned/tier=1m", "avg by (machine) (avg_over_time(temp[1m] offset 1ms))", eng},
		{"grafana/raw", "avg by (machine) (avg_over_time(temp[1m]))", eng},
		{"aligned/tier=1m/query-cost", "avg by (machine) (avg_over_time(temp[1m] offset 1ms))", costEng},
		{"grafana/raw/query-cost", "avg by (machine) (avg_over_time(temp[1m]))", costEng},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			var m promql.Matrix
			for b.Loop() {
				m = rangeQuery(b, c.eng, s.PromQueryable(), c.q, start, end, time.Minute)
			}
			if len(m) != 1000 {
				b.Fatalf("%d series", len(m))
			}
			if n := s.roll.torn.Load(); n > 0 {
				b.Logf("%d torn tier reads (answered from raw samples)", n)
			}
			b.ReportMetric(float64(len(m[0].Floats)), "points/series")
		})
	}
	// The same through the HTTP handler, as Grafana calls it: the registry
	// labels (site, line) added to every series, the answer encoded.
	infos := make([]twin.Info, 1000)
	for i, m := range names("m", 1000) {
		infos[i] = twin.Info{ID: m, Site: fmt.Sprintf("site-%d", i%4), Line: fmt.Sprintf("line-%d", i%20)}
	}
	h := promapi.New(s.PromQueryable(), func() []twin.Info { return infos }, promapi.Options{})
	for _, c := range []struct{ name, q string }{
		{"http/aligned/tier=1m", "avg by (machine) (avg_over_time(temp[1m] offset 1ms))"},
		{"http/grafana/raw", "avg by (machine) (avg_over_time(temp[1m]))"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			form := url.Values{"query": {c.q}, "step": {"60"},
				"start": {strconv.FormatFloat(float64(start.UnixMilli())/1000, 'f', 3, 64)},
				"end":   {strconv.FormatFloat(float64(end.UnixMilli())/1000, 'f', 3, 64)}}
			var rec *httptest.ResponseRecorder
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, promapi.Prefix+"query_range", strings.NewReader(form.Encode()))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				rec = httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("%d: %s", rec.Code, rec.Body)
				}
			}
			if n := strings.Count(rec.Body.String(), `"metric":`); n != 1000 {
				b.Fatalf("%d series", n)
			}
			b.ReportMetric(float64(rec.Body.Len()), "bytes/answer")
		})
	}
}
