package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/redistest"
	"github.com/twinline/twinline/internal/store/postgres"
)

// pgSchemaURL returns the URL of a schema of the test's own on the local
// PostgreSQL (dropped when the test ends); without PostgreSQL the test
// fails under CI=true and is skipped elsewhere.
func pgSchemaURL(t *testing.T) string {
	t.Helper()
	const base = "postgres://postgres@127.0.0.1:5432/test"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required under CI: %v", err)
		}
		t.Skipf("PostgreSQL not reachable: %v", err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tl_app_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		defer conn.Close(context.Background())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
	})
	return base + "?search_path=" + schema
}

// TestSecondProcessorRefused: a second --role all replica without Kafka on
// the same PostgreSQL store refuses to start, naming the replica that
// processes and saying to use Kafka; once that one stopped, a replica
// starts.
func TestSecondProcessorRefused(t *testing.T) {
	url := pgSchemaURL(t)
	cfgFor := func() config.Config {
		cfg := config.Default()
		cfg.Listen = "127.0.0.1:0"
		cfg.DataDir = t.TempDir()
		cfg.Store, cfg.PostgresURL = "postgres", url
		return cfg
	}
	ctx, cancel := context.WithCancel(context.Background())
	first, err := New(ctx, cfgFor(), slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()

	_, err = New(context.Background(), cfgFor(), slog.New(slog.DiscardHandler), "test")
	if !errors.Is(err, postgres.ErrLockHeld) {
		t.Fatalf("second New on the same store: %v, want ErrLockHeld", err)
	}
	for _, want := range []string{"--kafka-brokers", "exactly one", `"twinline all host=`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	// An api replica processes nothing: it starts beside the first.
	api := cfgFor()
	_, prefix := redistest.Client(t)
	api.Role, api.RedisURL, api.RedisPrefix = "api", "redis://"+redistest.Addr()+"/0", prefix
	if other, err := New(context.Background(), api, slog.New(slog.DiscardHandler), "test"); err != nil {
		t.Errorf("api replica beside the processing one: %v", err)
	} else {
		actx, acancel := context.WithCancel(context.Background())
		acancel()
		if err := other.Run(actx); err != nil {
			t.Errorf("api replica Run: %v", err)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	next, err := New(context.Background(), cfgFor(), slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatalf("New once the first stopped: %v", err)
	}
	nctx, ncancel := context.WithCancel(context.Background())
	ncancel()
	if err := next.Run(nctx); err != nil {
		t.Errorf("Run: %v", err)
	}
}
