package postgres

import (
	"context"
	"errors"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

const sec = int64(1000)

func dayNum(t time.Time) int64 { return dayOf(t.UnixMilli()) }

func partitionDays(t *testing.T, s *Store, table string) []int64 {
	t.Helper()
	days, err := listPartitions(context.Background(), s.pool, table)
	if err != nil {
		t.Fatal(err)
	}
	return days
}

func mustAppend(t testing.TB, s *Store, samples []telemetry.Sample) {
	t.Helper()
	if err := s.Append(context.Background(), samples); err != nil {
		t.Fatalf("Append(%d samples): %v", len(samples), err)
	}
}

func TestMigrateIdempotentAndSerialised(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	url := testURL() + "&search_path=" + schema
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = Migrate(ctx, url, testLogger(t)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent Migrate #%d: %v", i, err)
		}
	}
	if err := Migrate(ctx, url, testLogger(t)); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	conn := adminConn(t)
	var got []int32
	rows, err := conn.Query(ctx, "SELECT version FROM "+pgx.Identifier{schema, "schema_migrations"}.Sanitize()+" ORDER BY version")
	if err == nil {
		got, err = pgx.CollectRows(rows, pgx.RowTo[int32])
	}
	if err != nil {
		t.Fatal(err)
	}
	var want []int32
	for _, m := range ms {
		want = append(want, int32(m.version))
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("schema_migrations (-got +want):\n%s", diff)
	}
	// A store opens on the migrated schema and refuses another window.
	openTest(t, "", Options{Schema: schema})
	if _, err := Open(ctx, testURL(), Options{Schema: schema, Window: time.Minute, Now: func() time.Time { return testNow }}, nil, nil); err == nil {
		t.Errorf("Open with another window: no error")
	}
}

func TestPartitionsAheadAndOnDemand(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{PartitionsAhead: 3, MaxFuture: -1, Retention: 400 * 24 * time.Hour})
	today := dayNum(testNow)
	var want []int64
	for d := today - 1; d <= today+3; d++ {
		want = append(want, d)
	}
	for _, table := range []string{samplesTable, aggsTable} {
		if diff := cmp.Diff(partitionDays(t, s, table), want); diff != "" {
			t.Errorf("%s partitions after Open (-got +want):\n%s", table, diff)
		}
	}

	old := testNow.Add(-200 * 24 * time.Hour)
	future := testNow.Add(40 * 24 * time.Hour)
	mustAppend(t, s, []telemetry.Sample{
		{Machine: "m", Metric: "x", Time: old.UnixMilli(), Value: 1},
		{Machine: "m", Metric: "x", Time: future.UnixMilli(), Value: 2},
		{Machine: "m", Metric: "x", Time: testNow.UnixMilli(), Value: 3},
	})
	want = append([]int64{dayNum(old)}, append(want, dayNum(future))...)
	for _, table := range []string{samplesTable, aggsTable} {
		if diff := cmp.Diff(partitionDays(t, s, table), want); diff != "" {
			t.Errorf("%s partitions after on-demand creation (-got +want):\n%s", table, diff)
		}
	}
	got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64)
	if len(got) != 3 {
		t.Errorf("Select = %v, want 3 points", got)
	}
	// Never a DEFAULT partition.
	var defaults int
	err := s.pool.QueryRow(context.Background(), `
		SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND p.partdefid <> 0`, s.schema).Scan(&defaults)
	if err != nil || defaults != 0 {
		t.Errorf("default partitions = %d (err %v), want none", defaults, err)
	}
	// A second store on the same schema finds the partitions.
	s2 := openTest(t, "", Options{Schema: s.schema, PartitionsAhead: 3, MaxFuture: -1, Retention: 400 * 24 * time.Hour})
	if !s2.parts.has(dayNum(future)) {
		t.Errorf("reopened store does not know the on-demand partition")
	}
}

func TestRetentionDropsPartitions(t *testing.T) {
	t.Parallel()
	now := testNow
	s := openTest(t, "", Options{Retention: 3 * 24 * time.Hour, Now: func() time.Time { return now }})
	ctx := context.Background()
	key := store.SeriesKey{Machine: "m", Metric: "x"}
	day := func(d int) int64 { return now.Add(time.Duration(d) * 24 * time.Hour).UnixMilli() }
	mustAppend(t, s, []telemetry.Sample{
		{Machine: "m", Metric: "x", Time: day(-3), Value: -3},
		{Machine: "m", Metric: "x", Time: day(-2), Value: -2},
		{Machine: "m", Metric: "x", Time: day(0), Value: 0},
	})
	// Samples older than the retention are refused, the others stored.
	err := s.Append(ctx, []telemetry.Sample{
		{Machine: "m", Metric: "x", Time: day(-5), Value: -5},
		{Machine: "m", Metric: "x", Time: day(-1), Value: -1},
	})
	if !errors.Is(err, store.ErrOutOfBounds) {
		t.Fatalf("Append of a too old sample = %v, want store.ErrOutOfBounds", err)
	}
	if got := len(storetest.SelectAll(t, s, key, math.MinInt64, math.MaxInt64)); got != 4 {
		t.Fatalf("stored %d samples, want 4", got)
	}

	// Two days later the partitions of days -3 and -2 are past retention.
	later := now.Add(48 * time.Hour)
	n, err := s.EnforceRetention(ctx, later)
	if err != nil {
		t.Fatalf("EnforceRetention: %v", err)
	}
	for _, table := range []string{samplesTable, aggsTable} {
		days := partitionDays(t, s, table)
		if days[0] != dayNum(later.Add(-3*24*time.Hour)) {
			t.Errorf("%s: oldest partition day %s after retention, want %s", table,
				dayTime(days[0]).Format(time.DateOnly), later.Add(-3*24*time.Hour).Format(time.DateOnly))
		}
	}
	if n != 4 { // days -3 and -2, raw and aggregates
		t.Errorf("EnforceRetention dropped %d partitions, want 4", n)
	}
	want := []store.Point{{Time: day(-1), Value: -1}, {Time: day(0), Value: 0}}
	if diff := cmp.Diff(storetest.SelectAll(t, s, key, math.MinInt64, math.MaxInt64), want); diff != "" {
		t.Errorf("after retention (-got +want):\n%s", diff)
	}
	// The tables were dropped, not emptied.
	var tables int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = $2",
		s.schema, partitionName(samplesTable, dayOf(day(-3)))).Scan(&tables); err != nil || tables != 0 {
		t.Errorf("partition of day -3 still exists (%d, %v)", tables, err)
	}
	if n, err := s.EnforceRetention(ctx, later); err != nil || n != 0 {
		t.Errorf("second EnforceRetention = %d, %v; want 0, nil", n, err)
	}
}

func TestInvalidSamples(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	for _, tt := range []struct{ name, machine, metric string }{
		{"NUL in machine", "m\x00", "x"},
		{"invalid UTF-8 metric", "m", "x\xff"},
		{"NaN value", "m", "nan"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := 1.0
			if tt.metric == "nan" {
				v = math.NaN()
			}
			err := s.Append(context.Background(), []telemetry.Sample{{Machine: tt.machine, Metric: tt.metric, Time: storetest.Base, Value: v}})
			if !errors.Is(err, ErrInvalidSample) {
				t.Errorf("Append = %v, want ErrInvalidSample", err)
			}
		})
	}
	if err := s.Append(context.Background(), []telemetry.Sample{{Machine: "m", Metric: "x", Time: testNow.Add(time.Hour).UnixMilli()}}); !errors.Is(err, store.ErrOutOfBounds) {
		t.Errorf("Append of a sample an hour ahead = %v, want store.ErrOutOfBounds", err)
	}
	if _, err := Open(context.Background(), testURL(), Options{Window: 7 * time.Minute}, nil, nil); err == nil {
		t.Errorf("Open with a window not dividing a day: no error")
	}
}

func TestAppendTxOffsets(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	ctx := context.Background()
	commit := func(off int64) func(pgx.Tx) error {
		return func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `
				INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) VALUES ('g', 't', 0, $1)
				ON CONFLICT (group_id, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()`, off)
			return err
		}
	}
	batch := storetest.Samples("m", "x", storetest.Base, time.Second, 10, func(i int) float64 { return float64(i) })
	if err := s.appendTx(ctx, batch, nil, commit(10)); err != nil {
		t.Fatalf("appendTx: %v", err)
	}
	// A failing extra rolls the samples back with it.
	boom := errors.New("boom")
	next := storetest.Samples("m", "x", storetest.Base+10*sec, time.Second, 5, func(i int) float64 { return 1 })
	if err := s.appendTx(ctx, next, nil, func(pgx.Tx) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("appendTx with failing extra = %v, want %v", err, boom)
	}
	// A replay with its offsets: duplicates are skipped, offsets still move.
	if err := s.appendTx(ctx, append(batch, next...), nil, commit(15)); err != nil {
		t.Fatalf("appendTx replay: %v", err)
	}
	var off int64
	if err := s.pool.QueryRow(ctx, "SELECT next_offset FROM consumer_offsets").Scan(&off); err != nil || off != 15 {
		t.Errorf("offset = %d (%v), want 15", off, err)
	}
	got := storetest.SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64)
	if diff := cmp.Diff(got, storetest.Points(append(batch, next...))); diff != "" {
		t.Errorf("samples (-got +want):\n%s", diff)
	}
	checkAggregates(t, s, "")
}

// tb is what checkAggregates needs of a *testing.T or *rapid.T.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
}

// aggRowT is one row of sample_aggs, for comparisons.
type aggRowT struct {
	Bucket          int64
	Machine, Metric string
	Count           int64
	Sum, Min, Max   float64
	MinTime         int64
	MaxTime         int64
}

// checkAggregates compares sample_aggs with the aggregates recomputed from
// the raw rows (brute force, in SQL) for the machines starting with prefix.
func checkAggregates(t tb, s *Store, prefix string) {
	t.Helper()
	ctx := context.Background()
	read := func(q string) []aggRowT {
		rows, err := s.pool.Query(ctx, q, prefix+"%", s.opts.Window)
		if err != nil {
			t.Fatalf("reading aggregates: %v", err)
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (aggRowT, error) {
			var a aggRowT
			var b, mint, maxt time.Time
			err := r.Scan(&b, &a.Machine, &a.Metric, &a.Count, &a.Sum, &a.Min, &a.Max, &mint, &maxt)
			a.Bucket, a.MinTime, a.MaxTime = b.UnixMilli(), mint.UnixMilli(), maxt.UnixMilli()
			return a, err
		})
		if err != nil {
			t.Fatalf("reading aggregates: %v", err)
		}
		return out
	}
	got := read(`SELECT bucket, machine, metric, count, sum, min, max, min_time, max_time FROM sample_aggs
		WHERE machine LIKE $1 AND $2::interval IS NOT NULL ORDER BY machine, metric, bucket`)
	want := read(`SELECT date_bin($2::interval, time, timestamptz 'epoch') b, machine, metric, count(*), sum(value), min(value), max(value),
			(array_agg(time ORDER BY value, time))[1], (array_agg(time ORDER BY value DESC, time))[1]
		FROM samples WHERE machine LIKE $1 GROUP BY 1, 2, 3 ORDER BY machine, metric, b`)
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("stored aggregates differ from the raw rows' (-got +want):\n%s", diff)
	}
}

func TestReplayAndLateSamplesKeepAggregates(t *testing.T) {
	t.Parallel()
	s := openTest(t, "", Options{})
	base := storetest.Base
	batch := storetest.Samples("m", "x", base, time.Second, 60, func(i int) float64 { return float64(i) })
	mustAppend(t, s, batch)
	checkAggregates(t, s, "")
	mustAppend(t, s, batch) // replayed as is
	changed := slices.Clone(batch[10:30])
	for i := range changed {
		changed[i].Value = 1e6
	}
	mustAppend(t, s, changed) // replayed with other values: first write wins
	late := []telemetry.Sample{
		{Machine: "m", Metric: "x", Time: base + 5500, Value: -7},  // into a stored window
		{Machine: "m", Metric: "x", Time: base - 2500, Value: 99},  // into a new window before
		{Machine: "m", Metric: "x", Time: base + 5500, Value: 123}, // duplicate within the batch
	}
	mustAppend(t, s, append(late, batch[:3]...))
	checkAggregates(t, s, "")
	want := []store.Point{{Time: base, Value: 11}, {Time: base + 10*sec, Value: 10}}
	got, err := s.AggregateRange(context.Background(), store.SeriesKey{Machine: "m", Metric: "x"}, base, base+20*sec-1, 10*time.Second, store.AggCount)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("counts per window (-got +want):\n%s", diff)
	}
}

// TestUnpartitionedTables opens a store whose tables were created as plain
// tables before the migrations, as for TimescaleDB hypertables: it must not
// try to create partitions, and must still store and aggregate.
func TestUnpartitionedTables(t *testing.T) {
	t.Parallel()
	schema := newSchema(t)
	conn := adminConn(t)
	id := pgx.Identifier{schema}.Sanitize()
	_, err := conn.Exec(context.Background(), `
		CREATE SCHEMA `+id+`;
		CREATE TABLE `+id+`.samples (time timestamptz NOT NULL, machine text NOT NULL, metric text NOT NULL, value double precision NOT NULL);
		CREATE TABLE `+id+`.sample_aggs (bucket timestamptz NOT NULL, machine text NOT NULL, metric text NOT NULL,
			count bigint NOT NULL, sum double precision NOT NULL, min double precision NOT NULL, max double precision NOT NULL,
			min_time timestamptz NOT NULL, max_time timestamptz NOT NULL, PRIMARY KEY (machine, metric, bucket))`)
	if err != nil {
		t.Fatal(err)
	}
	s := openTest(t, "", Options{Schema: schema})
	if !s.unmanaged {
		t.Fatal("store manages partitions of a plain table")
	}
	batch := storetest.Samples("m", "x", storetest.Base, time.Second, 30, func(i int) float64 { return float64(i) })
	mustAppend(t, s, batch)
	mustAppend(t, s, batch)
	if diff := cmp.Diff(storetest.SelectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}, math.MinInt64, math.MaxInt64), storetest.Points(batch)); diff != "" {
		t.Errorf("Select (-got +want):\n%s", diff)
	}
	checkAggregates(t, s, "")
	if n, err := s.EnforceRetention(context.Background(), testNow.Add(365*24*time.Hour)); err != nil || n != 0 {
		t.Errorf("EnforceRetention without TimescaleDB = %d, %v; want 0, nil", n, err)
	}
}

func TestMetricsAndReady(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	schema := newSchema(t)
	p := newProxy(t, targetAddr(t))
	s, err := Open(context.Background(), proxyURL(p), Options{Schema: schema, SpoolDir: t.TempDir(), MaxConns: 2,
		Now: func() time.Time { return testNow }}, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	batch := storetest.Samples("m", "x", storetest.Base, time.Second, 20, func(i int) float64 { return float64(i) })
	mustAppend(t, s, batch)
	mustAppend(t, s, batch)
	p.Cut()
	mustAppend(t, s, storetest.Samples("m", "x", storetest.Base+100*sec, time.Second, 5, func(i int) float64 { return 1 }))
	err = s.Ready()
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "postgres unreachable") {
		t.Errorf("Ready = %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.Counter != nil:
			got[mf.GetName()] = m.GetCounter().GetValue()
		case m.Gauge != nil:
			got[mf.GetName()] = m.GetGauge().GetValue()
		case m.Histogram != nil:
			got[mf.GetName()] = float64(m.GetHistogram().GetSampleCount())
		}
	}
	for name, want := range map[string]float64{
		"twinline_postgres_rows_written_total":   20,
		"twinline_postgres_rows_duplicate_total": 20,
		"twinline_postgres_spooled_rows_total":   5,
		"twinline_postgres_unreachable":          1,
		"twinline_postgres_append_seconds":       3,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	if got["twinline_postgres_spool_bytes"] <= 0 || got["twinline_postgres_pool_max_conns"] != 2 {
		t.Errorf("spool bytes %v, pool max conns %v", got["twinline_postgres_spool_bytes"], got["twinline_postgres_pool_max_conns"])
	}
}
