package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twinline/twinline/internal/twin"
)

// NoteStore keeps the operator notes in the table notes, a twin.NoteStore:
// ids come from the sequence note_ids, so every replica sharing the schema
// sees every note and no two notes share an id. Times are kept to the
// microsecond. It is safe for concurrent use.
type NoteStore struct {
	pool    *pgxpool.Pool
	notes   string // qualified names
	seq     string
	timeout time.Duration
}

var (
	_ twin.NoteStore  = (*NoteStore)(nil)
	_ twin.NoteEraser = (*NoteStore)(nil)
)

// NewNoteStore returns the notes in the tables of s.
func NewNoteStore(s *Store) *NoteStore {
	return &NoteStore{
		pool:    s.pool,
		notes:   pgx.Identifier{s.schema, "notes"}.Sanitize(),
		seq:     pgx.Identifier{s.schema, "note_ids"}.Sanitize(),
		timeout: s.opts.WriteTimeout,
	}
}

// Add implements twin.NoteStore. A text with a NUL byte, which PostgreSQL
// cannot store, is an error wrapping twin.ErrInvalid.
func (n *NoteStore) Add(ctx context.Context, note twin.Note) (twin.Note, error) {
	for _, s := range []string{note.Machine, note.Text, note.Author} {
		if !validName(s) {
			return twin.Note{}, fmt.Errorf("adding note: %w: texts must be UTF-8 without NUL", twin.ErrInvalid)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	err := n.pool.QueryRow(ctx, `INSERT INTO `+n.notes+` (id, machine, time, author, text)
		VALUES (nextval($5::regclass)::text, $1, $2, $3, $4) RETURNING id, time`,
		note.Machine, note.Time, note.Author, note.Text, n.seq).Scan(&note.ID, &note.Time)
	if err != nil {
		return twin.Note{}, fmt.Errorf("adding note: %w", err)
	}
	note.Time = note.Time.UTC()
	return note, nil
}

// List implements twin.NoteStore, through the index on (machine, time).
func (n *NoteStore) List(ctx context.Context, machine string, limit int) ([]twin.Note, error) {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	rows, err := n.pool.Query(ctx, `SELECT id, machine, text, author, time FROM (
			SELECT * FROM `+n.notes+` WHERE machine = $1
			ORDER BY time DESC, length(id) DESC, id DESC LIMIT $2
		) AS latest ORDER BY time, length(id), id`, machine, limit)
	if err != nil {
		return nil, fmt.Errorf("listing notes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (twin.Note, error) {
		var note twin.Note
		err := row.Scan(&note.ID, &note.Machine, &note.Text, &note.Author, &note.Time)
		note.Time = note.Time.UTC()
		return note, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing notes: %w", err)
	}
	return out, nil
}

// EraseAuthor implements twin.NoteEraser.
func (n *NoteStore) EraseAuthor(ctx context.Context, author, pseudonym string) (int, error) {
	if !validName(pseudonym) {
		return 0, fmt.Errorf("erasing note author: %w: texts must be UTF-8 without NUL", twin.ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	tag, err := n.pool.Exec(ctx, `UPDATE `+n.notes+` SET author = $2 WHERE author = $1`, author, pseudonym)
	if err != nil {
		return 0, fmt.Errorf("erasing note author: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Close implements twin.NoteStore; the pool belongs to the Store.
func (n *NoteStore) Close() error { return nil }
