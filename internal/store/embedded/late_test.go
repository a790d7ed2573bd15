package embedded

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"

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
	if diff := gocmp.Diff(fresh, wantFresh); diff != "" {
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
			if diff := gocmp.Diff(storetest.SelectAll(t, s, key(i), math.MinInt64, math.MaxInt64), want); diff != "" {
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

// TestOvertakingRequests appends requests in the order 8 loader
// connections deliver them (each window of 8 overtaken by later ones),
// some twice with other values: every time is stored once, by the one call
// that reports it fresh, with that call's value (the gaps the fast path
// leaves behind never hide a stored sample). Sequential calls, as one
// lane commits: concurrent calls of the same series may both report a
// sample fresh (see the note in appendFresh).
func TestOvertakingRequests(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	const series, perRequest, requests = 20, 3, 32
	order := []int{3, 0, 6, 1, 7, 2, 5, 4}
	request := func(r int, v float64) []telemetry.Sample {
		var out []telemetry.Sample
		for k := range int64(perRequest) {
			for i := range series {
				out = append(out, telemetry.Sample{Machine: fmt.Sprintf("m%02d", i), Metric: "x",
					Time: base + (int64(r)*perRequest+k)*10_000, Value: v})
			}
		}
		return out
	}
	want := map[store.SeriesKey][]store.Point{}
	n := 0
	add := func(r int) {
		n++
		samples := request(r, float64(n))
		fresh := make([]bool, len(samples))
		if err := s.AppendFresh(context.Background(), samples, fresh); err != nil {
			t.Fatalf("AppendFresh: %v", err)
		}
		for j, smp := range samples {
			if fresh[j] {
				k := store.SeriesKey{Machine: smp.Machine, Metric: smp.Metric}
				want[k] = append(want[k], store.Point{Time: smp.Time, Value: smp.Value})
			}
		}
	}
	for w := 0; w < requests; w += 8 {
		for _, o := range order {
			add(w + o)
			if o%3 == 0 { // again, another value: a conflict
				add(w + o)
			}
			if o == 5 { // an older one again, outside the gaps
				add(w + 1)
			}
		}
	}
	for k, pts := range want {
		slices.SortFunc(pts, func(a, b store.Point) int { return cmp.Compare(a.Time, b.Time) })
		if len(pts) != requests*perRequest {
			t.Errorf("%v: %d samples reported fresh, want %d (one per time)", k, len(pts), requests*perRequest)
		}
		if diff := gocmp.Diff(storetest.SelectAll(t, s, k, math.MinInt64, math.MaxInt64), pts); diff != "" {
			t.Errorf("%v: stored (-got) against reported fresh (+want):\n%s", k, diff)
		}
	}
	if len(want) != series {
		t.Errorf("%d series with fresh samples, want %d", len(want), series)
	}
	st := s.Stats()
	if want := uint64(series * perRequest * (requests / 8) * 4); st.Conflicts != want {
		t.Errorf("Stats().Conflicts = %d, want %d", st.Conflicts, want)
	}
}
