// Package storetest is the conformance suite every store.Store backend must
// pass, and Memory, an in-memory reference store for tests of its consumers.
//
// A backend's test calls
//
//	storetest.Run(t, func(t *testing.T) store.Store { return openFresh(t) })
//
// The suite writes around a fixed base time in 2025 and needs the store to
// accept samples up to an hour older than the newest one of their series.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// Base is the time, in Unix ms, the suite writes around: 2025-06-01 UTC.
var Base = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).UnixMilli()

const sec = int64(time.Second / time.Millisecond)

// Run runs the conformance suite. newStore must return a new, empty store;
// Run closes it at the end of each subtest (a second Close after the
// subtest's own may return nil or an error wrapping store.ErrClosed).
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	open := func(t *testing.T) store.Store {
		t.Helper()
		s := newStore(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil && !errors.Is(err, store.ErrClosed) {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	t.Run("AppendSelect", func(t *testing.T) { testAppendSelect(t, open(t)) })
	t.Run("SelectStops", func(t *testing.T) { testSelectStops(t, open(t)) })
	t.Run("Isolation", func(t *testing.T) { testIsolation(t, open(t)) })
	t.Run("Duplicates", func(t *testing.T) { testDuplicates(t, open(t)) })
	t.Run("FirstWriteWins", func(t *testing.T) { testFirstWriteWins(t, open(t)) })
	t.Run("Fresh", func(t *testing.T) { testFresh(t, open(t)) })
	t.Run("OutOfOrder", func(t *testing.T) { testOutOfOrder(t, open(t)) })
	t.Run("Series", func(t *testing.T) { testSeries(t, open(t)) })
	t.Run("Query", func(t *testing.T) { testQuery(t, open(t)) })
	t.Run("ConcurrentAppend", func(t *testing.T) { testConcurrentAppend(t, open(t)) })
	t.Run("CanceledContext", func(t *testing.T) { testCanceledContext(t, open(t)) })
	t.Run("Closed", func(t *testing.T) { testClosed(t, open(t)) })
	t.Run("BackendQueries", func(t *testing.T) { testBackendQueries(t, open(t)) })
	t.Run("Retention", func(t *testing.T) { testRetention(t, open(t)) })
}

// Samples returns n samples of one series, one per step from start, with
// value f(i).
func Samples(machine, metric string, start int64, step time.Duration, n int, f func(i int) float64) []telemetry.Sample {
	out := make([]telemetry.Sample, n)
	for i := range out {
		out[i] = telemetry.Sample{Machine: machine, Metric: metric, Time: start + int64(i)*step.Milliseconds(), Value: f(i)}
	}
	return out
}

// Points returns the points of samples, in their order.
func Points(samples []telemetry.Sample) []store.Point {
	out := make([]store.Point, len(samples))
	for i, s := range samples {
		out[i] = store.Point{Time: s.Time, Value: s.Value}
	}
	return out
}

// SelectAll returns every point of key in [from, to], failing t on error.
func SelectAll(t testing.TB, s store.Store, key store.SeriesKey, from, to int64) []store.Point {
	t.Helper()
	got := []store.Point{}
	if err := s.Select(context.Background(), key, from, to, func(p store.Point) bool {
		got = append(got, p)
		return true
	}); err != nil {
		t.Fatalf("Select(%v, %d, %d): %v", key, from, to, err)
	}
	return got
}

func mustAppend(t *testing.T, s store.Store, samples []telemetry.Sample) {
	t.Helper()
	if err := s.Append(context.Background(), samples); err != nil {
		t.Fatalf("Append(%d samples): %v", len(samples), err)
	}
}

func testAppendSelect(t *testing.T, s store.Store) {
	samples := Samples("press-1", "temp", Base, time.Second, 100, func(i int) float64 { return float64(i) + 0.5 })
	mustAppend(t, s, samples)
	key := store.SeriesKey{Machine: "press-1", Metric: "temp"}
	all := Points(samples)

	tests := []struct {
		name     string
		from, to int64
		want     []store.Point
	}{
		{"everything", math.MinInt64, math.MaxInt64, all},
		{"exact bounds", Base, Base + 99*sec, all},
		{"inclusive inner bounds", Base + 10*sec, Base + 20*sec, all[10:21]},
		{"bounds between samples", Base + 10*sec + 1, Base + 20*sec - 1, all[11:20]},
		{"single sample", Base + 42*sec, Base + 42*sec, all[42:43]},
		{"first sample only", Base - sec, Base, all[:1]},
		{"last sample only", Base + 99*sec, Base + 200*sec, all[99:]},
		{"before data", Base - 100*sec, Base - 1, nil},
		{"after data", Base + 99*sec + 1, Base + 1000*sec, nil},
		{"between samples", Base + 1, Base + sec - 1, nil},
		{"from after to", Base + 20*sec, Base + 10*sec, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SelectAll(t, s, key, tt.from, tt.to)
			if diff := cmp.Diff(got, tt.want, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Select(%d, %d) mismatch (-got +want):\n%s", tt.from, tt.to, diff)
			}
		})
	}

	for _, key := range []store.SeriesKey{
		{Machine: "press-1", Metric: "pressure"},
		{Machine: "press-2", Metric: "temp"},
		{Machine: "press-", Metric: "temp"},
	} {
		if got := SelectAll(t, s, key, math.MinInt64, math.MaxInt64); len(got) != 0 {
			t.Errorf("Select(%v) = %d points, want none", key, len(got))
		}
	}
}

func testSelectStops(t *testing.T, s store.Store) {
	mustAppend(t, s, Samples("m", "x", Base, time.Second, 50, func(i int) float64 { return float64(i) }))
	var got []store.Point
	err := s.Select(context.Background(), store.SeriesKey{Machine: "m", Metric: "x"}, Base, Base+100*sec, func(p store.Point) bool {
		got = append(got, p)
		return len(got) < 3
	})
	if err != nil {
		t.Fatalf("Select: %v", err)
	}
	want := []store.Point{{Time: Base, Value: 0}, {Time: Base + sec, Value: 1}, {Time: Base + 2*sec, Value: 2}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Select stopping after 3 (-got +want):\n%s", diff)
	}
}

func testIsolation(t *testing.T, s store.Store) {
	// Names that are prefixes of each other or contain regexp and path
	// metacharacters must not leak into each other.
	machines := []string{"m1", "m10", "line-1/press.3", "line-1/press+3", "Ä ö"}
	metrics := []string{"temp", "temp.max", "t|emp"}
	var batch []telemetry.Sample
	for i, m := range machines {
		for j, k := range metrics {
			v := float64(100*i + 10*j)
			batch = append(batch, Samples(m, k, Base, time.Second, 5, func(n int) float64 { return v + float64(n) })...)
		}
	}
	mustAppend(t, s, batch)
	for i, m := range machines {
		for j, k := range metrics {
			v := float64(100*i + 10*j)
			want := Points(Samples(m, k, Base, time.Second, 5, func(n int) float64 { return v + float64(n) }))
			got := SelectAll(t, s, store.SeriesKey{Machine: m, Metric: k}, math.MinInt64, math.MaxInt64)
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("Select(%q, %q) mismatch (-got +want):\n%s", m, k, diff)
			}
		}
	}
}

func testDuplicates(t *testing.T, s store.Store) {
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	batch := Samples("m", "x", Base, time.Second, 20, func(i int) float64 { return float64(i * i) })
	mustAppend(t, s, batch)
	mustAppend(t, s, batch)                             // the whole batch again
	mustAppend(t, s, batch[5:6])                        // an old sample alone
	mustAppend(t, s, batch[19:])                        // the newest sample alone
	mustAppend(t, s, append(batch[:3:3], batch[:3]...)) // duplicates within one batch
	got := SelectAll(t, s, key, math.MinInt64, math.MaxInt64)
	if diff := cmp.Diff(got, Points(batch)); diff != "" {
		t.Errorf("after duplicate appends (-got +want):\n%s", diff)
	}
}

func testFirstWriteWins(t *testing.T, s store.Store) {
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	batch := Samples("m", "x", Base, time.Second, 10, func(i int) float64 { return float64(i) })
	mustAppend(t, s, batch)
	changed := func(in []telemetry.Sample) []telemetry.Sample {
		out := slices.Clone(in)
		for i := range out {
			out[i].Value += 1000
		}
		return out
	}
	mustAppend(t, s, changed(batch[9:]))  // the newest sample
	mustAppend(t, s, changed(batch[2:4])) // older samples
	// Within one batch the first occurrence wins too.
	next := Samples("m", "x", Base+10*sec, time.Second, 1, func(int) float64 { return 10 })
	mustAppend(t, s, append(next, changed(next)...))

	want := Points(append(slices.Clone(batch), next...))
	got := SelectAll(t, s, key, math.MinInt64, math.MaxInt64)
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("after conflicting appends (-got +want):\n%s", diff)
	}
}

func testOutOfOrder(t *testing.T, s store.Store) {
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	at := func(sec int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: "m", Metric: "x", Time: Base + sec*1000, Value: v}
	}
	mustAppend(t, s, []telemetry.Sample{at(10, 10), at(11, 11), at(20, 20)})
	mustAppend(t, s, []telemetry.Sample{at(5, 5)})                           // older than all
	mustAppend(t, s, []telemetry.Sample{at(15, 15), at(25, 25), at(12, 12)}) // mixed
	mustAppend(t, s, []telemetry.Sample{at(30, 30), at(29, 29), at(28, 28)}) // descending
	want := []store.Point{}
	for _, sec := range []int64{5, 10, 11, 12, 15, 20, 25, 28, 29, 30} {
		want = append(want, store.Point{Time: Base + sec*1000, Value: float64(sec)})
	}
	if diff := cmp.Diff(SelectAll(t, s, key, math.MinInt64, math.MaxInt64), want); diff != "" {
		t.Errorf("after out-of-order appends (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(SelectAll(t, s, key, Base+11*sec, Base+25*sec), want[2:7]); diff != "" {
		t.Errorf("range over out-of-order samples (-got +want):\n%s", diff)
	}
}

func testSeries(t *testing.T, s store.Store) {
	one := func(m, k string, sec int64) telemetry.Sample {
		return telemetry.Sample{Machine: m, Metric: k, Time: Base + sec*1000, Value: 1}
	}
	mustAppend(t, s, []telemetry.Sample{
		one("b", "x", 0), one("b", "x", 100),
		one("a", "y", 10), one("a", "x", 20),
		one("c", "z", 50),
	})
	keys := func(kk ...string) []store.SeriesKey {
		var out []store.SeriesKey
		for i := 0; i < len(kk); i += 2 {
			out = append(out, store.SeriesKey{Machine: kk[i], Metric: kk[i+1]})
		}
		return out
	}
	tests := []struct {
		name     string
		from, to int64
		want     []store.SeriesKey
	}{
		{"all", math.MinInt64, math.MaxInt64, keys("a", "x", "a", "y", "b", "x", "c", "z")},
		{"inclusive bounds", Base + 10*sec, Base + 20*sec, keys("a", "x", "a", "y")},
		{"gap inside a series", Base + 1, Base + 99*sec, keys("a", "x", "a", "y", "c", "z")},
		{"single instant", Base + 50*sec, Base + 50*sec, keys("c", "z")},
		{"nothing", Base + 101*sec, Base + 200*sec, nil},
		{"from after to", Base + 20*sec, Base + 10*sec, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Series(context.Background(), tt.from, tt.to)
			if err != nil {
				t.Fatalf("Series: %v", err)
			}
			slices.SortFunc(got, compareKeys)
			if diff := cmp.Diff(got, tt.want, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Series(%d, %d) mismatch (-got +want):\n%s", tt.from, tt.to, diff)
			}
		})
	}
}

func testQuery(t *testing.T, s store.Store) {
	ctx := context.Background()
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	// One hour at 1 Hz: a sawtooth 0..59 each minute, one spike and one dip.
	samples := Samples("m", "x", Base, time.Second, 3600, func(i int) float64 { return float64(i % 60) })
	samples[1234].Value = 1e6
	samples[2345].Value = -1e6
	mustAppend(t, s, samples)

	agg, err := store.Aggregate(ctx, s, key, Base, Base+3599*sec, time.Minute, store.AggMax)
	if err != nil {
		t.Fatalf("Aggregate: %v", err)
	}
	if len(agg) != 60 {
		t.Fatalf("Aggregate by minute: %d points, want 60", len(agg))
	}
	if got, want := agg[20], (store.Point{Time: Base + 20*60*sec, Value: 1e6}); got != want {
		t.Errorf("Aggregate minute 20 = %v, want %v", got, want)
	}
	if got, want := agg[0], (store.Point{Time: Base, Value: 59}); got != want {
		t.Errorf("Aggregate minute 0 = %v, want %v", got, want)
	}

	down, err := store.Downsample(ctx, s, key, Base, Base+3599*sec, 100)
	if err != nil {
		t.Fatalf("Downsample: %v", err)
	}
	if len(down) > 100 || len(down) < 50 {
		t.Errorf("Downsample to 100: %d points", len(down))
	}
	for _, p := range []store.Point{Points(samples[1234:1235])[0], Points(samples[2345:2346])[0]} {
		if !slices.Contains(down, p) {
			t.Errorf("Downsample lost the peak %v", p)
		}
	}
	if !slices.IsSortedFunc(down, func(a, b store.Point) int { return int(a.Time - b.Time) }) {
		t.Errorf("Downsample not in time order")
	}
}

func testConcurrentAppend(t *testing.T, s store.Store) {
	const (
		writers = 4
		batches = 25
		per     = 40
	)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			machine := fmt.Sprintf("m%d", w)
			for b := range batches {
				start := Base + int64(b*per)*sec
				batch := Samples(machine, "x", start, time.Second, per, func(i int) float64 { return float64(b*per + i) })
				// Every writer also writes every writers-th second of
				// one shared series, interleaved with the others.
				for i := range per / writers {
					tm := start + int64(i*writers+w)*sec
					batch = append(batch, telemetry.Sample{Machine: "shared", Metric: "x", Time: tm, Value: float64(tm)})
				}
				if err := s.Append(ctx, batch); err != nil {
					errs <- fmt.Errorf("writer %d batch %d: %w", w, b, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := range writers {
		key := store.SeriesKey{Machine: fmt.Sprintf("m%d", w), Metric: "x"}
		want := Points(Samples(key.Machine, "x", Base, time.Second, batches*per, func(i int) float64 { return float64(i) }))
		if diff := cmp.Diff(SelectAll(t, s, key, math.MinInt64, math.MaxInt64), want); diff != "" {
			t.Errorf("writer %d series (-got +want):\n%s", w, diff)
		}
	}
	want := Points(Samples("shared", "x", Base, time.Second, batches*per, func(i int) float64 { return float64(Base + int64(i)*sec) }))
	if diff := cmp.Diff(SelectAll(t, s, store.SeriesKey{Machine: "shared", Metric: "x"}, math.MinInt64, math.MaxInt64), want); diff != "" {
		t.Errorf("shared series (-got +want):\n%s", diff)
	}
}

func testCanceledContext(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	samples := Samples("m", "x", Base, time.Second, 3, func(int) float64 { return 1 })
	if err := s.Append(ctx, samples); !errors.Is(err, context.Canceled) {
		t.Errorf("Append with canceled context = %v, want context.Canceled", err)
	}
	if got := SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64); len(got) != 0 {
		t.Errorf("Append with canceled context stored %d samples", len(got))
	}
}

func testClosed(t *testing.T, s store.Store) {
	ctx := context.Background()
	samples := Samples("m", "x", Base, time.Second, 3, func(int) float64 { return 1 })
	mustAppend(t, s, samples)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Append(ctx, samples); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Append after Close = %v, want store.ErrClosed", err)
	}
	err := s.Select(ctx, store.SeriesKey{Machine: "m", Metric: "x"}, Base, Base+10*sec, func(store.Point) bool { return true })
	if !errors.Is(err, store.ErrClosed) {
		t.Errorf("Select after Close = %v, want store.ErrClosed", err)
	}
	if _, err := s.Series(ctx, Base, Base+10*sec); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Series after Close = %v, want store.ErrClosed", err)
	}
}
