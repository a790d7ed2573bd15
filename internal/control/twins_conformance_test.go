package control_test

import (
	"testing"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/control/controltest"
)

func TestTwinFilesConformance(t *testing.T) {
	controltest.RunTwinStore(t, func(t *testing.T) (control.TwinStore, func() control.TwinStore) {
		dir := t.TempDir()
		s, err := control.OpenTwinFiles(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s, func() control.TwinStore {
			s, err := control.OpenTwinFiles(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	})
}
