package kafka

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/store/offsettest"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestTuningReachesTheClients produces with a tuning of its own
// (uncompressed, no linger) and reads with at most 7 records per read and
// small fetches: every event arrives, never more than 7 in one read.
func TestTuningReachesTheClients(t *testing.T) {
	t.Parallel()
	c, topic := newCluster(t, 1)
	brokers := c.ListenAddrs()
	tuning := DefaultTuning()
	tuning.Linger, tuning.Compression = 0, "none"
	tuning.FetchMaxWait, tuning.FetchMaxPartitionBytes, tuning.MaxPollRecords = 20*time.Millisecond, 1<<10, 7
	prod := newProducer(t, brokers, topic, WithTuning(tuning))
	evs := events(6, 10, 0)
	if err := prod.Append(context.Background(), &telemetry.Batch{Events: evs, Received: base}); err != nil {
		t.Fatalf("Append: %v", err)
	}

	cons, err := NewConsumer(brokers, topic, "g", offsettest.NewMemory(), testLogger(t), nil, fastGroup, WithTuning(tuning))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := 0
	for got < len(evs) {
		read, err := cons.Read(ctx)
		if err != nil {
			t.Fatalf("Read after %d events: %v", got, err)
		}
		n := 0
		for _, b := range read.Batches {
			var samples []telemetry.Sample
			for _, e := range b.Entries {
				n += len(e.Events)
				samples = append(samples, samplesOf(e.Events)...)
			}
			if err := b.Commit(ctx, samples, make([]bool, len(samples))); err != nil {
				t.Fatalf("Commit: %v", err)
			}
		}
		if read.Done != nil {
			read.Done()
		}
		if n > 7 {
			t.Errorf("one read held %d events, want at most --kafka-max-poll-records 7", n)
		}
		got += n
	}
	if got != len(evs) {
		t.Errorf("read %d events, want %d", got, len(evs))
	}
}

func TestTuningUnknownCompression(t *testing.T) {
	tuning := DefaultTuning()
	tuning.Compression = "brotli"
	_, err := NewProducer([]string{"127.0.0.1:1"}, "t", nil, nil, WithTuning(tuning))
	if err == nil || !strings.Contains(err.Error(), "brotli") {
		t.Fatalf("NewProducer = %v, want an error naming the compression", err)
	}
	if errors.Is(err, ErrUnavailable) {
		t.Errorf("err %v: a configuration error, not an outage", err)
	}
}
