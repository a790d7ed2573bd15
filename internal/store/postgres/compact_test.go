package postgres

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestCompactRepairsInterruptedDetach leaves the head partition of a
// compacted day as an interrupted DETACH … CONCURRENTLY leaves it (pending
// detach: writes for the day fail; or an orphan table: CREATE TABLE IF NOT
// EXISTS skips it), then checks that a write to that day succeeds, that
// compaction packs it and drops the partition, and that a store opened on
// the damaged schema repairs it too.
func TestCompactRepairsInterruptedDetach(t *testing.T) {
	t.Parallel()
	for _, state := range []string{"pending", "orphan"} {
		for _, via := range []string{"write", "open"} {
			t.Run(state+"/"+via, func(t *testing.T) {
				t.Parallel()
				testRepairHead(t, state, via)
			})
		}
	}
}

func testRepairHead(t *testing.T, state, via string) {
	ctx := context.Background()
	schema := newSchema(t)
	opts := Options{Schema: schema, Layout: LayoutPacked}
	s := openTest(t, "", opts)
	d := dayOf(storetest.Base) - 1 // yesterday, closed at testNow
	first := storetest.Samples("m", "x", d*dayMs, time.Minute, 60, func(i int) float64 { return float64(i) })
	mustAppend(t, s, first)
	compactAt := time.UnixMilli(storetest.Base).Add(time.Hour)
	if n, err := s.Compact(ctx, compactAt); err != nil || n != 60 {
		t.Fatalf("Compact: %d, %v; want 60, nil", n, err)
	}
	// The day's partition again, empty, then interrupted on its way out.
	if err := s.createPartitions(ctx, []int64{d}); err != nil {
		t.Fatal(err)
	}
	part := partitionName(headTable, d)
	switch state {
	case "pending":
		// A reader holds a lock on sample_head: the detach's second
		// transaction waits for it and is cancelled.
		reader, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reader.Exec(ctx, "SELECT count(*) FROM sample_head"); err != nil {
			t.Fatal(err)
		}
		conn, err := s.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SET statement_timeout = '300ms'"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "ALTER TABLE sample_head DETACH PARTITION "+part+" CONCURRENTLY"); err == nil {
			t.Fatal("DETACH CONCURRENTLY finished under a reader, want it cancelled")
		}
		_, _ = conn.Exec(ctx, "RESET statement_timeout")
		conn.Release()
		_ = reader.Rollback(ctx)
		var pending bool
		if err := s.pool.QueryRow(ctx, "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = $1::regclass", part).Scan(&pending); err != nil || !pending {
			t.Fatalf("partition %s pending detach: %v, %v; want true", part, pending, err)
		}
	case "orphan":
		if _, err := s.pool.Exec(ctx, "ALTER TABLE sample_head DETACH PARTITION "+part); err != nil {
			t.Fatal(err)
		}
	}
	if via == "open" {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openTest(t, "", opts)
	}
	late := []telemetry.Sample{{Machine: "m", Metric: "x", Time: d*dayMs + 30_000, Value: -1}, first[3]}
	fresh := make([]bool, 2)
	if err := s.AppendFresh(ctx, late, fresh); err != nil {
		t.Fatalf("writing to the day of the interrupted detach: %v", err)
	}
	if diff := cmp.Diff(fresh, []bool{true, false}); diff != "" {
		t.Errorf("fresh flags (-got +want):\n%s", diff)
	}
	if n, err := s.Compact(ctx, compactAt); err != nil || n != 1 {
		t.Fatalf("Compact after the repair: %d, %v; want 1, nil", n, err)
	}
	var left int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname = $1
		AND relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $2)`, part, schema).Scan(&left); err != nil || left != 0 {
		t.Errorf("%s left after compaction: %d, %v; want dropped", part, left, err)
	}
	want := []store.Point{}
	for i, p := range first {
		if i == 0 {
			want = append(want, store.Point{Time: p.Time, Value: p.Value})
			want = append(want, store.Point{Time: late[0].Time, Value: late[0].Value})
			continue
		}
		want = append(want, store.Point{Time: p.Time, Value: p.Value})
	}
	if diff := cmp.Diff(selectAll(t, s, store.SeriesKey{Machine: "m", Metric: "x"}), want); diff != "" {
		t.Errorf("samples (-got +want):\n%s", diff)
	}
}

// TestPackedSeriesIDsNotUsedUp reopens a packed store and writes the same
// series again, as every restart does: resolving known series must not use
// up identity values (an attempted insert does, even when it conflicts),
// so the next new series gets the next id.
func TestPackedSeriesIDsNotUsedUp(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := newSchema(t)
	opts := Options{Schema: schema, Layout: LayoutPacked}
	var batch []telemetry.Sample
	for m := range 5 {
		batch = append(batch, storetest.Samples("m"+string(rune('a'+m)), "x", storetest.Base, time.Second, 3, func(i int) float64 { return float64(i) })...)
	}
	for range 3 {
		s := openTest(t, "", opts)
		mustAppend(t, s, batch)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	s := openTest(t, "", opts)
	mustAppend(t, s, storetest.Samples("new", "x", storetest.Base, time.Second, 1, func(int) float64 { return 0 }))
	var id int32
	if err := s.pool.QueryRow(ctx, "SELECT id FROM series WHERE machine = 'new'").Scan(&id); err != nil || id != 6 {
		t.Errorf("id of the sixth series after three restarts: %d, %v; want 6", id, err)
	}
}

// BenchmarkPackedReplayCompacted replays batches onto a compacted hour
// (the checked path, each sample looked up in its chunk) of 100 series at
// 1 Hz (chunks of 3 600 samples, TOASTed): sparse, 5 000 repeats spread
// over the 100 chunks; dense, the whole hour of 10 series (36 000). Each
// with the per-row search of the offsets, the once-per-chunk anti-join,
// and the choice the store makes (denseReplay).
//
//	go test ./internal/store/postgres/ -run '^$' -bench PackedReplayCompacted -benchtime 10x -count 5
func BenchmarkPackedReplayCompacted(b *testing.B) {
	ctx := context.Background()
	s := openTest(b, "", Options{Layout: LayoutPacked})
	day := storetest.Base - 24*hourMs
	var all []telemetry.Sample
	for m := range 100 {
		all = append(all, storetest.Samples("m"+strconv.Itoa(m), "x", day, time.Second, 3600, func(i int) float64 { return float64(i) })...)
	}
	for i := 0; i < len(all); i += 36000 {
		mustAppend(b, s, all[i:min(i+36000, len(all))])
	}
	if _, err := s.Compact(ctx, time.UnixMilli(storetest.Base).Add(time.Hour)); err != nil {
		b.Fatal(err)
	}
	sparse := make([]telemetry.Sample, 0, 5000)
	for i := range 5000 {
		sparse = append(sparse, all[(i*7919)%len(all)])
	}
	perRow, antiJoin := false, true
	for _, batch := range []struct {
		name    string
		samples []telemetry.Sample
	}{{"sparse", sparse}, {"dense", all[:36000]}} {
		for _, plan := range []struct {
			name  string
			force *bool
		}{{"per-row", &perRow}, {"anti-join", &antiJoin}, {"auto", nil}} {
			b.Run(batch.name+"/"+plan.name, func(b *testing.B) {
				testForceDense = plan.force
				defer func() { testForceDense = nil }()
				b.ReportAllocs()
				for range b.N {
					mustAppend(b, s, batch.samples)
				}
			})
		}
	}
}

// TestPackedDenseReplay replays whole compacted hours (the anti-join plan
// of the checked path) with one new sample among them: only that one is
// stored and fresh.
func TestPackedDenseReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, "", Options{Layout: LayoutPacked})
	day := storetest.Base - 24*hourMs
	var batch []telemetry.Sample
	for _, m := range []string{"a", "b"} {
		batch = append(batch, storetest.Samples(m, "x", day, 10*time.Second, 360, func(i int) float64 { return float64(i) })...)
	}
	mustAppend(t, s, batch)
	if _, err := s.Compact(ctx, time.UnixMilli(storetest.Base).Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	extra := telemetry.Sample{Machine: "b", Metric: "x", Time: day + 5_000, Value: 42}
	replay := append(append([]telemetry.Sample{}, batch...), extra)
	fresh := make([]bool, len(replay))
	if err := s.AppendFresh(ctx, replay, fresh); err != nil {
		t.Fatal(err)
	}
	want := make([]bool, len(replay))
	want[len(want)-1] = true
	if diff := cmp.Diff(fresh, want); diff != "" {
		t.Errorf("fresh flags (-got +want):\n%s", diff)
	}
	var head int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM sample_head").Scan(&head); err != nil || head != 1 {
		t.Errorf("head rows after the replay: %d, %v; want 1", head, err)
	}
}

// TestMaintenanceWaitsForQuietDay writes to a closed day (an import) and
// runs maintenance on an injected clock: it leaves the day in the head
// while the writes are less than compactQuiet old, and packs it once they
// stop. Compact itself packs at once.
func TestMaintenanceWaitsForQuietDay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var clock atomic.Int64
	clock.Store(testNow.UnixMilli())
	s := openTest(t, "", Options{Layout: LayoutPacked, Now: func() time.Time { return time.UnixMilli(clock.Load()) }})
	day := storetest.Base - 24*hourMs
	head := func() (n int) {
		t.Helper()
		if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM sample_head").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	mustAppend(t, s, storetest.Samples("m", "x", day, time.Minute, 60, func(i int) float64 { return float64(i) }))
	clock.Add((compactQuiet - time.Second).Milliseconds())
	s.maintain(ctx)
	if n := head(); n != 60 {
		t.Fatalf("head rows after maintenance during the import: %d, want 60 (not compacted)", n)
	}
	mustAppend(t, s, storetest.Samples("m", "x", day+hourMs, time.Minute, 60, func(i int) float64 { return float64(i) }))
	clock.Add((compactQuiet - time.Second).Milliseconds())
	s.maintain(ctx)
	if n := head(); n != 120 {
		t.Fatalf("head rows after maintenance during the import: %d, want 120 (not compacted)", n)
	}
	clock.Add(time.Second.Milliseconds())
	s.maintain(ctx)
	if n := head(); n != 0 {
		t.Fatalf("head rows after maintenance once the import stopped: %d, want 0", n)
	}
	// Compact does not wait.
	mustAppend(t, s, storetest.Samples("m", "x", day+2*hourMs, time.Minute, 3, func(i int) float64 { return 1 }))
	if n, err := s.Compact(ctx, s.opts.Now()); err != nil || n != 3 {
		t.Fatalf("Compact right after a write: %d, %v; want 3, nil", n, err)
	}
}

// TestRetentionDropsDetachedTables leaves a chunk partition of an old day
// detached but not dropped (a DROP that failed after its DETACH): retention
// drops it, and leaves a detached table of a kept day alone.
func TestRetentionDropsDetachedTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := openTest(t, "", Options{Layout: LayoutPacked, Retention: 48 * time.Hour})
	old, kept := dayOf(testNow.UnixMilli())-5, dayOf(testNow.UnixMilli())
	if err := s.createPartitions(ctx, []int64{old}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []int64{old, kept} {
		if _, err := s.pool.Exec(ctx, "ALTER TABLE sample_chunks DETACH PARTITION "+partitionName(chunksTable, d)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.EnforceRetention(ctx, testNow); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[int64]bool{old: false, kept: true} {
		var exists bool
		if err := s.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", partitionName(chunksTable, d)).Scan(&exists); err != nil || exists != want {
			t.Errorf("%s exists after retention: %v, %v; want %v", partitionName(chunksTable, d), exists, err, want)
		}
	}
}
