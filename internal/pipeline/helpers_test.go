package pipeline

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/telemetry"
)

// base is the event time of the test events: 2025-11-30T06:00:00Z.
const base = int64(1764482400000)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("TWINLINE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func randName(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// waitFor polls cond until it holds, failing t after timeout. Only for
// waiting on Kafka, PostgreSQL or the processor's goroutines.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// event returns an event of machine at base+t with the metrics valued 1, 2, ….
func event(machine string, t int64, metrics ...string) telemetry.Event {
	ev := telemetry.Event{Machine: machine, Time: base + t}
	for i, m := range metrics {
		ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: m, Value: float64(i + 1)})
	}
	return ev
}

// samplesOf returns the samples of events, as the store keeps them.
func samplesOf(evs []telemetry.Event) []telemetry.Sample {
	var out []telemetry.Sample
	for _, ev := range evs {
		for _, m := range ev.Metrics {
			out = append(out, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
		}
	}
	return out
}

func sortSamples(s []telemetry.Sample) []telemetry.Sample {
	slices.SortFunc(s, func(a, b telemetry.Sample) int {
		return cmp.Or(cmp.Compare(a.Machine, b.Machine), cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Time, b.Time))
	})
	return s
}

// offsetStore is an offset-keeping store with its stored samples.
type offsetStore struct {
	kafka.OffsetStore
	// samples returns the stored samples, sorted.
	samples func() []telemetry.Sample
	// pg is the PostgreSQL store, if it is one.
	pg *postgres.Store
}

// memoryStore returns an in-memory offset store.
func memoryStore(*testing.T) (offsetStore, *offsettest.Memory) {
	m := offsettest.NewMemory()
	return offsetStore{OffsetStore: m, samples: m.Samples}, m
}

// pgURL is the server the tests use: TWINLINE_TEST_POSTGRES_URL, else the
// development server.
func pgURL() string {
	if u := os.Getenv("TWINLINE_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// openPG opens a PostgreSQL store in a schema of its own for t (dropped at
// the end), without time bounds. It fails under CI=true when PostgreSQL is
// unreachable, and skips otherwise.
func openPG(t testing.TB) (offsetStore, *postgres.Store) {
	t.Helper()
	return openPGWith(t, nil)
}

// openPGWith is openPG with the store's options changed by mutate.
func openPGWith(t testing.TB, mutate func(*postgres.Options)) (offsetStore, *postgres.Store) {
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
	schema := randName("tl_pipeline_")
	// The rows layout: the tests read the samples table.
	opts := postgres.Options{Schema: schema, Retention: -1, MaxFuture: -1, MaxConns: 8, Layout: postgres.LayoutRows}
	if mutate != nil {
		mutate(&opts)
	}
	st, err := postgres.Open(ctx, pgURL(), opts, testLogger(t), nil)
	if err != nil {
		t.Fatalf("opening store: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = st.Close()
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("dropping schema %s: %v", schema, err)
		}
		admin.Close(ctx)
	})
	samples := func() []telemetry.Sample {
		rows, err := st.Pool().Query(context.Background(),
			`SELECT machine, metric, (extract(epoch FROM time) * 1000)::bigint, value FROM samples ORDER BY 1, 2, 3`)
		if err != nil {
			t.Errorf("reading samples: %v", err)
			return nil
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (telemetry.Sample, error) {
			var s telemetry.Sample
			err := r.Scan(&s.Machine, &s.Metric, &s.Time, &s.Value)
			return s, err
		})
		if err != nil {
			t.Errorf("reading samples: %v", err)
		}
		return out
	}
	return offsetStore{OffsetStore: st, samples: samples, pg: st}, st
}

// pgCount runs a count query on st.
func pgCount(t testing.TB, st *postgres.Store, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := st.Pool().QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// faultyStore wraps an offset store: samples of machine "old", and of
// metric "old" (whatever the machine: they share its Kafka partition), are
// out of the store's bounds (the others are stored, and the offset moves), and
// the next failures commits holding a sample of machine "bad" fail and
// store nothing.
type faultyStore struct {
	inner    kafka.OffsetStore
	mu       sync.Mutex
	failures int
}

var errDiskFull = errors.New("disk full")

// failBad makes the next n commits holding machine "bad" fail.
func (f *faultyStore) failBad(n int) {
	f.mu.Lock()
	f.failures = n
	f.mu.Unlock()
}

// fault returns the error of a commit of samples, and the samples in
// bounds with their indexes in samples.
func (f *faultyStore) fault(samples []telemetry.Sample) (keep []telemetry.Sample, idx []int, old int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, s := range samples {
		if s.Machine == "bad" && f.failures > 0 {
			f.failures--
			return nil, nil, 0, errDiskFull
		}
		if s.Machine == "old" || s.Metric == "old" {
			old++
			continue
		}
		keep, idx = append(keep, s), append(idx, i)
	}
	return keep, idx, old, nil
}

func (f *faultyStore) write(samples []telemetry.Sample, fresh []bool, do func([]telemetry.Sample, []bool) error) error {
	keep, idx, old, err := f.fault(samples)
	if err != nil {
		return err
	}
	var kf []bool
	if fresh != nil {
		clear(fresh)
		kf = make([]bool, len(keep))
	}
	if err := do(keep, kf); err != nil {
		return err
	}
	for i, k := range idx {
		if kf != nil {
			fresh[k] = kf[i]
		}
	}
	if old > 0 {
		return fmt.Errorf("%d samples: %w", old, store.ErrOutOfBounds)
	}
	return nil
}

func (f *faultyStore) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error {
	return f.write(samples, fresh, func(s []telemetry.Sample, fr []bool) error { return f.inner.AppendWithOffsets(ctx, s, fr, c) })
}

func (f *faultyStore) AppendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
	return f.write(samples, fresh, func(s []telemetry.Sample, fr []bool) error { return f.inner.AppendFresh(ctx, s, fr) })
}

func (f *faultyStore) Offsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
	return f.inner.Offsets(ctx, group, topic)
}

// Append is the store without fresh flags: plainStore hides AppendFresh.
func (f *faultyStore) Append(ctx context.Context, samples []telemetry.Sample) error {
	return f.AppendFresh(ctx, samples, nil)
}

// plainStore is a store that does not report which samples it held: the
// engine decides sample duplicates.
type plainStore struct{ f *faultyStore }

func (p plainStore) Append(ctx context.Context, samples []telemetry.Sample) error {
	return p.f.Append(ctx, samples)
}

// newCluster starts a kfake cluster of one broker with a topic of its own
// of the given partitions, closed at the end of t.
func newCluster(t testing.TB, partitions int32, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	topic := randName("twinline.test.")
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic)}, opts...)...)
	if err != nil {
		t.Fatalf("starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c, topic
}

// fastGroup makes a group member notice rebalances quickly.
var fastGroup = kafka.WithClientOptions(
	kgo.HeartbeatInterval(100*time.Millisecond),
	kgo.SessionTimeout(6*time.Second),
	kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }),
)

func newProducer(t testing.TB, brokers []string, topic string, opts ...kafka.Option) *kafka.Producer {
	t.Helper()
	p, err := kafka.NewProducer(brokers, topic, testLogger(t), nil, opts...)
	if err != nil {
		t.Fatalf("NewProducer: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// endOffsets returns the nonzero end offsets of topic's partitions.
func endOffsets(t testing.TB, brokers []string, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("listing end offsets: %v", err)
	}
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			t.Fatalf("end offset of partition %d: %v", o.Partition, o.Err)
		}
		if o.Offset != 0 {
			out[o.Partition] = o.Offset
		}
	})
	return out
}

// storedOffsets reads st's offsets of group.
func storedOffsets(t testing.TB, st kafka.OffsetStore, group, topic string) map[int32]int64 {
	t.Helper()
	offs, err := st.Offsets(context.Background(), group, topic)
	if err != nil {
		t.Fatalf("Offsets: %v", err)
	}
	return offs
}

// kevents returns n events per machine, over machines machines, each with a
// seq and two metrics, at distinct times from offset k.
func kevents(machines, n, k int) []telemetry.Event {
	out := make([]telemetry.Event, 0, machines*n)
	for i := range n {
		for m := range machines {
			out = append(out, telemetry.Event{
				Machine: fmt.Sprintf("m-%03d", m),
				Seq:     uint64(k + i), HasSeq: true,
				Time:    base + int64(k+i)*100,
				Metrics: []telemetry.Metric{{Name: "temp", Value: float64(k + i)}, {Name: "rpm", Value: float64(m)}},
			})
		}
	}
	return out
}
