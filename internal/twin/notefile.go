package twin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/twinline/twinline/internal/atomicfile"
)

// NoteFile is a NoteStore in two JSON-lines files: the journal
// (notes.jsonl), which Add appends to and fsyncs per note, and the archive
// (notes.archive.jsonl), which holds the notes no longer listable. Every
// note is kept, in one of the two, exactly once.
//
// In memory it keeps the latest notesInMemory notes of each machine, all
// that List returns. Once the journal holds more than noteCompactFactor
// times as many notes as memory keeps (and at least noteCompactMin), the
// notes memory no longer keeps move to the archive: they are appended to
// it and fsynced, then the journal is replaced atomically (atomicfile) by
// a header line and the notes memory keeps. Opening reads the journal
// only, so start time follows the listable notes, not the history.
//
// The header (the journal's first line once compacted) records the
// archive's length in bytes, which commits the notes moved: opening cuts
// off anything after it, the notes of a compaction a crash interrupted
// before its journal was replaced (they are still in the journal). It
// also records the highest note id, and, after EraseAuthor rewrote the
// archive, the name of the rewritten copy (notes.archive.jsonl.<gen>): the
// journal written with that header commits the erasure, and renaming the
// copy over the archive, then or on the next open, completes it. Copies
// no header names are leftovers of an erasure that did not commit, and
// opening removes them. A non-empty archive beside a journal without a
// header (never compacted) is moved aside, not cut, as
// notes.archive-unreferenced-<time>.jsonl.
type NoteFile struct {
	path, archive string
	// keep is the notes kept in memory per machine (notesInMemory);
	// compactMin the fewest journal lines a compaction is worth.
	keep, compactMin int

	mu         sync.Mutex
	j          *journal // nil once closed
	head       noteHeader
	headLen    int64             // bytes of the header line, 0 without one
	byMach     map[string][]Note // the latest notes of each machine, and up to keep/4 older ones
	kept       int               // notes listable: Σ min(len(byMach[m]), keep)
	seq        uint64
	nextTry    int // journal lines before compacting again after a failure
	compactErr error
}

// When a NoteFile moves notes to its archive (see NoteFile).
const (
	noteCompactFactor = 4
	noteCompactMin    = 4096
)

// noteHeader is the first line of a compacted notes journal, under the
// key notes_journal (a note line starts with its id).
type noteHeader struct {
	// Archive is the length in bytes of the archive's committed notes.
	Archive int64 `json:"archive"`
	// Seq is the highest note id given so far.
	Seq uint64 `json:"seq"`
	// Gen counts the archive's rewrites by EraseAuthor; Replace names the
	// rewritten copy of the latest (in the journal's directory), to be
	// renamed over the archive if it still exists.
	Gen     uint64 `json:"gen,omitempty"`
	Replace string `json:"replace,omitempty"`
}

var noteHeaderPrefix = []byte(`{"notes_journal":`)

var _ NoteEraser = (*NoteFile)(nil)

// OpenNoteFile opens (creating it if needed) the notes journal at path,
// and its archive beside it (path with .archive before .jsonl), repairing
// what a crash interrupted.
func OpenNoteFile(path string) (*NoteFile, error) {
	return openNoteFile(path, notesInMemory, noteCompactMin)
}

func openNoteFile(path string, keep, compactMin int) (*NoteFile, error) {
	n := &NoteFile{
		path:       path,
		archive:    strings.TrimSuffix(path, ".jsonl") + ".archive.jsonl",
		keep:       keep,
		compactMin: compactMin,
		byMach:     map[string][]Note{},
	}
	first := true
	j, err := openJournal(path, func(line []byte) error {
		isFirst := first
		first = false
		if bytes.HasPrefix(line, noteHeaderPrefix) {
			// Written atomically, never torn: an unreadable header is
			// no crash to repair.
			if !isFirst {
				return stopReplay{errors.New("a header after the first line")}
			}
			var h struct {
				H noteHeader `json:"notes_journal"`
			}
			if err := json.Unmarshal(line, &h); err != nil {
				return stopReplay{fmt.Errorf("reading the header: %w", err)}
			}
			n.head, n.headLen = h.H, int64(len(line))+1
			n.seq = max(n.seq, h.H.Seq)
			return nil
		}
		var note Note
		if err := json.Unmarshal(line, &note); err != nil {
			return err
		}
		n.index(note)
		if s, err := strconv.ParseUint(note.ID, 10, 64); err == nil {
			n.seq = max(n.seq, s)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	n.j = j
	if err := n.settle(); err != nil {
		j.close()
		return nil, fmt.Errorf("opening notes archive: %w", err)
	}
	n.compactIfDue()
	return n, nil
}

// index adds note to the notes kept in memory.
func (n *NoteFile) index(note Note) {
	list := n.byMach[note.Machine]
	if len(list) < n.keep {
		n.kept++
	}
	list = append(list, note)
	if len(list) >= n.keep+n.keep/4+1 {
		// Cut back a quarter at a time: an amortised copy per note.
		list = append(list[:0:0], list[len(list)-n.keep:]...)
	}
	n.byMach[note.Machine] = list
}

// listed returns the notes of list that List may return.
func (n *NoteFile) listed(list []Note) []Note {
	return list[max(len(list)-n.keep, 0):]
}

// Add implements NoteStore.
func (n *NoteFile) Add(_ context.Context, note Note) (Note, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.j == nil {
		return Note{}, errors.New("adding note: notes closed")
	}
	note.ID = strconv.FormatUint(n.seq+1, 10)
	if err := n.j.append(note); err != nil {
		return Note{}, err
	}
	if err := n.j.sync(); err != nil {
		return Note{}, err
	}
	n.seq++
	n.index(note)
	n.compactIfDue()
	return note, nil
}

// List implements NoteStore.
func (n *NoteFile) List(_ context.Context, machine string, limit int) ([]Note, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	list := n.listed(n.byMach[machine])
	if limit > 0 && len(list) > limit {
		list = list[len(list)-limit:]
	}
	return append([]Note(nil), list...), nil
}

// compactIfDue compacts the journal if it is due. The note that made it
// due is durable already, so a failure is no failure of Add: the journal
// stays whole, the error is kept (compactErr), and a compaction is tried
// again after another compactMin notes.
func (n *NoteFile) compactIfDue() {
	lines := n.j.lines
	if n.headLen > 0 {
		lines--
	}
	if lines < n.compactMin || lines <= noteCompactFactor*n.kept || n.j.lines < n.nextTry {
		return
	}
	if err := n.compact(); err != nil {
		n.compactErr = err
		n.nextTry = n.j.lines + n.compactMin
		return
	}
	n.compactErr = nil
}

// compact moves the notes memory no longer keeps from the journal to the
// archive (see NoteFile). On an error the journal is unchanged, and so is
// the archive up to its recorded length.
func (n *NoteFile) compact() error {
	if err := n.settle(); err != nil {
		return fmt.Errorf("compacting notes: %w", err)
	}
	keep := make(map[string]struct{}, n.kept)
	for _, list := range n.byMach {
		for _, note := range n.listed(list) {
			keep[note.ID] = struct{}{}
		}
	}
	var tail, moved bytes.Buffer
	lines := 0
	sc := bufio.NewScanner(io.NewSectionReader(n.j.f, n.headLen, n.j.size-n.headLen))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var id struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(sc.Bytes(), &id); err != nil {
			return fmt.Errorf("compacting notes: reading %s line %d: %w", n.path, line, err)
		}
		w := &moved
		if _, ok := keep[id.ID]; ok {
			w = &tail
			lines++
		}
		w.Write(sc.Bytes())
		w.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("compacting notes: reading %s: %w", n.path, err)
	}
	if moved.Len() == 0 {
		return nil
	}
	if err := writeAt(n.archive, n.head.Archive, moved.Bytes()); err != nil {
		return fmt.Errorf("compacting notes: %w", err)
	}
	head := n.head
	head.Archive += int64(moved.Len())
	head.Seq = n.seq
	head.Replace = ""
	if err := n.commit(head, tail.Bytes(), lines); err != nil {
		// The notes past the recorded length are cut off by the next
		// settle; they are still in the journal.
		return fmt.Errorf("compacting notes: %w", err)
	}
	return nil
}

// commit replaces the journal by head and tail (lines notes), atomically.
func (n *NoteFile) commit(head noteHeader, tail []byte, lines int) error {
	h, err := json.Marshal(struct {
		H noteHeader `json:"notes_journal"`
	}{head})
	if err != nil {
		return fmt.Errorf("encoding notes header: %w", err)
	}
	h = append(h, '\n')
	if err := n.j.replace(append(h, tail...), lines+1); err != nil {
		return err
	}
	n.head, n.headLen = head, int64(len(h))
	return nil
}

// settle makes the archive what the header records: it renames a
// rewritten copy the header names over the archive, removes copies it
// does not name, and cuts the archive back to its recorded length.
func (n *NoteFile) settle() error {
	dir := filepath.Dir(n.path)
	if n.head.Replace != "" {
		err := os.Rename(filepath.Join(dir, n.head.Replace), n.archive)
		switch {
		case err == nil:
			if err := syncDir(dir); err != nil {
				return err
			}
		case !errors.Is(err, fs.ErrNotExist): // renamed before
			return fmt.Errorf("replacing %s: %w", n.archive, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("listing rewritten archives: %w", err)
	}
	for _, e := range ents {
		if p := filepath.Join(dir, e.Name()); strings.HasPrefix(p, n.archive+".") {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("removing %s: %w", p, err)
			}
		}
	}
	var size int64
	fi, err := os.Stat(n.archive)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading the state of %s: %w", n.archive, err)
	default:
		size = fi.Size()
	}
	switch {
	case size < n.head.Archive:
		return fmt.Errorf("%s holds %d bytes, %d recorded: notes lost", n.archive, size, n.head.Archive)
	case size > 0 && n.headLen == 0:
		// A journal without a header never committed an archive: either
		// the first compaction was interrupted (its notes are still in
		// the journal) or the journal is not the archive's. Keep the
		// archive aside rather than cut it.
		aside := fmt.Sprintf("%s-unreferenced-%d.jsonl", strings.TrimSuffix(n.archive, ".jsonl"), fi.ModTime().UnixNano())
		if err := os.Rename(n.archive, aside); err != nil {
			return fmt.Errorf("moving %s aside: %w", n.archive, err)
		}
		return syncDir(dir)
	case size > n.head.Archive:
		f, err := os.OpenFile(n.archive, os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("opening %s: %w", n.archive, err)
		}
		err = errors.Join(f.Truncate(n.head.Archive), f.Sync(), f.Close())
		if err != nil {
			return fmt.Errorf("cutting %s back to %d bytes: %w", n.archive, n.head.Archive, err)
		}
	}
	return nil
}

// writeAt writes data at offset off of the file at path (created if
// missing, private), cuts it after and fsyncs it. A file it creates is
// made durable by the fsync of the directory that commits it.
func writeAt(path string, off int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	_, werr := f.WriteAt(data, off)
	err = errors.Join(werr, f.Truncate(off+int64(len(data))), f.Sync(), f.Close())
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// EraseAuthor implements NoteEraser: it rewrites the journal and the
// archive (see NoteFile for how a crash is repaired).
func (n *NoteFile) EraseAuthor(_ context.Context, author, pseudonym string) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.j == nil {
		return 0, errors.New("erasing note author: notes closed")
	}
	if err := n.settle(); err != nil {
		return 0, fmt.Errorf("erasing note author: %w", err)
	}
	change := func(note *Note) bool {
		if note.Author != author {
			return false
		}
		note.Author = pseudonym
		return true
	}
	var (
		archived  []byte
		inArchive int
	)
	if n.head.Archive > 0 {
		f, err := os.Open(n.archive)
		if err != nil {
			return 0, fmt.Errorf("erasing note author: %w", err)
		}
		archived, inArchive, err = rewriteLines(io.NewSectionReader(f, 0, n.head.Archive), n.archive, change)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("erasing note author: %w", err)
		}
	}
	tail, inJournal, err := rewriteLines(io.NewSectionReader(n.j.f, n.headLen, n.j.size-n.headLen), n.path, change)
	if err != nil {
		return 0, fmt.Errorf("erasing note author: %w", err)
	}
	if inArchive+inJournal == 0 {
		return 0, nil
	}
	head := n.head
	head.Seq = n.seq
	if inArchive > 0 {
		head.Gen++
		head.Replace = filepath.Base(n.archive) + "." + strconv.FormatUint(head.Gen, 10)
		head.Archive = int64(len(archived))
		if _, err := atomicfile.WriteFile(filepath.Join(filepath.Dir(n.path), head.Replace), archived, 0o600); err != nil {
			return 0, fmt.Errorf("erasing note author: %w", err)
		}
	}
	lines := n.j.lines
	if n.headLen > 0 {
		lines--
	}
	if err := n.commit(head, tail, lines); err != nil {
		return 0, fmt.Errorf("erasing note author: %w", err)
	}
	for _, list := range n.byMach {
		for i := range list {
			if list[i].Author == author {
				list[i].Author = pseudonym
			}
		}
	}
	if err := n.settle(); err != nil {
		return inArchive + inJournal, fmt.Errorf("erasing note author: committed, completed on the next open: %w", err)
	}
	return inArchive + inJournal, nil
}

// Close implements NoteStore.
func (n *NoteFile) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.j == nil {
		return nil
	}
	err := n.j.close()
	n.j = nil
	return err
}
