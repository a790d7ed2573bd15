package postgres

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestAggregatesMatchRawProperty appends random batches, replays of earlier
// batches (as they were, or with other values), late samples across a day
// boundary and concurrent overlapping batches, and checks after each run
// that the raw rows are what a first-write-wins oracle holds and that the
// stored aggregates equal the aggregates of the raw rows.
func TestAggregatesMatchRawProperty(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	var iter atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		prefix := fmt.Sprintf("it%d-", iter.Add(1))
		// Times within ±40 s of midnight: a few windows on both sides of a
		// partition boundary.
		w := newPropWorld(s, prefix, 40_000, 250, 25)
		oracle, batchGen, keyed, apply := w.oracle, w.batch, keyedValues, w.apply
		ctx := context.Background()
		steps := rapid.IntRange(1, 6).Draw(rt, "steps")
		for range steps {
			switch op := rapid.IntRange(0, 3).Draw(rt, "op"); {
			case op == 0 || len(w.history) == 0:
				apply(rt, batchGen("new").Draw(rt, "batch"))
			case op == 1: // replay an earlier batch as it was
				apply(rt, w.history[rapid.IntRange(0, len(w.history)-1).Draw(rt, "replay")])
			case op == 2: // replay with other values, plus late samples
				old := w.history[rapid.IntRange(0, len(w.history)-1).Draw(rt, "replay")]
				b := append([]telemetry.Sample(nil), old...)
				for i := range b {
					b[i].Value += 1000
				}
				apply(rt, append(b, batchGen("late").Draw(rt, "late")...))
			default: // two overlapping batches at once
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
				// Values are keyed: the order of the oracle's writes does
				// not matter, unless an earlier batch wrote the key.
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
					rt.Fatalf("raw rows of %v differ from the oracle (-got +want):\n%s", key, diff)
				}
			}
		}
		checkAggregates(rt, s, prefix)
	})
}

func selectAll(t tb, s store.Store, key store.SeriesKey) []store.Point {
	t.Helper()
	got := []store.Point{}
	if err := s.Select(context.Background(), key, math.MinInt64, math.MaxInt64, func(p store.Point) bool {
		got = append(got, p)
		return true
	}); err != nil {
		t.Fatalf("Select(%v): %v", key, err)
	}
	return got
}

// TestBackendQueriesProperty compares DownsampleRange and AggregateRange
// with the generic helpers over random series, ranges, point counts and
// steps: bucket boundaries land anywhere relative to the windows.
func TestBackendQueriesProperty(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	var iter atomic.Int64
	rapid.Check(t, func(rt *rapid.T) {
		ctx := context.Background()
		key := store.SeriesKey{Machine: fmt.Sprintf("q%d", iter.Add(1)), Metric: "x"}
		n := rapid.IntRange(0, 400).Draw(rt, "samples")
		var batch []telemetry.Sample
		tm := storetest.Base + rapid.Int64Range(0, 20_000).Draw(rt, "start")
		for i := range n {
			tm += rapid.Int64Range(1, 4_000).Draw(rt, "gap")
			batch = append(batch, telemetry.Sample{Machine: key.Machine, Metric: key.Metric, Time: tm,
				Value: float64(rapid.IntRange(-5, 5).Draw(rt, fmt.Sprintf("v%d", i)))}) // many ties
		}
		if err := s.Append(ctx, batch); err != nil {
			rt.Fatalf("Append: %v", err)
		}
		from := storetest.Base + rapid.Int64Range(-5_000, 200_000).Draw(rt, "from")
		to := from + rapid.Int64Range(0, 1_000_000).Draw(rt, "len")
		points := rapid.IntRange(2, 300).Draw(rt, "points")
		want, err := store.Downsample(ctx, s, key, from, to, points)
		if err != nil {
			rt.Fatal(err)
		}
		got, err := s.DownsampleRange(ctx, key, from, to, points)
		if err != nil {
			rt.Fatal(err)
		}
		if diff := cmp.Diff(got, want); diff != "" {
			rt.Fatalf("DownsampleRange(%d, %d, %d) (-got +want):\n%s", from, to, points, diff)
		}
		step := time.Duration(rapid.SampledFrom([]int64{1, 999, 5_000, 10_000, 20_000, 30_000, 60_000, 70_000}).Draw(rt, "step")) * time.Millisecond
		agg := rapid.SampledFrom([]store.Agg{store.AggAvg, store.AggMin, store.AggMax, store.AggSum, store.AggCount}).Draw(rt, "agg")
		wantA, err := store.Aggregate(ctx, s, key, from, to, step, agg)
		if err != nil {
			rt.Fatal(err)
		}
		gotA, err := s.AggregateRange(ctx, key, from, to, step, agg)
		if err != nil {
			rt.Fatal(err)
		}
		if diff := cmp.Diff(gotA, wantA, cmpopts.EquateApprox(1e-12, 1e-9)); diff != "" {
			rt.Fatalf("AggregateRange(%d, %d, %v, %s) (-got +want):\n%s", from, to, step, agg, diff)
		}
	})
}

func selectAt(t tb, s store.Store, key store.SeriesKey, at int64) []store.Point {
	t.Helper()
	var got []store.Point
	if err := s.Select(context.Background(), key, at, at, func(p store.Point) bool {
		got = append(got, p)
		return true
	}); err != nil {
		t.Fatalf("Select(%v): %v", key, err)
	}
	return got
}

// propWorld is what the property tests of the store share: two machines
// and two metrics of one rapid iteration (named after prefix), random
// batches of their samples within ±spread ms of storetest.Base (times
// multiples of quantum, at most maxLen a batch), an in-memory oracle and
// the batches applied so far.
type propWorld struct {
	s                 *Store
	machines, metrics []string
	spread, quantum   int64
	maxLen            int
	oracle            *storetest.Memory
	history           [][]telemetry.Sample
}

func newPropWorld(s *Store, prefix string, spread, quantum int64, maxLen int) *propWorld {
	return &propWorld{
		s: s, machines: []string{prefix + "a", prefix + "b"}, metrics: []string{"x", "y"},
		spread: spread, quantum: quantum, maxLen: maxLen, oracle: storetest.NewMemory(),
	}
}

func (w *propWorld) sample(rt *rapid.T, label string) telemetry.Sample {
	return telemetry.Sample{
		Machine: rapid.SampledFrom(w.machines).Draw(rt, label+"_machine"),
		Metric:  rapid.SampledFrom(w.metrics).Draw(rt, label+"_metric"),
		Time:    storetest.Base + rapid.Int64Range(-w.spread, w.spread).Draw(rt, label+"_time")/w.quantum*w.quantum,
		Value:   float64(rapid.IntRange(-100, 100).Draw(rt, label+"_value")),
	}
}

func (w *propWorld) batch(label string) *rapid.Generator[[]telemetry.Sample] {
	return rapid.Custom(func(rt *rapid.T) []telemetry.Sample {
		n := rapid.IntRange(0, w.maxLen).Draw(rt, label+"_len")
		out := make([]telemetry.Sample, n)
		for i := range out {
			out[i] = w.sample(rt, label)
		}
		return out
	})
}

// keyedValues gives each sample a value that depends only on its key, so
// that concurrent writers of one key agree whichever wins.
func keyedValues(b []telemetry.Sample) []telemetry.Sample {
	out := make([]telemetry.Sample, len(b))
	for i, x := range b {
		x.Value = float64(x.Time%997) + float64(len(x.Machine)+len(x.Metric))
		out[i] = x
	}
	return out
}

// apply appends b to the store, checks the fresh flags (not held before,
// first in the batch) and applies it to the oracle.
func (w *propWorld) apply(rt *rapid.T, b []telemetry.Sample) {
	want := make([]bool, len(b))
	seen := map[telemetry.Sample]bool{}
	for i, x := range b {
		k := telemetry.Sample{Machine: x.Machine, Metric: x.Metric, Time: x.Time}
		held := len(selectAt(rt, w.oracle, store.SeriesKey{Machine: x.Machine, Metric: x.Metric}, x.Time)) > 0
		want[i] = !held && !seen[k]
		seen[k] = true
	}
	fresh := make([]bool, len(b))
	if err := w.s.AppendFresh(context.Background(), b, fresh); err != nil {
		rt.Fatalf("AppendFresh: %v", err)
	}
	if diff := cmp.Diff(fresh, want); diff != "" {
		rt.Fatalf("fresh flags (-got +want):\n%s", diff)
	}
	_ = w.oracle.Append(context.Background(), b)
	w.history = append(w.history, b)
}
