package mqtt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/telemetry"
)

// durableLog is the in-process event log with a processor that makes each
// group of batches durable with one write and one fsync to a file, as the
// store's WAL does, and then acknowledges them.
func durableLog(b *testing.B) SubmitFunc {
	lg := eventlog.New(1<<20, nil)
	f, err := os.Create(filepath.Join(b.TempDir(), "wal"))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		var buf []byte
		for {
			entries, err := lg.Read(ctx, 64<<10)
			if err != nil {
				return
			}
			buf = buf[:0]
			for _, e := range entries {
				for _, ev := range e.Batch.Events {
					buf = fmt.Appendf(buf, "%s %d %v\n", ev.Machine, ev.Time, ev.Metrics)
				}
			}
			_, err = f.Write(buf)
			if err == nil {
				err = f.Sync()
			}
			for _, e := range entries {
				e.Ack(eventlog.Result{Accepted: len(e.Batch.Events)}, err)
			}
		}
	})
	b.Cleanup(func() { cancel(); lg.Close(); wg.Wait(); f.Close() })
	return func(ctx context.Context, batch *telemetry.Batch) (int, int, error) {
		for {
			e, err := lg.Append(batch)
			if errors.Is(err, eventlog.ErrFull) {
				select {
				case <-ctx.Done():
					return 0, 0, ctx.Err()
				case <-time.After(time.Millisecond):
					continue
				}
			}
			if err != nil {
				return 0, 0, err
			}
			res, err := e.Wait(ctx)
			return res.Accepted, res.Duplicates, err
		}
	}
}

// BenchmarkBrokerQoS1 measures QoS 1 messages per second through the
// embedded broker: publishers each send messages one after another (each
// waits for its PUBACK, which leaves once the event is durable).
func BenchmarkBrokerQoS1(b *testing.B) {
	for _, durable := range []bool{false, true} {
		for _, pubs := range []int{1, 8, 64} {
			name := fmt.Sprintf("log=%s/publishers=%d", map[bool]string{false: "none", true: "fsync"}[durable], pubs)
			b.Run(name, func(b *testing.B) {
				submit := SubmitFunc(func(_ context.Context, batch *telemetry.Batch) (int, int, error) {
					return len(batch.Events), 0, nil
				})
				if durable {
					submit = durableLog(b)
				}
				br, err := NewBroker("127.0.0.1:0", BrokerOptions{}, Deps{Submit: submit})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- br.Run(ctx) }()
				defer func() { cancel(); <-done }()

				clients := make([]*paho.Client, pubs)
				for i := range clients {
					conn, err := net.Dial("tcp", br.Addr().String())
					if err != nil {
						b.Fatal(err)
					}
					c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: fmt.Sprintf("bench-%d", i)})
					if _, err := c.Connect(ctx, &paho.Connect{ClientID: fmt.Sprintf("bench-%d", i), KeepAlive: 30, CleanStart: true}); err != nil {
						b.Fatal(err)
					}
					defer func() { _ = c.Disconnect(&paho.Disconnect{}) }()
					clients[i] = c
				}
				payload := []byte(`{"temp":71.5,"rpm":1200,"vibration":0.03}`)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				errs := make(chan error, pubs)
				for i, c := range clients {
					n := b.N / pubs
					if i < b.N%pubs {
						n++
					}
					topic := TelemetryTopic("plant-1", "line-a", fmt.Sprintf("m-%d", i))
					wg.Go(func() {
						for range n {
							pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload})
							if err != nil || pr.ReasonCode != 0 {
								errs <- fmt.Errorf("publish: %v %+v", err, pr)
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				close(errs)
				for err := range errs {
					if err != nil && !errors.Is(err, io.EOF) {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkSubscriberQoS1 measures QoS 1 messages per second from a private
// Mosquitto through the subscriber into the durable log: publishers send,
// and the clock stops when the subscriber has submitted every message.
func BenchmarkSubscriberQoS1(b *testing.B) {
	// A private Mosquitto: the default max_queued_messages (1000) would
	// drop messages whenever the publishers run ahead of the subscriber.
	m := startMosquitto(b, 0, "max_queued_messages 0")
	addr := m.addr()
	const pubs = 8
	durable := durableLog(b)
	site := uniq("bench")
	var mu sync.Mutex
	seen := 0
	all := make(chan struct{})
	submit := func(ctx context.Context, batch *telemetry.Batch) (int, int, error) {
		acc, dup, err := durable(ctx, batch)
		if err == nil {
			mu.Lock()
			before := seen
			seen += len(batch.Events) // one event per message
			if before < b.N && seen >= b.N {
				close(all)
			}
			mu.Unlock()
		}
		return acc, dup, err
	}
	s, err := NewSubscriber("mqtt://"+addr+"?group=-", SubscriberOptions{ClientID: uniq("benchsub")}, Deps{Submit: submit})
	if err != nil {
		b.Fatal(err)
	}
	// Only this benchmark's topics.
	s.filter = topicRoot + site + "/+/+" + topicLeaf
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.After(waitFor); s.Ready() != nil; {
		select {
		case <-tick.C:
		case <-deadline:
			b.Fatal("subscriber not ready")
		}
	}
	clients := make([]*paho.Client, pubs)
	for i := range clients {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		id := uniq("benchpub")
		c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id})
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = c.Disconnect(&paho.Disconnect{}) }()
		clients[i] = c
	}
	payload := []byte(`{"temp":71.5,"rpm":1200,"vibration":0.03}`)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		n := b.N / pubs
		if i < b.N%pubs {
			n++
		}
		wg.Go(func() {
			for j := range n {
				topic := TelemetryTopic(site, "line-a", fmt.Sprintf("m-%d-%d", i, j%100))
				if _, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(time.Minute):
		mu.Lock()
		defer mu.Unlock()
		b.Fatalf("only %d of %d messages submitted", seen, b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
