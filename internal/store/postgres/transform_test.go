package postgres

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"testing"

	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestTransformRangeMatchesApply: the SQL window functions give what the
// generic transform gives over the same raw samples.
func TestTransformRangeMatchesApply(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	var iter atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		ctx := context.Background()
		key := store.SeriesKey{Machine: fmt.Sprintf("tr%d", iter.Add(1)), Metric: "x"}
		n := rapid.IntRange(0, 200).Draw(rt, "samples")
		var batch []telemetry.Sample
		tm := storetest.Base
		for i := range n {
			tm += rapid.Int64Range(1, 4_000).Draw(rt, "gap")
			batch = append(batch, telemetry.Sample{Machine: key.Machine, Metric: key.Metric, Time: tm,
				Value: float64(rapid.IntRange(-500, 500).Draw(rt, fmt.Sprintf("v%d", i))) / 10})
		}
		if err := s.Append(ctx, batch); err != nil {
			rt.Fatalf("Append: %v", err)
		}
		from := storetest.Base + rapid.Int64Range(-5_000, 100_000).Draw(rt, "from")
		to := from + rapid.Int64Range(0, 800_000).Draw(rt, "len")
		tr := store.Transform{Fn: "delta"}
		if rapid.Bool().Draw(rt, "rolling") {
			tr = store.Transform{Fn: "rolling_avg", Window: rapid.IntRange(1, 20).Draw(rt, "window")}
		}
		want := tr.Apply(storetest.SelectAll(t, s, key, from, to))
		got, err := s.TransformRange(ctx, key, from, to, tr, 1_000_000)
		if err != nil {
			rt.Fatal(err)
		}
		if len(got) != len(want) {
			rt.Fatalf("%+v: %d points, want %d", tr, len(got), len(want))
		}
		for i := range want {
			if got[i].Time != want[i].Time || math.Abs(got[i].Value-want[i].Value) > 1e-9 {
				rt.Fatalf("%+v point %d: %+v, want %+v", tr, i, got[i], want[i])
			}
		}
	})
}
