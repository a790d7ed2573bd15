package postgres

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestPromQLPackedTierAggs runs sum_over_time, avg_over_time and
// count_over_time over a compacted packed store and over the in-memory
// reference: when every evaluation window is whole tier buckets the
// Selects read the rollups (counted), and the answers equal the
// reference's (count exactly, sums and averages up to rounding); with a
// late head row in range they read raw samples and still agree.
func TestPromQLPackedTierAggs(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{Layout: LayoutPacked})
	samples := promSamples()
	for b := range slices.Chunk(samples, 20_000) {
		mustAppend(t, s, b)
	}
	ctx := context.Background()
	if _, err := s.Compact(ctx, afterAll); err != nil {
		t.Fatal(err)
	}
	q := s.PromQueryable()
	eng := testEngine()
	base := time.UnixMilli(storetest.Base).UTC()
	start, end := base.Add(2*time.Hour-time.Millisecond), base.Add(3*time.Hour+30*time.Minute)
	tests := []struct {
		expr     string
		start    time.Time
		step     time.Duration
		wantTier bool
	}{
		{expr: "sum_over_time(temperature[1m])", step: time.Minute, wantTier: true},
		{expr: "sum_over_time(temperature[5m])", step: time.Minute, wantTier: true},
		{expr: "sum_over_time(temperature[1h])", step: time.Hour, wantTier: true},
		{expr: "avg_over_time(temperature[1m])", step: time.Minute, wantTier: true},
		{expr: "avg by (machine) (avg_over_time(temperature[1m]))", step: time.Minute, wantTier: true},
		{expr: "avg_over_time(temperature[1h])", step: 2 * time.Hour, wantTier: true},
		{expr: "count_over_time(temperature[1m])", step: time.Minute, wantTier: true},
		{expr: "count_over_time(temperature[10m])", step: 5 * time.Minute, wantTier: true},
		{expr: "avg_over_time(temperature[5m])", step: time.Minute},                                     // an average of averages
		{expr: "avg_over_time(temperature[1m])", start: start.Add(time.Millisecond), step: time.Minute}, // Grafana's alignment
		{expr: "count_over_time(temperature[90s])", step: 3 * time.Minute},
	}
	run := func(t *testing.T, wantTier bool, expr string, start time.Time, step time.Duration, ref *refQueryable) {
		t.Helper()
		want := runProm(t, eng, ref, expr, start, end, step)
		if len(want) == 0 {
			t.Fatalf("the reference answers nothing: a useless case")
		}
		before := s.tierSelects.Load()
		got := runProm(t, eng, q, expr, start, end, step)
		opts := cmp.Options{cmpopts.EquateNaNs(), cmpopts.EquateApprox(1e-12, 0)}
		if !cmp.Equal(got, want, opts) {
			t.Errorf("(-got +want)\n%s", cmp.Diff(got, want, opts))
		}
		if read := s.tierSelects.Load() > before; read != wantTier {
			t.Errorf("rollups read = %v, want %v", read, wantTier)
		}
	}
	ref := newRefQueryable(samples)
	for _, tt := range tests {
		if tt.start.IsZero() {
			tt.start = start
		}
		t.Run(fmt.Sprintf("%s@%v@%v", tt.expr, tt.step, tt.start.Sub(start)), func(t *testing.T) {
			run(t, tt.wantTier, tt.expr, tt.start, tt.step, ref)
		})
	}
	// Under a subquery the hints look aligned (start is a millisecond
	// before a minute) while the subquery evaluates on the minute: the
	// query API marks such a query (store.WithRawSamples) and no rollup is
	// read.
	t.Run("subquery", func(t *testing.T) {
		const expr = "max_over_time(sum_over_time(temperature[1m])[1h:1m])"
		at := start.Add(time.Hour)
		want := runProm(t, eng, ref, expr, at, at, 0)
		before := s.tierSelects.Load()
		got := runPromCtx(t, store.WithRawSamples(ctx), eng, q, expr, at, at, 0)
		opts := cmp.Options{cmpopts.EquateNaNs(), cmpopts.EquateApprox(1e-12, 0)}
		if len(want) == 0 || !cmp.Equal(got, want, opts) {
			t.Errorf("(-got +want)\n%s", cmp.Diff(got, want, opts))
		}
		if s.tierSelects.Load() != before {
			t.Errorf("a query marked raw-only read the rollups")
		}
	})
	// A late sample in a compacted hour: its bucket's sum, average and
	// count points cannot merge with it, so the Selects read raw.
	late := []telemetry.Sample{{Machine: "m1", Metric: "temperature", Time: storetest.Base + 3*hourMs + 500, Value: 1000}}
	mustAppend(t, s, late)
	ref = newRefQueryable(append(slices.Clone(samples), late...))
	for _, expr := range []string{"sum_over_time(temperature[1m])", "avg_over_time(temperature[1m])", "count_over_time(temperature[1m])"} {
		t.Run("late/"+expr, func(t *testing.T) { run(t, false, expr, start, time.Minute, ref) })
	}
}
