package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"

	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/tcpproxy"
)

// testURL is the PostgreSQL the tests use: TWINLINE_TEST_POSTGRES_URL, else
// the development server.
func testURL() string {
	if u := os.Getenv("TWINLINE_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// adminConn connects to the test server: it fails the test under CI=true
// when the server is unreachable, and skips it otherwise.
func adminConn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testURL())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s unreachable (CI=true): %v", testURL(), err)
		}
		t.Skipf("PostgreSQL at %s unreachable, skipping (set CI=true to fail instead): %v", testURL(), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// newSchema returns the name of a schema of its own for t, dropped at the
// end of t. The store creates it.
func newSchema(t testing.TB) string {
	t.Helper()
	conn := adminConn(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "tl_test_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", name, err)
		}
	})
	return name
}

// testNow is the fixed clock of the tests: 12 hours after the conformance
// suite's base time.
var testNow = time.UnixMilli(storetest.Base).Add(12 * time.Hour).UTC()

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// openTest opens a store in a schema of its own (unless opts.Schema is
// set) on url (default testURL), closed at the end of t.
func openTest(t testing.TB, url string, opts Options) *Store {
	t.Helper()
	if opts.Schema == "" {
		opts.Schema = newSchema(t)
	} else {
		adminConn(t)
	}
	if url == "" {
		url = testURL()
	}
	if opts.Now == nil {
		opts.Now = func() time.Time { return testNow }
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = 4
	}
	if opts.Layout == "" {
		// The tests written for the rows layout read its tables; those of
		// the packed layout ask for it.
		opts.Layout = LayoutRows
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, url, opts, testLogger(t), nil)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// proxy is a TCP proxy whose connections the test can cut.
type proxy = tcpproxy.Proxy

func newProxy(t testing.TB, target string) *proxy { return tcpproxy.New(t, target) }

// proxyURL returns the URL of the test database through p.
func proxyURL(p *proxy) string {
	return "postgres://postgres@" + p.Addr() + "/postgres?sslmode=disable"
}

// targetAddr returns host:port of the test server.
func targetAddr(t testing.TB) string {
	cfg, err := pgx.ParseConfig(testURL())
	if err != nil {
		t.Fatalf("parsing %s: %v", testURL(), err)
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// testCounter reads a counter's value.
func testCounter(c interface{ Write(*dto.Metric) error }) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return math.NaN()
	}
	return m.GetCounter().GetValue()
}
