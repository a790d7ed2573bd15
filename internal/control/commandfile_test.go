package control_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/control/controltest"
)

func openFileStore(t *testing.T, dir string) *control.FileCommandStore {
	t.Helper()
	s, err := control.OpenFileCommandStore(dir)
	if err != nil {
		t.Fatalf("OpenFileCommandStore: %v", err)
	}
	return s
}

func TestFileCommandStoreConformance(t *testing.T) {
	controltest.RunCommandStore(t, func(t *testing.T) func() control.CommandStore {
		dir := t.TempDir()
		return func() control.CommandStore { return openFileStore(t, dir) }
	})
}

var t0 = time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)

func pending(id string, sec int) control.Command {
	at := t0.Add(time.Duration(sec) * time.Second)
	return control.Command{ID: id, Machine: "m", Name: "reset", Params: map[string]any{}, State: control.StatePending,
		TimeoutMs: 60000, CreatedAt: at, UpdatedAt: at, ExpiresAt: at.Add(time.Minute),
		History: []control.Transition{{State: control.StatePending, At: at}}}
}

// A crash mid-write leaves a torn last line: it was never acknowledged,
// and opening cuts it off and goes on appending after the good lines.
func TestFileCommandStoreTornLine(t *testing.T) {
	ctx := context.Background()
	for _, torn := range []string{`{"id":"c-2","mach`, `{"id":"c-2"` + "\n"} {
		t.Run("", func(t *testing.T) {
			dir := t.TempDir()
			s := openFileStore(t, dir)
			if _, _, err := s.Create(ctx, pending("c-1", 0)); err != nil {
				t.Fatal(err)
			}
			s.Close()
			f, err := os.OpenFile(filepath.Join(dir, "commands.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(torn)
			f.Close()
			s = openFileStore(t, dir)
			if _, _, err := s.Create(ctx, pending("c-3", 1)); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s = openFileStore(t, dir)
			defer s.Close()
			got, err := s.List(ctx, "m", control.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			want := []control.Command{pending("c-3", 1), pending("c-1", 0)}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("after a torn line (-got +want):\n%s", diff)
			}
		})
	}
}

// A line that is not the last one is damage, not a crash: opening refuses
// the journal rather than lose commands silently.
func TestFileCommandStoreCorruptLine(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "commands.jsonl"), []byte("garbage\n{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := control.OpenFileCommandStore(dir); err == nil {
		t.Fatal("OpenFileCommandStore of a corrupt journal: no error")
	}
}

// Superseded lines are compacted away: the journal stays bounded by the
// commands kept, whatever the number of transitions.
func TestFileCommandStoreCompacts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := openFileStore(t, dir)
	defer s.Close()
	for i := range 300 {
		cmd := pending(string(rune('a'+i%26))+"-"+time.Duration(i).String(), i)
		if _, _, err := s.Create(ctx, cmd); err != nil {
			t.Fatal(err)
		}
		cmd.History = append(cmd.History, control.Transition{State: control.StateDelivered, At: cmd.CreatedAt})
		cmd.State = control.StateDelivered
		if err := s.Update(ctx, cmd); err != nil {
			t.Fatal(err)
		}
		cmd.History = append(cmd.History, control.Transition{State: control.StateSucceeded, At: cmd.CreatedAt})
		cmd.State = control.StateSucceeded
		if err := s.Update(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "commands.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for _, c := range b {
		if c == '\n' {
			lines++
		}
	}
	if lines > 2*300+256 {
		t.Errorf("journal has %d lines for 300 commands: not compacted", lines)
	}
	got, err := s.List(ctx, "m", control.Filter{State: control.StateSucceeded, Limit: 1000})
	if err != nil || len(got) != 300 {
		t.Errorf("List after compactions = %d commands, %v; want 300", len(got), err)
	}
}
