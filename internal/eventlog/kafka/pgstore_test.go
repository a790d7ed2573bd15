package kafka

import (
	"context"
	"errors"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// pgURL is the server the tests use: TWINLINE_TEST_POSTGRES_URL, else the
// development server.
func pgURL() string {
	if u := os.Getenv("TWINLINE_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// openPG creates a database of its own for t (dropped at the end) and
// opens a store on it. It fails under CI=true when PostgreSQL is
// unreachable, and skips otherwise.
func openPG(t testing.TB) (*postgres.Store, *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, pgURL())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL at %s unreachable (CI=true): %v", pgURL(), err)
		}
		t.Skipf("PostgreSQL at %s unreachable, skipping (set CI=true to fail instead): %v", pgURL(), err)
	}
	name := randName("tl_kafka_")
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database: %v", err)
	}
	u, err := url.Parse(pgURL())
	if err != nil {
		t.Fatalf("parsing %s: %v", pgURL(), err)
	}
	u.Path = "/" + name
	dsn := u.String()
	st, err := postgres.Open(ctx, dsn, postgres.Options{Retention: -1, MaxFuture: -1, MaxConns: 8}, testLogger(t), nil)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn.Close(ctx)
		_ = st.Close()
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping database %s: %v", name, err)
		}
		admin.Close(ctx)
	})
	return st, conn
}

func count(t testing.TB, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestPGStoreFence(t *testing.T) {
	t.Parallel()
	st, conn := openPG(t)
	s := NewPGStore(st)
	ctx := context.Background()
	a := []telemetry.Sample{{Machine: "m", Metric: "v", Time: base, Value: 1}}
	b := []telemetry.Sample{{Machine: "m", Metric: "v", Time: base + 1, Value: 2}}
	steps := []struct {
		name     string
		samples  []telemetry.Sample
		next     int64
		expected int64
		fenced   bool
	}{
		{"first commit", a, 5, -1, false},
		{"second first commit", b, 7, -1, true},
		{"stale expected", b, 7, 3, true},
		{"expected", b, 9, 5, false},
		{"replayed range", a, 9, 5, true},
	}
	for _, step := range steps {
		err := s.AppendWithOffsets(ctx, step.samples, "g", "t", 0, step.next, step.expected)
		if got := errors.Is(err, ErrFenced); got != step.fenced || (!step.fenced && err != nil) {
			t.Fatalf("%s: AppendWithOffsets error = %v, want fenced %v", step.name, err, step.fenced)
		}
	}
	if got := count(t, conn, "SELECT count(*) FROM samples"); got != 2 {
		t.Errorf("%d samples stored, want 2", got)
	}
	offs, err := s.Offsets(ctx, "g", "t")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(offs, map[int32]int64{0: 9}); diff != "" {
		t.Errorf("offsets (-got +want):\n%s", diff)
	}
	if err := st.Ready(); err != nil {
		t.Errorf("store Ready() after fenced commits = %v, want nil", err)
	}
}

// TestPGStoreFenceConcurrent commits from two "processors" that both read
// the same offset: exactly one wins.
func TestPGStoreFenceConcurrent(t *testing.T) {
	t.Parallel()
	st, conn := openPG(t)
	s := NewPGStore(st)
	ctx := context.Background()
	if err := s.AppendWithOffsets(ctx, nil, "g", "t", 3, 10, -1); err != nil {
		t.Fatal(err)
	}
	evs := events(4, 50, 0)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = s.AppendWithOffsets(ctx, samplesOf(evs), "g", "t", 3, int64(20+i), 10) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrFenced):
			t.Errorf("AppendWithOffsets: %v", err)
		}
	}
	if won != 1 {
		t.Errorf("%d commits won, want 1 (errors %v)", won, errs)
	}
	if got := count(t, conn, "SELECT count(*) FROM samples"); got != int64(2*len(evs)) {
		t.Errorf("%d samples stored, want %d", got, 2*len(evs))
	}
	if got := count(t, conn, "SELECT coalesce(sum(count), 0) FROM sample_aggs"); got != int64(2*len(evs)) {
		t.Errorf("aggregates count %d samples, want %d", got, 2*len(evs))
	}
}

// TestPGProcessor runs the whole path: producer → kfake → processor →
// PostgreSQL, with events sent twice; raw samples, aggregates and offsets
// end up exactly once.
func TestPGProcessor(t *testing.T) {
	t.Parallel()
	st, conn := openPG(t)
	c, topic := newCluster(t, 4)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	evs := events(12, 20, 0)
	for range 2 { // the second copy: a client retry
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
			t.Fatal(err)
		}
	}
	s := NewPGStore(st)
	startProcessor(t, brokers, topic, "g", s, stream.Sinks{})
	ends := nonZero(endOffsets(t, brokers, topic))
	waitFor(t, 30*time.Second, "offsets at the end", func() bool {
		return cmp.Equal(storedOffsets(t, s, "g", topic), ends)
	})
	if got := count(t, conn, "SELECT count(*) FROM samples"); got != int64(2*len(evs)) {
		t.Errorf("%d samples stored, want %d", got, 2*len(evs))
	}
	if got := count(t, conn, "SELECT coalesce(sum(count), 0) FROM sample_aggs"); got != int64(2*len(evs)) {
		t.Errorf("aggregates count %d samples, want %d", got, 2*len(evs))
	}
	if got := count(t, conn, "SELECT count(*) FROM consumer_offsets WHERE group_id = 'g' AND topic = $1", topic); got != int64(len(ends)) {
		t.Errorf("%d offset rows, want %d", got, len(ends))
	}
}

// TestPGRebalance is TestRebalance into PostgreSQL: raw samples and the
// aggregates count every event once.
func TestPGRebalance(t *testing.T) {
	t.Parallel()
	st, conn := openPG(t)
	all := rebalance(t, NewPGStore(st), func() int { return int(count(t, conn, "SELECT count(*) FROM samples")) })
	if got := count(t, conn, "SELECT coalesce(sum(count), 0) FROM sample_aggs"); got != int64(2*len(all)) {
		t.Errorf("aggregates count %d samples, want %d", got, 2*len(all))
	}
	var sum float64
	if err := conn.QueryRow(context.Background(), "SELECT coalesce(sum(sum), 0) FROM sample_aggs WHERE metric = 'temp'").Scan(&sum); err != nil {
		t.Fatal(err)
	}
	want := 0.0
	for _, ev := range all {
		want += ev.Metrics[0].Value
	}
	if sum != want {
		t.Errorf("sum of temp in aggregates = %v, want %v", sum, want)
	}
}
