package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twinline/twinline/internal/alerting"
)

// alarmOutboxRetention is how long settled deliveries stay, for the
// delivery state of the alarms API.
const alarmOutboxRetention = 7 * 24 * time.Hour

// pruneEvery is how many settlements pass between two prunes.
const pruneEvery = 256

// AlarmOutbox is the alarm webhook's outbox in the table alarm_outbox, an
// alerting.Outbox shared by the replicas: a row is claimed with FOR UPDATE
// SKIP LOCKED and leased, so no two replicas post it at once, and only
// the oldest undelivered row of an alarm is due (the rows behind it wait
// at next_at = infinity until it is settled), so an alarm's changes go out
// in order whichever replica posts them, and a claim reads due rows only.
type AlarmOutbox struct {
	pool    *pgxpool.Pool
	table   string
	lockKey string // the advisory lock namespace of the table's alarms
	timeout time.Duration
	settled atomic.Int64
}

var _ alerting.Outbox = (*AlarmOutbox)(nil)

// NewAlarmOutbox returns the outbox in the tables of s.
func NewAlarmOutbox(s *Store) *AlarmOutbox {
	t := pgx.Identifier{s.schema, "alarm_outbox"}.Sanitize()
	return &AlarmOutbox{pool: s.pool, table: t, lockKey: t, timeout: s.opts.WriteTimeout}
}

// undelivered is the SQL condition of a row still to deliver.
const undelivered = `state IN ('pending', 'retrying')`

// Enqueue implements alerting.Outbox: one transaction; a delivery id
// already there is skipped. The rows come in waiting (next_at infinity),
// then the oldest undelivered row of each of their alarms is made due
// if it waits: a change behind another of its alarm waits until that one
// is settled.
func (o *AlarmOutbox) Enqueue(ctx context.Context, msgs []alerting.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	doc, err := json.Marshal(msgs)
	if err != nil {
		return fmt.Errorf("enqueuing alarm deliveries: encoding: %w", err)
	}
	var alarms []string
	seen := map[string]bool{}
	for _, m := range msgs {
		if !seen[m.Alarm] {
			alarms = append(alarms, m.Alarm)
		}
		seen[m.Alarm] = true
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
		if err := o.lockAlarms(ctx, tx, alarms); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO `+o.table+` (delivery_id, alarm_id, body, created_at, next_at)
			SELECT m->>'id', m->>'alarm', m->>'body', (m->>'created')::timestamptz, 'infinity'
			FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS j(m, n)
			ORDER BY n
			ON CONFLICT (delivery_id) DO NOTHING`, string(doc)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			UPDATE `+o.table+` SET next_at = created_at
			WHERE next_at = 'infinity' AND seq IN (SELECT min(seq) FROM `+o.table+`
				WHERE alarm_id = ANY($1) AND `+undelivered+` GROUP BY alarm_id)`, alarms)
		return err
	})
	if err != nil {
		return fmt.Errorf("enqueuing %d alarm deliveries: %w", len(msgs), err)
	}
	return nil
}

// maxAlarmLocks is the most alarms a transaction locks one by one; a
// larger batch (an outage taking a fleet offline) locks every alarm at
// once, within the server's lock table.
const maxAlarmLocks = 64

// lockAlarms serialises the transaction with the others touching alarms:
// each holds the table's advisory lock shared and one per alarm, taken in
// order (no deadlock); one touching over maxAlarmLocks alarms holds the
// table's lock alone, exclusive.
func (o *AlarmOutbox) lockAlarms(ctx context.Context, tx pgx.Tx, alarms []string) error {
	var err error
	if len(alarms) > maxAlarmLocks {
		_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1), 0)`, o.lockKey+"#all")
	} else {
		alarms = slices.Sorted(slices.Values(alarms))
		_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock_shared(hashtext($1), 0)`, o.lockKey+"#all")
		if err == nil {
			_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1), hashtext(a)) FROM unnest($2::text[]) WITH ORDINALITY AS u(a, n) ORDER BY n`,
				o.lockKey, alarms)
		}
	}
	if err != nil {
		return fmt.Errorf("locking alarms: %w", err)
	}
	return nil
}

// Claim implements alerting.Outbox.
func (o *AlarmOutbox) Claim(ctx context.Context, now time.Time, lease time.Duration, n int) ([]alerting.Message, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	rows, err := o.pool.Query(ctx, `
		WITH c AS (
			SELECT seq FROM `+o.table+`
			WHERE `+undelivered+` AND next_at <= $1
			ORDER BY next_at, seq
			LIMIT $3
			FOR UPDATE SKIP LOCKED
		)
		UPDATE `+o.table+` u SET leased_until = $2, next_at = $2 FROM c WHERE u.seq = c.seq
		RETURNING u.seq, u.delivery_id, u.alarm_id, u.body, u.created_at, u.attempts, u.next_at, u.last_error`,
		now, now.Add(lease), n)
	if err != nil {
		return nil, fmt.Errorf("claiming alarm deliveries: %w", err)
	}
	type claimed struct {
		seq int64
		m   alerting.Message
	}
	var out []claimed
	for rows.Next() {
		var c claimed
		if err := rows.Scan(&c.seq, &c.m.ID, &c.m.Alarm, &c.m.Body, &c.m.Created, &c.m.Attempts, &c.m.NextAt, &c.m.LastError); err != nil {
			rows.Close()
			return nil, fmt.Errorf("claiming alarm deliveries: %w", err)
		}
		c.m.Created, c.m.NextAt = c.m.Created.UTC(), c.m.NextAt.UTC()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claiming alarm deliveries: %w", err)
	}
	slices.SortFunc(out, func(x, y claimed) int { return int(x.seq - y.seq) })
	msgs := make([]alerting.Message, len(out))
	for i := range out {
		msgs[i] = out[i].m
	}
	return msgs, nil
}

// Settle implements alerting.Outbox. A row settled already (its lease ran
// out and another replica delivered it) stays as it is. Settling a row
// makes the next change of its alarm due.
func (o *AlarmOutbox) Settle(ctx context.Context, m alerting.Message, oc alerting.Outcome) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var err error
	switch oc.State {
	case alerting.StateRetrying:
		_, err = o.pool.Exec(ctx, `UPDATE `+o.table+` SET state = 'retrying', attempts = attempts + 1,
			last_error = $2, next_at = $3, leased_until = NULL WHERE delivery_id = $1 AND `+undelivered,
			m.ID, oc.Err, oc.NextAt)
	default:
		err = pgx.BeginFunc(ctx, o.pool, func(tx pgx.Tx) error {
			if err := o.lockAlarms(ctx, tx, []string{m.Alarm}); err != nil {
				return err
			}
			tag, err := tx.Exec(ctx, `UPDATE `+o.table+` SET state = $2, attempts = attempts + 1,
				last_error = $3, settled_at = $4, leased_until = NULL WHERE delivery_id = $1 AND `+undelivered,
				m.ID, oc.State, oc.Err, oc.At)
			if err != nil || tag.RowsAffected() == 0 {
				return err
			}
			_, err = tx.Exec(ctx, `UPDATE `+o.table+` SET next_at = $2
				WHERE seq = (SELECT min(seq) FROM `+o.table+` WHERE alarm_id = $1 AND `+undelivered+`)`, m.Alarm, oc.At)
			return err
		})
		if err == nil && o.settled.Add(1)%pruneEvery == 0 {
			_, err = o.pool.Exec(ctx, `DELETE FROM `+o.table+` WHERE settled_at < $1`, oc.At.Add(-alarmOutboxRetention))
		}
	}
	if err != nil {
		return fmt.Errorf("settling alarm delivery %s: %w", m.ID, err)
	}
	return nil
}

// Stats implements alerting.Outbox.
func (o *AlarmOutbox) Stats(ctx context.Context) (alerting.OutboxStats, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var (
		s               alerting.OutboxStats
		oldest, nextDue *time.Time
	)
	err := o.pool.QueryRow(ctx, `
		SELECT count(*), min(created_at), min(next_at) FILTER (WHERE next_at < 'infinity')
		FROM `+o.table+` WHERE `+undelivered).Scan(&s.Depth, &oldest, &nextDue)
	if err != nil {
		return s, fmt.Errorf("reading the alarm outbox's depth: %w", err)
	}
	if oldest != nil {
		s.Oldest = oldest.UTC()
	}
	if nextDue != nil {
		s.NextDue = nextDue.UTC()
	}
	return s, nil
}

// States implements alerting.Outbox: the oldest undelivered change of an
// alarm (the one being tried), else its latest.
func (o *AlarmOutbox) States(ctx context.Context, ids []string) (map[string]alerting.State, error) {
	out := make(map[string]alerting.State, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	rows, err := o.pool.Query(ctx, `
		SELECT DISTINCT ON (alarm_id) alarm_id, state, attempts, last_error, settled_at
		FROM `+o.table+` WHERE alarm_id = ANY($1)
		ORDER BY alarm_id, (`+undelivered+`) DESC, CASE WHEN `+undelivered+` THEN seq ELSE -seq END`, ids)
	if err != nil {
		return nil, fmt.Errorf("reading alarm delivery states: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id string
			st alerting.State
			at *time.Time
		)
		if err := rows.Scan(&id, &st.State, &st.Attempts, &st.LastError, &at); err != nil {
			return nil, fmt.Errorf("reading alarm delivery states: %w", err)
		}
		if at != nil && st.State == alerting.StateDelivered {
			u := at.UTC()
			st.DeliveredAt = &u
		}
		out[id] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading alarm delivery states: %w", err)
	}
	return out, nil
}

// EraseBy replaces the name of whoever acknowledged an alarm with a
// pseudonym in the outbox's changes, delivered or not; it returns the
// rows rewritten.
func (o *AlarmOutbox) EraseBy(ctx context.Context, name, pseudonym string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	tag, err := o.pool.Exec(ctx, `UPDATE `+o.table+`
		SET body = jsonb_set(body::jsonb, '{alarm,acknowledgedBy}', to_jsonb($2::text))::text
		WHERE body::jsonb->'alarm'->>'acknowledgedBy' = $1`, name, pseudonym)
	if err != nil {
		return 0, fmt.Errorf("erasing %q from the alarm outbox: %w", name, err)
	}
	return int(tag.RowsAffected()), nil
}

// Close implements alerting.Outbox; the pool belongs to the Store.
func (o *AlarmOutbox) Close() error { return nil }
