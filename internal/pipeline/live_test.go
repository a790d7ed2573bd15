package pipeline

import (
	"cmp"
	"context"
	"encoding/json"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	gocmp "github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// The live stream on a durable log (ADR 0017), with the real parts: kfake,
// PostgreSQL, the hub and a WebSocket client of it.

// liveStream is a hub behind an HTTP server and one WebSocket client of
// every machine's stream, which records what it receives.
type liveStream struct {
	hub *hub.Hub
	reg *prometheus.Registry

	mu   sync.Mutex
	msgs []streamMsg // samples messages, in arrival order
	err  error
	got  chan struct{} // a token per samples message
}

// streamMsg is a samples message as a client decodes it.
type streamMsg struct {
	Seq      uint64 `json:"seq"`
	Type     string `json:"type"`
	Machine  string `json:"machine"`
	IngestTs int64  `json:"ingestTs"`
	Samples  []struct {
		Metric string  `json:"metric"`
		TS     int64   `json:"ts"`
		Value  float64 `json:"value"`
	} `json:"samples"`
}

// sampleKey is what a client deduplicates samples by: the store's key.
type sampleKey struct {
	machine, metric string
	ts              int64
}

func newLiveStream(t *testing.T) *liveStream {
	t.Helper()
	ls := &liveStream{reg: prometheus.NewRegistry(), got: make(chan struct{}, 1<<16)}
	ls.hub = hub.New(hub.Options{}, testLogger(t), ls.reg)
	srv := httptest.NewServer(ls.hub)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/api/v1/stream?all=1", nil)
	if err != nil {
		t.Fatalf("dialing the stream: %v", err)
	}
	conn.SetReadLimit(-1)
	hello := make(chan struct{})
	go func() {
		for first := true; ; first = false {
			_, b, err := conn.Read(context.Background())
			if first {
				close(hello)
			}
			if err != nil {
				return
			}
			var m streamMsg
			if err := json.Unmarshal(b, &m); err != nil {
				ls.mu.Lock()
				ls.err = err
				ls.mu.Unlock()
				return
			}
			if m.Type == "samples" {
				ls.mu.Lock()
				ls.msgs = append(ls.msgs, m)
				ls.mu.Unlock()
				ls.got <- struct{}{}
			}
		}
	}()
	<-hello // registered: what is published from now on reaches it
	t.Cleanup(func() {
		conn.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ls.hub.Shutdown(ctx)
		srv.Close()
	})
	return ls
}

// sinks returns the processor's sinks: the hub is the Live sink, as in app;
// batch, if not nil, is the Batch sink.
func (ls *liveStream) sinks(batch func(*telemetry.Batch, []telemetry.Sample)) Sinks {
	return Sinks{
		Live: func(_ context.Context, b *telemetry.Batch, samples []telemetry.Sample) {
			ls.hub.PublishSamples(samples, b.Received)
		},
		Batch: batch,
	}
}

// received returns every sample the client received, in order, shown
// twice or not, and the seqs of their messages.
func (ls *liveStream) received(t *testing.T) (samples []sampleKey, seqs []uint64) {
	t.Helper()
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.err != nil {
		t.Fatalf("decoding a stream message: %v", ls.err)
	}
	for _, m := range ls.msgs {
		seqs = append(seqs, m.Seq)
		for _, s := range m.Samples {
			samples = append(samples, sampleKey{m.Machine, s.Metric, s.TS})
		}
	}
	return samples, seqs
}

// dedup is what a client does with re-shown samples: it keeps the first of
// each (machine, metric, ts).
func dedup(samples []sampleKey) []sampleKey {
	seen := map[sampleKey]bool{}
	var out []sampleKey
	for _, s := range samples {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func keysOf(samples []telemetry.Sample) []sampleKey {
	out := make([]sampleKey, len(samples))
	for i, s := range samples {
		out[i] = sampleKey{s.Machine, s.Metric, s.Time}
	}
	return out
}

func sortKeys(ks []sampleKey) []sampleKey {
	slices.SortFunc(ks, func(a, b sampleKey) int {
		return cmp.Or(strings.Compare(a.machine, b.machine), strings.Compare(a.metric, b.metric), cmp.Compare(a.ts, b.ts))
	})
	return ks
}

// histogramOf returns the sample count and sum of h.
func histogramOf(t *testing.T, h prometheus.Metric) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// offsetLock holds the row lock of a partition's stored offset in a
// transaction of its own, as a long transaction of another client would:
// a commit of that partition waits for it.
type offsetLock struct {
	tx  pgx.Tx
	pid uint32
}

func lockOffset(t *testing.T, pg *postgres.Store, group, topic string, partition int32) *offsetLock {
	t.Helper()
	ctx := context.Background()
	tx, err := pg.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM consumer_offsets
		WHERE group_id = $1 AND topic = $2 AND partition = $3 FOR UPDATE) locked`, group, topic, partition).Scan(&n); err != nil || n != 1 {
		t.Fatalf("locking the offset row: %d rows, %v", n, err)
	}
	l := &offsetLock{tx: tx}
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&l.pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return l
}

// blocked returns the backends waiting for the lock.
func (l *offsetLock) blocked(t *testing.T, pg *postgres.Store) []uint32 {
	t.Helper()
	rows, err := pg.Pool().Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, l.pid)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

func (l *offsetLock) release(t *testing.T) {
	t.Helper()
	if err := l.tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// startKafkaLegs is startKafka with the processor's legs observed into
// legs (by leg name), on a fresh registry.
func startKafkaLegs(t *testing.T, brokers []string, topic string, st kafka.OffsetStore, sinks Sinks, legs *prometheus.HistogramVec) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := kafka.NewConsumer(brokers, topic, "g", st, testLogger(t), reg, fastGroup)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(c, "kafka", stream.DefaultEngineConfig(), sinks, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	if legs != nil {
		p.ObserveLegs(Legs{LogWait: legs.WithLabelValues("log_wait"), Engine: legs.WithLabelValues("engine"), StoreCommit: legs.WithLabelValues("store_commit")})
	}
	r := run(p)
	r.consumer, r.reg = c, reg
	t.Cleanup(func() {
		if err := r.stop(t); err != nil {
			t.Errorf("processor: %v", err)
		}
	})
	return r
}

// oneBatchPerAppend makes the test's producer send each Append as one
// record batch (a linger longer than an Append takes): with the default
// linger of 0 the first record goes alone and the rest follow, and a
// test's batch could take more reads than the processor's lead of three
// (rounds) allows while a commit is held.
func oneBatchPerAppend() kafka.Option {
	t := kafka.DefaultTuning()
	t.Linger = 50 * time.Millisecond
	return kafka.WithTuning(t)
}

// TestKafkaLiveBeforeCommit: on Kafka the stream gets a batch's samples
// while its PostgreSQL commit is held open (another transaction holds the
// partition's offset row; the processor's commit waits for it), and the
// processor goes on reading and showing the next batches meanwhile. Once
// the lock goes, each sample is stored once, the Batch sink (the twin's
// state) gets each once after its commit, and the stream showed each
// once; the legs and twinline_ingest_durable_seconds moved.
func TestKafkaLiveBeforeCommit(t *testing.T) {
	t.Parallel()
	st, pg := openPGWith(t, func(o *postgres.Options) { o.WriteTimeout = time.Minute })
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic, oneBatchPerAppend())
	ls := newLiveStream(t)
	var sl sinkLog
	legs := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "legs", Buckets: telemetry.LatencyBuckets()}, []string{"leg"})
	r := startKafkaLegs(t, brokers, topic, st, ls.sinks(sl.sinks().Batch), legs)

	evs := kevents(2, 30, 0) // 60 events, 120 samples
	send := func(evs []telemetry.Event) {
		t.Helper()
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: time.Now().UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	shown := func(n int) func() bool {
		return func() bool { got, _ := ls.received(t); return len(got) >= n }
	}
	send(evs[:10])
	waitFor(t, 20*time.Second, "the first batch stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })
	waitFor(t, 20*time.Second, "the first batch shown", shown(20))

	lock := lockOffset(t, pg, "g", topic, 0)
	send(evs[10:20])
	waitFor(t, 20*time.Second, "the second batch shown while its commit waits", shown(40))
	waitFor(t, 20*time.Second, "the processor's commit waiting for the lock", func() bool { return len(lock.blocked(t, pg)) == 1 })
	send(evs[20:])
	waitFor(t, 20*time.Second, "the third batch shown while the second commits", shown(120))
	if got := storedOffsets(t, st, "g", topic)[0]; got != 10 {
		t.Fatalf("stored offset %d while the commit waits, want 10", got)
	}
	if got := len(st.samples()); got != 20 {
		t.Fatalf("%d samples stored while the commit waits, want the first batch's 20", got)
	}
	if got := len(sl.sunk()); got != 20 {
		t.Errorf("the Batch sink got %d samples before their commit, want the first batch's 20", got)
	}

	lock.release(t)
	waitFor(t, 20*time.Second, "every batch stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == int64(len(evs)) })
	want := sortSamples(samplesOf(evs))
	if diff := gocmp.Diff(st.samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	waitFor(t, 20*time.Second, "the Batch sink fed", func() bool { return len(sl.sunk()) >= len(want) })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if diff := gocmp.Diff(sortKeys(keysOf(sl.sunk())), sortKeys(keysOf(want)), gocmp.AllowUnexported(sampleKey{})); diff != "" {
		t.Errorf("Batch sink samples (-got +want):\n%s", diff)
	}
	got, _ := ls.received(t)
	if diff := gocmp.Diff(sortKeys(got), sortKeys(keysOf(want)), gocmp.AllowUnexported(sampleKey{})); diff != "" {
		t.Errorf("samples on the stream, each once (-got +want):\n%s", diff)
	}
	for _, leg := range []string{"log_wait", "engine", "store_commit"} {
		if count, _ := histogramOf(t, legs.WithLabelValues(leg).(prometheus.Histogram)); count == 0 {
			t.Errorf("leg %s: no observation", leg)
		}
	}
	if count, _ := histogramOf(t, r.p.durable); count < 3 {
		t.Errorf("twinline_ingest_durable_seconds: %d observations, want one per batch (3)", count)
	}
}

// TestKafkaCrashLiveDedup: a processor shows a batch and crashes in its
// commit (its PostgreSQL backend is killed while the commit waits for a
// lock, then the processor stops: nothing of the group is committed). The
// processor that takes the partition over reads the batch again from the
// stored offset and shows it again (new messages, new seqs); once its
// commit goes through, PostgreSQL holds each sample exactly once, and a
// client that drops the samples it has by (machine, metric, ts) — the
// stream's seqs order messages, they do not name samples — sees each
// sample once.
func TestKafkaCrashLiveDedup(t *testing.T) {
	t.Parallel()
	st, pg := openPGWith(t, func(o *postgres.Options) { o.WriteTimeout = time.Minute })
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic, oneBatchPerAppend())
	ls := newLiveStream(t)
	evs := kevents(2, 20, 0) // 40 events, 80 samples
	send := func(evs []telemetry.Event) {
		t.Helper()
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: time.Now().UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	shown := func(n int) func() bool {
		return func() bool { got, _ := ls.received(t); return len(got) >= n }
	}

	a := startKafkaLegs(t, brokers, topic, st, ls.sinks(nil), nil)
	send(evs[:10])
	waitFor(t, 20*time.Second, "a stores the first batch", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })
	lock := lockOffset(t, pg, "g", topic, 0)
	send(evs[10:])
	waitFor(t, 20*time.Second, "a shows the second batch", shown(80))
	var blocked []uint32
	waitFor(t, 20*time.Second, "a's commit waiting for the lock", func() bool { blocked = lock.blocked(t, pg); return len(blocked) == 1 })

	// The crash: a's transaction dies with its connection, and a stops.
	a.cancel()
	if _, err := pg.Pool().Exec(context.Background(), `SELECT pg_terminate_backend($1)`, blocked[0]); err != nil {
		t.Fatal(err)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := storedOffsets(t, st, "g", topic)[0]; got != 10 {
		t.Fatalf("stored offset %d after the crash, want 10: the second batch's commit went through", got)
	}

	b := startKafkaLegs(t, brokers, topic, st, ls.sinks(nil), nil)
	waitFor(t, 30*time.Second, "b shows the second batch again", shown(80+60))
	lock.release(t)
	waitFor(t, 20*time.Second, "b stores the second batch", func() bool { return storedOffsets(t, st, "g", topic)[0] == int64(len(evs)) })
	if err := b.stop(t); err != nil {
		t.Fatal(err)
	}

	want := sortSamples(samplesOf(evs))
	if diff := gocmp.Diff(st.samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if got := pgCount(t, pg, "SELECT coalesce(sum(count), 0) FROM sample_aggs"); got != int64(len(want)) {
		t.Errorf("aggregates count %d samples, want %d", got, len(want))
	}
	got, seqs := ls.received(t)
	if len(got) != len(want)+60 {
		t.Errorf("the stream carried %d samples, want %d: the second batch's 60 twice", len(got), len(want)+60)
	}
	if !slices.IsSorted(seqs) || len(slices.Compact(slices.Clone(seqs))) != len(seqs) {
		t.Errorf("message seqs not strictly increasing: %v", seqs)
	}
	if diff := gocmp.Diff(sortKeys(dedup(got)), sortKeys(keysOf(want)), gocmp.AllowUnexported(sampleKey{})); diff != "" {
		t.Errorf("samples a client keeps, deduplicated by (machine, metric, ts) (-got +want):\n%s", diff)
	}
}

// TestKafkaRetryNotShownAgain: while the store fails, the consumer reads a
// partition again and again from its stored offset (and the batches read
// ahead of a failed commit are stale: neither committed nor shown again);
// the Live sink gets each sample once all the same, and once the store is
// back each is stored once.
func TestKafkaRetryNotShownAgain(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic, oneBatchPerAppend())
	st, m := memoryStore(t)
	var mu sync.Mutex
	var live []telemetry.Sample
	sinks := Sinks{Live: func(_ context.Context, _ *telemetry.Batch, samples []telemetry.Sample) {
		mu.Lock()
		live = append(live, samples...)
		mu.Unlock()
	}}
	r := startKafkaLegs(t, brokers, topic, st, sinks, nil)
	waitFor(t, 20*time.Second, "partitions assigned", func() bool { return len(r.consumer.Assigned()) == 2 })
	m.FailWith(func() error { return errDiskFull })
	evs := kevents(4, 30, 0)
	for k := 0; k < len(evs); k += 8 {
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[k:min(k+8, len(evs))], Received: time.Now().UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "commits failing", func() bool {
		return r.metric(t, "twinline_kafka_commits_total", "outcome", "error") >= 4
	})
	m.FailWith(nil)
	waitFor(t, 20*time.Second, "every sample stored", func() bool { return m.Len() == 2*len(evs) })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if m.Repeats() != 0 {
		t.Errorf("%d samples stored twice", m.Repeats())
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := gocmp.Diff(sortSamples(live), sortSamples(samplesOf(evs))); diff != "" {
		t.Errorf("samples the Live sink got, each once (-got +want):\n%s", diff)
	}
}
