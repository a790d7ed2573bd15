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

func TestStateStoreConformance(t *testing.T) {
	t.Parallel()
	storetest.RunStateStore(t, func(t *testing.T) store.StateStore { return openTest(t, "", Options{}) })
}
