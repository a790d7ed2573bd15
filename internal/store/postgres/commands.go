package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	ctl "github.com/twinline/twinline/internal/control"
)

// CommandStore keeps the commands sent to machines in the table commands,
// a ctl.CommandStore shared by every replica on the schema: each
// creation and update NOTIFYs <schema>_commands in the same statement, and
// Follow LISTENs there, so each replica's ctl.Commands tells its
// subscribers of the others' transitions. It is safe for concurrent use.
type CommandStore struct {
	pool     *pgxpool.Pool
	commands string // qualified table name
	channel  string
	timeout  time.Duration
	origin   string // in each notification, to skip our own
	logger   *slog.Logger
	// RetryInterval and PingInterval are Follow's reconnect delay and
	// idle check (listener).
	retry, ping time.Duration

	testHookListening func() // Follow is listening
}

var _ ctl.CommandStore = (*CommandStore)(nil)

// NewCommandStore returns the commands in the tables of s.
func NewCommandStore(s *Store) *CommandStore {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &CommandStore{
		pool:     s.pool,
		commands: pgx.Identifier{s.schema, "commands"}.Sanitize(),
		channel:  notifyChannel(s.schema, "commands"),
		timeout:  s.opts.WriteTimeout,
		origin:   hex.EncodeToString(b),
		logger:   s.base.With("component", "postgres_commands"),
		retry:    time.Second,
		ping:     30 * time.Second,
	}
}

// notice is the payload of a command's notification.
type notice struct {
	Origin  string `json:"o"`
	Machine string `json:"m"`
	ID      string `json:"i"`
}

func (s *CommandStore) payload(cmd ctl.Command) string {
	b, _ := json.Marshal(notice{s.origin, cmd.Machine, cmd.ID})
	return string(b)
}

func checkCommand(cmd ctl.Command) error {
	for _, v := range []string{cmd.ID, cmd.Machine, cmd.Name, cmd.IdempotencyKey} {
		if !validName(v) {
			return fmt.Errorf("%w: texts must be UTF-8 without NUL", ctl.ErrInvalid)
		}
	}
	return nil
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Create implements ctl.CommandStore.
func (s *CommandStore) Create(ctx context.Context, cmd ctl.Command) (ctl.Command, bool, error) {
	if err := checkCommand(cmd); err != nil {
		return ctl.Command{}, false, fmt.Errorf("creating command: %w", err)
	}
	doc, err := json.Marshal(cmd)
	if err != nil {
		return ctl.Command{}, false, fmt.Errorf("creating command: encoding: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `WITH i AS (
			INSERT INTO `+s.commands+` (id, machine, name, state, revision, created_at, updated_at, expires_at, idempotency_key, doc)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			ON CONFLICT (machine, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
			RETURNING id)
		SELECT pg_notify($11, $12) FROM i`,
		cmd.ID, cmd.Machine, cmd.Name, string(cmd.State), cmd.Revision(), cmd.CreatedAt, cmd.UpdatedAt, cmd.ExpiresAt,
		nullable(cmd.IdempotencyKey), string(doc), s.channel, s.payload(cmd))
	if err != nil {
		return ctl.Command{}, false, fmt.Errorf("creating command: %w", err)
	}
	inserted, err := countRows(rows)
	if err != nil {
		return ctl.Command{}, false, fmt.Errorf("creating command: %w", err)
	}
	if inserted == 1 {
		return cmd, true, nil
	}
	got, err := s.one(ctx, `SELECT doc FROM `+s.commands+` WHERE machine = $1 AND idempotency_key = $2`, cmd.Machine, cmd.IdempotencyKey)
	if err != nil {
		return ctl.Command{}, false, fmt.Errorf("reading the command of idempotency key %q: %w", cmd.IdempotencyKey, err)
	}
	return got, false, nil
}

func countRows(rows pgx.Rows) (int, error) {
	n := 0
	for rows.Next() {
		n++
	}
	rows.Close()
	return n, rows.Err()
}

// one returns the command the query selects (its doc), or ErrNotFound.
func (s *CommandStore) one(ctx context.Context, sql string, args ...any) (ctl.Command, error) {
	var doc []byte
	if err := s.pool.QueryRow(ctx, sql, args...).Scan(&doc); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return ctl.Command{}, ctl.ErrNotFound
		}
		return ctl.Command{}, err
	}
	var cmd ctl.Command
	if err := json.Unmarshal(doc, &cmd); err != nil {
		return ctl.Command{}, fmt.Errorf("decoding: %w", err)
	}
	return cmd, nil
}

// Get implements ctl.CommandStore.
func (s *CommandStore) Get(ctx context.Context, machine, id string) (ctl.Command, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	cmd, err := s.one(ctx, `SELECT doc FROM `+s.commands+` WHERE id = $1 AND machine = $2`, id, machine)
	if err != nil {
		return ctl.Command{}, fmt.Errorf("reading command %q of machine %q: %w", id, machine, err)
	}
	return cmd, nil
}

// order is newest first, ids compared bytewise as the file store does.
const commandOrder = ` ORDER BY created_at DESC, id COLLATE "C" DESC`

func (s *CommandStore) many(ctx context.Context, sql string, args ...any) ([]ctl.Command, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ctl.Command, error) {
		var doc []byte
		var cmd ctl.Command
		if err := row.Scan(&doc); err != nil {
			return cmd, err
		}
		if err := json.Unmarshal(doc, &cmd); err != nil {
			return cmd, fmt.Errorf("decoding: %w", err)
		}
		return cmd, nil
	})
}

// List implements ctl.CommandStore.
func (s *CommandStore) List(ctx context.Context, machine string, f ctl.Filter) ([]ctl.Command, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var limit *int
	if f.Limit > 0 {
		limit = &f.Limit
	}
	out, err := s.many(ctx, `SELECT doc FROM `+s.commands+`
		WHERE machine = $1 AND ($2 = '' OR state = $2) AND ($3 = '' OR name = $3)`+commandOrder+` LIMIT $4`,
		machine, string(f.State), f.Name, limit)
	if err != nil {
		return nil, fmt.Errorf("listing commands: %w", err)
	}
	return out, nil
}

// Update implements ctl.CommandStore.
func (s *CommandStore) Update(ctx context.Context, cmd ctl.Command) error {
	if err := checkCommand(cmd); err != nil {
		return fmt.Errorf("updating command: %w", err)
	}
	doc, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("updating command: encoding: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `WITH u AS (
			UPDATE `+s.commands+` SET state = $3, revision = $4, updated_at = $5, doc = $6
			WHERE id = $1 AND machine = $2 AND revision = $4 - 1
			RETURNING id)
		SELECT pg_notify($7, $8) FROM u`,
		cmd.ID, cmd.Machine, string(cmd.State), cmd.Revision(), cmd.UpdatedAt, string(doc), s.channel, s.payload(cmd))
	if err != nil {
		return fmt.Errorf("updating command %q: %w", cmd.ID, err)
	}
	n, err := countRows(rows)
	if err != nil {
		return fmt.Errorf("updating command %q: %w", cmd.ID, err)
	}
	if n == 1 {
		return nil
	}
	var rev int
	err = s.pool.QueryRow(ctx, `SELECT revision FROM `+s.commands+` WHERE id = $1 AND machine = $2`, cmd.ID, cmd.Machine).Scan(&rev)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("updating command %q: %w", cmd.ID, ctl.ErrNotFound)
	case err != nil:
		return fmt.Errorf("updating command %q: %w", cmd.ID, err)
	}
	return fmt.Errorf("updating command %q: at revision %d, not %d: %w", cmd.ID, rev, cmd.Revision()-1, ctl.ErrConflict)
}

// Pending implements ctl.CommandStore, through the index of open
// commands.
func (s *CommandStore) Pending(ctx context.Context) ([]ctl.Command, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	out, err := s.many(ctx, `SELECT doc FROM `+s.commands+` WHERE state IN ('pending', 'delivered', 'accepted')`+commandOrder)
	if err != nil {
		return nil, fmt.Errorf("reading pending commands: %w", err)
	}
	return out, nil
}

// Prune implements ctl.CommandStore.
func (s *CommandStore) Prune(ctx context.Context, before time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+s.commands+`
		WHERE state IN ('rejected', 'succeeded', 'failed', 'expired') AND updated_at < $1`, before)
	if err != nil {
		return 0, fmt.Errorf("pruning commands: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Follow LISTENs for the other replicas' command changes until ctx ends,
// reconnecting when it loses its connection: changed hears the machine
// and id of each (not those this store made), resync each time listening
// starts (changes made before were not heard). It returns nil when ctx
// ends.
func (s *CommandStore) Follow(ctx context.Context, changed func(machine, id string), resync func()) error {
	l := &listener{
		connConfig: s.pool.Config().ConnConfig,
		channel:    s.channel,
		timeout:    s.timeout,
		retry:      s.retry,
		ping:       s.ping,
		logger:     s.logger,
		what:       "command changes",
		listening: func() {
			resync()
			if s.testHookListening != nil {
				s.testHookListening()
			}
		},
		notified: func(payload string) {
			var n notice
			if err := json.Unmarshal([]byte(payload), &n); err != nil {
				s.logger.Warn("ignoring a malformed command notification", "payload", payload, "err", err)
				return
			}
			if n.Origin != s.origin {
				changed(n.Machine, n.ID)
			}
		},
	}
	return l.run(ctx)
}

// Close implements ctl.CommandStore; the pool belongs to the Store.
func (s *CommandStore) Close() error { return nil }
