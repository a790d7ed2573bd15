package twin

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// Note limits.
const (
	maxNoteText   = 4000
	maxNoteAuthor = 100
	// notesInMemory bounds the notes kept in memory per machine; the
	// journal on disk keeps every note.
	notesInMemory = 1000
)

// Note is an operator's note pinned to a machine, for the next shift.
type Note struct {
	ID      string    `json:"id"`
	Machine string    `json:"machine"`
	Text    string    `json:"text"`
	Author  string    `json:"author,omitempty"`
	Time    time.Time `json:"time"`
}

// Notes is the notes journal: an append-only JSON-lines file, fsynced per
// note (notes are rare and must not be lost), indexed in memory by machine.
type Notes struct {
	mu     sync.Mutex
	j      *journal
	byMach map[string][]Note
	seq    uint64
	now    func() time.Time
}

// OpenNotes opens (creating it if needed) the journal at path.
func OpenNotes(path string, now func() time.Time) (*Notes, error) {
	n := &Notes{byMach: map[string][]Note{}, now: now}
	j, err := openJournal(path, func(line []byte) error {
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
	return n, nil
}

func (n *Notes) index(note Note) {
	list := append(n.byMach[note.Machine], note)
	if len(list) > notesInMemory {
		list = append(list[:0:0], list[len(list)-notesInMemory:]...)
	}
	n.byMach[note.Machine] = list
}

// Add validates, stores durably and returns a new note.
func (n *Notes) Add(machine, text, author string) (Note, error) {
	var errs []error
	switch {
	case text == "":
		errs = append(errs, errors.New("text: required"))
	case utf8.RuneCountInString(text) > maxNoteText:
		errs = append(errs, fmt.Errorf("text: longer than %d characters", maxNoteText))
	}
	if utf8.RuneCountInString(author) > maxNoteAuthor {
		errs = append(errs, fmt.Errorf("author: longer than %d characters", maxNoteAuthor))
	}
	if err := errors.Join(errs...); err != nil {
		return Note{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	note := Note{ID: strconv.FormatUint(n.seq+1, 10), Machine: machine, Text: text, Author: author, Time: n.now().UTC()}
	if err := n.j.append(note); err != nil {
		return Note{}, err
	}
	if err := n.j.sync(); err != nil {
		return Note{}, err
	}
	n.seq++
	n.index(note)
	return note, nil
}

// List returns the latest notes of a machine, oldest first, at most limit.
func (n *Notes) List(machine string, limit int) []Note {
	n.mu.Lock()
	defer n.mu.Unlock()
	list := n.byMach[machine]
	if limit > 0 && len(list) > limit {
		list = list[len(list)-limit:]
	}
	return append([]Note(nil), list...)
}

// Close closes the journal.
func (n *Notes) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.j.close()
}
