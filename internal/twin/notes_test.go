package twin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNotesPersistAndList(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notes.jsonl")
	clk := &fakeClock{time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)}
	n, err := OpenNotes(path, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	var want []Note
	for i, text := range []string{"bearing noise", "oil changed", "watch temp"} {
		clk.t = clk.t.Add(time.Minute)
		note, err := n.Add("press-07", text, "ana")
		if err != nil {
			t.Fatal(err)
		}
		if note.ID != []string{"1", "2", "3"}[i] || !note.Time.Equal(clk.t) {
			t.Errorf("note %d = %+v", i, note)
		}
		want = append(want, note)
	}
	if _, err := n.Add("oven-01", "door seal", ""); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(n.List("press-07", 2), want[1:]); diff != "" {
		t.Errorf("List limit 2 (-got +want):\n%s", diff)
	}
	n.Close()

	// A torn line (a crash mid-write) is cut off; earlier notes stay and
	// the next note starts on a clean line.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":"5","machine":"press-07","te`)
	f.Close()
	n2, err := OpenNotes(path, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(n2.List("press-07", 0), want); diff != "" {
		t.Errorf("after reopen (-got +want):\n%s", diff)
	}
	next, err := n2.Add("press-07", "after crash", "bo")
	if err != nil || next.ID != "5" {
		t.Fatalf("Add after reopen = %+v, %v; want id 5", next, err)
	}
	n2.Close()
	n3, err := OpenNotes(path, clk.now)
	if err != nil {
		t.Fatalf("reopen after a torn line was repaired: %v", err)
	}
	defer n3.Close()
	if got := n3.List("press-07", 0); len(got) != 4 || got[3].Text != "after crash" {
		t.Errorf("notes = %+v; want the three and the one after the crash", got)
	}
}

func TestNotesValidate(t *testing.T) {
	n, err := OpenNotes(filepath.Join(t.TempDir(), "notes.jsonl"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for _, tt := range []struct{ text, author, want string }{
		{"", "x", "text: required"},
		{strings.Repeat("a", maxNoteText+1), "x", "text: longer"},
		{"ok", strings.Repeat("b", maxNoteAuthor+1), "author: longer"},
		{"a\x00b", "x", "text: must not contain a NUL byte"},
		{"a\xffb", "x", "text: is not valid UTF-8"},
		{"ok", "b\x00", "author: must not contain a NUL byte"},
	} {
		if _, err := n.Add("m", tt.text, tt.author); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Add(%.10q, %.10q) = %v, want ErrInvalid with %q", tt.text, tt.author, err, tt.want)
		}
	}
}
