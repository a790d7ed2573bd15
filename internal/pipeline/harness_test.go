package pipeline

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// The processor suite runs every test against each source: the in-process
// log (on a store that reports which samples it held, and on one that does
// not), and Kafka (kfake) on the in-memory offset store and on PostgreSQL.

// harness makes the environment of one test on one source.
type harness struct {
	name string
	new  func(t *testing.T) *env
}

func harnesses() []harness {
	return []harness{
		{"memory", func(t *testing.T) *env { return newLogEnv(t, false) }},
		{"memory+fresh", func(t *testing.T) *env { return newLogEnv(t, true) }},
		{"kafka", func(t *testing.T) *env {
			st, _ := memoryStore(t)
			return newKafkaEnv(t, st)
		}},
		{"kafka+postgres", func(t *testing.T) *env {
			st, _ := openPG(t)
			return newKafkaEnv(t, st)
		}},
	}
}

// runSuite runs test against every source.
func runSuite(t *testing.T, test func(t *testing.T, e *env)) {
	for _, h := range harnesses() {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			test(t, h.new(t))
		})
	}
}

// env is one source and its store, and the processors that run on them
// one after the other (a restart is a new processor).
type env struct {
	t     *testing.T
	kafka bool
	// acks: the source acknowledges each batch with the outcome of its
	// processing (the in-process log); under Kafka the producer's
	// acknowledgement says only that Kafka holds it.
	acks        bool
	storeDedups bool
	faulty      *faultyStore
	stored      func() []telemetry.Sample

	appender Appender
	log      *eventlog.Log
	entry    *eventlog.Entry // the last one submitted

	brokers []string
	topic   string
	prod    *kafka.Producer

	cur       *running
	reads     *trackedSource // cur's source
	journalMu sync.Mutex
	journal   []stream.Key
	received  int64
}

func newLogEnv(t *testing.T, storeDedups bool) *env {
	m := offsettest.NewMemory()
	e := &env{t: t, acks: true, storeDedups: storeDedups, faulty: &faultyStore{inner: m}, stored: m.Samples}
	e.appender = plainStore{e.faulty}
	if storeDedups {
		e.appender = e.faulty
	}
	t.Cleanup(e.stop)
	return e
}

func newKafkaEnv(t *testing.T, st offsetStore) *env {
	c, topic := newCluster(t, 3)
	e := &env{t: t, kafka: true, storeDedups: true, faulty: &faultyStore{inner: st}, stored: st.samples,
		brokers: c.ListenAddrs(), topic: topic}
	e.prod = newProducer(t, e.brokers, topic)
	t.Cleanup(e.stop)
	return e
}

// procOpts configures a processor of an env.
type procOpts struct {
	sinks Sinks
	// remember are keys remembered on top of what the env journaled.
	remember []stream.Key
	// journal replaces the env's journal.
	journal func([]stream.Key) error
	// states, if set, keeps the state series (Processor.States), handing
	// the changes to stateSink.
	states    store.StateStore
	stateSink func([]store.StateChange)
	// backfill, if set, is the processor's backfill horizon (Backfill).
	backfill time.Duration
}

// running is a Processor running in the background.
type running struct {
	p        *Processor
	reg      *prometheus.Registry // startKafka's: the consumer's and the processor's metrics
	consumer *kafka.Consumer
	log      *eventlog.Log
	cancel   context.CancelFunc
	done     chan error
	once     sync.Once
	err      error
}

// stop stops the processor: the in-process log is closed and drained, a
// Kafka processor's context is cancelled. It returns Run's error, nil for
// a clean stop.
func (r *running) stop(t testing.TB) error {
	r.once.Do(func() {
		if r.log != nil {
			r.log.Close()
		} else {
			r.cancel()
		}
		select {
		case err := <-r.done:
			if r.log == nil && errors.Is(err, context.Canceled) {
				err = nil
			}
			r.err = err
		case <-time.After(30 * time.Second):
			r.cancel()
			r.err = errors.New("Run did not return")
		}
		r.cancel()
	})
	return r.err
}

// startKafka runs a processor of topic in group on st.
func startKafka(t testing.TB, brokers []string, topic, group string, st kafka.OffsetStore, sinks Sinks, opts ...kafka.Option) *running {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := kafka.NewConsumer(brokers, topic, group, st, testLogger(t), reg, append([]kafka.Option{fastGroup}, opts...)...)
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	p, err := New(c, "kafka", stream.DefaultEngineConfig(), sinks, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
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

// metric returns the value of the counter or gauge name of r's registry
// whose labels include labels (0 when there is none).
func (r *running) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func run(p *Processor) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	return r
}

// start stops the env's processor, if any, and starts a new one, which
// remembers the keys journaled so far.
func (e *env) start(o procOpts) *running {
	e.t.Helper()
	e.stop()
	var src Source
	var c *kafka.Consumer
	log := "memory"
	if e.kafka {
		var err error
		c, err = kafka.NewConsumer(e.brokers, e.topic, "g", e.faulty, testLogger(e.t), nil, fastGroup)
		if err != nil {
			e.t.Fatal(err)
		}
		src, log = c, "kafka"
	} else {
		if e.log == nil {
			e.log = eventlog.New(1<<20, nil)
		}
		src = NewLogSource(e.log, e.appender)
	}
	e.reads = &trackedSource{Source: src}
	p, err := New(e.reads, log, stream.DefaultEngineConfig(), o.sinks, testLogger(e.t), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.journalMu.Lock()
	p.Remember(append(slices.Clone(e.journal), o.remember...))
	e.journalMu.Unlock()
	journal := o.journal
	if journal == nil {
		journal = func(ks []stream.Key) error {
			e.journalMu.Lock()
			defer e.journalMu.Unlock()
			e.journal = append(e.journal, ks...)
			return nil
		}
	}
	p.JournalKeys(journal)
	p.Backfill(o.backfill)
	if o.states != nil {
		if err := p.States(o.states, o.stateSink, nil); err != nil {
			e.t.Fatal(err)
		}
	}
	e.cur = run(p)
	e.cur.consumer, e.cur.log = c, e.log
	return e.cur
}

// stop stops the running processor and checks it stopped cleanly.
func (e *env) stop() {
	if e.cur == nil {
		return
	}
	if err := e.cur.stop(e.t); err != nil {
		e.t.Errorf("processor: %v", err)
	}
	e.cur, e.log, e.reads = nil, nil, nil
}

// submit hands evs to the log as one gateway batch and returns a function
// that waits for its acknowledgement: in-process the outcome of its
// processing, under Kafka Kafka's (Accepted: every event).
func (e *env) submit(evs ...telemetry.Event) func() (eventlog.Result, error) {
	e.t.Helper()
	e.received++
	// Distinct ingest times: under Kafka each batch comes back as an entry.
	b := &telemetry.Batch{Events: slices.Clone(evs), Protocol: "test", Received: time.Now().UnixMilli() + e.received}
	if e.kafka {
		err := e.prod.Append(context.Background(), b)
		return func() (eventlog.Result, error) { return eventlog.Result{Accepted: len(evs)}, err }
	}
	if e.log == nil {
		e.log = eventlog.New(1<<20, nil)
	}
	entry, err := e.log.Append(b)
	if err != nil {
		e.t.Fatalf("appending to the log: %v", err)
	}
	e.entry = entry
	return func() (eventlog.Result, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return entry.Wait(ctx)
	}
}

// send is submit, waiting.
func (e *env) send(evs ...telemetry.Event) (eventlog.Result, error) {
	e.t.Helper()
	return e.submit(evs...)()
}

// deliver sends evs as a client that retries would: in-process, again
// while the log acknowledges an error (at most 3 times); under Kafka once,
// the consumer retrying by itself. It then waits until they are committed.
func (e *env) deliver(evs ...telemetry.Event) (eventlog.Result, error) {
	e.t.Helper()
	var res eventlog.Result
	var err error
	for range 3 {
		if res, err = e.send(evs...); err == nil || e.kafka {
			break
		}
	}
	e.settle()
	return res, err
}

// settle waits until every record sent is committed (Kafka: the stored
// offsets are at the end of the topic) and the read that committed it is
// done: what follows a commit (the journal, the metrics) happened too.
// In-process, send waited already.
func (e *env) settle() {
	e.t.Helper()
	if !e.kafka {
		return
	}
	want := endOffsets(e.t, e.brokers, e.topic)
	waitFor(e.t, 30*time.Second, "offsets stored up to the end of the topic", func() bool {
		return cmp.Equal(storedOffsets(e.t, e.faulty, "g", e.topic), want)
	})
	if e.reads != nil {
		waitFor(e.t, 30*time.Second, "the committing read done", func() bool { return !e.reads.busy() })
	}
}

// trackedSource counts the reads with batches in progress: from the Read
// that returned them to its Done, which the processor calls once every
// batch is committed, journaled and counted (it may read again before).
type trackedSource struct {
	Source
	reads atomic.Int64
}

func (s *trackedSource) busy() bool { return s.reads.Load() > 0 }

func (s *trackedSource) Read(ctx context.Context) (eventlog.Read, error) {
	read, err := s.Source.Read(ctx)
	if len(read.Batches) == 0 {
		return read, err
	}
	s.reads.Add(1)
	done := read.Done
	read.Done = func() {
		if done != nil {
			done()
		}
		s.reads.Add(-1)
	}
	return read, err
}

// sinkLog records what the sinks received.
type sinkLog struct {
	mu       sync.Mutex
	batches  [][]telemetry.Sample
	events   [][]telemetry.Event
	received []int64
	released []telemetry.Sample
	windows  []stream.Window
	// live are the span contexts the Live sink got, by batch.
	live    []trace.SpanContext
	onBatch func(b *telemetry.Batch, samples []telemetry.Sample)
}

func (s *sinkLog) sinks() Sinks {
	return Sinks{
		Live: func(ctx context.Context, _ *telemetry.Batch, _ []telemetry.Sample) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.live = append(s.live, trace.SpanContextFromContext(ctx))
		},
		Batch: func(b *telemetry.Batch, samples []telemetry.Sample) {
			if s.onBatch != nil {
				s.onBatch(b, samples)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.batches = append(s.batches, slices.Clone(samples))
			s.events = append(s.events, slices.Clone(b.Events))
			s.received = append(s.received, b.Received)
		},
		Group: func(released []telemetry.Sample, windows []stream.Window) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.released = append(s.released, released...)
			s.windows = append(s.windows, windows...)
		},
	}
}

// sunk returns every sample the Batch sink got.
func (s *sinkLog) sunk() []telemetry.Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []telemetry.Sample
	for _, b := range s.batches {
		out = append(out, b...)
	}
	return out
}

func (s *sinkLog) releasedCopy() []telemetry.Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.released)
}
