package kafka

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestIngestTimeCarried: a batch the gateway took at T (its Received) and
// consumed later comes out of the consumer with Received == T, one entry
// per gateway batch (the producer sets the record timestamp to it); an
// external producer's record was ingested at its record timestamp.
func TestIngestTimeCarried(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	t1 := time.Now().Add(-3 * time.Second).UnixMilli() // within maxIngestAge
	t2 := t1 + 1234
	first, second := events(2, 3, 0), events(2, 3, 3)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: first, Received: t1}); err != nil {
		t.Fatal(err)
	}
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: second, Received: t2}); err != nil {
		t.Fatal(err)
	}
	ext, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	recTime := time.UnixMilli(t2 + 5000)
	if err := ext.ProduceSync(context.Background(), &kgo.Record{Key: []byte("ext"), Value: []byte(`{"machineId":"ext","timestamp":1764482400000,"v":1}`), Timestamp: recTime}).FirstErr(); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	got := map[int64]int{} // events by Received
	st := offsettest.NewMemory()
	startConsumer(t, brokers, topic, "g", st, func(b *telemetry.Batch) {
		mu.Lock()
		got[b.Received] += len(b.Events)
		mu.Unlock()
	})
	total := len(first) + len(second) + 1
	waitFor(t, 20*time.Second, "every event consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, v := range got {
			n += v
		}
		return n == total
	})
	mu.Lock()
	defer mu.Unlock()
	want := map[int64]int{t1: len(first), t2: len(second), recTime.UnixMilli(): 1}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("events by Received (-got +want):\n%s", diff)
	}
}
