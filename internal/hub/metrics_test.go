package hub

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/twinline/twinline/internal/telemetry"
)

// histogram returns the sample count and sum of h.
func histogram(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// TestDeliveryMetrics: each samples message written live to a client is
// observed in twinline_stream_delivery_seconds from its ingestTs, and each
// live message in the publish_write leg from its publish; a message that
// is not a samples message counts in the leg only.
func TestDeliveryMetrics(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			ctx := testContext(t)
			leg := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "leg", Buckets: prometheus.DefBuckets})
			h, _ := newTestHub(t, Options{PublishWrite: leg})
			srv := newTestServer(t, h)
			c := dial(t, ctx, srv, tr, "machine=m", nil)
			c.hello(t, ctx)

			// Ingested 2 s ago: the delivery covers those 2 s.
			ingested := time.Now().Add(-2 * time.Second).UnixMilli()
			h.PublishSamples([]telemetry.Sample{{Machine: "m", Metric: "x", Time: ingested, Value: 1}}, ingested)
			h.PublishAlarm(Alarm{Machine: "m", ID: "1", Kind: "threshold", State: "active"})
			for range 2 {
				c.next(t, ctx)
			}
			waitUntil(t, "both writes observed", func() bool {
				n, _ := histogram(t, leg)
				return n == 2
			})
			n, sum := histogram(t, h.metrics.delivery)
			if n != 1 || sum < 2 || sum > 30 {
				t.Errorf("stream delivery: %d observations, %.3f s in all; want 1 of about 2 s", n, sum)
			}
			if _, sum := histogram(t, leg); sum > 2 {
				t.Errorf("publish_write: %.3f s for two messages published just now", sum)
			}
		})
	}
}

// waitUntil polls cond until it holds, failing t after 10 s: for what a
// writer goroutine does after its write reached the client.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}
