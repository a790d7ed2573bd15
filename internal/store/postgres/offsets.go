package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// AppendWithOffsets stores samples and moves the stored offset of
// (c.Group, c.Topic, c.Partition) to c.Next in one transaction — the
// samples, the window aggregates merged from them, and the row of
// consumer_offsets commit together or not at all — if the stored offset is
// c.Expected (-1: none stored yet). Otherwise it stores nothing and returns
// an error wrapping store.ErrFenced. fresh (nil, or as long as samples) is
// set as by AppendFresh. Samples outside the store's bounds are reported
// with an error wrapping store.ErrOutOfBounds once the others and the offset
// are committed. The samples are never spooled: while PostgreSQL is
// unreachable it returns an error wrapping ErrUnavailable.
//
// The fence takes the partition's offset row FOR UPDATE inside the
// samples' transaction, so two consumers that both believe they own the
// partition are serialised and the second one's write is refused. (A
// retried transaction checks afresh.) A refused write is not an outage:
// the store stays ready.
func (s *Store) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error {
	err := s.appendTx(ctx, samples, fresh, func(tx pgx.Tx) error { return moveOffset(ctx, tx, c) })
	if err != nil {
		return fmt.Errorf("storing samples and offset %d of partition %d: %w", c.Next, c.Partition, err)
	}
	return nil
}

// moveOffset moves the stored offset of c from c.Expected to c.Next within
// tx, or returns an error wrapping store.ErrFenced.
func moveOffset(ctx context.Context, tx pgx.Tx, c store.OffsetCommit) error {
	var cur int64
	err := tx.QueryRow(ctx, `
		SELECT next_offset FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2 AND partition = $3
		FOR UPDATE`, c.Group, c.Topic, c.Partition).Scan(&cur)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if c.Expected != -1 {
			return fmt.Errorf("%w: no stored offset, expected %d", store.ErrFenced, c.Expected)
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (group_id, topic, partition) DO NOTHING`, c.Group, c.Topic, c.Partition, c.Next)
		if err != nil {
			return fmt.Errorf("inserting offset: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("%w: offset stored concurrently, expected none", store.ErrFenced)
		}
		return nil
	case err != nil:
		return fmt.Errorf("locking offset: %w", err)
	case cur != c.Expected:
		return fmt.Errorf("%w: stored %d, expected %d", store.ErrFenced, cur, c.Expected)
	}
	if _, err := tx.Exec(ctx, `
		UPDATE consumer_offsets SET next_offset = $4, updated_at = now()
		WHERE group_id = $1 AND topic = $2 AND partition = $3`, c.Group, c.Topic, c.Partition, c.Next); err != nil {
		return fmt.Errorf("updating offset: %w", err)
	}
	return nil
}

// Offsets returns the stored offsets of a group's partitions of topic: the
// next offset to consume, by partition.
func (s *Store) Offsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("reading stored offsets: %w", err)
	}
	defer s.life.RUnlock()
	rows, err := s.pool.Query(ctx, `
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
