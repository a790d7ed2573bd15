package postgres

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twinline/twinline/internal/twin"
)

// maxPendingAlarmEntries bounds the alarm changes an AlarmLog holds while
// PostgreSQL is unreachable; past it Append fails, and Alarms undoes the
// change (a breach raises again on a later sample).
const maxPendingAlarmEntries = 100_000

// AlarmLog is the alarm journal in the table alarm_journal, a
// twin.AlarmStore; it also keeps the table alarms at the latest state of
// each alarm, for SQL users. Append queues an entry in memory, Sync writes
// the queued entries, journal and states, in one transaction; when that
// fails they stay queued, in order, and the next Sync (or Close) writes
// them. It is safe for concurrent use.
//
// New alarms take their ids from the sequence alarm_ids (NextAlarmID), so
// replicas sharing the schema never give two alarms one id.
type AlarmLog struct {
	pool    *pgxpool.Pool
	journal string // qualified names
	alarms  string
	seq     string
	timeout time.Duration

	mu      sync.Mutex
	pending []twin.AlarmEntry

	idMu sync.Mutex
	ids  []uint64 // drawn from the sequence, not yet handed out
}

var (
	_ twin.AlarmStore    = (*AlarmLog)(nil)
	_ twin.AlarmNumberer = (*AlarmLog)(nil)
	_ twin.AlarmEraser   = (*AlarmLog)(nil)
)

// alarmIDBlock is how many ids NextAlarmID draws at once: an outage taking
// many machines offline costs one query per block.
const alarmIDBlock = 16

// NewAlarmLog returns the alarm journal in the tables of s.
func NewAlarmLog(s *Store) *AlarmLog {
	return &AlarmLog{
		pool:    s.pool,
		journal: pgx.Identifier{s.schema, "alarm_journal"}.Sanitize(),
		alarms:  pgx.Identifier{s.schema, "alarms"}.Sanitize(),
		seq:     pgx.Identifier{s.schema, "alarm_ids"}.Sanitize(),
		timeout: s.opts.WriteTimeout,
	}
}

// NextAlarmID implements twin.AlarmNumberer: an id no process got before,
// above the ones this AlarmLog handed out before. Ids are drawn from the
// sequence in blocks, so the ids of two replicas interleave by block.
func (l *AlarmLog) NextAlarmID(ctx context.Context) (uint64, error) {
	l.idMu.Lock()
	defer l.idMu.Unlock()
	if len(l.ids) == 0 {
		ctx, cancel := context.WithTimeout(ctx, l.timeout)
		defer cancel()
		rows, err := l.pool.Query(ctx, `SELECT nextval($1::regclass) FROM generate_series(1, $2)`, l.seq, alarmIDBlock)
		if err != nil {
			return 0, fmt.Errorf("drawing alarm ids: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return 0, fmt.Errorf("drawing alarm ids: %w", err)
		}
		slices.Sort(ids)
		for _, id := range ids {
			l.ids = append(l.ids, uint64(id))
		}
	}
	id := l.ids[0]
	l.ids = l.ids[1:]
	return id, nil
}

// Replay implements twin.AlarmStore: every entry, in the order written.
func (l *AlarmLog) Replay(ctx context.Context, fn func(twin.AlarmEntry) error) error {
	rows, err := l.pool.Query(ctx, `SELECT op, at, by_user, alarm FROM `+l.journal+` ORDER BY seq`)
	if err != nil {
		return fmt.Errorf("replaying alarm journal: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			e   twin.AlarmEntry
			doc []byte
		)
		if err := rows.Scan(&e.Op, &e.At, &e.By, &doc); err != nil {
			return fmt.Errorf("replaying alarm journal: %w", err)
		}
		if err := json.Unmarshal(doc, &e.Alarm); err != nil {
			return fmt.Errorf("replaying alarm journal: decoding alarm: %w", err)
		}
		e.At = e.At.UTC()
		if err := fn(e); err != nil {
			return fmt.Errorf("replaying alarm journal: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("replaying alarm journal: %w", err)
	}
	return nil
}

// Append implements twin.AlarmStore. It refuses, with an error wrapping
// twin.ErrInvalid, an entry the tables cannot hold (an unknown op, kind or
// state; a text with a NUL byte).
func (l *AlarmLog) Append(_ context.Context, e twin.AlarmEntry) error {
	if err := checkAlarmEntry(e); err != nil {
		return fmt.Errorf("journaling alarm %q: %w: %w", e.Alarm.ID, twin.ErrInvalid, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) >= maxPendingAlarmEntries {
		return fmt.Errorf("journaling alarm %q: %d changes wait for PostgreSQL: %w", e.Alarm.ID, len(l.pending), ErrUnavailable)
	}
	l.pending = append(l.pending, e)
	return nil
}

func checkAlarmEntry(e twin.AlarmEntry) error {
	switch e.Op {
	case twin.OpRaise, twin.OpClear, twin.OpAck:
	default:
		return fmt.Errorf("unknown op %q", e.Op)
	}
	al := &e.Alarm
	switch al.Kind {
	case twin.AlarmHigh, twin.AlarmLow, twin.AlarmOffline:
	default:
		return fmt.Errorf("unknown kind %q", al.Kind)
	}
	switch al.State {
	case twin.AlarmActive, twin.AlarmCleared:
	default:
		return fmt.Errorf("unknown state %q", al.State)
	}
	if al.ID == "" {
		return errors.New("empty id")
	}
	for _, s := range []string{al.ID, al.Machine, al.Metric, al.AckedBy, al.AckNote, e.By} {
		if !validName(s) {
			return fmt.Errorf("text %q is not UTF-8 without NUL", s)
		}
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if bytes.Contains(b, []byte(`\u0000`)) {
		return errors.New("a text holds a NUL byte")
	}
	return nil
}

// Sync implements twin.AlarmStore.
func (l *AlarmLog) Sync(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) == 0 {
		return nil
	}
	if err := l.write(ctx, l.pending); err != nil {
		return fmt.Errorf("syncing alarm journal (%d changes pending): %w", len(l.pending), err)
	}
	if cap(l.pending) > 1024 {
		l.pending = nil
	} else {
		l.pending = l.pending[:0]
	}
	return nil
}

// write stores entries in one transaction: the journal rows in order, and
// each alarm's latest state.
func (l *AlarmLog) write(ctx context.Context, entries []twin.AlarmEntry) error {
	journal, err := json.Marshal(entries)
	if err != nil {
		return fmt.Errorf("encoding: %w", err)
	}
	// The latest state of each alarm, once (an upsert cannot change a row
	// twice), in the order of their last change.
	lastAt := make(map[string]int, len(entries))
	for i := range entries {
		lastAt[entries[i].Alarm.ID] = i
	}
	states := make([]twin.Alarm, 0, len(lastAt))
	for i := range entries {
		if lastAt[entries[i].Alarm.ID] == i {
			states = append(states, entries[i].Alarm)
		}
	}
	statesDoc, err := json.Marshal(states)
	if err != nil {
		return fmt.Errorf("encoding: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	return pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO `+l.journal+` (at, op, alarm_id, by_user, alarm)
			SELECT (e->>'at')::timestamptz, e->>'op', e->'alarm'->>'id', coalesce(e->>'by', ''), e->'alarm'
			FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS j(e, n)
			ORDER BY n`, string(journal)); err != nil {
			return fmt.Errorf("appending %d journal entries: %w", len(entries), err)
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO `+l.alarms+` AS a (id, machine, metric, kind, limit_value, value, state,
				raised_at, cleared_at, acknowledged_at, acknowledged_by, acknowledge_note)
			SELECT x.id, x.machine, coalesce(x.metric, ''), x.kind, x."limit", x.value, x.state,
				x."raisedAt", x."clearedAt", x."acknowledgedAt", coalesce(x."acknowledgedBy", ''), coalesce(x."acknowledgeNote", '')
			FROM jsonb_to_recordset($1::jsonb) AS x(id text, machine text, metric text, kind text,
				"limit" double precision, value double precision, state text, "raisedAt" timestamptz,
				"clearedAt" timestamptz, "acknowledgedAt" timestamptz, "acknowledgedBy" text, "acknowledgeNote" text)
			ON CONFLICT (id) DO UPDATE SET
				machine = EXCLUDED.machine, metric = EXCLUDED.metric, kind = EXCLUDED.kind,
				limit_value = EXCLUDED.limit_value, value = EXCLUDED.value, state = EXCLUDED.state,
				raised_at = EXCLUDED.raised_at, cleared_at = EXCLUDED.cleared_at,
				acknowledged_at = EXCLUDED.acknowledged_at, acknowledged_by = EXCLUDED.acknowledged_by,
				acknowledge_note = EXCLUDED.acknowledge_note`, string(statesDoc)); err != nil {
			return fmt.Errorf("updating %d alarm states: %w", len(states), err)
		}
		return nil
	})
}

// EraseBy implements twin.AlarmEraser: in the journal (by_user and the
// alarm's acknowledgedBy), the table alarms and the pending entries.
func (l *AlarmLog) EraseBy(ctx context.Context, name, pseudonym string) (int, error) {
	if !validName(pseudonym) {
		return 0, fmt.Errorf("erasing %q from alarm journal: %w: texts must be UTF-8 without NUL", name, twin.ErrInvalid)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	var n int64
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE `+l.journal+` SET
				by_user = CASE WHEN by_user = $1 THEN $2 ELSE by_user END,
				alarm = CASE WHEN alarm->>'acknowledgedBy' = $1
					THEN jsonb_set(alarm, '{acknowledgedBy}', to_jsonb($2::text)) ELSE alarm END
			WHERE by_user = $1 OR alarm->>'acknowledgedBy' = $1`, name, pseudonym)
		if err != nil {
			return fmt.Errorf("updating the journal: %w", err)
		}
		n = tag.RowsAffected()
		if _, err := tx.Exec(ctx, `UPDATE `+l.alarms+` SET acknowledged_by = $2 WHERE acknowledged_by = $1`, name, pseudonym); err != nil {
			return fmt.Errorf("updating alarm states: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("erasing %q from alarm journal: %w", name, err)
	}
	for i := range l.pending {
		if l.pending[i].Erase(name, pseudonym) {
			n++
		}
	}
	return int(n), nil
}

// Close implements twin.AlarmStore: it writes the pending entries. The
// pool belongs to the Store.
func (l *AlarmLog) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	return l.Sync(ctx)
}
