package embedded

import (
	"context"
	"errors"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/prometheus/tsdb"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

const day = 24 * hour

// TestBackfill writes the present, then days of history 20 days back (for
// series with recent samples and for series never seen), and checks that
// every sample is stored once, before and after the head is compacted and
// the store reopened; samples beyond the retention are refused.
func TestBackfill(t *testing.T) {
	dir := t.TempDir()
	now := time.UnixMilli(base + 40*day)
	opts := Options{Now: func() time.Time { return now }} // retention 30 days, window the same
	s, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	recent := storetest.Samples("m1", "temp", now.UnixMilli()-hour, 10*time.Second, 360, func(i int) float64 { return float64(i) })
	mustAppend(t, s, recent)

	old := now.UnixMilli() - 20*day
	hist := storetest.Samples("m1", "temp", old, 10*time.Second, 3*8640, func(i int) float64 { return -float64(i) })
	fresh := storetest.Samples("m2", "temp", old, 10*time.Second, 3*8640, func(i int) float64 { return float64(i) * 0.5 })
	for i := 0; i < len(hist); i += 1000 {
		j := min(i+1000, len(hist))
		mustAppend(t, s, append(append([]telemetry.Sample(nil), hist[i:j]...), fresh[i:j]...))
	}
	// A replayed file: duplicates and conflicts are dropped, the first wins.
	replay := append([]telemetry.Sample(nil), hist[100:200]...)
	replay[0].Value = 1e9
	mustAppend(t, s, replay)

	tooOld := telemetry.Sample{Machine: "m1", Metric: "temp", Time: now.UnixMilli() - 31*day, Value: 1}
	if err := s.Append(context.Background(), []telemetry.Sample{tooOld}); !errors.Is(err, store.ErrOutOfBounds) {
		t.Errorf("Append 31 days old = %v, want ErrOutOfBounds", err)
	}

	check := func(when string) {
		t.Helper()
		got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m1", Metric: "temp"}, math.MinInt64, math.MaxInt64)
		if diff := cmp.Diff(got, storetest.Points(append(append([]telemetry.Sample(nil), hist...), recent...))); diff != "" {
			t.Errorf("m1 %s (-got +want):\n%s", when, diff)
		}
		got = storetest.SelectAll(t, s, store.SeriesKey{Machine: "m2", Metric: "temp"}, math.MinInt64, math.MaxInt64)
		if diff := cmp.Diff(got, storetest.Points(fresh)); diff != "" {
			t.Errorf("m2 %s (-got +want):\n%s", when, diff)
		}
	}
	check("in the head")
	if got := s.Stats(); got.Duplicates != 99 || got.Conflicts != 1 || got.OutOfBounds != 1 {
		t.Errorf("Stats() = %+v, want 99 duplicates, 1 conflict, 1 out of bounds", got)
	}
	// The in-order head spans an hour: only the out-of-order head is cut
	// into blocks.
	if err := s.db.CompactOOOHead(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(s.db.Blocks()) == 0 {
		t.Fatal("no blocks after compacting the out-of-order head")
	}
	check("after compaction")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, opts)
	check("after reopening")
	mustAppend(t, s, hist[5:7]) // duplicates found in blocks
	check("after duplicates on the reopened store")
}

// TestBackfillGaps backfills forward in batches over a range that holds
// some samples already: the gap the store learns after a batch ends at the
// next stored sample, which keeps its first value.
func TestBackfillGaps(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	at := func(sec int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: key.Machine, Metric: key.Metric, Time: base + sec*1000, Value: v}
	}
	mustAppend(t, s, []telemetry.Sample{at(50, 1e6), at(150, 1e6), at(151, 1e6), at(1000, 1e6)})
	var want []store.Point
	for i := int64(0); i < 200; i += 20 {
		var batch []telemetry.Sample
		for j := i; j < i+20; j++ {
			batch = append(batch, at(j, float64(j)))
		}
		mustAppend(t, s, batch)
	}
	for j := int64(0); j < 200; j++ {
		v := float64(j)
		if j == 50 || j == 150 || j == 151 {
			v = 1e6
		}
		want = append(want, store.Point{Time: base + j*1000, Value: v})
	}
	want = append(want, store.Point{Time: base + 1000*1000, Value: 1e6})
	if diff := cmp.Diff(storetest.SelectAll(t, s, key, math.MinInt64, math.MaxInt64), want); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
	if got := s.Stats().Conflicts; got != 3 {
		t.Errorf("Stats().Conflicts = %d, want 3", got)
	}
}

// TestBackfillGapConcurrentFastPath: a fast-path Append stands between its
// appends and its Commit while a checked Append of the same series runs.
// The checked Append must not learn the fast path's samples as absent (a
// gap), nor store one of them again: a sample of the fast path sent again
// with another value is then a conflict, not stored, not fresh, and the
// first value stays.
func TestBackfillGapConcurrentFastPath(t *testing.T) {
	for _, tc := range []struct {
		name string
		// checked is the Append made while the fast path waits to commit.
		checked float64 // second of the checked sample
	}{
		{"gap then retry", 5},    // a backfill; the retry follows
		{"concurrent retry", 10}, // the retry itself
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir(), Options{})
			key := store.SeriesKey{Machine: "m", Metric: "x"}
			at := func(sec float64, v float64) telemetry.Sample {
				return telemetry.Sample{Machine: key.Machine, Metric: key.Metric, Time: base + int64(sec*1000), Value: v}
			}
			mustAppend(t, s, []telemetry.Sample{at(0, 0)})

			appended, release := make(chan struct{}), make(chan struct{})
			waiting := make(chan struct{})
			var once sync.Once
			var armed atomic.Bool
			armed.Store(true)
			s.testFastCommit = func() { // the first Append's waits
				if armed.CompareAndSwap(true, false) {
					close(appended)
					<-release
				}
			}
			s.testSettleWait = func() { once.Do(func() { close(waiting) }) }

			fastDone := make(chan error, 1)
			go func() { fastDone <- s.Append(context.Background(), []telemetry.Sample{at(10, 10), at(20, 20)}) }()
			<-appended
			checkedDone := make(chan error, 1)
			go func() {
				checkedDone <- s.Append(context.Background(), []telemetry.Sample{at(tc.checked, -1)})
			}()
			// The checked Append either waits for the fast path (fixed) or
			// is done without it.
			select {
			case <-waiting:
			case err := <-checkedDone:
				checkedDone <- err
			}
			close(release)
			if err := <-fastDone; err != nil {
				t.Fatal(err)
			}
			if err := <-checkedDone; err != nil {
				t.Fatal(err)
			}

			fresh := make([]bool, 1)
			if err := s.AppendFresh(context.Background(), []telemetry.Sample{at(10, 99)}, fresh); err != nil {
				t.Fatal(err)
			}
			if fresh[0] {
				t.Error("the retry of a stored sample with another value was stored (fresh)")
			}
			want := []store.Point{{Time: base, Value: 0}, {Time: base + 10000, Value: 10}, {Time: base + 20000, Value: 20}}
			wantConflicts := uint64(2)
			if tc.checked != 10 {
				want = slices.Insert(want, 1, store.Point{Time: base + int64(tc.checked*1000), Value: -1})
				wantConflicts = 1
			}
			check := func(when string) {
				t.Helper()
				if diff := cmp.Diff(storetest.SelectAll(t, s, key, math.MinInt64, math.MaxInt64), want); diff != "" {
					t.Errorf("%s (-got +want):\n%s", when, diff)
				}
			}
			check("in the head")
			if got := s.Stats().Conflicts; got != wantConflicts {
				t.Errorf("Stats().Conflicts = %d, want %d", got, wantConflicts)
			}
			// Compaction keeps one of two stored values: it must be the first.
			if err := s.db.CompactOOOHead(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := s.db.CompactHead(tsdb.NewRangeHead(s.db.Head(), math.MinInt64, math.MaxInt64)); err != nil {
				t.Fatal(err)
			}
			check("after compaction")
		})
	}
}
