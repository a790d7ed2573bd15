package storetest

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/store"
)

// RetentionEnforcer is a store that removes expired samples on demand
// (the PostgreSQL store drops whole daily partitions).
type RetentionEnforcer interface {
	// EnforceRetention removes the samples that retention expired at now,
	// and returns how many units (partitions, blocks) it removed.
	EnforceRetention(ctx context.Context, now time.Time) (int, error)
}

// testRetention runs on stores that implement RetentionEnforcer, with a
// retention of at least a day: enforcing it just after the data keeps
// everything; enforcing it far in the future removes everything, once; and
// the store takes and serves samples of the expired days again afterwards.
func testRetention(t *testing.T, s store.Store) {
	re, ok := s.(RetentionEnforcer)
	if !ok {
		t.Skip("the store does not implement EnforceRetention")
	}
	ctx := context.Background()
	samples := Samples("press-1", "temp", Base, time.Minute, 60, func(i int) float64 { return float64(i) })
	mustAppend(t, s, samples)
	key := store.SeriesKey{Machine: "press-1", Metric: "temp"}

	if n, err := re.EnforceRetention(ctx, time.UnixMilli(Base).Add(2*time.Hour)); err != nil || n != 0 {
		t.Errorf("EnforceRetention just after the data = %d, %v; want 0, nil", n, err)
	}
	if diff := cmp.Diff(SelectAll(t, s, key, math.MinInt64, math.MaxInt64), Points(samples), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("samples after enforcing retention just after them (-got +want):\n%s", diff)
	}

	far := time.UnixMilli(Base).AddDate(10, 0, 0)
	n, err := re.EnforceRetention(ctx, far)
	if err != nil || n == 0 {
		t.Fatalf("EnforceRetention ten years later = %d, %v; want some removed", n, err)
	}
	if got := SelectAll(t, s, key, math.MinInt64, math.MaxInt64); len(got) != 0 {
		t.Errorf("Select after retention removed everything = %d points, want none", len(got))
	}
	if keys, err := s.Series(ctx, math.MinInt64, math.MaxInt64); err != nil || len(keys) != 0 {
		t.Errorf("Series after retention removed everything = %v, %v; want none", keys, err)
	}
	if n, err := re.EnforceRetention(ctx, far); err != nil || n != 0 {
		t.Errorf("second EnforceRetention = %d, %v; want 0, nil", n, err)
	}

	// The store's own clock did not move: the same day is writable again.
	mustAppend(t, s, samples[:3])
	if diff := cmp.Diff(SelectAll(t, s, key, math.MinInt64, math.MaxInt64), Points(samples[:3])); diff != "" {
		t.Errorf("samples written after retention (-got +want):\n%s", diff)
	}
}
