package hub

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// benchClients registers n all-machines clients on h below the transport,
// each drained by a goroutine that counts what it receives and returns at
// the first message for machine "\x00end".
func benchClients(b *testing.B, h *Hub, n int, delivered *atomic.Int64, wg *sync.WaitGroup) []*client {
	cs := make([]*client, n)
	for i := range cs {
		cs[i], _ = testClient(b, h, h.opts.QueueSize)
		c := cs[i]
		wg.Go(func() {
			batch := make([]*message, 0, burst)
			for {
				select {
				case <-c.queue.wake:
					for batch = c.queue.pop(batch[:0], burst); len(batch) > 0; batch = c.queue.pop(batch[:0], burst) {
						delivered.Add(int64(len(batch)))
						if batch[len(batch)-1].machine == "\x00end" {
							return
						}
					}
				case <-c.cut:
					return
				}
			}
		})
	}
	return cs
}

// BenchmarkFanoutRedis measures the cross-replica fan-out: all-machines
// clients split over two hubs sharing Redis, publishes alternating between
// them, each publish 10 machines × 5 samples (10 messages) delivered to
// every client of both hubs; and, as the baseline, the same clients on
// one hub without Redis. The time includes delivery to the last client.
//
//	go test -run '^$' -bench FanoutRedis -benchtime 500x ./internal/hub/
func BenchmarkFanoutRedis(b *testing.B) {
	const machines, perMachine = 10, 5
	batch := make([]telemetry.Sample, 0, machines*perMachine)
	for i := range perMachine {
		for m := range machines {
			batch = append(batch, telemetry.Sample{
				Machine: fmt.Sprintf("press-%02d", m), Metric: "temperature",
				Time: 1764482400000 + int64(i), Value: 71.3 + float64(i),
			})
		}
	}
	for _, bc := range []struct {
		mode    string
		clients int
	}{{"local", 1000}, {"redis", 1000}, {"local", 10000}, {"redis", 10000}} {
		clients := bc.clients
		b.Run(fmt.Sprintf("%s/clients=%d", bc.mode, clients), func(b *testing.B) {
			var hubs []*Hub
			if bc.mode == "local" {
				// The baseline: one hub, no Redis, the same clients.
				h, _ := newTestHub(b, Options{QueueSize: 1 << 12})
				hubs = []*Hub{h, h}
			} else {
				prefix := testRedisPrefix(b)
				hubs = []*Hub{newBenchReplica(b, prefix), newBenchReplica(b, prefix)}
			}
			var delivered atomic.Int64
			var wg sync.WaitGroup
			var cs []*client
			for _, h := range hubs {
				cs = append(cs, benchClients(b, h, clients/2, &delivered, &wg)...)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				hubs[i%2].PublishSamples(batch, 1764482400123)
				i++
			}
			hubs[0].publishEvent("\x00end", "end", nil)
			wg.Wait()
			secs := b.Elapsed().Seconds()
			var cut int
			for _, c := range cs {
				if c.reason == reasonSlowClient {
					cut++
				}
			}
			if cut > 0 {
				b.Fatalf("%d clients cut off as slow", cut)
			}
			for i, c := range cs {
				h := hubs[i*2/len(cs)]
				h.drop(c, reasonShutdown)
				h.unregister(c)
			}
			b.ReportMetric(float64(i*machines)/secs, "msgs/s")
			b.ReportMetric(float64(delivered.Load())/secs, "deliveries/s")
		})
	}
}

// BenchmarkFanoutLatency measures the time from publishEvent on hub A to
// the message in the queue of a client of hub B (and of A), with Redis
// (two hubs) and without (one local hub), one message at a time.
//
//	go test -run '^$' -bench FanoutLatency -benchtime 2000x ./internal/hub/
func BenchmarkFanoutLatency(b *testing.B) {
	for _, mode := range []string{"local", "redis"} {
		b.Run(mode, func(b *testing.B) {
			var a, other *Hub
			if mode == "local" {
				a, _ = newTestHub(b, Options{})
				other = a
			} else {
				prefix := testRedisPrefix(b)
				a, other = newBenchReplica(b, prefix), newBenchReplica(b, prefix)
			}
			ca, _ := testClient(b, a, 64)
			cb, _ := testClient(b, other, 64)
			lat := make([]time.Duration, 0, 1<<16)
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				a.publishEvent("press-07", "note", 1)
				for _, c := range []*client{cb, ca} {
					for len(c.queue.pop(nil, 1)) == 0 {
						<-c.queue.wake
					}
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
