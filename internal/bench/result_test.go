package bench

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(got), string(want)); diff != "" {
		t.Errorf("%s mismatch (-got +want):\n%s", name, diff)
	}
}

// sampleResults are fixed results of each shape.
func sampleResults() map[string]*Result {
	base := func(scenario string) *Result {
		o := Options{Scenario: scenario, Target: "http://127.0.0.1:8080", Embedded: true}.WithDefaults()
		o.Workers = 8
		r := newResult(o)
		r.StartedAt = time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
		r.Host = Host{CPUs: 2, GoVersion: "go1.26.8", OS: "linux", Arch: "amd64"}
		r.Seconds = 10
		return r
	}
	ingest := base("ingest-json")
	ingest.Ingest = &IngestResult{
		Requests: 2540, Events: 2_540_000, Samples: 7_620_000, EventsPerS: 254_000, SamplesPerS: 762_000,
		Errors:  map[string]int64{"503": 3},
		Request: &Summary{Count: 2540, MeanMs: 30.1, P50Ms: 27.5, P90Ms: 60, P99Ms: 150, P999Ms: 200, MaxMs: 210},
	}
	ingest.Server = &ServerResult{CPUSeconds: 19.5, CPUPerSample: 19.5 / 7_620_000, RSS: 450 << 20}
	ingest.Legs = []LegResult{{Name: "ingest_ack", Series: `twinline_leg_seconds{leg="ingest_ack"}`, What: legSpecs[0].what}}
	ingest.Pipeline = &PipelineResult{
		Sources: []string{"http://127.0.0.1:8080"}, SourceErrors: []string{"http://127.0.0.1:8080: answered 401 Unauthorized"},
		Seconds: 10, StoredSamplesPerS: 760_000, StoringProcesses: 1,
		Depth: &Backlog{Start: 0, End: 2000, Max: 65_000, Readings: 11},
	}

	lat := base("latency")
	lat.Ingest = &IngestResult{Requests: 1000, Events: 500_000, Samples: 1_500_000, EventsPerS: 50_000, SamplesPerS: 150_000}
	lat.Latency = &Summary{Count: 1_350_000, MeanMs: 9.2, P50Ms: 7.6, P90Ms: 11.8, P99Ms: 25.3, P999Ms: 60.1, MaxMs: 120.4}
	lat.Stream = &StreamResult{
		Clients: 1000, Connected: 1000, ConnectS: 0.5, ConnectPerS: 2000,
		Messages: 900_000, MessagesPerS: 100_000, Samples: 1_350_000, SamplesPerS: 150_000, Expected: 1_350_000,
		RSSDelta: 60 << 20, BytesPerClient: 62914.56,
	}
	lat.StreamTargets = []string{"http://127.0.0.1:8083", "http://127.0.0.1:8084"}
	lat.MetricsTargets = []string{"http://127.0.0.1:8081", "http://127.0.0.1:8082"}
	lat.Legs = []LegResult{
		{Name: "ingest_ack", Series: `twinline_leg_seconds{leg="ingest_ack"}`, What: legSpecs[0].what, Present: true, Processes: 1,
			Count: 1000, MeanMs: 4.2, P50Ms: 3.5, P99Ms: 9.9},
		{Name: "log_wait", Series: `twinline_leg_seconds{leg="log_wait"}`, What: legSpecs[1].what},
		{Name: "store_commit", Series: `twinline_leg_seconds{leg="store_commit"}`, What: legSpecs[3].what, Present: true, Processes: 2,
			Count: 800, MeanMs: 50, P50Ms: 45, P99Ms: 120},
		{Name: "publish_write", Series: `twinline_leg_seconds{leg="publish_write"}`, What: legSpecs[4].what, Present: true, Processes: 2},
	}
	lat.Pipeline = &PipelineResult{
		Sources: []string{"http://127.0.0.1:8080", "http://127.0.0.1:8083", "http://127.0.0.1:8084", "http://127.0.0.1:8081", "http://127.0.0.1:8082"},
		Seconds: 9.5, StoredSamplesPerS: 150_000, StoringProcesses: 2,
		Lag: &Backlog{Start: 120, End: 300, Max: 4500, Readings: 11},
	}

	dash := base("dashboard")
	dash.Ingest = &IngestResult{Requests: 1000, Events: 500_000, Samples: 1_500_000, EventsPerS: 50_000, SamplesPerS: 150_000}
	dash.Latency = &Summary{Count: 1_350_000, MeanMs: 9.2, P50Ms: 7.6, P90Ms: 11.8, P99Ms: 25.3, P999Ms: 60.1, MaxMs: 120.4}
	dash.Stream = &StreamResult{
		Clients: 1050, Connected: 1050, ConnectS: 0.6, ConnectPerS: 1750,
		Messages: 900_000, MessagesPerS: 100_000, Samples: 1_350_000, SamplesPerS: 150_000, Expected: 1_350_000,
		Drops: &DropResult{ServerRead: true, Server: map[string]int64{"slow_client": 1}, ServerTotal: 1, ReconnectNotices: 1, CloseNotices: 1},
	}
	dash.Fleet = &FleetResult{
		Clients: 50, ConflateMs: 250, Messages: 1800, MessagesPerS: 200,
		Interval:           Summary{Count: 1750, MeanMs: 250.2, P50Ms: 250.1, P90Ms: 251, P99Ms: 262, P999Ms: 270, MaxMs: 271},
		Freshness:          Summary{Count: 1800, MeanMs: 12, P50Ms: 10, P90Ms: 20, P99Ms: 40, P999Ms: 50, MaxMs: 51},
		Bytes:              SizeSummary{Mean: 120_000, P50: 119_000, P99: 125_000, Max: 130_000},
		MachinesPerMessage: 1000, ValuesPerMessage: 3000, SamplesPerMessage: 37_500,
	}

	q := base("query")
	q.Queries = []QueryResult{
		{Name: "history-points", Path: "/api/v1/machines/bench-00000/series?metric=temp&points=1000", Points: 1000,
			Summary: Summary{Count: 900, MeanMs: 6, P50Ms: 5.7, P90Ms: 7, P99Ms: 9.5, P999Ms: 12, MaxMs: 12.5}, PerS: 30},
		{Name: "fleet", Path: "/api/v1/machines", Errors: map[string]int64{"transport": 1},
			Summary: Summary{Count: 899, MeanMs: 3, P50Ms: 2.9, P90Ms: 4, P99Ms: 6, P999Ms: 8, MaxMs: 8.1}, PerS: 30},
	}
	return map[string]*Result{"ingest": ingest, "latency": lat, "dashboard": dash, "query": q}
}

func TestResultJSONShape(t *testing.T) {
	for name, r := range sampleResults() {
		t.Run(name, func(t *testing.T) {
			got, err := json.MarshalIndent(r, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "result-"+name+".json", append(got, '\n'))
			// The document reads back into the same Result.
			var back Result
			if err := json.Unmarshal(got, &back); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(&back, r); diff != "" {
				t.Errorf("round trip mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestWriteTable(t *testing.T) {
	for name, r := range sampleResults() {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteTable(&b, r); err != nil {
				t.Fatal(err)
			}
			golden(t, "table-"+name+".txt", b.Bytes())
		})
	}
}

func TestFormatCountAndBytes(t *testing.T) {
	counts := []struct {
		in   float64
		want string
	}{
		{0, "0"}, {7, "7"}, {999.6, "1 000"}, {1234, "1 234"}, {1234567.8, "1 234 568"}, {-50000, "-50 000"},
	}
	for _, tt := range counts {
		if got := FormatCount(tt.in); got != tt.want {
			t.Errorf("FormatCount(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
	sizes := []struct {
		in   float64
		want string
	}{
		{512, "512 B"}, {16384, "16.0 KiB"}, {13.3 * 1024, "13.3 KiB"}, {450 << 20, "450.0 MiB"}, {-2048, "-2.0 KiB"},
	}
	for _, tt := range sizes {
		if got := FormatBytes(tt.in); got != tt.want {
			t.Errorf("FormatBytes(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
