package postgres

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestMigratePackedInterrupted fills a rows-layout store over three days,
// migrates it to packed in batches of two series, interrupts the migration
// half-way, and checks that a packed store serves every sample exactly
// once meanwhile (reads through both tables, first-write-wins across them),
// then that a second run finishes: the legacy partitions are gone, the
// samples are those written, and the tiers hold their aggregates.
func TestMigratePackedInterrupted(t *testing.T) {
	schema := newSchema(t)
	ctx := context.Background()
	rows := openTest(t, "", Options{Schema: schema, Layout: LayoutRows})
	var keys []store.SeriesKey
	var all []telemetry.Sample
	for m := range 3 {
		for _, k := range []string{"x", "y"} {
			key := store.SeriesKey{Machine: fmt.Sprintf("m%d", m), Metric: k}
			keys = append(keys, key)
			// From two days before Base to Base + 12 h, every 90 s.
			b := storetest.Samples(key.Machine, key.Metric, storetest.Base-2*24*hourMs, 90*time.Second, (2*24+12)*40,
				func(i int) float64 { return float64(i*(m+1)) / 4 })
			mustAppend(t, rows, b)
			all = append(all, b...)
		}
	}
	want := map[store.SeriesKey][]store.Point{}
	for _, k := range keys {
		want[k] = selectAll(t, rows, k)
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	opts := Options{Schema: schema, Now: func() time.Time { return testNow }}

	// Interrupted after 4 batches (of 2 series) of the first day.
	mctx, cancel := context.WithCancel(ctx)
	batches := 0
	testHookMigrated = func(int64) {
		if batches++; batches == 4 {
			cancel()
		}
	}
	t.Cleanup(func() { testHookMigrated = nil })
	moved, err := MigratePacked(mctx, testURL(), opts, 2, testLogger(t))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted MigratePacked: %d moved, %v; want context.Canceled", moved, err)
	}
	testHookMigrated = nil
	if moved == 0 || moved >= int64(len(all)) {
		t.Fatalf("interrupted MigratePacked moved %d of %d samples, want some", moved, len(all))
	}

	// Half-way: a packed store reads both tables.
	half := openTest(t, "", Options{Schema: schema, Layout: LayoutPacked})
	if !half.packed || !half.legacy.Load() {
		t.Fatalf("half-way store: packed %v, legacy %v; want both", half.packed, half.legacy.Load())
	}
	for _, k := range keys {
		if diff := cmp.Diff(selectAll(t, half, k), want[k]); diff != "" {
			t.Errorf("half-way samples of %v (-got +want):\n%s", k, diff)
		}
	}
	// First-write-wins across the tables: a legacy sample (last day, not
	// moved yet) and a moved one (first day) written again are not fresh.
	again := []telemetry.Sample{all[len(all)-1], all[0]}
	again[0].Value, again[1].Value = -1, -1
	fresh := make([]bool, 2)
	if err := half.AppendFresh(ctx, again, fresh); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fresh, []bool{false, false}); diff != "" {
		t.Errorf("fresh flags of repeated samples (-got +want):\n%s", diff)
	}
	keys0 := store.SeriesKey{Machine: all[0].Machine, Metric: all[0].Metric}
	if got, err := half.AggregateRange(ctx, keys0, storetest.Base-2*24*hourMs, storetest.Base+12*hourMs, time.Hour, store.AggCount); err != nil {
		t.Fatal(err)
	} else if n := sumValues(got); n != float64(len(want[keys0])) {
		t.Errorf("half-way hourly counts of %v sum to %v, want %d", keys0, n, len(want[keys0]))
	}
	if err := half.Close(); err != nil {
		t.Fatal(err)
	}

	// The second run finishes.
	if _, err := MigratePacked(ctx, testURL(), opts, 2, testLogger(t)); err != nil {
		t.Fatalf("resumed MigratePacked: %v", err)
	}
	done := openTest(t, "", Options{Schema: schema, Layout: LayoutPacked})
	if done.legacy.Load() {
		t.Error("legacy partitions left after the migration")
	}
	for _, k := range keys {
		if diff := cmp.Diff(selectAll(t, done, k), want[k]); diff != "" {
			t.Errorf("migrated samples of %v (-got +want):\n%s", k, diff)
		}
	}
	checkTiers(t, done, "")
	var head, chunks int64
	if err := done.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM sample_head), (SELECT count(*) FROM sample_chunks)").Scan(&head, &chunks); err != nil {
		t.Fatal(err)
	}
	// The days closed at testNow (Base + 12 h) are packed: all but today.
	if head != 6*12*40 || chunks != 6*48 {
		t.Errorf("after migration: %d head rows, %d chunks; want %d (today's) and %d", head, chunks, 6*12*40, 6*48)
	}
}

func sumValues(pts []store.Point) float64 {
	var n float64
	for _, p := range pts {
		n += p.Value
	}
	return n
}

// TestMigratePackedFencesRowsWriters writes, from a store still open in
// the rows layout, samples of a new machine while MigratePacked is
// switching the layout (after it created the ids of the legacy series):
// they are moved with the others, none lost; once the switch committed,
// the rows-layout store refuses writes (ErrLayoutChanged) instead of
// writing rows a packed server would not see.
func TestMigratePackedFencesRowsWriters(t *testing.T) {
	schema := newSchema(t)
	ctx := context.Background()
	rows := openTest(t, "", Options{Schema: schema, Layout: LayoutRows})
	old := storetest.Samples("m0", "x", storetest.Base-24*hourMs, 10*time.Minute, 200, func(i int) float64 { return float64(i) })
	mustAppend(t, rows, old)
	added := storetest.Samples("new", "x", storetest.Base-24*hourMs, 15*time.Minute, 24*4, func(i int) float64 { return float64(-i) })
	var hookErr error
	testHookSwitching = func() { hookErr = rows.Append(ctx, added) }
	t.Cleanup(func() { testHookSwitching = nil })
	opts := Options{Schema: schema, Now: func() time.Time { return testNow }}
	if _, err := MigratePacked(ctx, testURL(), opts, 1, testLogger(t)); err != nil {
		t.Fatalf("MigratePacked: %v", err)
	}
	testHookSwitching = nil
	if hookErr != nil {
		t.Fatalf("rows-layout write before the switch: %v", hookErr)
	}
	late := []telemetry.Sample{{Machine: "new", Metric: "x", Time: storetest.Base + 1, Value: 7}}
	if err := rows.Append(ctx, late); !errors.Is(err, ErrLayoutChanged) {
		t.Errorf("rows-layout write after the switch: %v; want ErrLayoutChanged", err)
	}
	packed := openTest(t, "", Options{Schema: schema, Layout: LayoutPacked})
	if packed.legacy.Load() {
		t.Error("legacy partitions left after the migration")
	}
	for key, want := range map[store.SeriesKey][]telemetry.Sample{{Machine: "m0", Metric: "x"}: old, {Machine: "new", Metric: "x"}: added} {
		if diff := cmp.Diff(selectAll(t, packed, key), storetest.Points(want)); diff != "" {
			t.Errorf("samples of %v after the migration (-got +want):\n%s", key, diff)
		}
	}
}

// TestMigratePackedPrecheckLeavesLayout runs MigratePacked on a store it
// cannot move (plain tables, as under TimescaleDB): it fails and leaves
// the store as it was, rows layout and no series ids.
func TestMigratePackedPrecheckLeavesLayout(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	conn := adminConn(t)
	ctx := context.Background()
	id := pgx.Identifier{schema}.Sanitize()
	if _, err := conn.Exec(ctx, `
		CREATE SCHEMA `+id+`;
		CREATE TABLE `+id+`.samples (time timestamptz NOT NULL, machine text NOT NULL, metric text NOT NULL, value double precision NOT NULL);
		CREATE TABLE `+id+`.sample_aggs (bucket timestamptz NOT NULL, machine text NOT NULL, metric text NOT NULL,
			count bigint NOT NULL, sum double precision NOT NULL, min double precision NOT NULL, max double precision NOT NULL,
			min_time timestamptz NOT NULL, max_time timestamptz NOT NULL, PRIMARY KEY (machine, metric, bucket))`); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, "", Options{Schema: schema, Layout: LayoutRows})
	batch := storetest.Samples("m", "x", storetest.Base, time.Second, 30, func(i int) float64 { return float64(i) })
	mustAppend(t, s, batch)
	if _, err := MigratePacked(ctx, testURL(), Options{Schema: schema, Now: func() time.Time { return testNow }}, 10, testLogger(t)); err == nil {
		t.Fatal("MigratePacked of plain tables succeeded, want an error")
	}
	var layout string
	var series int
	if err := conn.QueryRow(ctx, "SELECT (SELECT value FROM "+id+".settings WHERE name = 'layout'), (SELECT count(*) FROM "+id+".series)").Scan(&layout, &series); err != nil {
		t.Fatal(err)
	}
	if layout != LayoutRows || series != 0 {
		t.Errorf("after the failed migration: layout %q, %d series; want %q, 0", layout, series, LayoutRows)
	}
	// The store still writes in the rows layout.
	mustAppend(t, s, storetest.Samples("m", "x", storetest.Base+60_000, time.Second, 3, func(i int) float64 { return 1 }))
}
