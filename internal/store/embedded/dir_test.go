package embedded_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/keylog"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// TestDataDirIsPrivate opens what twinline keeps in its data directory
// (the embedded store, the twin files, the key journal) in a directory
// created 0755 beforehand, under umask 0, and checks that the directory is
// 0700 and that nothing in it is open to the group or others.
// It changes the process umask, so it must not run in parallel.
func TestDataDirIsPrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	data := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	// A file an older version left readable by others.
	notesPath := filepath.Join(data, "notes.jsonl")
	if err := os.WriteFile(notesPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := embedded.PrepareDir(data); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	st, err := embedded.Open(filepath.Join(data, "tsdb"), embedded.Options{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now().UnixMilli()
	if err := st.Append(ctx, []telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: now, Value: 71}}); err != nil {
		t.Fatal(err)
	}

	notes, err := twin.OpenNoteFile(notesPath)
	if err != nil {
		t.Fatal(err)
	}
	defer notes.Close()
	if _, err := notes.Add(ctx, twin.Note{Machine: "press-07", Text: "bearing noise", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := twin.NewRegistryFile(filepath.Join(data, "registry.json")).Save(ctx, []twin.Info{{ID: "press-07"}}); err != nil {
		t.Fatal(err)
	}
	alarms := twin.NewAlarmFile(filepath.Join(data, "alarms.jsonl"))
	if err := alarms.Replay(ctx, nil); err != nil {
		t.Fatal(err)
	}
	defer alarms.Close()
	kl, _, err := keylog.Open(filepath.Join(data, "dedup-keys"), 100)
	if err != nil {
		t.Fatal(err)
	}
	defer kl.Close()

	if fi, err := os.Stat(data); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory: mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
	seen := 0
	err = filepath.WalkDir(data, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		seen++
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			rel, _ := filepath.Rel(data, path)
			t.Errorf("%s: mode %v, want no group or other permissions", rel, perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < 8 {
		t.Errorf("walked %d entries, want the store's and the twin files", seen)
	}
}
