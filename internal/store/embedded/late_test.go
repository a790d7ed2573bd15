package embedded

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestLateRequestOverManySeries appends a request that arrives after a
// later one, over more series than one checked commit takes
// (checkedCommitSeries): late samples are stored (out of order), those at
// a stored time keep the first value, fresh reports exactly the stored
// ones, and all of it survives a reopen (WAL and WBL replay).
func TestLateRequestOverManySeries(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	const n = 2*checkedCommitSeries + 50
	key := func(i int) store.SeriesKey { return store.SeriesKey{Machine: fmt.Sprintf("m%04d", i), Metric: "x"} }
	smp := func(i int, sec int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: key(i).Machine, Metric: "x", Time: base + sec*1000, Value: v}
	}
	ctx := context.Background()
	// The later request first: times 10 and 20.
	var later []telemetry.Sample
	for i := range n {
		later = append(later, smp(i, 10, 1e6), smp(i, 20, 1e6))
	}
	mustAppend(t, s, later)
	// The late one: times 0..9 and, for every third series, 10 again
	// (a conflict for every sixth, a duplicate otherwise).
	var late []telemetry.Sample
	var wantFresh []bool
	for i := range n {
		for sec := range int64(10) {
			late = append(late, smp(i, sec, float64(i)+float64(sec)/10))
			wantFresh = append(wantFresh, true)
		}
		if i%3 == 0 {
			v := 1e6
			if i%6 == 0 {
				v = -1
			}
			late = append(late, smp(i, 10, v))
			wantFresh = append(wantFresh, false)
		}
	}
	fresh := make([]bool, len(late))
	if err := s.AppendFresh(ctx, late, fresh); err != nil {
		t.Fatalf("AppendFresh: %v", err)
	}
	if diff := cmp.Diff(fresh, wantFresh); diff != "" {
		t.Errorf("fresh (-got +want):\n%s", diff)
	}
	st := s.Stats()
	if want := uint64((n + 5) / 6); st.Conflicts != want {
		t.Errorf("Stats().Conflicts = %d, want %d", st.Conflicts, want)
	}
	if want := uint64((n+2)/3 - (n+5)/6); st.Duplicates != want {
		t.Errorf("Stats().Duplicates = %d, want %d", st.Duplicates, want)
	}
	check := func(s *Store, when string) {
		t.Helper()
		for _, i := range []int{0, 1, checkedCommitSeries - 1, checkedCommitSeries, checkedCommitSeries + 1, 2 * checkedCommitSeries, n - 1} {
			var want []store.Point
			for sec := range int64(10) {
				want = append(want, store.Point{Time: base + sec*1000, Value: float64(i) + float64(sec)/10})
			}
			want = append(want, store.Point{Time: base + 10_000, Value: 1e6}, store.Point{Time: base + 20_000, Value: 1e6})
			if diff := cmp.Diff(storetest.SelectAll(t, s, key(i), math.MinInt64, math.MaxInt64), want); diff != "" {
				t.Errorf("%s: series %d (-got +want):\n%s", when, i, diff)
			}
		}
	}
	check(s, "stored")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	check(open(t, dir, Options{}), "reopened")
}
