package embedded

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
)

func TestStateStoreConformance(t *testing.T) {
	storetest.RunStateStore(t, func(t *testing.T) store.StateStore {
		s, err := Open(t.TempDir(), Options{}, nil, nil)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestStatesReopen: changes survive a reopen; a torn last line (the
// process died while appending) is cut off, and appending goes on after
// it; changes older than the retention go, but for the one in force.
func TestStatesReopen(t *testing.T) {
	dir := t.TempDir()
	day := int64(24 * time.Hour / time.Millisecond)
	ch := func(ts int64, v string) store.StateChange {
		return store.StateChange{Machine: "m", Name: "state", Time: ts, Value: v}
	}
	cs := []store.StateChange{ch(base, "A"), ch(base+day, "B"), ch(base+2*day, "C"), ch(base+10*day, "D")}
	s, err := Open(dir, Options{Retention: 5 * 24 * time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AppendStates(context.Background(), cs); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, stateFileName), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"machine":"m","name":"state","t":`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s, err = Open(dir, Options{Retention: 5 * 24 * time.Hour}, nil, nil)
	if err != nil {
		t.Fatalf("reopening after a torn line: %v", err)
	}
	e := ch(base+11*day, "E")
	if err := s.AppendStates(context.Background(), []store.StateChange{e}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(dir, Options{Retention: 5 * 24 * time.Hour}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.States(context.Background(), "m", "state", 0, base+20*day)
	if err != nil {
		t.Fatal(err)
	}
	// The cutoff is 5 days before D: C is in force there, A and B go.
	if diff := cmp.Diff(got, []store.StateChange{cs[2], cs[3], e}); diff != "" {
		t.Errorf("after reopening (-got +want):\n%s", diff)
	}
}
