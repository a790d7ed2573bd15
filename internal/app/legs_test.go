package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// latencySeries are the latency histograms of sensor → screen in /metrics,
// by name and label (name=value, "" for none).
var latencySeries = []struct{ name, label string }{
	{"twinline_leg_seconds", "leg=ingest_ack"},
	{"twinline_leg_seconds", "leg=log_wait"},
	{"twinline_leg_seconds", "leg=engine"},
	{"twinline_leg_seconds", "leg=store_commit"},
	{"twinline_leg_seconds", "leg=publish_write"},
	{"twinline_ingest_durable_seconds", "log=memory"},
	{"twinline_stream_delivery_seconds", ""},
}

// histogramCounts scrapes base's /metrics and returns the sample count of
// each of latencySeries, -1 for one that is missing.
func histogramCounts(t *testing.T, base string) []int64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	out := make([]int64, len(latencySeries))
	for i, s := range latencySeries {
		out[i] = -1
		mf := mfs[s.name]
		if mf == nil || mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			if s.label == "" || hasLabel(m, s.label) {
				out[i] = int64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func hasLabel(m *dto.Metric, nameValue string) bool {
	name, value, _ := strings.Cut(nameValue, "=")
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// TestLatencyMetrics: every leg of sensor → screen, ingest → durable and
// the stream delivery are in /metrics from the start, at zero, and each
// moves once a batch went through to a stream client (embedded defaults:
// the in-process log).
func TestLatencyMetrics(t *testing.T) {
	base := startApp(t, nil)
	for i, n := range histogramCounts(t, base) {
		if n != 0 {
			t.Errorf("%s{%s} at start: count %d, want a series at 0", latencySeries[i].name, latencySeries[i].label, n)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/api/v1/stream?all=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if _, _, err := conn.Read(ctx); err != nil { // hello: registered
		t.Fatal(err)
	}
	body := fmt.Sprintf(`{"machineId":"press-1","timestamp":%d,"temp":71.5}`, time.Now().UnixMilli())
	resp, err := http.Post(base+"/api/v1/events", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /api/v1/events: %d", resp.StatusCode)
	}
	for {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m struct{ Type string }
		if json.Unmarshal(b, &m) == nil && m.Type == "samples" {
			break
		}
	}
	// The writer observes once its write is done: a moment after the
	// client read it.
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		counts, zero := histogramCounts(t, base), []string(nil)
		for i, n := range counts {
			if n <= 0 {
				zero = append(zero, latencySeries[i].name+"{"+latencySeries[i].label+"}")
			}
		}
		if len(zero) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a batch reached a stream client, no observation in %v", zero)
		}
		<-tick.C
	}
}
