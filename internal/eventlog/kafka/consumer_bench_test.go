package kafka

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkDecodeRecords measures the consumer's own work per record,
// without Kafka: decoding one partition's polled records (groups of 1000
// two-metric events) into a batch. The processor's share, engine and
// commit, is internal/pipeline's BenchmarkProcessLane.
func BenchmarkDecodeRecords(b *testing.B) {
	const perGroup, groups = 1000, 100
	var recs [groups][]*kgo.Record
	off := int64(0)
	for g := range groups {
		for i := range perGroup {
			ev := telemetry.Event{Machine: benchMachine(i % 500), Seq: uint64(off), HasSeq: true, Time: base + off,
				Metrics: []telemetry.Metric{{Name: "temp", Value: float64(i)}, {Name: "rpm", Value: 1500}}}
			v, _ := AppendEvent(nil, &ev)
			recs[g] = append(recs[g], &kgo.Record{Key: []byte(ev.Machine), Value: v, Offset: off, Timestamp: time.UnixMilli(base)})
			off++
		}
	}
	c, err := NewConsumer([]string{"unused:9092"}, "t", "g", offsettest.NewMemory(), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ps := &partition{next: -1, stored: -1, rewind: -1, shown: -1}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		g := n % groups
		if g == 0 {
			ps.next = -1
		}
		batch, ok := c.decode(work{ps: ps, recs: recs[g], hwm: off}, &inflight{})
		if !ok || len(batch.Entries) != 1 {
			b.Fatalf("decoded %d entries, ok %v", len(batch.Entries), ok)
		}
		n++
	}
	b.ReportMetric(float64(n*perGroup*2)/b.Elapsed().Seconds(), "rows/s")
}

func benchMachine(i int) string {
	return "m-" + string(rune('a'+i/100%26)) + string(rune('a'+i/10%10)) + string(rune('a'+i%10))
}
