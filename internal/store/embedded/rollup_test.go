package embedded

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// checkAggregates compares AggregateRange, which reads the tiers, with
// store.Aggregate over the raw samples, for every key, tier-aligned steps
// and a few others, and whole, aligned and unaligned ranges.
func checkAggregates(t *testing.T, s *Store, keys []store.SeriesKey, from, to int64, rng *rand.Rand, when string) {
	t.Helper()
	ctx := context.Background()
	ranges := [][2]int64{{math.MinInt64, math.MaxInt64}, {from, to}}
	for range 2 {
		a := from + rng.Int64N(to-from)
		ranges = append(ranges, [2]int64{a, a + rng.Int64N(to-a)})
	}
	steps := []time.Duration{time.Minute, 3 * time.Minute, time.Hour, 24 * time.Hour}
	approx := cmpopts.EquateApprox(1e-12, 1e-9)
	for _, key := range keys {
		for _, r := range ranges {
			for _, step := range steps {
				for _, agg := range []store.Agg{store.AggAvg, store.AggMin, store.AggMax, store.AggSum, store.AggCount} {
					want, err := store.Aggregate(ctx, s, key, r[0], r[1], step, agg)
					if err != nil {
						t.Fatal(err)
					}
					got, err := s.AggregateRange(ctx, key, r[0], r[1], step, agg)
					if err != nil {
						t.Fatalf("%s: AggregateRange: %v", when, err)
					}
					if samePoints(got, want, agg == store.AggAvg || agg == store.AggSum) {
						continue
					}
					opt := approx
					if agg != store.AggAvg && agg != store.AggSum {
						opt = cmpopts.EquateNaNs()
					}
					if diff := gocmp.Diff(got, want, opt, cmpopts.EquateEmpty()); diff != "" {
						t.Fatalf("%s: AggregateRange(%v, %d, %d, %v, %s) (-got +want):\n%s", when, key, r[0], r[1], step, agg, diff)
					}
				}
			}
		}
	}
}

// checkTier checks that the tier buckets alone equal the raw aggregates
// when every sample of [from, to] is rolled up.
func checkTier(t *testing.T, s *Store, keys []store.SeriesKey, from, to int64, when string) {
	t.Helper()
	ctx := context.Background()
	for _, tr := range s.roll.tiers {
		q, err := tr.db.Querier(from, to)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range keys {
			bs, err := readTier(ctx, q, key.Machine, key.Metric, from, to, tr.width)
			if err != nil {
				t.Fatal(err)
			}
			var got []store.Point
			for _, b := range bs {
				got = append(got, store.Point{Time: b.start, Value: b.n}, store.Point{Time: b.start, Value: b.sum},
					store.Point{Time: b.start, Value: b.min}, store.Point{Time: b.start, Value: b.max})
			}
			var want []store.Point
			step := time.Duration(tr.width) * time.Millisecond
			n, _ := store.Aggregate(ctx, s, key, from, to, step, store.AggCount)
			sum, _ := store.Aggregate(ctx, s, key, from, to, step, store.AggSum)
			mn, _ := store.Aggregate(ctx, s, key, from, to, step, store.AggMin)
			mx, _ := store.Aggregate(ctx, s, key, from, to, step, store.AggMax)
			for i := range n {
				want = append(want, n[i], sum[i], mn[i], mx[i])
			}
			if diff := gocmp.Diff(got, want, cmpopts.EquateApprox(1e-12, 1e-9), cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("%s: %s tier of %v (-got +want):\n%s", when, tr.name, key, diff)
			}
		}
		q.Close()
	}
}

// TestRollupsEqualRaw is the property test of the tiers: after in-order
// data, late data, a backfill of old days, duplicates and conflicts, a
// reopening and a rollup run again from scratch, the tiers (merged with
// what is not rolled up) give the aggregates of the raw samples.
func TestRollupsEqualRaw(t *testing.T) {
	for seed := range uint64(2) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 18))
			dir := t.TempDir()
			now := base + 10*day
			opts := Options{Now: func() time.Time { return time.UnixMilli(now) }, RollupEvery: time.Hour, BlockDuration: time.Hour}
			s, err := Open(dir, opts, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var keys []store.SeriesKey
			for _, m := range []string{"m1", "m2"} {
				for _, k := range []string{"temp", "rpm"} {
					keys = append(keys, store.SeriesKey{Machine: m, Metric: k})
				}
			}
			value := func() float64 {
				switch rng.IntN(10) {
				case 0:
					return 42 // repeated extremes
				case 1:
					return -42
				}
				return math.Round(rng.NormFloat64()*1000) / 8
			}
			// samples returns samples of every key over [lo, hi) at
			// irregular intervals around every, shuffled in batches.
			samples := func(lo, hi int64, every int64) []telemetry.Sample {
				var out []telemetry.Sample
				for _, k := range keys {
					for tm := lo + rng.Int64N(every); tm < hi; tm += 1 + rng.Int64N(2*every) {
						out = append(out, telemetry.Sample{Machine: k.Machine, Metric: k.Metric, Time: tm, Value: value()})
					}
				}
				return out
			}
			appendAll := func(ss []telemetry.Sample) {
				for i := 0; i < len(ss); i += 700 {
					if err := s.Append(ctx, ss[i:min(i+700, len(ss))]); err != nil {
						t.Fatal(err)
					}
				}
			}
			compact := func() {
				if err := s.db.Compact(ctx); err != nil {
					t.Fatal(err)
				}
				if err := s.db.CompactOOOHead(ctx); err != nil {
					t.Fatal(err)
				}
			}
			rollup := func() {
				if err := s.rollup(ctx); err != nil {
					t.Fatal(err)
				}
			}
			lo := now - 2*day

			// In order: two days, sorted by time across series.
			in := samples(lo, now, 20*sec)
			sortSamples(in)
			appendAll(in)
			compact()
			checkAggregates(t, s, keys, lo-day, now+hour, rng, "compacted, not rolled up")
			rollup()
			if len(s.roll.set()) == 0 {
				t.Fatal("nothing rolled up")
			}
			checkAggregates(t, s, keys, lo-day, now+hour, rng, "rolled up")

			// Late data in the last hours and a backfill five days back,
			// with duplicates and conflicts of stored samples.
			late := samples(now-3*hour, now, 7*sec)
			late = append(late, samples(now-5*day, now-5*day+6*hour, 30*sec)...)
			for range 50 {
				d := in[rng.IntN(len(in))]
				if rng.IntN(2) == 0 {
					d.Value++
				}
				late = append(late, d)
			}
			rng.Shuffle(len(late), func(i, j int) { late[i], late[j] = late[j], late[i] })
			appendAll(late)
			checkAggregates(t, s, keys, now-6*day, now+hour, rng, "late data in the head")
			compact()
			checkAggregates(t, s, keys, now-6*day, now+hour, rng, "late data in blocks, not rolled up")
			rollup()
			checkAggregates(t, s, keys, now-6*day, now+hour, rng, "late data rolled up")

			// A day of backfill eight days back, fully compacted.
			back := samples(now-8*day, now-7*day, 15*sec)
			sortSamples(back)
			appendAll(back)
			compact()
			rollup()
			checkTier(t, s, keys, now-8*day, now-7*day-1, "backfill rolled up")
			checkAggregates(t, s, keys, now-9*day, now+hour, rng, "backfill rolled up")

			// Reopened, then rolled up from scratch: same buckets, no
			// new versions.
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, opts)
			checkAggregates(t, s, keys, now-9*day, now+hour, rng, "reopened")
			written := s.roll.written.Load()
			empty := sourceSet{}
			s.roll.rolled.Store(&empty)
			rollup()
			if got := s.roll.written.Load() - written; got != 0 {
				t.Errorf("rolling up again wrote %d bucket versions, want none", got)
			}
			checkAggregates(t, s, keys, now-9*day, now+hour, rng, "rolled up again")
		})
	}
}

func sortSamples(ss []telemetry.Sample) {
	slices.SortStableFunc(ss, func(a, b telemetry.Sample) int { return cmp.Compare(a.Time, b.Time) })
}

// samePoints compares points fast (go-cmp is slow on thousands): times
// exactly, values bit for bit, or within 1e-9 relative when approx.
func samePoints(a, b []store.Point, approx bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Time != b[i].Time {
			return false
		}
		x, y := a[i].Value, b[i].Value
		if math.Float64bits(x) == math.Float64bits(y) || (math.IsNaN(x) && math.IsNaN(y)) {
			continue
		}
		if !approx || math.Abs(x-y) > 1e-9*max(math.Abs(x), math.Abs(y)) {
			return false
		}
	}
	return true
}

// TestJoinBuckets: a version that some stat series lack does not count,
// and marks its bucket torn when it is the newest.
func TestJoinBuckets(t *testing.T) {
	const w = 60_000
	full := func(tm int64, v float64) [4]store.Point {
		return [4]store.Point{{Time: tm, Value: v}, {Time: tm, Value: v}, {Time: tm, Value: v}, {Time: tm, Value: v}}
	}
	var cols [4][]store.Point
	add := func(ps [4]store.Point, skip int) {
		for k := range cols {
			if k != skip {
				cols[k] = append(cols[k], ps[k])
			}
		}
	}
	add(full(0, 1), -1)  // bucket 0: version 0
	add(full(1, 2), -1)  // bucket 0: version 1
	add(full(w, 3), -1)  // bucket 1: version 0
	add(full(w+1, 4), 0) // bucket 1: version 1, count lost
	add(full(2*w, 5), 2) // bucket 2: only version, min lost
	got := joinBuckets(cols, w)
	want := []tierBucket{
		{agg: agg{start: 0, n: 2, max: 2, min: 2, sum: 2}, version: 1},
		{agg: agg{start: w, n: 3, max: 3, min: 3, sum: 3}, version: 1, torn: true},
		{agg: agg{start: 2 * w}, version: 0, torn: true},
	}
	if diff := gocmp.Diff(got, want, gocmp.AllowUnexported(tierBucket{}, agg{})); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
}

// TestRollupCancelledPartial: a rollup cancelled after it committed some
// of a block's buckets leaves the block pending (in memory and on disk):
// reads still equal the raw samples, and a later run completes it.
func TestRollupCancelledPartial(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 18))
	dir := t.TempDir()
	now := base + 10*day
	opts := Options{Now: func() time.Time { return time.UnixMilli(now) }, RollupEvery: time.Hour, BlockDuration: time.Hour}
	s := open(t, dir, opts)
	keys := []store.SeriesKey{{Machine: "m1", Metric: "a"}, {Machine: "m1", Metric: "b"}, {Machine: "m2", Metric: "a"}}
	var in []telemetry.Sample
	for tm := now - 2*day; tm < now; tm += 60_000 {
		for i, k := range keys {
			in = append(in, telemetry.Sample{Machine: k.Machine, Metric: k.Metric, Time: tm, Value: float64(tm/60_000%97 + int64(i))})
		}
	}
	for i := 0; i < len(in); i += 1000 {
		mustAppend(t, s, in[i:min(i+1000, len(in))])
	}
	ctx := context.Background()
	if err := s.db.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if len(s.db.Blocks()) == 0 {
		t.Fatal("no blocks")
	}

	// Cancelled after its first commit (every series' buckets commit).
	cctx, cancel := context.WithCancel(ctx)
	s.roll.commitEvery = 1
	s.roll.testCommitted = cancel
	if err := s.rollup(cctx); err == nil {
		t.Fatal("cancelled rollup succeeded")
	}
	if s.roll.written.Load() == 0 {
		t.Fatal("the cancelled rollup wrote nothing")
	}
	checkAggregates(t, s, keys, now-3*day, now+hour, rng, "cancelled after a partial commit")
	if got := s.roll.unrolled.Load(); got == 0 {
		t.Error("unrolled blocks = 0 after a cancelled rollup")
	}
	b, err := os.ReadFile(filepath.Join(dir, pendingFile))
	if err != nil || !strings.Contains(string(b), `"block"`) {
		t.Fatalf("%s = %q, %v; want the block", pendingFile, b, err)
	}

	s.roll.testCommitted = nil
	if err := s.rollup(ctx); err != nil {
		t.Fatal(err)
	}
	checkAggregates(t, s, keys, now-3*day, now+hour, rng, "rolled up")
	checkTier(t, s, keys, now-2*day, now-2*hour-1, "rolled up")
	if got := s.roll.unrolled.Load(); got != 0 {
		t.Errorf("unrolled blocks = %d after a complete rollup", got)
	}
	if len(s.roll.pending) != 0 {
		t.Errorf("pending after a complete run: %v", s.roll.pending)
	}
	if b, err := os.ReadFile(filepath.Join(dir, pendingFile)); err != nil || string(b) != "[]" {
		t.Errorf("%s = %q, %v; want []", pendingFile, b, err)
	}
}
