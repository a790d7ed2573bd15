package postgres

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// signalHandler sends every record's message to ch (dropping when full).
type signalHandler struct{ ch chan string }

func (h signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h signalHandler) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.ch <- r.Message:
	default:
	}
	return nil
}
func (h signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h signalHandler) WithGroup(string) slog.Handler      { return h }

// TestOpenWaitsForDatabase: a replica restarted while PostgreSQL is
// unreachable waits for it (logging each attempt) and opens once it is
// back, instead of exiting.
func TestOpenWaitsForDatabase(t *testing.T) {
	schema := newSchema(t)
	p := newProxy(t, targetAddr(t))
	p.Cut()
	logs := make(chan string, 16)
	type result struct {
		s   *Store
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		s, err := Open(ctx, proxyURL(p), Options{Schema: schema, Now: func() time.Time { return testNow }, WriteTimeout: time.Second}, slog.New(signalHandler{logs}), nil)
		done <- result{s, err}
	}()
	for msg := range logs {
		if msg == "waiting for PostgreSQL" {
			break
		}
	}
	select {
	case r := <-done:
		t.Fatalf("Open returned while the database was unreachable: %v", r.err)
	default:
	}
	p.Restore()
	r := <-done
	if r.err != nil {
		t.Fatalf("Open after the database came back: %v", r.err)
	}
	t.Cleanup(func() { _ = r.s.Close() })
	if err := r.s.pool.Ping(context.Background()); err != nil {
		t.Errorf("store opened but cannot reach the database: %v", err)
	}
}

// TestOpenGivesUp: StartWait bounds the wait; an error waiting cannot mend
// (a database that does not exist) fails at once.
func TestOpenGivesUp(t *testing.T) {
	schema := newSchema(t)
	p := newProxy(t, targetAddr(t))
	p.Cut()
	ctx := context.Background()
	_, err := Open(ctx, proxyURL(p), Options{Schema: schema, StartWait: 300 * time.Millisecond, WriteTimeout: time.Second}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "unreachable for 300ms") {
		t.Errorf("Open with the database cut: %v, want it to give up after StartWait", err)
	}

	wrong := strings.Replace(testURL(), "/postgres?", "/no_such_database_twinline?", 1)
	if wrong == testURL() {
		t.Skipf("cannot derive a wrong database name from %s", testURL())
	}
	start := time.Now()
	_, err = Open(ctx, wrong, Options{Schema: schema, StartWait: time.Minute}, nil, nil)
	if err == nil {
		t.Fatal("Open of a database that does not exist succeeded")
	}
	if unreachable(err) || time.Since(start) > 30*time.Second {
		t.Errorf("Open of a missing database waited (%v, unreachable=%v): %v", time.Since(start), unreachable(err), err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Open of a missing database timed out instead of failing: %v", err)
	}
}
