package kafka

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkAppend measures the gateway's leg to Kafka (kfake in this
// process, 8 partitions) for the producer settings of docs/kafka.md
// (Tuning): one Append of 500 three-metric events over 500 machines, as
// the bench's open-loop sender posts them.
//
//   - serial: one Append at a time; ns/op is the latency of one, so a
//     linger shows up in full;
//   - concurrent: 8 Appends at once, closed loop (a busy gateway); records/s
//     and CPU µs per record (this process: producer and kfake) say what a
//     setting costs in throughput.
//
// Run it with
//
//	go test -run '^$' -bench BenchmarkAppend -benchtime 200x -count 3 ./internal/eventlog/kafka/
func BenchmarkAppend(b *testing.B) {
	for _, tc := range []struct {
		linger      time.Duration
		compression string
	}{
		{0, "snappy"}, {time.Millisecond, "snappy"}, {5 * time.Millisecond, "snappy"}, {0, "none"},
	} {
		tuning := DefaultTuning()
		tuning.Linger, tuning.Compression = tc.linger, tc.compression
		name := fmt.Sprintf("linger=%s/compression=%s", tc.linger, tc.compression)
		b.Run(name+"/serial", func(b *testing.B) { benchAppend(b, tuning, 1) })
		b.Run(name+"/concurrent", func(b *testing.B) { benchAppend(b, tuning, 8) })
	}
}

func benchAppend(b *testing.B, tuning Tuning, conc int) {
	c, topic := newCluster(b, 8)
	p := newProducer(b, c.ListenAddrs(), topic, WithTuning(tuning))
	const perBatch = 500
	batch := func(k int) *telemetry.Batch {
		evs := make([]telemetry.Event, perBatch)
		for i := range evs {
			evs[i] = telemetry.Event{
				Machine: benchMachine(i), Time: base + int64(k)*1000 + int64(i),
				Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}, {Name: "rpm", Value: 1500}, {Name: "vib", Value: 0.02}},
			}
		}
		return &telemetry.Batch{Events: evs, Received: time.Now().UnixMilli()}
	}
	// Warm up: metadata, the producer id.
	if err := p.Append(context.Background(), batch(0)); err != nil {
		b.Fatal(err)
	}
	batches := make([]*telemetry.Batch, conc)
	for i := range batches {
		batches[i] = batch(i + 1)
	}
	b.ReportAllocs()
	cpu0 := processCPU()
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + conc - 1) / conc
	for w := range conc {
		wg.Go(func() {
			for range per {
				if err := p.Append(context.Background(), batches[w]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	records := float64(per * conc * perBatch)
	b.ReportMetric(records/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/records, "cpu-µs/record")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
