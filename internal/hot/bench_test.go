package hot

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// benchWindows returns the two implementations, the Redis one on the
// Redis of the tests under a prefix of its own.
func benchWindows(b *testing.B, c *clock) map[string]window {
	rdb, prefix := testRedis(b)
	return map[string]window{
		"memory": NewMemory(Options{Now: c.Now}),
		"redis":  NewRedis(rdb, RedisOptions{Options: Options{Now: c.Now}, Prefix: prefix}),
	}
}

// BenchmarkAppend measures Append of one batch of machines × 10 metrics,
// one sample each, the clock moving 1 s per batch (so every series is
// trimmed as it goes once the window is full).
//
//	go test -run '^$' -bench 'Append|Range|Latest' -benchtime 2000x ./internal/hot/
func BenchmarkAppend(b *testing.B) {
	for _, machines := range []int{1, 10, 100} {
		c := newClock()
		for name, w := range benchWindows(b, c) {
			b.Run(fmt.Sprintf("%s/samples=%d", name, machines*10), func(b *testing.B) {
				ctx := context.Background()
				batch := make([]telemetry.Sample, 0, machines*10)
				b.ReportAllocs()
				for b.Loop() {
					c.Add(time.Second)
					now := c.Now().UnixMilli()
					batch = batch[:0]
					for m := range machines {
						for k := range 10 {
							batch = append(batch, telemetry.Sample{Machine: fmt.Sprintf("m%03d", m), Metric: fmt.Sprintf("metric_%d", k), Time: now, Value: float64(now)})
						}
					}
					if err := w.Append(ctx, batch); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "samples/s")
			})
		}
	}
}

// fill writes 5 minutes of 1 Hz samples of 10 metrics of machine m.
func fill(b *testing.B, c *clock, w window) {
	ctx := context.Background()
	for range 300 {
		c.Add(time.Second)
		now := c.Now().UnixMilli()
		batch := make([]telemetry.Sample, 0, 10)
		for k := range 10 {
			batch = append(batch, telemetry.Sample{Machine: "m", Metric: fmt.Sprintf("metric_%d", k), Time: now, Value: 1})
		}
		if err := w.Append(ctx, batch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRange reads one series' full window: 300 points (5 min at 1 Hz).
func BenchmarkRange(b *testing.B) {
	c := newClock()
	for name, w := range benchWindows(b, c) {
		fill(b, c, w)
		b.Run(name+"/points=300", func(b *testing.B) {
			ctx := context.Background()
			now := c.Now().UnixMilli()
			b.ReportAllocs()
			for b.Loop() {
				pts, covered, err := w.Range(ctx, store.SeriesKey{Machine: "m", Metric: "metric_3"}, now-5*60_000+1000, now)
				if err != nil || !covered || len(pts) != 300 {
					b.Fatalf("range: %d points, covered %v, %v", len(pts), covered, err)
				}
			}
		})
	}
}

// BenchmarkLatest reads the latest value of a machine's 10 metrics.
func BenchmarkLatest(b *testing.B) {
	c := newClock()
	for name, w := range benchWindows(b, c) {
		fill(b, c, w)
		b.Run(name+"/metrics=10", func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				got, err := w.Latest(ctx, "m")
				if err != nil || len(got) != 10 {
					b.Fatalf("latest: %d metrics, %v", len(got), err)
				}
			}
		})
	}
}
