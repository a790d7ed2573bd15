package storetest_test

import (
	"testing"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
)

func TestMemory(t *testing.T) {
	storetest.Run(t, func(*testing.T) store.Store { return storetest.NewMemory() })
}

func TestMemoryStates(t *testing.T) {
	storetest.RunStateStore(t, func(*testing.T) store.StateStore { return &storetest.MemoryStates{} })
}
