package pipeline

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/telemetry"
)

// The Kafka-only tests: what has no in-process counterpart (partitions,
// rebalances, fences, stored offsets, bad records, the broker). Those
// with "Stores" in their name run on the in-memory offset store and on
// PostgreSQL.

type kafkaStore struct {
	name string
	open func(t *testing.T) offsetStore
}

func kafkaStores() []kafkaStore {
	return []kafkaStore{
		{"memory", func(t *testing.T) offsetStore { st, _ := memoryStore(t); return st }},
		{"postgres", func(t *testing.T) offsetStore { st, _ := openPG(t); return st }},
	}
}

func forKafkaStores(t *testing.T, test func(t *testing.T, st offsetStore)) {
	for _, ks := range kafkaStores() {
		t.Run(ks.name, func(t *testing.T) {
			t.Parallel()
			test(t, ks.open(t))
		})
	}
}

// TestKafkaStoresProduceConsume runs the whole path — producer → kfake →
// processor → store — with every event sent twice (a client retry): every
// sample is stored once, the sinks get each once, the offsets end at the
// end of the topic, and PostgreSQL's window aggregates count each sample
// once.
func TestKafkaStoresProduceConsume(t *testing.T) {
	forKafkaStores(t, func(t *testing.T, st offsetStore) {
		c, topic := newCluster(t, 4)
		brokers := c.ListenAddrs()
		prod := newProducer(t, brokers, topic)
		evs := kevents(12, 20, 0)
		for range 2 {
			if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
				t.Fatal(err)
			}
		}
		var sl sinkLog
		r := startKafka(t, brokers, topic, "g", st, sl.sinks())
		ends := endOffsets(t, brokers, topic)
		waitFor(t, 30*time.Second, "offsets at the end", func() bool { return cmp.Equal(storedOffsets(t, st, "g", topic), ends) })
		want := sortSamples(samplesOf(evs))
		if diff := cmp.Diff(st.samples(), want); diff != "" {
			t.Errorf("stored samples (-got +want):\n%s", diff)
		}
		waitFor(t, 10*time.Second, "the sinks fed", func() bool { return len(sl.sunk()) >= len(want) })
		if err := r.consumer.Ready(); err != nil {
			t.Errorf("Ready() = %v, want nil", err)
		}
		if err := r.stop(t); err != nil {
			t.Fatal(err)
		}
		if got := len(sl.sunk()); got != len(want) {
			t.Errorf("the Batch sink got %d samples, want %d (each once)", got, len(want))
		}
		if got := r.metric(t, "twinline_kafka_consumed_records_total"); got != float64(2*len(evs)) {
			t.Errorf("consumed records = %v, want %d", got, 2*len(evs))
		}
		if got := r.metric(t, "twinline_duplicate_events_total", "log", "kafka"); got != float64(len(evs)) {
			t.Errorf("duplicate events = %v, want %d", got, len(evs))
		}
		if st.pg != nil {
			if got := pgCount(t, st.pg, "SELECT coalesce(sum(count), 0) FROM sample_aggs"); got != int64(len(want)) {
				t.Errorf("aggregates count %d samples, want %d", got, len(want))
			}
		}
	})
}

// TestKafkaIngestTime: the Batch sink gets a batch the gateway took at T
// (Received, carried as the record timestamp) with Received == T however
// late it is processed, so the live latency covers gateway → Kafka →
// processor; an external producer's record was ingested at its record
// timestamp.
func TestKafkaIngestTime(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	took := time.Now().Add(-3 * time.Second).UnixMilli() // the gateway took it 3 s ago
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: kevents(3, 2, 0), Received: took}); err != nil {
		t.Fatal(err)
	}
	ext, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	recTime := time.UnixMilli(took + 1000)
	if err := ext.ProduceSync(context.Background(), &kgo.Record{Key: []byte("ext"), Value: []byte(`{"machineId":"ext","v":1}`), Timestamp: recTime}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var sl sinkLog
	st, _ := memoryStore(t)
	r := startKafka(t, brokers, topic, "g", st, sl.sinks())
	waitFor(t, 20*time.Second, "every event sunk", func() bool { return len(sl.sunk()) == 2*6+1 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	got := map[int64]int{}
	sl.mu.Lock()
	for i, evs := range sl.events {
		got[sl.received[i]] += len(evs)
	}
	sl.mu.Unlock()
	if diff := cmp.Diff(got, map[int64]int{took: 6, recTime.UnixMilli(): 1}); diff != "" {
		t.Errorf("events by the Received the Batch sink saw (-got +want):\n%s", diff)
	}
}

// TestKafkaExternalProducer: records written by another producer, in the
// format the decoder reads, are stored; an event without a timestamp gets
// its record's.
func TestKafkaExternalProducer(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	recTime := time.UnixMilli(base + 5000)
	for _, rec := range []struct{ key, value string }{
		{"ext-1", `{"machineId":"ext-1","timestamp":"2025-11-30T06:00:00Z","temp":20.5,"tags":{"site":"lyon"}}`},
		{"ext-1", `{"machineId":"ext-1","timestamp":1764482401000,"metrics":{"temp":21}}`},
		{"ext-2", `{"machineId":"ext-2","rpm":900}`}, // no timestamp: the record's
	} {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Key: []byte(rec.key), Value: []byte(rec.value), Timestamp: recTime}).FirstErr(); err != nil {
			t.Fatalf("producing: %v", err)
		}
	}
	st, _ := memoryStore(t)
	startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "3 samples stored", func() bool { return len(st.samples()) == 3 })
	want := []telemetry.Sample{
		{Machine: "ext-1", Metric: "temp", Time: base, Value: 20.5},
		{Machine: "ext-1", Metric: "temp", Time: base + 1000, Value: 21},
		{Machine: "ext-2", Metric: "rpm", Time: base + 5000, Value: 900},
	}
	if diff := cmp.Diff(st.samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
}

// TestKafkaBadRecordsSkipped: records that hold no valid event are
// skipped (and counted), the good events of a record are kept, and the
// offset moves past them all.
func TestKafkaBadRecordsSkipped(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	values := []string{
		`{"machineId":"m","timestamp":1764482400000,"v":1}`,
		`not json at all`,
		`{"machineId":"m","timestamp":1764482400100}`,              // no metrics
		`{"machineId":"m","timestamp":1764482400200,"v":["high"]}`, // not a number
		``,
		`[{"machineId":"m","timestamp":1764482400300,"v":4},{"machineId":"m/x","v":5}]`, // one good, one bad
		`{"machineId":"m","timestamp":1764482400400,"v":6}`,
	}
	for _, v := range values {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Key: []byte("m"), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatalf("producing: %v", err)
		}
	}
	st, _ := memoryStore(t)
	r := startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "offset past every record", func() bool {
		return storedOffsets(t, st, "g", topic)[0] == int64(len(values))
	})
	want := []telemetry.Sample{
		{Machine: "m", Metric: "v", Time: base, Value: 1},
		{Machine: "m", Metric: "v", Time: base + 300, Value: 4},
		{Machine: "m", Metric: "v", Time: base + 400, Value: 6},
	}
	if diff := cmp.Diff(st.samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if got := r.metric(t, "twinline_kafka_bad_records_total"); got != 5 {
		t.Errorf("bad records = %v, want 5", got)
	}
	if got := r.metric(t, "twinline_kafka_consumed_records_total"); got != float64(len(values)) {
		t.Errorf("consumed records = %v, want %d", got, len(values))
	}
}

// TestKafkaStoresRebalance runs two processors of one group while a
// producer keeps writing: the second one takes half the partitions, then
// the first one stops and the second takes them all. Every event is stored
// exactly once (in PostgreSQL, the aggregates count each once).
func TestKafkaStoresRebalance(t *testing.T) {
	forKafkaStores(t, func(t *testing.T, st offsetStore) {
		all := rebalance(t, st)
		want := sortSamples(samplesOf(all))
		if diff := cmp.Diff(st.samples(), want); diff != "" {
			t.Errorf("stored samples (-got +want):\n%s", diff)
		}
		if m, ok := st.OffsetStore.(*offsettest.Memory); ok && m.Repeats() != 0 {
			t.Errorf("%d samples consumed more than once", m.Repeats())
		}
		if st.pg != nil {
			if got := pgCount(t, st.pg, "SELECT coalesce(sum(count), 0) FROM sample_aggs"); got != int64(len(want)) {
				t.Errorf("aggregates count %d samples, want %d", got, len(want))
			}
		}
	})
}

// rebalance runs the scenario of TestKafkaStoresRebalance on st and
// returns the events produced, once every one is stored and the offsets
// are at the end of the topic.
func rebalance(t *testing.T, st offsetStore) []telemetry.Event {
	c, topic := newCluster(t, 6)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)

	var produced atomic.Int64
	var all []telemetry.Event
	var allMu sync.Mutex
	stopProd := make(chan struct{})
	prodDone := make(chan error, 1)
	go func() {
		for k := 0; ; k++ {
			select {
			case <-stopProd:
				prodDone <- nil
				return
			default:
			}
			evs := kevents(24, 1, k)
			if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
				prodDone <- err
				return
			}
			allMu.Lock()
			all = append(all, evs...)
			allMu.Unlock()
			produced.Add(int64(len(evs)))
		}
	}()
	stored := func() int { return len(st.samples()) }
	storedAtLeast := func(n int64) func() bool {
		return func() bool { return int64(stored()) >= 2*n } // two metrics per event
	}

	a := startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "a owns 6 partitions", func() bool { return len(a.consumer.Assigned()) == 6 })
	waitFor(t, 20*time.Second, "a stores", storedAtLeast(200))

	b := startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 30*time.Second, "a and b split the partitions", func() bool {
		na, nb := len(a.consumer.Assigned()), len(b.consumer.Assigned())
		return na > 0 && nb > 0 && na+nb == 6
	})
	mark := produced.Load()
	waitFor(t, 20*time.Second, "both store", storedAtLeast(mark+200))

	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "b owns 6 partitions", func() bool { return len(b.consumer.Assigned()) == 6 })
	mark = produced.Load()
	waitFor(t, 20*time.Second, "b stores", storedAtLeast(mark+200))

	close(stopProd)
	if err := <-prodDone; err != nil {
		t.Fatalf("producing: %v", err)
	}
	allMu.Lock()
	defer allMu.Unlock()
	waitFor(t, 30*time.Second, "every sample stored", func() bool { return stored() == 2*len(all) })
	ends := endOffsets(t, brokers, topic)
	waitFor(t, 10*time.Second, "offsets at the end", func() bool { return cmp.Equal(storedOffsets(t, st, "g", topic), ends) })
	return all
}

// TestKafkaResumeFromStoredOffsets restarts a processor: the second run
// goes on from the offsets in the store, not from Kafka's (none are
// committed there), so nothing is consumed twice and nothing is missed.
func TestKafkaResumeFromStoredOffsets(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 3)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st, m := memoryStore(t)

	first := kevents(9, 10, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: first, Received: base}); err != nil {
		t.Fatal(err)
	}
	r1 := startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "first run stores", func() bool { return m.Len() == 2*len(first) })
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}
	commits := m.Commits()

	second := kevents(9, 10, 10)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: second, Received: base}); err != nil {
		t.Fatal(err)
	}
	r2 := startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "second run stores", func() bool { return m.Len() == 2*(len(first)+len(second)) })
	if m.Repeats() != 0 {
		t.Errorf("%d samples consumed again after the restart", m.Repeats())
	}
	if got := r2.metric(t, "twinline_kafka_consumed_records_total"); got != float64(len(second)) {
		t.Errorf("second run consumed %v records, want %d", got, len(second))
	}
	if m.Commits() <= commits {
		t.Errorf("no commit in the second run")
	}
}

// TestKafkaResumeIgnoresKafkaOffsets seeds the store with offsets (as if
// an earlier run stored the first records) and commits other offsets to
// Kafka: the processor starts where the store says.
func TestKafkaResumeIgnoresKafkaOffsets(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	evs := kevents(1, 10, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
		t.Fatal(err)
	}
	// Kafka's committed offset for the group says 8.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: topic, Partition: 0, At: 8, LeaderEpoch: -1})
	if err := kadm.NewClient(cl).CommitAllOffsets(context.Background(), "g", offs); err != nil {
		t.Fatalf("committing to kafka: %v", err)
	}
	cl.Close()
	// The store says 4.
	st, _ := memoryStore(t)
	if err := st.AppendWithOffsets(context.Background(), nil, nil, store.OffsetCommit{Group: "g", Topic: topic, Next: 4, Expected: -1}); err != nil {
		t.Fatal(err)
	}
	startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "offset 10 stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })
	if diff := cmp.Diff(st.samples(), sortSamples(samplesOf(evs[4:]))); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
}

// TestKafkaStoresFencedCommit moves a partition's stored offset behind the
// processor's back, as a zombie processor that still believed it owned the
// partition would (storing the records it read too): the processor's next
// commit is refused, it reloads the offset, resets the partition's engine
// and goes on from there, storing nothing twice.
func TestKafkaStoresFencedCommit(t *testing.T) {
	forKafkaStores(t, func(t *testing.T, st offsetStore) {
		c, topic := newCluster(t, 1)
		brokers := c.ListenAddrs()
		prod := newProducer(t, brokers, topic)
		r := startKafka(t, brokers, topic, "g", st, Sinks{})

		evs := kevents(1, 40, 0)
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[:10], Received: base}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "10 stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })

		// The zombie stores records 10..19 and moves the offset to 20,
		// while the processor is idle.
		if err := st.AppendWithOffsets(context.Background(), samplesOf(evs[10:20]), nil,
			store.OffsetCommit{Group: "g", Topic: topic, Next: 20, Expected: 10}); err != nil {
			t.Fatal(err)
		}
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[10:], Received: base}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "40 stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 40 })
		if diff := cmp.Diff(st.samples(), sortSamples(samplesOf(evs))); diff != "" {
			t.Errorf("stored samples (-got +want):\n%s", diff)
		}
		if m, ok := st.OffsetStore.(*offsettest.Memory); ok && m.Repeats() != 0 {
			t.Errorf("%d samples stored twice", m.Repeats())
		}
		if got := r.metric(t, "twinline_kafka_commits_total", "outcome", "fenced"); got < 1 {
			t.Errorf("fenced commits = %v, want ≥ 1", got)
		}
	})
}

// gatedStore blocks the first commit after arm until open.
type gatedStore struct {
	kafka.OffsetStore
	armed   atomic.Bool
	blocked chan struct{}
	open    chan struct{}
}

func (g *gatedStore) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error {
	if g.armed.CompareAndSwap(true, false) {
		close(g.blocked)
		<-g.open
	}
	return g.OffsetStore.AppendWithOffsets(ctx, samples, fresh, c)
}

// TestKafkaZombieFenced makes a real zombie: processor a stalls in a
// commit while b joins; a cannot revoke in time and is expelled after the
// rebalance timeout, b takes the partition over and commits; then a's
// stalled commit goes on, with the offset a read before, and is refused.
func TestKafkaZombieFenced(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st, mem := memoryStore(t)
	gated := &gatedStore{OffsetStore: st, blocked: make(chan struct{}), open: make(chan struct{})}
	fast := kafka.WithClientOptions(kgo.RebalanceTimeout(time.Second))
	a := startKafka(t, brokers, topic, "g", gated, Sinks{}, fast)

	evs := kevents(1, 30, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[:10], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a stores 10", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })

	gated.armed.Store(true)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[10:20], Received: base}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gated.blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("a did not reach its commit")
	}

	b := startKafka(t, brokers, topic, "g", st, Sinks{}, fast)
	waitFor(t, 30*time.Second, "b stores 20", func() bool { return storedOffsets(t, st, "g", topic)[0] == 20 })
	if got := b.consumer.Assigned(); !cmp.Equal(got, []int32{0}) {
		t.Errorf("b owns %v, want [0]", got)
	}

	close(gated.open) // a's stalled commit goes on: fenced
	waitFor(t, 20*time.Second, "a fenced", func() bool { return a.metric(t, "twinline_kafka_commits_total", "outcome", "fenced") == 1 })
	// A fenced member leaves the partition when the group rebalances,
	// which under a loaded CI machine took longer than 20 s once.
	waitFor(t, 60*time.Second, "a drops the partition", func() bool { return len(a.consumer.Assigned()) == 0 })

	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[20:], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "b stores 30", func() bool { return storedOffsets(t, st, "g", topic)[0] == 30 })
	if diff := cmp.Diff(mem.Samples(), sortSamples(samplesOf(evs))); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if mem.Repeats() != 0 {
		t.Errorf("%d samples stored twice", mem.Repeats())
	}
}

// TestKafkaStopFinishesCommit: a processor stopped (its context ended)
// while a commit is in flight stops after that commit rather than abort
// it: its samples and offset are stored, nothing is left for the next
// processor to redo.
func TestKafkaStopFinishesCommit(t *testing.T) {
	forKafkaStores(t, func(t *testing.T, st offsetStore) {
		c, topic := newCluster(t, 1)
		brokers := c.ListenAddrs()
		prod := newProducer(t, brokers, topic)
		gated := &gatedStore{OffsetStore: st, blocked: make(chan struct{}), open: make(chan struct{})}
		gated.armed.Store(true)
		r := startKafka(t, brokers, topic, "g", gated, Sinks{})
		evs := kevents(2, 10, 0)
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-gated.blocked:
		case <-time.After(20 * time.Second):
			t.Fatal("the processor did not reach its commit")
		}
		r.cancel()
		close(gated.open)
		if err := r.stop(t); err != nil {
			t.Fatalf("Run: %v", err)
		}
		// The commit held the records of one poll: one per event, in order.
		off := storedOffsets(t, st, "g", topic)[0]
		if off <= 0 {
			t.Fatalf("stored offset %d: the commit in flight was aborted", off)
		}
		if diff := cmp.Diff(st.samples(), sortSamples(samplesOf(evs[:off]))); diff != "" {
			t.Errorf("stored samples (-got +want):\n%s", diff)
		}
	})
}

// TestKafkaStoreOutage fails the store for a while, from before the
// processor joins (so reading the offsets at assignment fails too, and the
// member joins again), then while records wait: they are consumed again
// once it is back, and stored once.
func TestKafkaStoreOutage(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st, m := memoryStore(t)
	var failures atomic.Int64
	down := func() error {
		failures.Add(1)
		return errors.New("database down")
	}
	m.FailWith(down)
	r := startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 20*time.Second, "failed offset reads", func() bool { return failures.Load() >= 2 })
	m.FailWith(nil)
	waitFor(t, 20*time.Second, "partitions assigned", func() bool { return len(r.consumer.Assigned()) == 2 })
	m.FailWith(down)
	evs := kevents(4, 25, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "failed commits", func() bool {
		return r.metric(t, "twinline_kafka_commits_total", "outcome", "error") >= 3
	})
	m.FailWith(nil)
	waitFor(t, 20*time.Second, "every sample stored", func() bool { return m.Len() == 2*len(evs) })
	if m.Repeats() != 0 {
		t.Errorf("%d samples stored twice", m.Repeats())
	}
	if got := r.metric(t, "twinline_processed_samples_total", "log", "kafka", "outcome", "error"); got < 1 {
		t.Errorf("samples with outcome error = %v, want ≥ 1", got)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestKafkaBrokerRestart stops the broker (its data kept on disk) while a
// producer and a processor run, and starts it again on the same port: an
// Append made during the outage completes after the restart, Ready reports
// the outage, and every event is stored exactly once.
func TestKafkaBrokerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := freePort(t)
	topic := randName("twinline.test.")
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir)}
	c, err := kfake.NewCluster(append(opts, kfake.SeedTopics(2, topic))...)
	if err != nil {
		t.Fatal(err)
	}
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic, kafka.WithReadyPeriod(20*time.Millisecond))
	st, m := memoryStore(t)
	r := startKafka(t, brokers, topic, "g", st, Sinks{}, kafka.WithReadyPeriod(20*time.Millisecond))

	evs := kevents(6, 30, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[:60], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "first part stored", func() bool { return m.Len() == 2*60 })

	c.Close()
	waitFor(t, 10*time.Second, "producer not ready", func() bool { return prod.Ready() != nil })
	waitFor(t, 10*time.Second, "consumer not ready", func() bool { return r.consumer.Ready() != nil })
	appended := make(chan error, 1)
	go func() {
		appended <- prod.Append(context.Background(), &telemetry.Batch{Events: evs[60:120], Received: base})
	}()

	c2, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatalf("restarting kfake: %v", err)
	}
	t.Cleanup(c2.Close)
	select {
	case err := <-appended:
		if err != nil {
			t.Fatalf("Append across the restart: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Append across the restart did not return")
	}
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[120:], Received: base}); err != nil {
		t.Fatalf("Append after the restart: %v", err)
	}
	waitFor(t, 30*time.Second, "every sample stored", func() bool { return m.Len() == 2*len(evs) })
	waitFor(t, 10*time.Second, "ready again", func() bool { return prod.Ready() == nil && r.consumer.Ready() == nil })
	if m.Repeats() != 0 {
		t.Errorf("%d samples stored twice", m.Repeats())
	}
	if diff := cmp.Diff(m.Samples(), sortSamples(samplesOf(evs))); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
}

// TestKafkaStaticMembership: a processor with an instance id that stops
// without leaving the group — as after kill -9: a static member never
// leaves on close — and comes back under the same id gets its partitions
// back at once, well within the session timeout (60 s here), and goes on
// from the stored offsets.
func TestKafkaStaticMembership(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 3)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st, m := memoryStore(t)
	static := []kafka.Option{kafka.WithInstanceID("processor-0"), kafka.WithClientOptions(kgo.SessionTimeout(time.Minute))}

	first := kevents(6, 5, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: first, Received: base}); err != nil {
		t.Fatal(err)
	}
	r1 := startKafka(t, brokers, topic, "g", st, Sinks{}, static...)
	waitFor(t, 20*time.Second, "the first run stores", func() bool { return m.Len() == 2*len(first) })
	if err := r1.stop(t); err != nil {
		t.Fatal(err)
	}

	second := kevents(6, 5, 5)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: second, Received: base}); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	r2 := startKafka(t, brokers, topic, "g", st, Sinks{}, static...)
	// Within half the session timeout: a dynamic member in its place
	// would wait for the whole of it.
	waitFor(t, 30*time.Second, "the restarted member owns every partition", func() bool {
		got := r2.consumer.Assigned()
		slices.Sort(got)
		return cmp.Equal(got, []int32{0, 1, 2})
	})
	waitFor(t, 20*time.Second, "the second run stores", func() bool { return m.Len() == 2*(len(first)+len(second)) })
	t.Logf("partitions back %v after the restart", time.Since(restarted).Round(time.Millisecond))
	if m.Repeats() != 0 {
		t.Errorf("%d samples consumed again after the restart", m.Repeats())
	}
}

// TestKafkaInstanceIDTaken: a replica started with the --kafka-instance-id
// of a running one takes its place in the group; the one it replaced
// stops with an error naming the id, rather than fight it for the slot.
func TestKafkaInstanceIDTaken(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	st, _ := memoryStore(t)
	static := []kafka.Option{kafka.WithInstanceID("processor-0"), kafka.WithClientOptions(kgo.SessionTimeout(time.Minute))}
	r1 := startKafka(t, brokers, topic, "g", st, Sinks{}, static...)
	waitFor(t, 20*time.Second, "the first member owns the partitions", func() bool { return len(r1.consumer.Assigned()) == 2 })
	r2 := startKafka(t, brokers, topic, "g", st, Sinks{}, static...)
	select {
	case err := <-r1.done:
		r1.once.Do(func() {}) // stopped on its own: the cleanup has nothing to stop
		if err == nil || !strings.Contains(err.Error(), `--kafka-instance-id "processor-0"`) {
			t.Errorf("replaced member's Run = %v, want an error naming the instance id", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the replaced member still runs 30 s after another took its instance id")
	}
	waitFor(t, 20*time.Second, "the new member owns the partitions", func() bool { return len(r2.consumer.Assigned()) == 2 })
}
