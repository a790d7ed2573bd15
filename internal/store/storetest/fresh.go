package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// testFresh checks store.FreshAppender, for stores that implement it: the
// flags say exactly which samples the call stored — new in-order samples,
// late ones, not those held already (from an earlier call or earlier in the
// same call, whatever their value), not those out of bounds.
func testFresh(t *testing.T, s store.Store) {
	fa, ok := s.(store.FreshAppender)
	if !ok {
		t.Skip("the store does not report fresh samples")
	}
	ctx := context.Background()
	sm := func(machine string, dt int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: machine, Metric: "temp", Time: Base + dt*sec, Value: v}
	}
	steps := []struct {
		name    string
		samples []telemetry.Sample
		want    []bool
	}{
		{"new series", []telemetry.Sample{sm("f1", 0, 1), sm("f1", 1, 2), sm("f2", 0, 3)}, []bool{true, true, true}},
		{"in order, late, held", []telemetry.Sample{sm("f1", 2, 4), sm("f1", -5, 5), sm("f1", 1, 99), sm("f2", 0, 3)}, []bool{true, true, false, false}},
		{"twice in one call", []telemetry.Sample{sm("f3", 0, 1), sm("f3", 0, 2), sm("f1", -6, 1), sm("f1", -6, 1)}, []bool{true, false, true, false}},
	}
	for _, st := range steps {
		fresh := make([]bool, len(st.samples))
		if err := fa.AppendFresh(ctx, st.samples, fresh); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if diff := cmp.Diff(fresh, st.want); diff != "" {
			t.Errorf("%s: fresh flags (-got +want):\n%s", st.name, diff)
		}
	}
	if diff := cmp.Diff(SelectAll(t, s, store.SeriesKey{Machine: "f1", Metric: "temp"}, Base-time.Hour.Milliseconds(), Base+time.Hour.Milliseconds()),
		[]store.Point{{Time: Base - 6*sec, Value: 1}, {Time: Base - 5*sec, Value: 5}, {Time: Base, Value: 1}, {Time: Base + sec, Value: 2}, {Time: Base + 2*sec, Value: 4}}); diff != "" {
		t.Errorf("stored f1 (-got +want):\n%s", diff)
	}

	// Too far in the future for any store: refused, not fresh; the rest is.
	far := telemetry.Sample{Machine: "f4", Metric: "temp", Time: time.Now().Add(100 * 365 * 24 * time.Hour).UnixMilli(), Value: 1}
	fresh := make([]bool, 2)
	err := fa.AppendFresh(ctx, []telemetry.Sample{far, sm("f4", 0, 1)}, fresh)
	if err != nil && !errors.Is(err, store.ErrOutOfBounds) {
		t.Fatalf("a sample a century ahead: %v, want nil or ErrOutOfBounds", err)
	}
	if err != nil && fresh[0] {
		t.Error("a refused sample is flagged fresh")
	}
	if !fresh[1] {
		t.Error("the valid sample next to a refused one is not flagged fresh")
	}
}
