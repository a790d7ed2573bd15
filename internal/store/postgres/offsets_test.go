package postgres

import (
	"errors"
	"testing"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
)

// TestOffsetConformance runs the offset-keeping suite on PostgreSQL, with
// the clock of the tests far from the suite's samples: no retention bound.
func TestOffsetConformance(t *testing.T) {
	t.Parallel()
	offsettest.Run(t, func(t *testing.T) offsettest.Store {
		return openTest(t, "", Options{Retention: -1, MaxFuture: -1})
	})
}

// TestOffsetConformancePacked is TestOffsetConformance on the packed
// layout.
func TestOffsetConformancePacked(t *testing.T) {
	t.Parallel()
	offsettest.Run(t, func(t *testing.T) offsettest.Store {
		return openTest(t, "", Options{Retention: -1, MaxFuture: -1, Layout: LayoutPacked})
	})
}

// TestFenceKeepsStoreReady: a fenced commit is the fence refusing the
// write, not a lost connection: the store stays ready.
func TestFenceKeepsStoreReady(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{Retention: -1, MaxFuture: -1})
	ctx := t.Context()
	if err := s.AppendWithOffsets(ctx, nil, nil, store.OffsetCommit{Group: "g", Topic: "t", Next: 5, Expected: 3}); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("AppendWithOffsets = %v, want ErrFenced", err)
	}
	if err := s.Ready(); err != nil {
		t.Errorf("Ready() after a fenced commit = %v, want nil", err)
	}
}
