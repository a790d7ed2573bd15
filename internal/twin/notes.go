package twin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Note limits.
const (
	maxNoteText   = 4000
	maxNoteAuthor = 100
	// notesInMemory bounds the notes kept in memory per machine by
	// NoteFile (its journal and archive on disk keep every note), and so
	// the notes List returns.
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

// Notes are the operator notes: validated, stamped with the clock and
// stored durably by a NoteStore (notes are rare and must not be lost).
type Notes struct {
	store NoteStore
	now   func() time.Time
}

// OpenNotes opens (creating it if needed) the notes journal at path: the
// embedded store, a JSON-lines file fsynced per note.
func OpenNotes(path string, now func() time.Time) (*Notes, error) {
	s, err := OpenNoteFile(path)
	if err != nil {
		return nil, err
	}
	return NewNotes(s, now), nil
}

// NewNotes returns the notes kept by s. Close closes s.
func NewNotes(s NoteStore, now func() time.Time) *Notes {
	return &Notes{store: s, now: now}
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
	if p := textProblem(text); p != "" {
		errs = append(errs, errors.New("text: "+p))
	}
	if utf8.RuneCountInString(author) > maxNoteAuthor {
		errs = append(errs, fmt.Errorf("author: longer than %d characters", maxNoteAuthor))
	}
	if p := textProblem(author); p != "" {
		errs = append(errs, errors.New("author: "+p))
	}
	if err := errors.Join(errs...); err != nil {
		return Note{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return n.store.Add(context.Background(), Note{Machine: machine, Text: text, Author: author, Time: n.now().UTC()})
}

// List returns the latest notes of a machine, oldest first, at most limit
// (at most 1000; limit ≤ 0 means 1000). A store error gives no notes: use
// ListContext to see it.
func (n *Notes) List(machine string, limit int) []Note {
	out, _ := n.ListContext(context.Background(), machine, limit)
	return out
}

// ListContext is List with a context, and the store's error.
func (n *Notes) ListContext(ctx context.Context, machine string, limit int) ([]Note, error) {
	if limit <= 0 || limit > notesInMemory {
		limit = notesInMemory
	}
	out, err := n.store.List(ctx, machine, limit)
	if err != nil {
		return nil, fmt.Errorf("listing notes of %q: %w", machine, err)
	}
	return out, nil
}

// Close closes the store.
func (n *Notes) Close() error { return n.store.Close() }

// textProblem says why s cannot be kept the same by every store, or ""
// when it can: PostgreSQL text holds neither a NUL byte nor invalid UTF-8,
// and JSON encoding would replace invalid UTF-8 in the file stores.
func textProblem(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return "must not contain a NUL byte"
	case !utf8.ValidString(s):
		return "is not valid UTF-8"
	}
	return ""
}
