package postgres

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// listener LISTENs on one channel on a connection of its own, outside the
// pool, and reconnects when it loses it: the loop behind Registry.Run and
// TokenStore.Run.
type listener struct {
	connConfig *pgx.ConnConfig
	channel    string
	timeout    time.Duration // of connecting, LISTEN and a ping
	retry      time.Duration // before reconnecting
	ping       time.Duration // how often an idle connection is checked
	logger     *slog.Logger
	what       string // "registry changes", for the log

	// listening is called each time LISTEN takes effect (at start and
	// after a lost connection): changes made before were not notified.
	listening func()
	// notified is called with the payload of each notification.
	notified func(payload string)
	// stopped, if not nil, is called each time the connection ends.
	stopped func()
}

// run listens until ctx ends; it returns nil then.
func (l *listener) run(ctx context.Context) error {
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
		}
		err := l.listen(ctx)
		if l.stopped != nil {
			l.stopped()
		}
		if ctx.Err() != nil {
			return nil
		}
		l.logger.Warn("listening for "+l.what, "err", err, "retry_in", l.retry)
		retry.Reset(l.retry)
	}
}

// listen runs one LISTEN connection until it fails or ctx ends.
func (l *listener) listen(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, l.timeout)
	conn, err := pgx.ConnectConfig(cctx, l.connConfig)
	cancel()
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	cctx, cancel = context.WithTimeout(ctx, l.timeout)
	_, err = conn.Exec(cctx, "LISTEN "+pgx.Identifier{l.channel}.Sanitize())
	cancel()
	if err != nil {
		return fmt.Errorf("listening on %s: %w", l.channel, err)
	}
	l.listening()
	for {
		wctx, cancel := context.WithTimeout(ctx, l.ping)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, l.timeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("pinging: %w", err)
			}
			continue
		case err != nil:
			return fmt.Errorf("waiting for notifications: %w", err)
		}
		l.notified(n.Payload)
	}
}

// notifyChannel is the NOTIFY channel <schema>_<suffix>, or a hashed name
// when that is longer than an identifier may be.
func notifyChannel(schema, suffix string) string {
	ch := schema + "_" + suffix
	if len(ch) <= 63 {
		return ch
	}
	h := fnv.New64a()
	h.Write([]byte(schema))
	return "twinline_" + suffix + "_" + hex.EncodeToString(h.Sum(nil))
}
