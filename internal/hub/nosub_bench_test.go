package hub

import (
	"fmt"
	"testing"

	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkPublishNoSubscriber measures publishing with no client
// connected: one publish of 100 machines × 10 metrics (samples), and one
// event per window (event, the old way windows went out: publishEvent
// with a struct). Reported per sample and per event.
func BenchmarkPublishNoSubscriber(b *testing.B) {
	const machines, metrics = 100, 10
	var ss []telemetry.Sample
	for m := range machines {
		for k := range metrics {
			ss = append(ss, telemetry.Sample{Machine: fmt.Sprintf("m-%03d", m), Metric: fmt.Sprintf("metric_%d", k), Time: 1764482400000, Value: 71.25 + float64(k)})
		}
	}
	b.Run("samples", func(b *testing.B) {
		h, _ := newTestHub(b, Options{})
		b.ReportAllocs()
		for b.Loop() {
			h.PublishSamples(ss, 1764482400123)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ss)), "ns/sample")
	})
	// A client left within resumeHorizon: the hub keeps a copy of the
	// samples for it, unencoded.
	b.Run("samples_resumable", func(b *testing.B) {
		h, _ := newTestHub(b, Options{})
		leftRecently(b, h)
		b.ReportAllocs()
		for b.Loop() {
			h.PublishSamples(ss, 1764482400123)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(ss)), "ns/sample")
	})
	type window struct {
		Metric string  `json:"metric"`
		Start  int64   `json:"start"`
		Size   int64   `json:"size"`
		Kind   string  `json:"kind"`
		Count  int64   `json:"count"`
		Sum    float64 `json:"sum"`
		Min    float64 `json:"min"`
		Max    float64 `json:"max"`
		Avg    float64 `json:"avg"`
	}
	b.Run("event", func(b *testing.B) {
		h, _ := newTestHub(b, Options{})
		b.ReportAllocs()
		for b.Loop() {
			h.publishEvent("m-001", "window", window{Metric: "temp", Start: 1764482400000, Size: 10000, Kind: "final", Count: 10, Sum: 712.5, Min: 70, Max: 73, Avg: 71.25})
		}
	})
}

// BenchmarkPublishWindowsNoSubscriber measures the window close of 100
// machines × 10 metrics with no client connected, the way the app
// publishes it now (PublishWindows); per window.
func BenchmarkPublishWindowsNoSubscriber(b *testing.B) {
	h, _ := newTestHub(b, Options{})
	ws := make([]Window, 0, 1000)
	b.ReportAllocs()
	for b.Loop() {
		ws = ws[:0]
		for m := range 100 {
			for k := range 10 {
				ws = append(ws, Window{Machine: machineNames[m], Metric: metricNames[k], Start: 1764482400000, Size: 10000, Kind: "final", Count: 10, Sum: 712.5, Min: 70, Max: 73, Avg: 71.25})
			}
		}
		h.PublishWindows(ws[:len(ws):len(ws)])
		ws = make([]Window, 0, 1000) // the hub keeps the last
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*1000), "ns/window")
}

var machineNames, metricNames = func() (ms, ks []string) {
	for m := range 100 {
		ms = append(ms, fmt.Sprintf("m-%03d", m))
	}
	for k := range 10 {
		ks = append(ks, fmt.Sprintf("metric_%d", k))
	}
	return ms, ks
}()
