package kafka

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/eventlog"
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

// TestBackoffSurvivesShortReads: after a failed commit the consumer pauses
// before it polls again, growing the pause with each failure; a read whose
// deadline ends within the pause (the processor reads with a deadline of
// a second, shorter than the longest pause) neither ends the pause nor
// resets its growth.
func TestBackoffSurvivesShortReads(t *testing.T) {
	t.Parallel()
	cl, topic := newCluster(t, 1)
	brokers := cl.ListenAddrs()
	prod := newProducer(t, brokers, topic)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: events(1, 3, 0), Received: base}); err != nil {
		t.Fatal(err)
	}
	st := offsettest.NewMemory()
	c, err := NewConsumer(brokers, topic, "g", st, testLogger(t), nil, fastGroup)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var read eventlog.Read
	waitFor(t, 20*time.Second, "records read", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		read, err = c.Read(ctx)
		if len(read.Batches) == 0 && read.Done != nil {
			read.Done()
		}
		return len(read.Batches) > 0
	})
	st.FailWith(func() error { return errors.New("database down") })
	b := read.Batches[0]
	if err := b.Commit(context.Background(), nil, nil); err == nil {
		t.Fatal("commit succeeded on a failing store")
	}
	read.Done()
	paused := c.backoff
	if paused <= 0 {
		t.Fatalf("backoff after a failed commit = %v, want > 0", paused)
	}
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // the read's deadline passed within the pause
		read, err := c.Read(ctx)
		if !errors.Is(err, context.Canceled) || len(read.Batches) > 0 {
			t.Fatalf("read within the pause: %d batches, %v; want none, context.Canceled", len(read.Batches), err)
		}
		if read.Done != nil {
			read.Done()
		}
		if c.backoff != paused {
			t.Fatalf("backoff after a read cut short = %v, want %v (unchanged)", c.backoff, paused)
		}
	}
}
