package storetest

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// testBackendQueries checks that a store's own aggregation and downsampling
// (store.Aggregator, store.Downsampler) return what the generic helpers
// return over its Select, up to the rounding of sums. A store with neither
// skips it.
func testBackendQueries(t *testing.T, s store.Store) {
	ag, isAg := s.(store.Aggregator)
	ds, isDs := s.(store.Downsampler)
	if !isAg && !isDs {
		t.Skip("the store implements neither store.Aggregator nor store.Downsampler")
	}
	ctx := context.Background()
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	// Two hours with an irregular rhythm (steps of 1 to 13 s, some
	// sub-second), a gap, ties of minimum and maximum values, and a
	// neighbour series that must not leak in.
	var batch []telemetry.Sample
	tm := Base + 1234
	for i := range 1500 {
		if i == 700 {
			tm += 20 * 60 * sec // a gap of 20 minutes
		}
		v := float64((i*7919)%101) - 50
		if i%97 == 0 {
			v = 1e3 // repeated maximum
		}
		batch = append(batch, telemetry.Sample{Machine: "m", Metric: "x", Time: tm, Value: v})
		tm += int64(1+(i*31)%13)*sec + int64(i%3)*250
	}
	last := tm
	batch = append(batch, Samples("m", "y", Base, time.Second, 600, func(i int) float64 { return 1e9 })...)
	mustAppend(t, s, batch)

	ranges := []struct {
		name     string
		from, to int64
	}{
		{"everything", math.MinInt64, math.MaxInt64},
		{"data bounds", Base, last},
		{"aligned hour", Base, Base + 3600*sec - 1},
		{"unaligned", Base + 12345, Base + 5432*sec + 17},
		{"inside one window", Base + 3*sec, Base + 7*sec},
		{"single instant", Base + 1234, Base + 1234},
		{"empty", Base - 100*sec, Base - 1},
		{"from after to", Base + 100*sec, Base},
	}
	approx := cmpopts.EquateApprox(1e-12, 1e-9)
	if isAg {
		steps := []time.Duration{time.Millisecond, 7 * time.Second, 10 * time.Second, time.Minute, 25 * time.Minute, time.Hour, 24 * time.Hour}
		aggs := []store.Agg{store.AggAvg, store.AggMin, store.AggMax, store.AggSum, store.AggCount}
		for _, r := range ranges {
			for _, step := range steps {
				for _, agg := range aggs {
					want, err := store.Aggregate(ctx, s, key, r.from, r.to, step, agg)
					if err != nil {
						t.Fatalf("Aggregate(%s, %v, %s): %v", r.name, step, agg, err)
					}
					got, err := ag.AggregateRange(ctx, key, r.from, r.to, step, agg)
					if err != nil {
						t.Fatalf("AggregateRange(%s, %v, %s): %v", r.name, step, agg, err)
					}
					if diff := cmp.Diff(got, want, approx, cmpopts.EquateEmpty()); diff != "" {
						t.Errorf("AggregateRange(%s, %v, %s) mismatch (-got +want):\n%s", r.name, step, agg, diff)
					}
				}
			}
		}
		if _, err := ag.AggregateRange(ctx, key, Base, last, 0, store.AggAvg); !errors.Is(err, store.ErrInvalidQuery) {
			t.Errorf("AggregateRange with step 0 = %v, want store.ErrInvalidQuery", err)
		}
		if _, err := ag.AggregateRange(ctx, key, Base, last, time.Second, "median"); !errors.Is(err, store.ErrInvalidQuery) {
			t.Errorf("AggregateRange with agg median = %v, want store.ErrInvalidQuery", err)
		}
	}
	if isDs {
		for _, r := range ranges {
			for _, n := range []int{2, 3, 10, 101, 1000, 1501, 5000} {
				want, err := store.Downsample(ctx, s, key, r.from, r.to, n)
				if err != nil {
					t.Fatalf("Downsample(%s, %d): %v", r.name, n, err)
				}
				got, err := ds.DownsampleRange(ctx, key, r.from, r.to, n)
				if err != nil {
					t.Fatalf("DownsampleRange(%s, %d): %v", r.name, n, err)
				}
				if diff := cmp.Diff(got, want, cmpopts.EquateEmpty()); diff != "" {
					t.Errorf("DownsampleRange(%s, %d) mismatch (-got +want):\n%s", r.name, n, diff)
				}
			}
		}
		if _, err := ds.DownsampleRange(ctx, key, Base, last, 1); !errors.Is(err, store.ErrInvalidQuery) {
			t.Errorf("DownsampleRange to 1 point = %v, want store.ErrInvalidQuery", err)
		}
	}
}
