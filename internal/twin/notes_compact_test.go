package twin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

// writeNoteHistory writes a notes journal of n notes spread round-robin
// over machines machines, as the file store writes them.
func writeNoteHistory(tb testing.TB, path string, n, machines int) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range n {
		note := Note{ID: fmt.Sprint(i + 1), Machine: fmt.Sprintf("m%04d", i%machines),
			Text: "checked the bearing, oil level fine, next look at the end of the shift", Author: "ops",
			Time: at.Add(time.Duration(i) * time.Second)}
		if err := enc.Encode(note); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkOpenNotes opens a journal that recorded 200 k notes: over
// 1000 machines (200 each, all listable) and over 20 (10 000 each, 1000
// of them listable).
func BenchmarkOpenNotes(b *testing.B) {
	for _, machines := range []int{1000, 20} {
		b.Run(fmt.Sprintf("machines=%d", machines), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "notes.jsonl")
			writeNoteHistory(b, path, 200_000, machines)
			open := func() {
				n, err := OpenNoteFile(path)
				if err != nil {
					b.Fatal(err)
				}
				if err := n.Close(); err != nil {
					b.Fatal(err)
				}
			}
			open() // a journal written before compaction existed is compacted here
			b.ReportAllocs()
			for b.Loop() {
				open()
			}
		})
	}
}

// noteState is what a restart must restore of a NoteFile: the notes
// listed, the numbering, and every note ever added (id → author) kept on
// disk exactly once.
type noteState struct {
	Listed map[string][]Note
	Seq    uint64
	All    map[string]string
}

var noteMachines = []string{"m0", "m1", "m2"}

// fataler is what the helpers need of a testing.TB or a rapid.T.
type fataler interface {
	Fatal(args ...any)
	Fatalf(format string, args ...any)
}

func noteStateOf(tb fataler, n *NoteFile, all map[string]string) noteState {
	st := noteState{Listed: map[string][]Note{}, All: all}
	for _, m := range noteMachines {
		list, err := n.List(context.Background(), m, 0)
		if err != nil {
			tb.Fatal(err)
		}
		st.Listed[m] = list
	}
	n.mu.Lock()
	st.Seq = n.seq
	n.mu.Unlock()
	return st
}

// notesOnDisk returns the id → author of every note in the journal and the
// archive, failing on a note held twice.
func notesOnDisk(tb fataler, dir string) map[string]string {
	out := map[string]string{}
	for _, name := range []string{"notes.archive.jsonl", "notes.jsonl"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			tb.Fatal(err)
		}
		for line := range bytes.Lines(b) {
			if bytes.HasPrefix(line, noteHeaderPrefix) {
				continue
			}
			var note Note
			if err := json.Unmarshal(line, &note); err != nil {
				tb.Fatalf("%s: %v", name, err)
			}
			if _, ok := out[note.ID]; ok {
				tb.Fatalf("note %s held twice", note.ID)
			}
			out[note.ID] = note.Author
		}
	}
	return out
}

// TestNoteJournalCompactionProperty: random adds and erasures with a
// journal compacted often into the archive; killed at any point (an add
// torn, or synced with its compaction cut anywhere before the journal was
// replaced; an erasure before or after its commit), reopening lists the
// notes listed after that point, gives the next id after it, and keeps
// every note on disk exactly once, erased as it was.
func TestNoteJournalCompactionProperty(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		dir := t.TempDir()
		keep := rapid.IntRange(1, 3).Draw(rt, "keep")
		compactMin := rapid.IntRange(1, 8).Draw(rt, "compact_min")
		open := func(dir string, compactMin int) *NoteFile {
			n, err := openNoteFile(filepath.Join(dir, "notes.jsonl"), keep, compactMin)
			if err != nil {
				rt.Fatalf("opening notes: %v", err)
			}
			return n
		}
		type snapshot struct {
			journal, archive []byte
			erase            bool // the change to this point was an erasure
			state            noteState
		}
		n := open(dir, compactMin)
		all := map[string]string{}
		var snaps []snapshot
		record := func(erase bool) {
			j, err := os.ReadFile(filepath.Join(dir, "notes.jsonl"))
			if err != nil {
				rt.Fatal(err)
			}
			a, _ := os.ReadFile(filepath.Join(dir, "notes.archive.jsonl"))
			snaps = append(snaps, snapshot{journal: j, archive: a, erase: erase, state: noteStateOf(rt, n, maps.Clone(all))})
		}
		record(false)
		at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		for range rapid.IntRange(1, 150).Draw(rt, "ops") {
			author := rapid.SampledFrom([]string{"ana", "bo"}).Draw(rt, "author")
			if rapid.IntRange(0, 9).Draw(rt, "op") == 0 {
				if _, err := n.EraseAuthor(context.Background(), author, "p-"+author); err != nil {
					rt.Fatal(err)
				}
				for id, a := range all {
					if a == author {
						all[id] = "p-" + author
					}
				}
				record(true)
				continue
			}
			at = at.Add(time.Second)
			note, err := n.Add(context.Background(), Note{Machine: rapid.SampledFrom(noteMachines).Draw(rt, "machine"), Text: "t", Author: author, Time: at})
			if err != nil {
				rt.Fatal(err)
			}
			all[note.ID] = author
			record(false)
		}
		if err := n.Close(); err != nil {
			rt.Fatal(err)
		}
		if diff := cmp.Diff(notesOnDisk(rt, dir), all); diff != "" {
			rt.Fatalf("notes on disk (-got +want):\n%s", diff)
		}

		// Killed anywhere, or where the next change rewrites the archive.
		var rewrites []int
		for k := range len(snaps) - 1 {
			if !bytes.Equal(snaps[k].archive, snaps[k+1].archive) {
				rewrites = append(rewrites, k)
			}
		}
		k := rapid.IntRange(0, len(snaps)-1).Draw(rt, "kill")
		if len(rewrites) > 0 && rapid.Bool().Draw(rt, "at_rewrite") {
			k = rapid.SampledFrom(rewrites).Draw(rt, "rewrite")
		}
		journal, archive, want := snaps[k].journal, snaps[k].archive, snaps[k].state
		killed := filepath.Join(dir, "killed")
		if err := os.Mkdir(killed, 0o700); err != nil {
			rt.Fatal(err)
		}
		if k+1 < len(snaps) {
			next := snaps[k+1]
			switch {
			case next.erase && !bytes.Equal(next.archive, archive):
				// The rewritten archive is written; the journal naming it
				// is written (committed) or not.
				var h struct {
					H noteHeader `json:"notes_journal"`
				}
				if err := json.Unmarshal(next.journal[:bytes.IndexByte(next.journal, '\n')], &h); err != nil {
					rt.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(killed, h.H.Replace), next.archive, 0o600); err != nil {
					rt.Fatal(err)
				}
				if rapid.Bool().Draw(rt, "committed") {
					journal, want = next.journal, next.state
				}
			case next.erase:
			default:
				// An add: its line torn, or synced and its compaction cut
				// anywhere before the journal was replaced.
				body := next.journal[:len(next.journal)-1]
				line := next.journal[bytes.LastIndexByte(body, '\n')+1:]
				if rapid.Bool().Draw(rt, "synced") {
					journal, want = append(journal[:len(journal):len(journal)], line...), next.state
					grown := next.archive[len(archive):]
					archive = append(archive[:len(archive):len(archive)], grown[:rapid.IntRange(0, len(grown)).Draw(rt, "archived")]...)
				} else {
					journal = append(journal[:len(journal):len(journal)], line[:rapid.IntRange(0, len(line)-1).Draw(rt, "torn")]...)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(killed, "notes.jsonl"), journal, 0o600); err != nil {
			rt.Fatal(err)
		}
		if archive != nil {
			if err := os.WriteFile(filepath.Join(killed, "notes.archive.jsonl"), archive, 0o600); err != nil {
				rt.Fatal(err)
			}
		}
		// Reopened without compacting, or compacting as before.
		b := open(killed, rapid.SampledFrom([]int{compactMin, 1 << 30}).Draw(rt, "reopen_compact_min"))
		got := noteStateOf(rt, b, notesOnDisk(rt, killed))
		b.Close()
		if diff := cmp.Diff(got, want); diff != "" {
			rt.Fatalf("state restored after change %d of %d (-got +want):\n%s", k, len(snaps)-1, diff)
		}
		// Left behind: nothing but the journal and the archive, and, where a
		// first compaction was cut before its journal got a header, the
		// archive moved aside as notes.archive-unreferenced-<time>.jsonl
		// (by design: opening keeps an archive no header vouches for).
		var left []string
		ents, _ := os.ReadDir(killed)
		for _, e := range ents {
			if !strings.Contains(e.Name(), "-unreferenced-") {
				left = append(left, e.Name())
			}
		}
		if len(left) > 2 {
			rt.Fatalf("files left after reopening: %v", left)
		}
	})
}
