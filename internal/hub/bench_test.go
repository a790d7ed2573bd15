package hub

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkPublish measures PublishSamples with 1 000 subscribed clients,
// below the transport: each client's queue is drained by a goroutine, as a
// connection's handler would, so the cost of waking it is included. One
// publish carries 10 machines × 5 samples, so 10 messages.
//
//	go test -run '^$' -bench Publish -benchmem ./internal/hub/
func BenchmarkPublish(b *testing.B) {
	const clients, machines, perMachine = 1000, 10, 5
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
		name string
		// subscribe returns the machines client i subscribes to; none: all.
		subscribe func(i int) []string
	}{
		{"all", func(int) []string { return nil }},
		{"one_machine_each", func(i int) []string { return []string{fmt.Sprintf("press-%02d", i%machines)} }},
	} {
		b.Run(fmt.Sprintf("clients=%d/%s", clients, bc.name), func(b *testing.B) {
			h, _ := newTestHub(b, Options{QueueSize: 1 << 12})
			var wg sync.WaitGroup
			var delivered sync.Map
			cs := make([]*client, clients)
			for i := range cs {
				cs[i], _ = testClient(b, h, h.opts.QueueSize, bc.subscribe(i)...)
				wg.Go(func() {
					n := 0
					defer func() { delivered.Store(i, n) }()
					batch := make([]*message, 0, burst)
					for {
						select {
						case <-cs[i].queue.wake:
							for batch = cs[i].queue.pop(batch[:0], burst); len(batch) > 0; batch = cs[i].queue.pop(batch[:0], burst) {
								n += len(batch)
							}
						case <-cs[i].cut:
							return
						}
					}
				})
			}
			b.ReportAllocs()
			for b.Loop() {
				h.PublishSamples(batch, 1764482400123)
			}
			for _, c := range cs {
				h.drop(c, reasonShutdown)
				h.unregister(c)
			}
			wg.Wait()
			var cut int
			for _, c := range cs {
				if c.reason == reasonSlowClient {
					cut++
				}
			}
			if cut > 0 {
				b.Fatalf("%d clients cut off as slow: the benchmark outran the drain goroutines", cut)
			}
			secs := b.Elapsed().Seconds()
			b.ReportMetric(float64(b.N*machines)/secs, "msgs/s")
			var total int
			delivered.Range(func(_, v any) bool { total += v.(int); return true })
			b.ReportMetric(float64(total)/secs, "deliveries/s")
		})
	}
}

// BenchmarkEncodeSamples measures grouping and encoding alone, with no
// subscriber.
func BenchmarkEncodeSamples(b *testing.B) {
	h, _ := newTestHub(b, Options{})
	batch := make([]telemetry.Sample, 500)
	for i := range batch {
		batch[i] = telemetry.Sample{Machine: fmt.Sprintf("m%03d", i%100), Metric: "vibration_rms", Time: int64(i), Value: float64(i) / 3}
	}
	b.ReportAllocs()
	for b.Loop() {
		h.PublishSamples(batch, 1)
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "samples/s")
}

// BenchmarkClientMemory reports the Go memory (heap and stacks) that one
// connected, idle stream client costs, over real loopback connections. The
// clients are raw TCP connections that read their hello and then nothing,
// so nearly all of the figure is the server's: the connection, its reader
// goroutine (an idle client has no writer goroutine), and the hub's client;
// net/http's buffers and goroutine are gone once the connection is
// hijacked. Run it once:
//
//	go test -run '^$' -bench ClientMemory -benchtime 1x ./internal/hub/
func BenchmarkClientMemory(b *testing.B) {
	const n = 1000
	requests := map[string]string{
		transportSSE: "GET /api/v1/stream?all=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
		transportWS: "GET /api/v1/stream?all=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
	}
	for _, tr := range transports {
		b.Run(tr, func(b *testing.B) {
			h, _ := newTestHub(b, Options{})
			srv := httptest.NewServer(h)
			defer srv.Close()
			addr := srv.Listener.Addr().String()
			var perClient, stackPer float64
			for b.Loop() {
				before := memInUse()
				stackBefore := stackInUse()
				conns := make([]net.Conn, 0, n)
				buf := make([]byte, 4096)
				for range n {
					conn, err := net.Dial("tcp", addr)
					if err != nil {
						b.Fatal(err)
					}
					conns = append(conns, conn)
					if _, err := io.WriteString(conn, requests[tr]); err != nil {
						b.Fatal(err)
					}
					// Read up to the hello: the handler is then serving.
					var got []byte
					for !bytes.Contains(got, []byte(`"type":"hello"`)) {
						k, err := conn.Read(buf)
						if err != nil {
							b.Fatal(err)
						}
						got = append(got, buf[:k]...)
					}
				}
				perClient = float64(memInUse()-before) / n
				stackPer = float64(stackInUse()-stackBefore) / n
				if got := h.Clients(); got != n {
					b.Fatalf("clients: got %d, want %d", got, n)
				}
				for _, c := range conns {
					c.Close()
				}
			}
			b.ReportMetric(perClient, "bytes/client")
			b.ReportMetric(stackPer, "stack-bytes/client")
		})
	}
}

// memInUse returns the heap and stack memory in use after a GC.
func memInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

func stackInUse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.StackInuse
}

// BenchmarkSendBurst measures writing one burst of queued messages to a
// client over a real loopback TCP connection (the peer reads and discards):
// WebSocket frames (one per message, or with batch one JSON array) and an
// SSE chunk, each burst with one system call.
//
//	go test -run '^$' -bench SendBurst -benchmem ./internal/hub/
func BenchmarkSendBurst(b *testing.B) {
	h, _ := newTestHub(b, Options{})
	var msgs []*message
	for i := range burst {
		h.PublishSamples([]telemetry.Sample{{Machine: "press-07", Metric: "temperature", Time: 1764482400000 + int64(i), Value: 71.3}}, 1764482400123)
	}
	msgs = h.ring.since(h.seq-burst, h.seq, 0)
	for _, bc := range []struct {
		name string
		n    int
		send func(c *rawConn, msgs []*message) error
	}{
		{"ws/msgs=1", 1, func(c *rawConn, m []*message) error { return c.sendMessages(m, false, 0, "") }},
		{"ws/msgs=32", 32, func(c *rawConn, m []*message) error { return c.sendMessages(m, false, 0, "") }},
		{"ws-batch/msgs=32", 32, func(c *rawConn, m []*message) error { return c.sendMessages(m, true, 0, "") }},
		{"sse/msgs=1", 1, func(c *rawConn, m []*message) error { return c.sendChunk(nil, m, false) }},
		{"sse/msgs=32", 32, func(c *rawConn, m []*message) error { return c.sendChunk(nil, m, false) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				peer, err := ln.Accept()
				if err != nil {
					return
				}
				defer peer.Close()
				_, _ = io.Copy(io.Discard, peer)
			}()
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c := &rawConn{conn: conn, timeout: 10 * time.Second, done: make(chan struct{})}
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.send(c, msgs[:bc.n]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*bc.n)/b.Elapsed().Seconds(), "msgs/s")
			conn.Close()
			<-done
		})
	}
}

// BenchmarkDelivered measures what the delivery metrics cost each write to
// a client (twinline_stream_delivery_seconds for each samples message, the
// publish_write leg for each message), from every core at once as
// concurrent client writers observe them: a write of one message, and a
// burst of 32. At 1 000 clients × 50 000 events/s the hub writes some
// tens of thousands of messages a second; a few tens of nanoseconds each
// is noise, and there must be no allocation.
//
//	go test -run '^$' -bench Delivered -benchmem ./internal/hub/
func BenchmarkDelivered(b *testing.B) {
	leg := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "leg", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 17)})
	h, _ := newTestHub(b, Options{PublishWrite: leg})
	leftRecently(b, h)
	for i := range burst {
		h.PublishSamples([]telemetry.Sample{{Machine: "press-07", Metric: "temperature", Time: 1764482400000 + int64(i), Value: 71.3}}, time.Now().UnixMilli())
	}
	msgs := h.ring.since(h.seq-burst, h.seq, 0)
	for _, n := range []int{1, 32} {
		b.Run(fmt.Sprintf("msgs=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					h.metrics.delivered(h.now(), msgs[:n])
				}
			})
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
		})
	}
}
