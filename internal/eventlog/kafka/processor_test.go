package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

func TestProduceConsumeStore(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 4)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)

	evs := events(10, 20, 0)
	b := &telemetry.Batch{Events: evs, Protocol: "json", Received: base}
	if err := prod.Append(context.Background(), b); err != nil {
		t.Fatalf("Append: %v", err)
	}
	// Append returned: Kafka holds every record already.
	var total int64
	for _, end := range endOffsets(t, brokers, topic) {
		total += end
	}
	if total != int64(len(evs)) {
		t.Fatalf("after Append, topic holds %d records, want %d", total, len(evs))
	}
	if got := testutil.ToFloat64(prod.records); got != float64(len(evs)) {
		t.Errorf("produced records = %v, want %d", got, len(evs))
	}

	st := NewMemStore()
	var mu sync.Mutex
	var sunk int
	r := startProcessor(t, brokers, topic, "g", st, stream.Sinks{
		Batch: func(b *telemetry.Batch, samples []telemetry.Sample) {
			mu.Lock()
			sunk += len(samples)
			mu.Unlock()
		},
	})
	want := samplesOf(evs)
	waitFor(t, 20*time.Second, "all samples stored", func() bool { return st.Len() == len(want) })
	sortSamples(want)
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	waitFor(t, 5*time.Second, "offsets at the end", func() bool {
		return cmp.Equal(storedOffsets(t, st, "g", topic), nonZero(endOffsets(t, brokers, topic)))
	})
	mu.Lock()
	if sunk != len(want) {
		t.Errorf("sink got %d samples, want %d", sunk, len(want))
	}
	mu.Unlock()
	if err := r.p.Ready(); err != nil {
		t.Errorf("Ready() = %v, want nil", err)
	}
	if got := testutil.ToFloat64(r.p.consumed); got != float64(len(evs)) {
		t.Errorf("consumed records = %v, want %d", got, len(evs))
	}
	if st.Repeats() != 0 {
		t.Errorf("%d samples stored again", st.Repeats())
	}
}

// TestKeyedByMachine checks that one machine's records land in one
// partition, in order.
func TestKeyedByMachine(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 8)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	for k := range 5 {
		if err := prod.Append(context.Background(), &telemetry.Batch{Events: events(6, 4, k*4), Received: base}); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	partOf := map[string]int32{}
	lastSeq := map[string]int64{}
	n := 0
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for n < 6*4*5 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d records: %v", n, err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			n++
			m := string(r.Key)
			if p, ok := partOf[m]; ok && p != r.Partition {
				t.Errorf("machine %s in partitions %d and %d", m, p, r.Partition)
			}
			partOf[m] = r.Partition
			evs := decodeOne(t, r)
			if evs.Machine != m {
				t.Errorf("record key %q, event machine %q", m, evs.Machine)
			}
			if s, ok := lastSeq[m]; ok && int64(evs.Seq) <= s {
				t.Errorf("machine %s: seq %d after %d", m, evs.Seq, s)
			}
			lastSeq[m] = int64(evs.Seq)
		})
	}
}

func TestExternalProducer(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	recTime := time.UnixMilli(base + 5000)
	values := []string{
		`{"machineId":"ext-1","timestamp":"2025-11-30T06:00:00Z","temp":20.5,"tags":{"site":"lyon"}}`,
		`{"machineId":"ext-1","timestamp":1764482401000,"metrics":{"temp":21}}`,
		`{"machineId":"ext-2","rpm":900}`, // no timestamp: the record's
	}
	for _, v := range values {
		var key string
		fmt.Sscanf(v, `{"machineId":%q`, &key)
		res := cl.ProduceSync(context.Background(), &kgo.Record{Key: []byte(key), Value: []byte(v), Timestamp: recTime})
		if err := res.FirstErr(); err != nil {
			t.Fatalf("producing: %v", err)
		}
	}
	st := NewMemStore()
	startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "3 samples stored", func() bool { return st.Len() == 3 })
	want := []telemetry.Sample{
		{Machine: "ext-1", Metric: "temp", Time: base, Value: 20.5},
		{Machine: "ext-1", Metric: "temp", Time: base + 1000, Value: 21},
		{Machine: "ext-2", Metric: "rpm", Time: base + 5000, Value: 900},
	}
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
}

func TestBadRecordsSkipped(t *testing.T) {
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
		`{"machineId":"m","timestamp":1764482400100}`,            // no metrics
		`{"machineId":"m","timestamp":1764482400200,"v":"high"}`, // string value
		``,
		`[{"machineId":"m","timestamp":1764482400300,"v":4},{"machineId":"m/x","v":5}]`, // one good, one bad
		`{"machineId":"m","timestamp":1764482400400,"v":6}`,
	}
	for _, v := range values {
		if err := cl.ProduceSync(context.Background(), &kgo.Record{Key: []byte("m"), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatalf("producing: %v", err)
		}
	}
	st := NewMemStore()
	r := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "offset past every record", func() bool {
		return storedOffsets(t, st, "g", topic)[0] == int64(len(values))
	})
	want := []telemetry.Sample{
		{Machine: "m", Metric: "v", Time: base, Value: 1},
		{Machine: "m", Metric: "v", Time: base + 300, Value: 4},
		{Machine: "m", Metric: "v", Time: base + 400, Value: 6},
	}
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if got := testutil.ToFloat64(r.p.bad); got != 5 {
		t.Errorf("bad records = %v, want 5", got)
	}
	if got := testutil.ToFloat64(r.p.consumed); got != float64(len(values)) {
		t.Errorf("consumed records = %v, want %d", got, len(values))
	}
}

// TestRebalance runs two processors of one group while a producer keeps
// writing: the second one takes half the partitions, then the first one
// stops and the second takes them all. Every event is stored exactly once.
func TestRebalance(t *testing.T) {
	t.Parallel()
	st := NewMemStore()
	all := rebalance(t, st, st.Len)
	want := samplesOf(all)
	sortSamples(want)
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if st.Repeats() != 0 {
		t.Errorf("%d samples stored more than once", st.Repeats())
	}
	t.Logf("%d events, %d commits", len(all), st.Commits())
}

// rebalance runs the scenario of TestRebalance on st (whose stored
// samples stored counts) and returns the events produced, once every one is
// stored and the offsets are at the end of the topic.
func rebalance(t *testing.T, st TxStore, stored func() int) []telemetry.Event {
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
			evs := events(24, 1, k)
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
	storedAtLeast := func(n int64) func() bool {
		return func() bool { return int64(stored()) >= 2*n } // two metrics per event
	}

	a := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "a owns 6 partitions", func() bool { return len(a.p.Assigned()) == 6 })
	waitFor(t, 20*time.Second, "a stores", storedAtLeast(200))

	b := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 30*time.Second, "a and b split the partitions", func() bool {
		na, nb := len(a.p.Assigned()), len(b.p.Assigned())
		return na > 0 && nb > 0 && na+nb == 6
	})
	mark := produced.Load()
	waitFor(t, 20*time.Second, "both store", storedAtLeast(mark+200))

	a.stop(t)
	waitFor(t, 30*time.Second, "b owns 6 partitions", func() bool { return len(b.p.Assigned()) == 6 })
	mark = produced.Load()
	waitFor(t, 20*time.Second, "b stores", storedAtLeast(mark+200))

	close(stopProd)
	if err := <-prodDone; err != nil {
		t.Fatalf("producing: %v", err)
	}
	allMu.Lock()
	defer allMu.Unlock()
	waitFor(t, 30*time.Second, "every sample stored", func() bool { return stored() == 2*len(all) })
	waitFor(t, 10*time.Second, "offsets at the end", func() bool {
		return cmp.Equal(storedOffsets(t, st, "g", topic), nonZero(endOffsets(t, brokers, topic)))
	})
	return all
}

// TestResumeFromStoredOffsets restarts a processor: the second run goes on
// from the offsets in the store, not from Kafka's (none are committed
// there), so nothing is consumed twice and nothing is missed.
func TestResumeFromStoredOffsets(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 3)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st := NewMemStore()

	first := events(9, 10, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: first, Received: base}); err != nil {
		t.Fatal(err)
	}
	r1 := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "first run stores", func() bool { return st.Len() == 2*len(first) })
	r1.stop(t)
	commits := st.Commits()

	second := events(9, 10, 10)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: second, Received: base}); err != nil {
		t.Fatal(err)
	}
	r2 := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "second run stores", func() bool { return st.Len() == 2*(len(first)+len(second)) })
	if st.Repeats() != 0 {
		t.Errorf("%d samples consumed again after the restart", st.Repeats())
	}
	if got := testutil.ToFloat64(r2.p.consumed); got != float64(len(second)) {
		t.Errorf("second run consumed %v records, want %d", got, len(second))
	}
	if st.Commits() <= commits {
		t.Errorf("no commit in the second run")
	}
}

// TestResumeIgnoresKafkaOffsets seeds the store with offsets (as if an
// earlier run stored the first records) and commits other offsets to
// Kafka: the processor starts where the store says.
func TestResumeIgnoresKafkaOffsets(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	evs := events(1, 10, 0)
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
	st := NewMemStore()
	if err := st.AppendWithOffsets(context.Background(), nil, "g", topic, 0, 4, -1); err != nil {
		t.Fatal(err)
	}
	startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "offset 10 stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })
	want := samplesOf(evs[4:])
	sortSamples(want)
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
}

// TestFencedCommit moves a partition's stored offset behind the
// processor's back, as a zombie processor that still believed it owned the
// partition would: the processor's next commit is refused, it reloads the
// offset and goes on from there, storing nothing twice.
func TestFencedCommit(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st := NewMemStore()
	r := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})

	evs := events(1, 40, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[:10], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "10 stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 10 })

	// The zombie stores records 10..19 (it read them too) and moves the
	// offset to 20, while the processor is idle.
	st.mu.Lock()
	st.offsets[memPart{"g", topic, 0}] = 20
	for _, s := range samplesOf(evs[10:20]) {
		st.samples[memKey{s.Machine, s.Metric, s.Time}] = s.Value
	}
	st.mu.Unlock()
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[10:], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "40 stored", func() bool { return storedOffsets(t, st, "g", topic)[0] == 40 })
	want := samplesOf(evs)
	sortSamples(want)
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if st.Repeats() != 0 {
		t.Errorf("%d samples stored twice", st.Repeats())
	}
	if got := testutil.ToFloat64(r.p.commits.WithLabelValues("fenced")); got < 1 {
		t.Errorf("fenced commits = %v, want ≥ 1", got)
	}
}

// TestStoreOutage fails the store for a while, from before the processor
// joins (so reading the offsets at assignment fails too, and the member
// joins again), then while records wait: they are consumed again once it
// is back, and stored once.
func TestStoreOutage(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st := NewMemStore()
	var failures atomic.Int64
	down := func() error {
		failures.Add(1)
		return errors.New("database down")
	}
	st.FailWith(down)
	r := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "failed offset reads", func() bool { return failures.Load() >= 2 })
	st.FailWith(nil)
	waitFor(t, 20*time.Second, "partitions assigned", func() bool { return len(r.p.Assigned()) == 2 })
	st.FailWith(down)
	evs := events(4, 25, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "failed commits", func() bool { return testutil.ToFloat64(r.p.commits.WithLabelValues("error")) >= 3 })
	st.FailWith(nil)
	waitFor(t, 20*time.Second, "every sample stored", func() bool { return st.Len() == 2*len(evs) })
	if st.Repeats() != 0 {
		t.Errorf("%d samples stored twice", st.Repeats())
	}
}

func decodeOne(t testing.TB, r *kgo.Record) telemetry.Event {
	t.Helper()
	evs, rejects, err := ingest.DecodeJSON(r.Value, ingest.DefaultOptions(), nil)
	if err != nil || len(rejects) > 0 || len(evs) != 1 {
		t.Fatalf("decoding %s: %d events, rejects %v, err %v", r.Value, len(evs), rejects, err)
	}
	return evs[0]
}

func sortSamples(s []telemetry.Sample) {
	slices.SortFunc(s, func(a, b telemetry.Sample) int {
		if c := strings.Compare(a.Machine, b.Machine); c != 0 {
			return c
		}
		if c := strings.Compare(a.Metric, b.Metric); c != 0 {
			return c
		}
		return int(a.Time - b.Time)
	})
}

// TestBrokerRestart stops the broker (its data kept on disk) while a
// producer and a processor run, and starts it again on the same port: an
// Append made during the outage completes after the restart, Ready reports
// the outage, and every event is stored exactly once.
func TestBrokerRestart(t *testing.T) {
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
	prod := newProducer(t, brokers, topic, WithReadyPeriod(20*time.Millisecond))
	st := NewMemStore()
	r := startProcessor(t, brokers, topic, "g", st, stream.Sinks{}, WithReadyPeriod(20*time.Millisecond))

	evs := events(6, 30, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[:60], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "first part stored", func() bool { return st.Len() == 2*60 })

	c.Close()
	waitFor(t, 10*time.Second, "producer not ready", func() bool { return prod.Ready() != nil })
	waitFor(t, 10*time.Second, "processor not ready", func() bool { return r.p.Ready() != nil })
	appended := make(chan error, 1)
	go func() {
		appended <- prod.Append(context.Background(), &telemetry.Batch{Events: evs[60:120], Received: base})
	}()
	waitFor(t, 10*time.Second, "records buffered during the outage", func() bool { return prod.cl.BufferedProduceRecords() > 0 })

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
	waitFor(t, 30*time.Second, "every sample stored", func() bool { return st.Len() == 2*len(evs) })
	waitFor(t, 10*time.Second, "ready again", func() bool { return prod.Ready() == nil && r.p.Ready() == nil })
	if st.Repeats() != 0 {
		t.Errorf("%d samples stored twice", st.Repeats())
	}
	want := samplesOf(evs)
	sortSamples(want)
	if diff := cmp.Diff(st.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
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

// gatedStore blocks the first commit after arm until open.
type gatedStore struct {
	TxStore
	armed   atomic.Bool
	blocked chan struct{}
	open    chan struct{}
}

func (g *gatedStore) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, group, topic string, partition int32, next, expected int64) error {
	if g.armed.CompareAndSwap(true, false) {
		close(g.blocked)
		<-g.open
	}
	return g.TxStore.AppendWithOffsets(ctx, samples, group, topic, partition, next, expected)
}

// TestZombieFenced makes a real zombie: processor a stalls in a commit
// while b joins; a cannot revoke in time and is expelled after the
// rebalance timeout, b takes the partition over and commits; then a's
// stalled commit goes on, with the offset a read before, and is refused.
func TestZombieFenced(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	mem := NewMemStore()
	gated := &gatedStore{TxStore: mem, blocked: make(chan struct{}), open: make(chan struct{})}
	fast := WithClientOptions(kgo.RebalanceTimeout(time.Second))
	a := startProcessor(t, brokers, topic, "g", gated, stream.Sinks{}, fast)

	evs := events(1, 30, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[:10], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "a stores 10", func() bool { return storedOffsets(t, mem, "g", topic)[0] == 10 })

	gated.armed.Store(true)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[10:20], Received: base}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gated.blocked:
	case <-time.After(20 * time.Second):
		t.Fatal("a did not reach its commit")
	}

	b := startProcessor(t, brokers, topic, "g", mem, stream.Sinks{}, fast)
	waitFor(t, 30*time.Second, "b stores 20", func() bool { return storedOffsets(t, mem, "g", topic)[0] == 20 })
	if got := b.p.Assigned(); !cmp.Equal(got, []int32{0}) {
		t.Errorf("b owns %v, want [0]", got)
	}

	close(gated.open) // a's stalled commit goes on: fenced
	waitFor(t, 20*time.Second, "a fenced", func() bool { return testutil.ToFloat64(a.p.commits.WithLabelValues("fenced")) == 1 })
	waitFor(t, 20*time.Second, "a drops the partition", func() bool { return len(a.p.Assigned()) == 0 })

	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs[20:], Received: base}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "b stores 30", func() bool { return storedOffsets(t, mem, "g", topic)[0] == 30 })
	want := samplesOf(evs)
	sortSamples(want)
	if diff := cmp.Diff(mem.Samples(), want); diff != "" {
		t.Errorf("stored samples (-got +want):\n%s", diff)
	}
	if mem.Repeats() != 0 {
		t.Errorf("%d samples stored twice", mem.Repeats())
	}
}

// TestProducerUnavailable appends while the broker is gone: Append fails
// with ErrUnavailable once the ack timeout passed, instead of
// acknowledging.
func TestProducerUnavailable(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic, WithAckTimeout(time.Second), WithReadyPeriod(10*time.Millisecond))
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: events(1, 1, 0)}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := prod.Append(ctx, &telemetry.Batch{Events: events(3, 2, 1)})
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("Append with the broker gone: error %v, want ErrUnavailable", err)
	}
	if got := testutil.ToFloat64(prod.errCount); got != 1 {
		t.Errorf("produce errors = %v, want 1", got)
	}
	if err := prod.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Ready() = %v, want ErrUnavailable", err)
	}
}

// TestForgetMachine: a machine forgotten (deleted from the registry)
// leaves the partition engines, so an event of it sent again is not taken
// for a duplicate; a machine not forgotten keeps its keys.
func TestForgetMachine(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 2)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	evs := events(2, 3, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
		t.Fatalf("Append: %v", err)
	}
	st := NewMemStore()
	r := startProcessor(t, brokers, topic, "g", st, stream.Sinks{})
	waitFor(t, 20*time.Second, "all samples stored", func() bool { return st.Len() == len(samplesOf(evs)) })

	r.p.ForgetMachine("m-000")
	again := []telemetry.Event{evs[0], evs[1]} // m-000 and m-001, seq 0
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: again, Received: base}); err != nil {
		t.Fatalf("Append: %v", err)
	}
	waitFor(t, 20*time.Second, "the events sent again consumed", func() bool {
		return testutil.ToFloat64(r.p.consumed) == float64(len(evs)+len(again))
	})
	if got := testutil.ToFloat64(r.p.duplicates); got != 1 {
		t.Errorf("duplicates = %v, want 1 (m-001's event)", got)
	}
	if got := st.Repeats(); got != len(evs[0].Metrics) {
		t.Errorf("samples stored again = %d, want %d (m-000's event)", got, len(evs[0].Metrics))
	}
}
