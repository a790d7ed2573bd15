package kafka

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/telemetry"
)

// base is the event time of the test events: 2025-11-30T06:00:00Z.
const base = int64(1764482400000)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() && os.Getenv("TWINLINE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func randName(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newCluster starts a kfake cluster of one broker with a topic of its own
// of the given partitions, closed at the end of t.
func newCluster(t testing.TB, partitions int32, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	topic := randName("twinline.test.")
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(partitions, topic)}, opts...)...)
	if err != nil {
		t.Fatalf("starting kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c, topic
}

// fastGroup makes a group member notice rebalances quickly.
var fastGroup = WithClientOptions(
	kgo.HeartbeatInterval(100*time.Millisecond),
	kgo.SessionTimeout(6*time.Second),
	kgo.RetryBackoffFn(func(int) time.Duration { return 50 * time.Millisecond }),
)

// waitFor polls cond until it holds, failing t after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

func newProducer(t testing.TB, brokers []string, topic string, opts ...Option) *Producer {
	t.Helper()
	p, err := NewProducer(brokers, topic, testLogger(t), nil, opts...)
	if err != nil {
		t.Fatalf("NewProducer: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// events returns n events per machine, over machines machines, each with a
// seq and two metrics, at distinct times from offset k.
func events(machines, n, k int) []telemetry.Event {
	out := make([]telemetry.Event, 0, machines*n)
	for i := range n {
		for m := range machines {
			seq := uint64(k + i)
			out = append(out, telemetry.Event{
				Machine: fmt.Sprintf("m-%03d", m),
				Seq:     seq, HasSeq: true,
				Time:    base + int64(k+i)*100,
				Metrics: []telemetry.Metric{{Name: "temp", Value: float64(k + i)}, {Name: "rpm", Value: float64(m)}},
			})
		}
	}
	return out
}

// samplesOf returns the samples of events, as the store keeps them.
func samplesOf(evs []telemetry.Event) []telemetry.Sample {
	var out []telemetry.Sample
	for _, ev := range evs {
		for _, m := range ev.Metrics {
			out = append(out, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
		}
	}
	return out
}

// startConsumer runs a consumer of topic in group on st in the background,
// driven as the processor would, reduced to its bones: every sample of a
// batch's events is committed (no engine), and entry gets each entry of a
// committed batch. It stops at the end of t.
func startConsumer(t testing.TB, brokers []string, topic, group string, st OffsetStore, entry func(*telemetry.Batch), opts ...Option) *Consumer {
	t.Helper()
	c, err := NewConsumer(brokers, topic, group, st, testLogger(t), nil, append([]Option{fastGroup}, opts...)...)
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- drive(ctx, c, entry) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("consumer: %v", err)
		}
	})
	return c
}

func drive(ctx context.Context, c *Consumer, entry func(*telemetry.Batch)) error {
	defer c.Close()
	for {
		rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		read, err := c.Read(rctx)
		cancel()
		for _, b := range read.Batches {
			var samples []telemetry.Sample
			for _, e := range b.Entries {
				samples = append(samples, samplesOf(e.Events)...)
			}
			if b.Commit(ctx, samples, make([]bool, len(samples))) == nil && entry != nil {
				for _, e := range b.Entries {
					entry(e)
				}
			}
		}
		if read.Done != nil {
			read.Done()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
}
