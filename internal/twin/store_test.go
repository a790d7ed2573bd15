package twin_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/twin"
	"github.com/twinline/twinline/internal/twin/twintest"
)

func TestRegistryFileConformance(t *testing.T) {
	twintest.RunRegistry(t, func(t *testing.T) func() twin.RegistryStore {
		path := filepath.Join(t.TempDir(), "registry.json")
		return func() twin.RegistryStore { return twin.NewRegistryFile(path) }
	})
}

func TestAlarmFileConformance(t *testing.T) {
	twintest.RunAlarmStore(t, func(t *testing.T) func() twin.AlarmStore {
		path := filepath.Join(t.TempDir(), "alarms.jsonl")
		return func() twin.AlarmStore { return twin.NewAlarmFile(path) }
	})
}

func TestNoteFileConformance(t *testing.T) {
	twintest.RunNoteStore(t, func(t *testing.T) func() twin.NoteStore {
		path := filepath.Join(t.TempDir(), "notes.jsonl")
		return func() twin.NoteStore {
			s, err := twin.OpenNoteFile(path)
			if err != nil {
				t.Fatalf("OpenNoteFile: %v", err)
			}
			return s
		}
	})
}

// TestAlarmFileTornLine: a torn last line (a crash mid-write) is cut off,
// the entries before it replay, and the next entry starts on a clean line.
func TestAlarmFileTornLine(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "alarms.jsonl")
	s := twin.NewAlarmFile(path)
	if err := s.Replay(ctx, func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatal(err)
	}
	first := twin.AlarmEntry{Op: twin.OpRaise, Alarm: twin.Alarm{ID: "1", Machine: "m", Kind: twin.AlarmOffline, State: twin.AlarmActive}}
	if err := s.Append(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"op":"clear","alarm":{"id":"1","mach`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	replay := func() []twin.AlarmEntry {
		t.Helper()
		s := twin.NewAlarmFile(path)
		var got []twin.AlarmEntry
		if err := s.Replay(ctx, func(e twin.AlarmEntry) error { got = append(got, e); return nil }); err != nil {
			t.Fatalf("Replay: %v", err)
		}
		next := twin.AlarmEntry{Op: twin.OpRaise, Alarm: twin.Alarm{ID: "2", Machine: "m", Kind: twin.AlarmOffline, State: twin.AlarmActive}}
		if len(got) == 1 {
			if err := s.Append(ctx, next); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if diff := cmp.Diff(replay(), []twin.AlarmEntry{first}); diff != "" {
		t.Errorf("replay of a torn journal (-got +want):\n%s", diff)
	}
	if got := replay(); len(got) != 2 || got[1].Alarm.ID != "2" {
		t.Errorf("replay after the repair = %+v; want entries 1 and 2", got)
	}
}

// TestAlarmFileCorruptLine: an unreadable line that is not the last one is
// an error, not silently dropped.
func TestAlarmFileCorruptLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alarms.jsonl")
	if err := os.WriteFile(path, []byte("{not json\n{\"op\":\"raise\",\"alarm\":{\"id\":\"1\"}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := twin.OpenAlarms(path, 0); err == nil {
		t.Error("OpenAlarms of a journal with a corrupt middle line: no error")
	}
}

// flakyRegistry is a RegistryStore whose Save fails while fail is set.
type flakyRegistry struct {
	mu    sync.Mutex
	fail  bool
	saved []twin.Info
}

func (r *flakyRegistry) Load(context.Context) ([]twin.Info, error) { return nil, nil }

func (r *flakyRegistry) Save(_ context.Context, all []twin.Info) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("disk on fire")
	}
	r.saved = all
	return nil
}

func (r *flakyRegistry) setFail(v bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = v
}

// TestRegistryKeepsMemoryAndStoreInStep: a registry write the store refuses is
// undone; auto-registered machines a failed Flush could not persist are
// persisted by the next one.
func TestRegistryKeepsMemoryAndStoreInStep(t *testing.T) {
	reg := &flakyRegistry{fail: true}
	now := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	tw, err := twin.OpenRegistry(context.Background(), reg, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tw.Put("press-07", twin.Info{Name: "Press 7"}); err == nil {
		t.Fatal("Put with a failing store: no error")
	}
	if _, err := tw.Get("press-07"); !errors.Is(err, twin.ErrNotFound) {
		t.Errorf("Get after a failed Put = %v, want ErrNotFound (undone)", err)
	}
	tw.AutoRegister("auto-1", now)
	if err := tw.Flush(); err == nil {
		t.Fatal("Flush with a failing store: no error")
	}
	reg.setFail(false)
	if err := tw.Flush(); err != nil {
		t.Fatalf("Flush after the store recovered: %v", err)
	}
	if len(reg.saved) != 1 || reg.saved[0].ID != "auto-1" {
		t.Errorf("saved = %+v, want auto-1", reg.saved)
	}
}

func TestOpenRegistryReportsLoadErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.json")
	if err := os.WriteFile(path, []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := twin.OpenRegistryFile(path, time.Now, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("Open of a corrupt registry: no error")
	}
}
