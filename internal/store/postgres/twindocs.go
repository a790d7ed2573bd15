package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	ctl "github.com/twinline/twinline/internal/control"
)

// TwinDocs keeps the twins' desired and reported documents in the table
// twin_docs, a ctl.TwinStore shared by replicas: every write is
// optimistic (WHERE version = the one read) and NOTIFYs the change on
// <schema>_twin_docs in its transaction; Watch LISTENs there, so every
// replica's control.Twins tells its subscribers and long-polls. It is safe
// for concurrent use.
type TwinDocs struct {
	pool    *pgxpool.Pool
	table   string
	channel string
	timeout time.Duration
	logger  *slog.Logger
	// RetryInterval and PingInterval of the LISTEN connection.
	retry, ping time.Duration
	// listening is whether Watch's LISTEN is in effect: until then other
	// replicas' changes are not told.
	listening atomic.Bool
}

var (
	_ ctl.TwinStore   = (*TwinDocs)(nil)
	_ ctl.TwinWatcher = (*TwinDocs)(nil)
)

// NewTwinDocs returns the twin documents in the tables of s.
func NewTwinDocs(s *Store) *TwinDocs {
	return &TwinDocs{
		pool:    s.pool,
		table:   pgx.Identifier{s.schema, "twin_docs"}.Sanitize(),
		channel: notifyChannel(s.schema, "twin_docs"),
		timeout: s.opts.WriteTimeout,
		logger:  s.base.With("component", "postgres_twins"),
		retry:   time.Second,
		ping:    30 * time.Second,
	}
}

// Get implements ctl.TwinStore.
func (d *TwinDocs) Get(ctx context.Context, machine string) (ctl.Twin, error) {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	tw := ctl.Twin{Machine: machine}
	var desired, reported, meta []byte
	err := d.pool.QueryRow(ctx, `SELECT desired, reported, metadata, version, reported_version FROM `+d.table+
		` WHERE machine = $1`, machine).Scan(&desired, &reported, &meta, &tw.Version, &tw.ReportedVersion)
	if err == pgx.ErrNoRows {
		return tw, nil
	}
	if err != nil {
		return ctl.Twin{}, fmt.Errorf("reading twin: %w", err)
	}
	for _, f := range []struct {
		b []byte
		v any
	}{{desired, &tw.Desired}, {reported, &tw.Reported}, {meta, &tw.Metadata}} {
		if err := json.Unmarshal(f.b, f.v); err != nil {
			return ctl.Twin{}, fmt.Errorf("decoding the twin of %q: %w", machine, err)
		}
	}
	return tw, nil
}

// Put implements ctl.TwinStore: an insert when prevVersion and
// prevReported are 0 (none stored), else an update of the row still at
// those versions; either NOTIFYs n.
func (d *TwinDocs) Put(ctx context.Context, tw ctl.Twin, prevVersion, prevReported uint64, n ctl.Notice) error {
	desired, err := json.Marshal(nonNil(tw.Desired))
	if err != nil {
		return fmt.Errorf("encoding desired: %w", err)
	}
	reported, err := json.Marshal(nonNil(tw.Reported))
	if err != nil {
		return fmt.Errorf("encoding reported: %w", err)
	}
	meta, err := json.Marshal(tw.Metadata)
	if err != nil {
		return fmt.Errorf("encoding metadata: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var sql string
		args := []any{tw.Machine, desired, reported, meta, tw.Version, tw.ReportedVersion}
		if prevVersion == 0 && prevReported == 0 {
			sql = `INSERT INTO ` + d.table + ` (machine, desired, reported, metadata, version, reported_version, updated_at)
				VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (machine) DO NOTHING`
		} else {
			sql = `UPDATE ` + d.table + ` SET desired = $2, reported = $3, metadata = $4, version = $5,
				reported_version = $6, updated_at = now() WHERE machine = $1 AND version = $7 AND reported_version = $8`
			args = append(args, prevVersion, prevReported)
		}
		tag, err := tx.Exec(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("writing twin: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: twin %s is no longer at versions %d.%d", ctl.ErrConcurrentUpdate, tw.Machine, prevVersion, prevReported)
		}
		return d.notify(ctx, tx, n)
	})
}

// Delete implements ctl.TwinStore.
func (d *TwinDocs) Delete(ctx context.Context, machine string, n ctl.Notice) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM `+d.table+` WHERE machine = $1`, machine); err != nil {
			return fmt.Errorf("deleting twin: %w", err)
		}
		return d.notify(ctx, tx, n)
	})
}

func (d *TwinDocs) notify(ctx context.Context, tx pgx.Tx, n ctl.Notice) error {
	payload, err := json.Marshal(n)
	if err != nil {
		return fmt.Errorf("encoding notice: %w", err)
	}
	if len(payload) > maxNotifyPayload {
		return fmt.Errorf("notifying twin change: machine id too long for a notification")
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, d.channel, string(payload)); err != nil {
		return fmt.Errorf("notifying twin change: %w", err)
	}
	return nil
}

// Watch implements ctl.TwinWatcher: it LISTENs on a connection of
// its own (reconnecting when it loses it) until ctx ends, and returns nil
// then. Changes made while it was not listening are not told.
func (d *TwinDocs) Watch(ctx context.Context, fn func(ctl.Notice)) error {
	l := &listener{
		connConfig: d.pool.Config().ConnConfig,
		channel:    d.channel,
		timeout:    d.timeout,
		retry:      d.retry,
		ping:       d.ping,
		logger:     d.logger,
		what:       "twin changes",
		listening:  func() { d.listening.Store(true) },
		stopped:    func() { d.listening.Store(false) },
		notified: func(payload string) {
			var n ctl.Notice
			if err := json.Unmarshal([]byte(payload), &n); err != nil {
				d.logger.Warn("decoding a twin notification", "err", err)
				return
			}
			fn(n)
		},
	}
	return l.run(ctx)
}

// Ready reports whether Watch LISTENs: an error while it does not (not
// started yet, or reconnecting), when changes other replicas make are not
// told — this replica's stream and MQTT clients would miss them.
func (d *TwinDocs) Ready() error {
	if d.listening.Load() {
		return nil
	}
	return errors.New("not listening for other replicas' twin changes")
}

func nonNil(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
