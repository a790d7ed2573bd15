package bench

import (
	"bytes"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// fixture reads testdata/metrics/name.txt.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "metrics", name+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseFixture(t *testing.T, name string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(fixture(t, name)))
	if err != nil {
		t.Fatalf("parsing %s: %v", name, err)
	}
	return fams
}

// wantFixtureLegs are the legs of the fixtures: a gateway and two
// processors, read before and after a phase (computed by hand from the
// buckets, see the fixtures).
var wantFixtureLegs = []LegResult{
	{Name: "ingest_ack", Series: `twinline_leg_seconds{leg="ingest_ack"}`, What: legSpecs[0].what, Present: true, Processes: 1,
		Count: 200, MeanMs: 5, P50Ms: 5, P99Ms: 9.9},
	{Name: "log_wait", Series: `twinline_leg_seconds{leg="log_wait"}`, What: legSpecs[1].what},
	{Name: "engine", Series: `twinline_leg_seconds{leg="engine"}`, What: legSpecs[2].what, Present: true, Processes: 1,
		Count: 100, MeanMs: 1, P50Ms: 0.5, P99Ms: 0.99},
	// Summed over both processors; the second had none before.
	{Name: "store_commit", Series: `twinline_leg_seconds{leg="store_commit"}`, What: legSpecs[3].what, Present: true, Processes: 2,
		Count: 100, MeanMs: 50, P50Ms: 55, P99Ms: 99.1},
	{Name: "publish_write", Series: `twinline_leg_seconds{leg="publish_write"}`, What: legSpecs[4].what},
	{Name: "ingest_durable{kafka}", Series: `twinline_ingest_durable_seconds{log="kafka"}`, What: legSpecs[5].what, Present: true, Processes: 1,
		Count: 100, MeanMs: 300, P50Ms: 100, P99Ms: 982},
	{Name: "stream_delivery", Series: "twinline_stream_delivery_seconds", What: legSpecs[6].what},
	// Optional legs appear only when exposed: kafka_produce is, by the
	// gateway; store_write and stream_publish are not.
	{Name: "kafka_produce", Series: "twinline_kafka_produce_seconds", What: legSpecs[8].what, Present: true, Processes: 1,
		Count: 100, MeanMs: 1.5, P50Ms: 1.5, P99Ms: 1.99},
}

var approx = cmpopts.EquateApprox(0, 1e-9)

func TestLegsFromFixtures(t *testing.T) {
	var before, after []map[string]*dto.MetricFamily
	for _, p := range []string{"gateway", "processor1", "processor2"} {
		before = append(before, parseFixture(t, p+"-before"))
		after = append(after, parseFixture(t, p+"-after"))
	}
	got, notes := legs(before, after)
	if diff := cmp.Diff(got, wantFixtureLegs, approx); diff != "" {
		t.Errorf("legs mismatch (-got +want):\n%s", diff)
	}
	if len(notes) > 0 {
		t.Errorf("notes = %q, want none", notes)
	}
	s0, _ := counterSum(before, storedMetric, "outcome", "stored")
	s1, n := counterSum(after, storedMetric, "outcome", "stored")
	if s1-s0 != 30000 || n != 2 {
		t.Errorf("stored samples = %v by %d processes, want 30000 by 2", s1-s0, n)
	}
}

// TestPhaseWatch reads the fixtures over HTTP as a run does: the first
// reading is "before", the second "after".
func TestPhaseWatch(t *testing.T) {
	var phase atomic.Int32 // 0: serve before, 1: serve after
	var srcs []string
	for _, name := range []string{"gateway", "processor1", "processor2"} {
		before, after := fixture(t, name+"-before"), fixture(t, name+"-after")
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/metrics" || r.Header.Get("Authorization") != "Bearer tok" {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			if phase.Load() == 0 {
				w.Write(before)
			} else {
				w.Write(after)
			}
		}))
		t.Cleanup(srv.Close)
		srcs = append(srcs, srv.URL)
	}
	down := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(down.Close)
	srcs = append(srcs, down.URL)

	// An hour between backlog readings: only the two full readings count.
	w := startPhase(t.Context(), srcs, "tok", time.Hour)
	phase.Store(1)
	legs, p, notes := w.finish(t.Context())

	if diff := cmp.Diff(legs, wantFixtureLegs, approx); diff != "" {
		t.Errorf("legs mismatch (-got +want):\n%s", diff)
	}
	if p.StoringProcesses != 2 || math.Abs(p.StoredSamplesPerS*p.Seconds-30000) > 1e-6 {
		t.Errorf("stored %v samples/s over %v s by %d processes, want 30000 samples by 2", p.StoredSamplesPerS, p.Seconds, p.StoringProcesses)
	}
	if diff := cmp.Diff(p.Lag, &Backlog{Start: 150, End: 35, Max: 150, Readings: 2}); diff != "" {
		t.Errorf("lag mismatch (-got +want):\n%s", diff)
	}
	if p.Depth != nil {
		t.Errorf("depth = %+v, want none (no process exposes it)", p.Depth)
	}
	if len(p.SourceErrors) != 1 || !strings.Contains(p.SourceErrors[0], down.URL) || len(notes) != 1 {
		t.Errorf("source errors %q, notes %q: want the one source that answers 404", p.SourceErrors, notes)
	}
}

func TestHistQuantile(t *testing.T) {
	inf := math.Inf(1)
	h := histSnap{bounds: []float64{0.01, 0.1, 1, inf}, cum: []float64{10, 60, 100, 100}, count: 100, sum: 20}
	tests := []struct {
		q, want float64
	}{
		{0, 0},
		{0.05, 0.005},    // within the first bucket, from 0
		{0.1, 0.01},      // its upper bound
		{0.35, 0.055},    // halfway through (0.01, 0.1]
		{0.8, 0.55},      // halfway through (0.1, 1]
		{1, 1},           // the top of the last finite bucket
		{0.999, 0.99775}, // rank 99.9: 39.9 of the 40 in (0.1, 1]
	}
	for _, tt := range tests {
		if got := h.quantile(tt.q); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	over := histSnap{bounds: []float64{0.01, inf}, cum: []float64{1, 10}, count: 10}
	if got := over.quantile(0.99); got != 0.01 {
		t.Errorf("quantile in +Inf = %v, want the highest finite bound 0.01", got)
	}
	if got := (histSnap{}).quantile(0.5); !math.IsNaN(got) {
		t.Errorf("quantile of nothing = %v, want NaN", got)
	}
}

func TestHistSub(t *testing.T) {
	inf := math.Inf(1)
	after := histSnap{bounds: []float64{1, inf}, cum: []float64{8, 10}, count: 10, sum: 12}
	tests := []struct {
		name   string
		before histSnap
		want   histSnap
	}{
		{"none before", histSnap{}, after},
		{"some before", histSnap{bounds: []float64{1, inf}, cum: []float64{3, 4}, count: 4, sum: 2},
			histSnap{bounds: []float64{1, inf}, cum: []float64{5, 6}, count: 6, sum: 10}},
		// A restarted process counts from zero: all of after is new.
		{"restarted", histSnap{bounds: []float64{1, inf}, cum: []float64{50, 50}, count: 50, sum: 70}, after},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := after.sub(tt.before)
			if diff := cmp.Diff(got, tt.want, cmp.AllowUnexported(histSnap{})); diff != "" {
				t.Errorf("sub mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLegBucketsDiffer(t *testing.T) {
	a := parseFixture(t, "gateway-after")
	b := parseFixture(t, "gateway-after")
	// The second process has other buckets for ingest_ack.
	for _, m := range b["twinline_leg_seconds"].GetMetric() {
		m.GetHistogram().GetBucket()[0].UpperBound = new(0.002)
	}
	got, notes := legs(nil, []map[string]*dto.MetricFamily{a, b})
	if got[0].Count != 220 || got[0].Processes != 1 {
		t.Errorf("ingest_ack = %+v, want the first process's 220 only", got[0])
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "ingest_ack") {
		t.Errorf("notes = %q, want one on ingest_ack's buckets", notes)
	}
}

func TestGaugeSum(t *testing.T) {
	body := []byte(`# HELP twinline_kafka_consumer_lag_records x
# TYPE twinline_kafka_consumer_lag_records gauge
twinline_kafka_consumer_lag_records{partition="0"} 12
twinline_kafka_consumer_lag_records{partition="1",note="a } b"} 3
twinline_kafka_consumer_lag_records_other 1000
twinline_log_depth_samples 7
`)
	if got, ok := gaugeSum(body, lagMetric); !ok || got != 15 {
		t.Errorf("lag = %v, %v; want 15, true", got, ok)
	}
	if got, ok := gaugeSum(body, depthMetric); !ok || got != 7 {
		t.Errorf("depth = %v, %v; want 7, true", got, ok)
	}
	if _, ok := gaugeSum(body, "twinline_absent"); ok {
		t.Error("found a gauge that is not there")
	}
}

func TestMetricsSources(t *testing.T) {
	o := Options{
		Target:         "http://g:1/",
		StreamTargets:  []string{"http://a:1", "http://g:1", "http://b:1"},
		MetricsTargets: []string{"http://p:1", "http://a:1/"},
	}
	got := metricsSources(o)
	want := []string{"http://g:1", "http://a:1", "http://b:1", "http://p:1"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("sources mismatch (-got +want):\n%s", diff)
	}
}
