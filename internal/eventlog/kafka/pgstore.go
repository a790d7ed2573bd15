package kafka

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/telemetry"
)

// PGStore is the TxStore on the PostgreSQL store: the samples (and their
// window aggregates, which the store merges in the same transaction) and
// the row of consumer_offsets commit together, or not at all.
type PGStore struct {
	st *postgres.Store
}

// NewPGStore returns the TxStore of st.
func NewPGStore(st *postgres.Store) *PGStore { return &PGStore{st: st} }

// AppendWithOffsets implements TxStore. The fence takes the partition's
// offsets row FOR UPDATE inside the samples' transaction, so two
// processors that both believe they own the partition are serialised and
// the second one's commit is refused. (The store may run the callback more
// than once, when it retries its transaction; each run checks afresh.)
func (s *PGStore) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, group, topic string, partition int32, next, expected int64) error {
	err := s.st.AppendTx(ctx, samples, func(tx pgx.Tx) error {
		var cur int64
		err := tx.QueryRow(ctx, `
			SELECT next_offset FROM consumer_offsets
			WHERE group_id = $1 AND topic = $2 AND partition = $3
			FOR UPDATE`, group, topic, partition).Scan(&cur)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if expected != -1 {
				return fenced(fmt.Sprintf("no stored offset, expected %d", expected))
			}
			tag, err := tx.Exec(ctx, `
				INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
				VALUES ($1, $2, $3, $4)
				ON CONFLICT (group_id, topic, partition) DO NOTHING`, group, topic, partition, next)
			if err != nil {
				return fmt.Errorf("inserting offset: %w", err)
			}
			if tag.RowsAffected() != 1 {
				return fenced("offset stored concurrently, expected none")
			}
			return nil
		case err != nil:
			return fmt.Errorf("locking offset: %w", err)
		case cur != expected:
			return fenced(fmt.Sprintf("stored %d, expected %d", cur, expected))
		}
		if _, err := tx.Exec(ctx, `
			UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
			WHERE group_id = $1 AND topic = $2 AND partition = $3`, group, topic, partition, next); err != nil {
			return fmt.Errorf("updating offset: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("storing samples and offset %d of partition %d: %w", next, partition, err)
	}
	return nil
}

// Offsets implements TxStore.
func (s *PGStore) Offsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
	rows, err := s.st.Pool().Query(ctx, `
		SELECT partition, next_offset FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2`, group, topic)
	if err != nil {
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	out := map[int32]int64{}
	var p int32
	var off int64
	_, err = pgx.ForEachRow(rows, []any{&p, &off}, func() error {
		out[p] = off
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	return out, nil
}

// fenced returns an error wrapping ErrFenced and a *pgconn.PgError with
// SQLSTATE P0001 (raise_exception). The PgError is there for the store: it
// takes any error that is not a PgError for a lost connection (and would
// mark the database unreachable), and it neither retries nor spools on a
// P0001.
func fenced(detail string) error {
	return fmt.Errorf("%w: %w", ErrFenced, &pgconn.PgError{Severity: "ERROR", Code: "P0001", Message: "kafka offset fence: " + detail})
}
