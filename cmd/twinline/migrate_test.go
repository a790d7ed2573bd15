package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/store/storetest"
)

// TestMigratePackedCommand runs `twinline migrate --packed` on a store in
// the rows layout: the samples move, and the store opens packed after.
func TestMigratePackedCommand(t *testing.T) {
	url := os.Getenv("TWINLINE_TEST_POSTGRES_URL")
	if url == "" {
		url = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s unreachable (CI=true): %v", url, err)
		}
		t.Skipf("PostgreSQL at %s unreachable, skipping: %v", url, err)
	}
	defer admin.Close(ctx)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tl_test_" + hex.EncodeToString(b)
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+schema+" CASCADE") })
	schemaURL := url + "&search_path=" + schema

	rows, err := postgres.Open(ctx, schemaURL, postgres.Options{Layout: postgres.LayoutRows}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-30 * time.Hour).Truncate(time.Hour).UnixMilli()
	samples := append(storetest.Samples("m1", "x", start, 10*time.Second, 2000, func(i int) float64 { return float64(i) }),
		storetest.Samples("m2", "y", start, 10*time.Second, 2000, func(i int) float64 { return -float64(i) })...)
	if err := rows.Append(ctx, samples); err != nil {
		t.Fatal(err)
	}
	_ = rows.Close()

	var out bytes.Buffer
	if err := run(ctx, []string{"migrate", "--postgres-url", schemaURL, "--packed", "--batch-series", "1"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatalf("migrate --packed: %v", err)
	}
	if !strings.Contains(out.String(), "layout packed: 4000 samples moved") {
		t.Errorf("migrate --packed printed %q", out.String())
	}
	packed, err := postgres.Open(ctx, schemaURL, postgres.Options{Layout: postgres.LayoutPacked}, nil, nil)
	if err != nil {
		t.Fatalf("opening the migrated store packed: %v", err)
	}
	defer packed.Close()
	got := storetest.SelectAll(t, packed, store.SeriesKey{Machine: "m2", Metric: "y"}, math.MinInt64, math.MaxInt64)
	if diff := cmp.Diff(got, storetest.Points(samples[2000:])); diff != "" {
		t.Errorf("m2/y after migration (-got +want):\n%s", diff)
	}
}
