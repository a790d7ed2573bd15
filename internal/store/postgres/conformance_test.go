package postgres

import (
	"testing"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, "", Options{}) })
}

func TestConformancePacked(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t, "", Options{Layout: LayoutPacked}) })
}

func TestStateStoreConformance(t *testing.T) {
	t.Parallel()
	storetest.RunStateStore(t, func(t *testing.T) store.StateStore { return openTest(t, "", Options{}) })
}
