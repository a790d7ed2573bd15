package export

import (
	"context"
	"io"
	"math"
	"testing"

	"github.com/twinline/twinline/internal/store"
)

// BenchmarkWriters is the cost of the formats alone (a generated source,
// no store): ns per sample and samples/s.
func BenchmarkWriters(b *testing.B) {
	const perSeries = 100_000
	list := make([]Series, 10)
	f := &fakeSelect{base: 1_765_000_800_000, n: map[store.SeriesKey]int{}}
	for i := range list {
		list[i] = Series{Key: store.SeriesKey{Machine: "press-" + string(rune('a'+i)), Metric: "temp"}, Site: "lyon", Line: "A"}
		f.n[list[i].Key] = perSeries
	}
	for _, format := range []string{"csv", "parquet"} {
		b.Run(format, func(b *testing.B) {
			b.ReportAllocs()
			var rows int64
			for b.Loop() {
				var w Writer
				if format == "csv" {
					w, _ = NewCSV(io.Discard)
				} else {
					w = NewParquet(io.Discard)
				}
				n, err := Run(context.Background(), f.Select, list, 0, math.MaxInt64, w, nil)
				if err != nil {
					b.Fatal(err)
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
				rows += n
			}
			b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
