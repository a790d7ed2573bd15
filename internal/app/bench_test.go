package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/config"
)

// startApp runs the whole platform in-process on a random loopback port
// with a temporary data directory.
func startApp(tb testing.TB, mutate func(*config.Config)) string {
	tb.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = tb.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := New(ctx, cfg, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	return "http://" + a.Addr().String()
}

// benchIngest posts pre-built bodies from several concurrent keep-alive
// clients, so the figure is the server's: HTTP, decoding, the log, the
// durable store commit and the live sinks. body(k) builds the k-th body;
// worker w posts bodies w, w+workers, … in order, and body k holds the
// machines of group k%workers, so each machine's events arrive in event-time
// order, as live sensors' do, while the groups interleave freely. Each body
// carries perBody samples (or events); the metric is that unit per second.
func benchIngest(b *testing.B, url, contentType string, body func(k, group int) []byte, perBody int, unit string) {
	b.ReportAllocs()
	workers := 4 * runtime.GOMAXPROCS(0)
	bodies := make([][]byte, b.N)
	for k := range bodies {
		bodies[k] = body(k, k%workers)
	}
	transport := &http.Transport{MaxIdleConnsPerHost: workers}
	client := &http.Client{Transport: transport}
	defer transport.CloseIdleConnections()
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; k < b.N; k += workers {
				resp, err := client.Post(url, contentType, bytes.NewReader(bodies[k]))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d of %d requests failed", n, b.N)
	}
	b.ReportMetric(float64(b.N*perBody)/elapsed.Seconds(), unit+"/s")
}

// BenchmarkIngestJSON: NDJSON bodies of 1000 events × 3 metrics from 100
// machines (10 events each, 1 ms apart).
func BenchmarkIngestJSON(b *testing.B) {
	url := startApp(b, nil) + "/api/v1/events"
	const events, machines = 1000, 100
	base := time.Now().Add(-time.Hour).UnixMilli()
	benchIngest(b, url, "application/x-ndjson", func(k, group int) []byte {
		var buf bytes.Buffer
		for i := range events {
			fmt.Fprintf(&buf, `{"machineId":"press-%02d-%03d","timestamp":%d,"temp":%d.5,"rpm":%d,"vibration":2.%d}`+"\n",
				group, i%machines, base+int64(k*events/machines+i/machines), 60+i%20, 1000+i, i%10)
		}
		return buf.Bytes()
	}, events, "events")
}

// BenchmarkIngestLineProtocol: bodies of 1000 lines × 3 fields (data points)
// from 100 machines.
func BenchmarkIngestLineProtocol(b *testing.B) {
	url := startApp(b, nil) + "/write?db=bench&precision=ms"
	const lines, fields, machines = 1000, 3, 100
	base := time.Now().Add(-time.Hour).UnixMilli()
	benchIngest(b, url, "text/plain", func(k, group int) []byte {
		var buf bytes.Buffer
		for i := range lines {
			fmt.Fprintf(&buf, "press,machineId=press-%02d-%03d,site=lyon temp=%d.5,rpm=%di,vibration=2.%d %d\n",
				group, i%machines, 60+i%20, 1000+i, i%10, base+int64(k*lines/machines+i/machines))
		}
		return buf.Bytes()
	}, lines*fields, "points")
}
