package kafka

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

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

func decodeOne(t testing.TB, r *kgo.Record) telemetry.Event {
	t.Helper()
	evs, rejects, err := ingest.DecodeJSON(r.Value, ingest.DefaultOptions(), nil)
	if err != nil || len(rejects) > 0 || len(evs) != 1 {
		t.Fatalf("decoding %s: %d events, rejects %v, err %v", r.Value, len(evs), rejects, err)
	}
	return evs[0]
}
