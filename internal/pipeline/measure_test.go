package pipeline

import (
	"context"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// The Kafka measurements of docs/kafka.md and docs/benchmarks.md. They run
// only with TWINLINE_KAFKA_MEASURE=1 (and not under -race):
//
//	TWINLINE_KAFKA_MEASURE=1 go test -count=1 -run TestMeasure -v ./internal/pipeline/

func measureOnly(t *testing.T) {
	if os.Getenv("TWINLINE_KAFKA_MEASURE") != "1" {
		t.Skip("set TWINLINE_KAFKA_MEASURE=1 to measure")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// prefill writes events (machines × n, two metrics each) to topic.
func prefill(t *testing.T, brokers []string, topic string, machines, n int) int {
	t.Helper()
	prod := newProducer(t, brokers, topic)
	const perBatch = 2000
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	total := 0
	for k := 0; k < n; k += perBatch / machines {
		evs := kevents(machines, perBatch/machines, k)
		total += len(evs)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
				t.Errorf("prefill: %v", err)
			}
		})
	}
	wg.Wait()
	return total
}

func measureThroughput(t *testing.T, name string, st kafka.OffsetStore, stored func() int) {
	c, topic := newCluster(t, 4)
	brokers := c.ListenAddrs()
	events := prefill(t, brokers, topic, 100, 4000)
	rows := 2 * events
	cpu0, t0 := cpuTime(), time.Now()
	startKafka(t, brokers, topic, "g", st, Sinks{})
	waitFor(t, 5*time.Minute, "every offset stored", func() bool {
		sum := int64(0)
		for _, off := range storedOffsets(t, st, "g", topic) {
			sum += off
		}
		return sum == int64(events)
	})
	wall, cpu := time.Since(t0), cpuTime()-cpu0
	if got := stored(); got != rows {
		t.Errorf("%d rows stored, want %d", got, rows)
	}
	t.Logf("%s: %d events, %d rows in %v (CPU of this process %v): %.0f rows/s wall, %.0f rows per CPU-second",
		name, events, rows, wall.Round(time.Millisecond), cpu.Round(time.Millisecond),
		float64(rows)/wall.Seconds(), float64(rows)/cpu.Seconds())
}

func TestMeasureThroughputMem(t *testing.T) {
	measureOnly(t)
	st, m := memoryStore(t)
	measureThroughput(t, "kfake → memory store", st, m.Len)
}

func TestMeasureThroughputPG(t *testing.T) {
	measureOnly(t)
	st, pg := openPG(t)
	measureThroughput(t, "kfake → PostgreSQL", st, func() int {
		return int(pgCount(t, pg, "SELECT count(*) FROM samples"))
	})
}

// lagStore records, for each stored sample of metric "temp", how long ago
// its event was created (its event time is its creation time).
type lagStore struct {
	kafka.OffsetStore
	mu   sync.Mutex
	hist *hdrhistogram.Histogram
	n    int
}

func (l *lagStore) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error {
	err := l.OffsetStore.AppendWithOffsets(ctx, samples, fresh, c)
	if err != nil {
		return err
	}
	now := time.Now().UnixMilli()
	l.mu.Lock()
	for _, s := range samples {
		if s.Metric == "temp" {
			_ = l.hist.RecordValue(now - s.Time)
			l.n++
		}
	}
	l.mu.Unlock()
	return nil
}

func measureLag(t *testing.T, name string, inner kafka.OffsetStore) {
	const rate, tick, seconds = 50_000, 10 * time.Millisecond, 3
	perTick := rate * int(tick) / int(time.Second)
	c, topic := newCluster(t, 4)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	st := &lagStore{OffsetStore: inner, hist: hdrhistogram.New(0, 60_000, 3)}
	startKafka(t, brokers, topic, "g", st, Sinks{})

	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	var wg sync.WaitGroup
	sent, seq, lastMs := 0, 0, int64(0)
	start := time.Now()
	end := start.Add(seconds * time.Second)
	for now := range ticker.C {
		if now.After(end) {
			break
		}
		evs := make([]telemetry.Event, perTick)
		ms := max(time.Now().UnixMilli(), lastMs+1) // distinct per tick
		lastMs = ms
		for i := range evs {
			seq++
			// One event per machine per tick: distinct event times.
			evs[i] = telemetry.Event{Machine: machineName(i), Seq: uint64(seq), HasSeq: true, Time: ms,
				Metrics: []telemetry.Metric{{Name: "temp", Value: float64(seq)}}}
		}
		sent += len(evs)
		wg.Go(func() {
			if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: ms}); err != nil {
				t.Errorf("Append: %v", err)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	waitFor(t, time.Minute, "every event stored", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.n >= sent
	})
	h := st.hist
	t.Logf("%s: %d events paced at %d/s (achieved %.0f/s) for %ds: end-to-end lag (event created → stored) p50 %dms, p99 %dms, p99.9 %dms, max %dms",
		name, sent, rate, float64(sent)/elapsed.Seconds(), seconds, h.ValueAtQuantile(50), h.ValueAtQuantile(99), h.ValueAtQuantile(99.9), h.Max())
}

func machineName(i int) string {
	return "m-" + string(rune('a'+i/100%26)) + string(rune('a'+i/10%10)) + string(rune('a'+i%10))
}

func TestMeasureLagMem(t *testing.T) {
	measureOnly(t)
	st, _ := memoryStore(t)
	measureLag(t, "kfake → memory store", st)
}

func TestMeasureLagPG(t *testing.T) {
	measureOnly(t)
	st, _ := openPG(t)
	measureLag(t, "kfake → PostgreSQL", st)
}
