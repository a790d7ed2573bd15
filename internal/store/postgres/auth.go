package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twinline/twinline/internal/auth"
)

// TokenStoreOptions configure a TokenStore. The zero value gives the
// defaults.
type TokenStoreOptions struct {
	// RetryInterval is how long Run waits before it reconnects after
	// losing its LISTEN connection. Default 1 second.
	RetryInterval time.Duration
	// PingInterval is how often Run checks an idle LISTEN connection.
	// Default 30 seconds.
	PingInterval time.Duration
}

// TokenStore keeps the API tokens in the table tokens, an auth.TokenStore
// shared by every replica on the schema. Every change (Create, Revoke,
// Delete; not Touch, which changes no token's validity) NOTIFYs the
// channel <schema>_tokens in its transaction; Run LISTENs there and calls
// the OnChange functions when another TokenStore changed the tokens, so a
// revocation on one replica is in force on every replica as soon as they
// reload. Times are kept to the microsecond. It is safe for concurrent use.
type TokenStore struct {
	pool    *pgxpool.Pool
	tokens  string // qualified name
	channel string
	self    string // this TokenStore's notification payload
	timeout time.Duration
	opts    TokenStoreOptions
	logger  *slog.Logger

	mu  sync.Mutex
	fns []func()

	testHookListening func() // Run is listening
}

var _ auth.TokenStore = (*TokenStore)(nil)

// NewTokenStore returns the tokens in the tables of s.
func NewTokenStore(s *Store, opts TokenStoreOptions) *TokenStore {
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = time.Second
	}
	if opts.PingInterval <= 0 {
		opts.PingInterval = 30 * time.Second
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &TokenStore{
		pool:    s.pool,
		tokens:  pgx.Identifier{s.schema, "tokens"}.Sanitize(),
		channel: notifyChannel(s.schema, "tokens"),
		self:    hex.EncodeToString(b),
		timeout: s.opts.WriteTimeout,
		opts:    opts,
		logger:  s.base.With("component", "postgres_tokens"),
	}
}

const tokenColumns = `id, name, scopes, sites, hash, created, expires, last_used, revoked, parent, owner, kind, created_by`

func scanToken(row pgx.Row) (auth.Token, error) {
	var (
		t                      auth.Token
		scopes                 int32
		expires, used, revoked *time.Time
		created                time.Time
		kind                   string
	)
	if err := row.Scan(&t.ID, &t.Name, &scopes, &t.Sites, &t.Hash, &created, &expires, &used, &revoked, &t.Parent, &t.Owner, &kind, &t.CreatedBy); err != nil {
		return auth.Token{}, err
	}
	t.Scopes = auth.Scope(scopes)
	t.Kind = auth.Kind(kind)
	t.Created = created.UTC()
	for _, x := range []struct {
		from *time.Time
		to   *time.Time
	}{{expires, &t.Expires}, {used, &t.LastUsed}, {revoked, &t.Revoked}} {
		if x.from != nil {
			*x.to = x.from.UTC()
		}
	}
	if len(t.Sites) == 0 {
		t.Sites = nil
	}
	return t, nil
}

// nullTime is t, or NULL when t is zero.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// change runs fn in a transaction that also NOTIFYs the change when fn
// reports one.
func (s *TokenStore) change(ctx context.Context, fn func(tx pgx.Tx) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		changed, err := fn(tx)
		if err != nil || !changed {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, s.channel, s.self); err != nil {
			return fmt.Errorf("notifying: %w", err)
		}
		return nil
	})
}

// Create implements auth.TokenStore. A text with a NUL byte, which
// PostgreSQL cannot store, is an error.
func (s *TokenStore) Create(ctx context.Context, t auth.Token) error {
	if t.ID == "" || t.Name == "" {
		return errors.New("creating token: empty id or name")
	}
	for _, x := range append([]string{t.ID, t.Name, t.Parent, t.CreatedBy}, t.Sites...) {
		if !validName(x) {
			return fmt.Errorf("creating token %q: texts must be UTF-8 without NUL", t.Name)
		}
	}
	sites := t.Sites
	if sites == nil {
		sites = []string{}
	}
	err := s.change(ctx, func(tx pgx.Tx) (bool, error) {
		_, err := tx.Exec(ctx, `INSERT INTO `+s.tokens+` (`+tokenColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			t.ID, t.Name, int32(t.Scopes), sites, t.Hash, t.Created, nullTime(t.Expires),
			nullTime(t.LastUsed), nullTime(t.Revoked), t.Parent, t.Owner, string(t.Kind), t.CreatedBy)
		return err == nil, err
	})
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "23505" {
		return fmt.Errorf("creating token %q: %w", t.Name, auth.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("creating token %q: %w", t.Name, err)
	}
	return nil
}

// Load implements auth.TokenStore: every token, in name order (bytewise).
func (s *TokenStore) Load(ctx context.Context) ([]auth.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT `+tokenColumns+` FROM `+s.tokens+` ORDER BY name COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("loading tokens: %w", err)
	}
	toks, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (auth.Token, error) { return scanToken(row) })
	if err != nil {
		return nil, fmt.Errorf("loading tokens: %w", err)
	}
	return toks, nil
}

// Revoke implements auth.TokenStore: the token and its sessions, unless
// already revoked.
func (s *TokenStore) Revoke(ctx context.Context, name string, at time.Time) error {
	err := s.change(ctx, func(tx pgx.Tx) (bool, error) {
		var id string
		err := tx.QueryRow(ctx, `SELECT id FROM `+s.tokens+` WHERE name = $1 FOR UPDATE`, name).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, auth.ErrNotFound
		}
		if err != nil {
			return false, err
		}
		tag, err := tx.Exec(ctx, `UPDATE `+s.tokens+` SET revoked = $2
			WHERE (id = $1 OR parent = $1) AND revoked IS NULL`, id, at)
		return tag.RowsAffected() > 0, err
	})
	if err != nil {
		return fmt.Errorf("revoking token %q: %w", name, err)
	}
	return nil
}

// Touch implements auth.TokenStore. It notifies nobody: last-used times
// change no token's validity.
func (s *TokenStore) Touch(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	ids := make([]string, 0, len(used))
	ats := make([]time.Time, 0, len(used))
	for id, at := range used {
		ids, ats = append(ids, id), append(ats, at)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `UPDATE `+s.tokens+` AS t SET last_used = x.at
		FROM unnest($1::text[], $2::timestamptz[]) AS x(id, at)
		WHERE t.id = x.id AND (t.last_used IS NULL OR t.last_used < x.at)`, ids, ats); err != nil {
		return fmt.Errorf("touching %d tokens: %w", len(used), err)
	}
	return nil
}

// Delete implements auth.TokenStore.
func (s *TokenStore) Delete(ctx context.Context, before time.Time) error {
	err := s.change(ctx, func(tx pgx.Tx) (bool, error) {
		tag, err := tx.Exec(ctx, `DELETE FROM `+s.tokens+` WHERE revoked < $1 OR expires < $1`, before)
		return tag.RowsAffected() > 0, err
	})
	if err != nil {
		return fmt.Errorf("deleting tokens: %w", err)
	}
	return nil
}

// OnChange implements auth.TokenStore: Run calls fn after another
// TokenStore on the schema changed the tokens, and each time LISTEN takes
// effect (at start, and after a lost connection: changes made meanwhile
// were not notified).
func (s *TokenStore) OnChange(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, fn)
}

func (s *TokenStore) changed() {
	s.mu.Lock()
	fns := append([]func(){}, s.fns...)
	s.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// Run LISTENs for the token changes of other TokenStores on the schema
// and calls the OnChange functions, until ctx ends; it returns nil then.
// It keeps a connection of its own, outside the pool, and reconnects when
// it loses it.
func (s *TokenStore) Run(ctx context.Context) error {
	l := &listener{
		connConfig: s.pool.Config().ConnConfig,
		channel:    s.channel,
		timeout:    s.timeout,
		retry:      s.opts.RetryInterval,
		ping:       s.opts.PingInterval,
		logger:     s.logger,
		what:       "token changes",
		listening: func() {
			s.changed()
			if s.testHookListening != nil {
				s.testHookListening()
			}
		},
		notified: func(payload string) {
			if payload != s.self {
				s.changed()
			}
		},
	}
	return l.run(ctx)
}

// Close implements auth.TokenStore; the pool belongs to the Store.
func (s *TokenStore) Close() error { return nil }

// AuditStore keeps the audit log in the table audit, an auth.AuditStore
// shared by every replica on the schema: ids come from the table's
// sequence. Times are kept to the microsecond. It is safe for concurrent
// use.
type AuditStore struct {
	pool    *pgxpool.Pool
	audit   string // qualified name
	timeout time.Duration
}

var _ auth.AuditStore = (*AuditStore)(nil)

// NewAuditStore returns the audit log in the tables of s.
func NewAuditStore(s *Store) *AuditStore {
	return &AuditStore{
		pool:    s.pool,
		audit:   pgx.Identifier{s.schema, "audit"}.Sanitize(),
		timeout: s.opts.WriteTimeout,
	}
}

// Append implements auth.AuditStore. A text with a NUL byte, which
// PostgreSQL cannot store, is an error.
func (a *AuditStore) Append(ctx context.Context, e auth.AuditEntry) (auth.AuditEntry, error) {
	for _, x := range []string{e.Actor, string(e.ActorKind), e.Action, e.Machine, e.Target, e.Remote, e.Outcome} {
		if !validName(x) {
			return auth.AuditEntry{}, fmt.Errorf("appending audit entry %s: texts must be UTF-8 without NUL", e.Action)
		}
	}
	var detail *string
	if e.Detail != nil {
		b, err := json.Marshal(e.Detail)
		if err != nil {
			return auth.AuditEntry{}, fmt.Errorf("appending audit entry %s: encoding detail: %w", e.Action, err)
		}
		d := string(b)
		detail = &d
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	var id int64
	err := a.pool.QueryRow(ctx, `INSERT INTO `+a.audit+` (at, actor, actor_kind, action, machine, target, remote, outcome, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) RETURNING id`,
		e.At, e.Actor, string(e.ActorKind), e.Action, e.Machine, e.Target, e.Remote, e.Outcome, detail).Scan(&id)
	if err != nil {
		return auth.AuditEntry{}, fmt.Errorf("appending audit entry %s: %w", e.Action, err)
	}
	e.ID = uint64(id)
	return e, nil
}

// Query implements auth.AuditStore, through the index on (at), (actor,
// at) or (machine, at).
func (a *AuditStore) Query(ctx context.Context, f auth.AuditFilter) ([]auth.AuditEntry, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = auth.DefaultAuditLimit
	}
	var (
		where []string
		args  []any
	)
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, strings.ReplaceAll(cond, "?", "$"+strconv.Itoa(len(args))))
	}
	if !f.From.IsZero() {
		add("at >= ?", f.From)
	}
	if !f.To.IsZero() {
		add("at < ?", f.To)
	}
	if f.Actor != "" {
		add("actor = ?", f.Actor)
	}
	if f.Machine != "" {
		add("machine = ?", f.Machine)
	}
	if f.Action != "" {
		add("action = ?", f.Action)
	}
	q := `SELECT id, at, actor, actor_kind, action, machine, target, remote, outcome, detail FROM ` + a.audit
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	args = append(args, limit)
	q += ` ORDER BY at DESC, id DESC LIMIT $` + strconv.Itoa(len(args))
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	rows, err := a.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("querying audit log: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (auth.AuditEntry, error) {
		var (
			e      auth.AuditEntry
			id     int64
			kind   string
			detail []byte
		)
		if err := row.Scan(&id, &e.At, &e.Actor, &kind, &e.Action, &e.Machine, &e.Target, &e.Remote, &e.Outcome, &detail); err != nil {
			return auth.AuditEntry{}, err
		}
		e.ID, e.ActorKind, e.At = uint64(id), auth.Kind(kind), e.At.UTC()
		if detail != nil {
			if err := json.Unmarshal(detail, &e.Detail); err != nil {
				return auth.AuditEntry{}, fmt.Errorf("decoding detail of entry %d: %w", id, err)
			}
		}
		return e, nil
	})
	if err != nil {
		return nil, fmt.Errorf("querying audit log: %w", err)
	}
	return out, nil
}

// DeleteBefore implements auth.AuditStore.
func (a *AuditStore) DeleteBefore(ctx context.Context, t time.Time) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	tag, err := a.pool.Exec(ctx, `DELETE FROM `+a.audit+` WHERE at < $1`, t)
	if err != nil {
		return 0, fmt.Errorf("deleting audit entries: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// EraseActor implements auth.AuditStore: actor is replaced by pseudonym
// as the actor, and as the string value of the detail keys "author" and
// "by".
func (a *AuditStore) EraseActor(ctx context.Context, actor, pseudonym string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	tag, err := a.pool.Exec(ctx, `UPDATE `+a.audit+` SET
			actor = CASE WHEN actor = $1 THEN $2 ELSE actor END,
			detail = CASE WHEN detail IS NULL THEN NULL ELSE detail || (
				SELECT coalesce(jsonb_object_agg(k, to_jsonb($2::text)), '{}')
				FROM jsonb_each(detail) AS d(k, v)
				WHERE k IN ('author', 'by') AND v = to_jsonb($1::text)) END
		WHERE actor = $1
			OR detail @> jsonb_build_object('author', $1::text)
			OR detail @> jsonb_build_object('by', $1::text)`, actor, pseudonym)
	if err != nil {
		return 0, fmt.Errorf("erasing actor: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Close implements auth.AuditStore; the pool belongs to the Store.
func (a *AuditStore) Close() error { return nil }
