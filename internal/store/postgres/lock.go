package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrLockHeld reports an advisory lock that another session holds in a
// conflicting mode.
var ErrLockHeld = errors.New("held by another process")

// LockMode is how a Lock is held.
type LockMode int

const (
	// LockExclusive excludes every other holder, exclusive or shared.
	LockExclusive LockMode = iota
	// LockShared admits other shared holders and excludes an exclusive
	// one.
	LockShared
)

func (m LockMode) String() string {
	if m == LockShared {
		return "shared"
	}
	return "exclusive"
}

// Lock intervals: how often a held lock's connection is checked, and how
// long to wait before connecting again after losing it.
const (
	lockPing  = 5 * time.Second
	lockRetry = time.Second
)

// Lock is a PostgreSQL session-level advisory lock held on a connection of
// its own, outside the pool, for the life of a process: PostgreSQL releases
// it when the connection ends, so a process that dies cannot keep it. The
// lock is scoped to the store's schema. Run watches the connection; the
// Store releases its locks when it closes.
type Lock struct {
	cfg    *pgx.ConnConfig
	key    int64
	mode   LockMode
	what   string // "exclusive lock \"processing\" on schema public", for errors and logs
	logger *slog.Logger
	// ping and retry are lockPing and lockRetry, shorter in tests.
	ping, retry time.Duration

	mu   sync.Mutex
	conn *pgx.Conn // nil once released, or while reconnecting
	done bool      // released
}

// TryLock takes the advisory lock name, in mode, on a new connection named
// holder (its application_name, which PostgreSQL truncates to 63 bytes): a
// process refused the lock learns who holds it. It does not wait: when
// another session holds the lock in a conflicting mode it returns an error
// wrapping ErrLockHeld that names the holders PostgreSQL shows. The Store
// keeps the lock until Close.
func (s *Store) TryLock(ctx context.Context, name string, mode LockMode, holder string) (*Lock, error) {
	if err := s.acquire(); err != nil {
		return nil, fmt.Errorf("taking lock %q: %w", name, err)
	}
	defer s.life.RUnlock()
	cfg := s.pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = holder
	l := &Lock{cfg: cfg, key: advisoryKey(s.schema, name), mode: mode, logger: s.logger, ping: lockPing, retry: lockRetry,
		what: fmt.Sprintf("%s lock %q on schema %s", mode, name, s.schema)}
	conn, err := l.take(ctx)
	if err != nil {
		return nil, err
	}
	l.conn = conn
	s.locksMu.Lock()
	s.locks = append(s.locks, l)
	s.locksMu.Unlock()
	return l, nil
}

// advisoryKey is the advisory lock key of name in schema.
func advisoryKey(schema, name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("twinline\x00" + schema + "\x00" + name))
	return int64(h.Sum64())
}

// take connects and takes the lock; it returns the connection holding it.
func (l *Lock) take(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout+lockPing)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, l.cfg)
	if err != nil {
		return nil, fmt.Errorf("taking the %s: connecting: %w", l.what, err)
	}
	fn := "pg_try_advisory_lock"
	if l.mode == LockShared {
		fn = "pg_try_advisory_lock_shared"
	}
	var ok bool
	if err := conn.QueryRow(cctx, "SELECT "+fn+"($1)", l.key).Scan(&ok); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("taking the %s: %w", l.what, err)
	}
	if ok {
		return conn, nil
	}
	holders := l.holders(cctx, conn)
	conn.Close(context.WithoutCancel(ctx))
	if len(holders) == 0 {
		return nil, fmt.Errorf("taking the %s: %w", l.what, ErrLockHeld)
	}
	return nil, fmt.Errorf("taking the %s: %w: %s", l.what, ErrLockHeld, strings.Join(holders, ", "))
}

// holders names the other sessions holding the lock: their application
// name and mode, or their process id when PostgreSQL does not show this
// user the name. Best effort: nil when they cannot be read.
func (l *Lock) holders(ctx context.Context, conn *pgx.Conn) []string {
	// A bigint key is classid (high 32 bits), objid (low 32 bits) and
	// objsubid 1 in pg_locks.
	u := uint64(l.key)
	rows, err := conn.Query(ctx, `
		SELECT coalesce(a.application_name, ''), l.pid, l.mode
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
			AND l.classid::bigint = $1 AND l.objid::bigint = $2
			AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND l.pid <> pg_backend_pid()
		ORDER BY l.pid`, int64(u>>32), int64(u&0xffffffff))
	if err != nil {
		return nil
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name, mode string
		var pid int32
		if err := rows.Scan(&name, &pid, &mode); err != nil {
			return nil
		}
		who := fmt.Sprintf("backend pid %d", pid)
		if name != "" {
			who = fmt.Sprintf("%q (backend pid %d)", name, pid)
		}
		if mode == "ShareLock" {
			who += ", shared"
		}
		out = append(out, who)
	}
	if rows.Err() != nil {
		return nil
	}
	return out
}

// Run keeps the lock until ctx ends, and returns nil then, still holding
// it (the Store releases it on Close, after the last write). It checks the
// connection every few seconds; when the connection is lost, so is the
// lock, and Run takes it again on a new one — or, when another process
// took it meanwhile, returns an error wrapping ErrLockHeld: the caller must
// stop what the lock guarded.
func (l *Lock) Run(ctx context.Context) error {
	tick := time.NewTimer(l.ping)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		lost, err := l.check(ctx)
		switch {
		case errors.Is(err, ErrLockHeld):
			return fmt.Errorf("lost the %s, which another process took while its connection was down: %w", l.what, err)
		case err != nil:
			l.logger.Warn("taking the lock again", "lock", l.what, "err", err, "retry_in", l.retry)
			tick.Reset(l.retry)
			continue
		case lost:
			l.logger.Info("took the lock again on a new connection", "lock", l.what)
		}
		tick.Reset(l.ping)
	}
}

// check pings the lock's connection and, when it is gone, takes the lock
// again; lost reports that it had been lost (and is held again if err is
// nil).
func (l *Lock) check(ctx context.Context) (lost bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return false, nil
	}
	if l.conn != nil {
		pctx, cancel := context.WithTimeout(ctx, l.ping)
		err := l.conn.Ping(pctx)
		cancel()
		if err == nil {
			return false, nil
		}
		if ctx.Err() != nil {
			return false, nil
		}
		l.logger.Warn("lost the connection holding a lock", "lock", l.what, "err", err)
		l.conn.Close(context.WithoutCancel(ctx))
		l.conn = nil
	}
	conn, err := l.take(ctx)
	if err != nil {
		return true, err
	}
	l.conn = conn
	return true, nil
}

// Release gives the lock up by closing its connection. It is idempotent.
func (l *Lock) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.done = true
	if l.conn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), lockPing)
	defer cancel()
	// Unlocked before the connection closes: PostgreSQL ends a closed
	// session's backend (and frees its locks) a moment after the client
	// is gone, and another replica trying the lock right after Release
	// must find it free. A failure here leaves that to the session's end.
	_, _ = l.conn.Exec(ctx, "SELECT pg_advisory_unlock_all()")
	err := l.conn.Close(ctx)
	l.conn = nil
	if err != nil {
		return fmt.Errorf("releasing the %s: %w", l.what, err)
	}
	return nil
}
