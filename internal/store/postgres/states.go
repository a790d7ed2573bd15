package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/twinline/twinline/internal/store"
)

var _ store.StateStore = (*Store)(nil)

const insertStates = `
INSERT INTO state_changes (machine, name, ts, value)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[])
ON CONFLICT (machine, name, ts) DO NOTHING`

// selectStates: the change in force at from (the latest at or before it),
// then those in (from, to]; both through the primary key.
const selectStates = `
SELECT ts, value FROM (
	(SELECT ts, value FROM state_changes
	 WHERE machine = $1 AND name = $2 AND ts <= $3 ORDER BY ts DESC LIMIT 1)
	UNION ALL
	(SELECT ts, value FROM state_changes
	 WHERE machine = $1 AND name = $2 AND ts > $3 AND ts <= $4)
) c ORDER BY ts`

// AppendStates implements store.StateStore: one statement, durable on
// return; a change at the time of a stored one of its series is dropped
// (first write wins). A time beyond the range the store keeps is clamped
// to it. Texts with a NUL byte, which PostgreSQL cannot
// store (ingest refuses them), are an error.
func (s *Store) AppendStates(ctx context.Context, changes []store.StateChange) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("appending states: %w", err)
	}
	if len(changes) == 0 {
		return nil
	}
	if err := s.acquire(); err != nil {
		return fmt.Errorf("appending states: %w", err)
	}
	defer s.life.RUnlock()
	machines := make([]string, len(changes))
	names := make([]string, len(changes))
	times := make([]time.Time, len(changes))
	values := make([]string, len(changes))
	for i, c := range changes {
		if !validName(c.Machine) || !validName(c.Name) || !validName(c.Value) {
			return fmt.Errorf("appending states: %s/%s: texts must be UTF-8 without NUL", c.Machine, c.Name)
		}
		// Beyond what timestamptz holds: clamped, as queries clamp.
		machines[i], names[i], times[i], values[i] = c.Machine, c.Name, ts(min(max(c.Time, minTime), maxTime)), c.Value
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.WriteTimeout)
	defer cancel()
	if _, err := s.pool.Exec(ctx, insertStates, machines, names, times, values); err != nil {
		return fmt.Errorf("appending states: %w", err)
	}
	return nil
}

// States implements store.StateStore.
func (s *Store) States(ctx context.Context, machine, name string, from, to int64) ([]store.StateChange, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("selecting states: %w", err)
	}
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("selecting states: %w", err)
	}
	defer s.life.RUnlock()
	from, to, ok := clampRange(from, to)
	if !ok || !validName(machine) || !validName(name) {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, selectStates, machine, name, ts(from), ts(to))
	if err != nil {
		return nil, fmt.Errorf("selecting states of %s/%s: %w", machine, name, err)
	}
	defer rows.Close()
	var out []store.StateChange
	var t time.Time
	var v string
	for rows.Next() {
		if err := rows.Scan(&t, &v); err != nil {
			return nil, fmt.Errorf("selecting states of %s/%s: %w", machine, name, err)
		}
		out = append(out, store.StateChange{Machine: machine, Name: name, Time: t.UnixMilli(), Value: v})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("selecting states of %s/%s: %w", machine, name, err)
	}
	return out, nil
}
