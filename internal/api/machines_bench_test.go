package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// fleetAPI returns an API over n registered machines with live state, as a
// running plant has them: name, site, line, two attributes and a
// threshold each; four metrics with their medians, a state and event
// rates; every 50th machine silent (offline), every 20th in alarm.
func fleetAPI(tb testing.TB, n int) (*API, *twin.Registry, *twin.Live) {
	tb.Helper()
	now := time.UnixMilli(1_765_000_000_000)
	clock := func() time.Time { return now }
	reg, live := openTwins(tb, time.Minute, clock)
	alarms, err := twin.OpenAlarms(filepath.Join(tb.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { alarms.Close() })
	high := 90.0
	infos := make([]twin.Info, n)
	for i := range infos {
		infos[i] = twin.Info{
			ID: fmt.Sprintf("press-%05d", i), Name: fmt.Sprintf("Press %d", i),
			Site: fmt.Sprintf("site-%d", i%4), Line: fmt.Sprintf("line-%02d", i%20),
			Thresholds: map[string]twin.Threshold{"temp": {High: &high}},
			Attributes: map[string]any{"vendor": []string{"acme", "globex", "initech"}[i%3], "floor": float64(i % 3)},
		}
	}
	if _, err := reg.RegisterMissing(infos); err != nil {
		tb.Fatal(err)
	}
	metrics := []string{"temp", "pressure", "rpm", "power"}
	var samples []telemetry.Sample
	for step := range 3 {
		b := &telemetry.Batch{Received: now.UnixMilli() - int64(2-step)*1000}
		samples = samples[:0]
		for i := range infos {
			if i%50 == 49 && step > 0 {
				continue
			}
			received := b.Received
			if i%50 == 49 {
				received -= int64(time.Hour / time.Millisecond) // silent: offline
			}
			ev := telemetry.Event{Machine: infos[i].ID, Time: received - 20, States: []telemetry.State{{Name: "state", Value: "running"}}}
			for k, m := range metrics {
				v := float64(i%100) + float64(k)*10.5 + float64(step)*0.25
				ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: m, Value: v})
				samples = append(samples, telemetry.Sample{Machine: infos[i].ID, Metric: m, Time: ev.Time, Value: v})
			}
			b.Events = append(b.Events, ev)
		}
		live.Observe(b, samples)
		live.ObserveReleased(samples, nil)
	}
	var hot []telemetry.Sample
	for i := 0; i < n; i += 20 {
		hot = append(hot, telemetry.Sample{Machine: infos[i].ID, Metric: "temp", Time: now.UnixMilli(), Value: 99})
	}
	if _, err := alarms.Observe(hot, reg.Thresholds); err != nil {
		tb.Fatal(err)
	}
	a := New(Options{MaxInflightIngest: 1}, Deps{
		Registry: reg, Live: live, Alarms: alarms, Clock: clock,
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready:  func() error { return nil },
		Logger: slog.New(slog.DiscardHandler),
	})
	return a, reg, live
}

// BenchmarkFleetList is GET /api/v1/machines over 10 000 machines with live
// state: the server's time per answer and its size (B/answer).
//
// all-ingest is the whole list while the live state takes 50 000 events/s
// (batches of 100 events of four metrics every 2 ms, machines in turn), as
// a plant sends them: the values change between answers and the encoding
// takes the read lock against the ingest's writes.
func BenchmarkFleetList(b *testing.B) {
	a, _, live := fleetAPI(b, 10_000)
	for _, tc := range []struct {
		name, path, accept string
		ingest             bool
	}{
		{"all", "/api/v1/machines", "", false},
		{"all-ingest", "/api/v1/machines", "", true},
		{"all-gzip", "/api/v1/machines", "gzip", false},
		{"page-100", "/api/v1/machines?limit=100", "", false},
		{"site-line", "/api/v1/machines?site=site-1&line=line-05", "", false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if tc.ingest {
				stop := feedLive(live, 10_000, 100, 2*time.Millisecond)
				defer stop()
			}
			b.ReportAllocs()
			var size int
			cpu0 := cpuTime()
			for b.Loop() {
				req := httptest.NewRequest("GET", tc.path, nil)
				if tc.accept != "" {
					req.Header.Set("Accept-Encoding", tc.accept)
				}
				w := &countingWriter{header: http.Header{}}
				a.ServeHTTP(w, req)
				if w.code != http.StatusOK {
					b.Fatalf("status %d", w.code)
				}
				size = w.n
			}
			// On a shared machine the wall time (ns/op) counts the waits
			// for a core; the process's CPU time per answer (GC included)
			// does not.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(size), "B/answer")
		})
	}
}

// feedLive observes batches of perBatch events (four metrics each) into
// live every interval, over n machines named as fleetAPI names them, until
// the returned stop is called (which waits for the feeder to end).
func feedLive(live *twin.Live, n, perBatch int, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		metrics := []string{"temp", "pressure", "rpm", "power"}
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("press-%05d", i)
		}
		var samples []telemetry.Sample
		next := 0
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			now := time.UnixMilli(1_765_000_000_000)
			bt := &telemetry.Batch{Received: now.UnixMilli()}
			samples = samples[:0]
			for range perBatch {
				id := ids[next%n]
				ev := telemetry.Event{Machine: id, Time: now.UnixMilli() - 10}
				for k, m := range metrics {
					v := float64(next%1000)/8 + float64(k)
					ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: m, Value: v})
					samples = append(samples, telemetry.Sample{Machine: id, Metric: m, Time: ev.Time, Value: v})
				}
				bt.Events = append(bt.Events, ev)
				next++
			}
			live.Observe(bt, samples)
			live.ObserveReleased(samples, nil)
		}
	}()
	return func() { close(done); <-ended }
}

// countingWriter is a ResponseWriter that counts the bytes of the answer
// and keeps none: the benchmark measures the server, not a buffer.
type countingWriter struct {
	header http.Header
	code   int
	n      int
}

func (w *countingWriter) Header() http.Header { return w.header }
func (w *countingWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *countingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

// cpuTime is the process's user and system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
