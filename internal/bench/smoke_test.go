package bench

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/app"
	"github.com/twinline/twinline/internal/config"
)

// startServer runs the whole platform in-process on a random loopback port
// with a temporary data directory, as `twinline bench` does without
// --target.
func startServer(t *testing.T, mutate func(*config.Config)) string {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg, slog.New(slog.DiscardHandler), "test")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return "http://" + a.Addr().String()
}

// TestSmoke runs every scenario for a fraction of a second against an
// embedded server: the machinery works end to end (requests acknowledged,
// samples received and measured, queries answered). Timings are not
// checked. Skipped with -short (about 3.5 s in all).
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("smoke test of every scenario against a real server; skipped with -short")
	}
	tests := []struct {
		opts  Options
		check func(t *testing.T, r *Result)
	}{
		{opts: Options{Scenario: "ingest-json", Workers: 2, Batch: 100, Machines: 10}, check: func(t *testing.T, r *Result) {
			checkIngest(t, r)
			checkLegs(t, r)
		}},
		{opts: Options{Scenario: "ingest-lp", Workers: 2, Batch: 100, Machines: 10}, check: checkIngest},
		{
			opts: Options{Scenario: "latency", Rate: 2000, Clients: 20, AllClients: 2, Machines: 10, Warmup: 100 * time.Millisecond},
			check: func(t *testing.T, r *Result) {
				checkIngest(t, r)
				if r.Stream == nil || r.Stream.Connected != 20 || r.Stream.Samples == 0 {
					t.Fatalf("stream = %+v, want 20 clients connected and samples received", r.Stream)
				}
				if r.Latency == nil || r.Latency.Count != r.Stream.Samples {
					t.Errorf("latency count = %+v, want one value per received sample (%d)", r.Latency, r.Stream.Samples)
				}
				if r.Stream.Samples > r.Stream.Expected {
					t.Errorf("received %d samples, more than the %d expected", r.Stream.Samples, r.Stream.Expected)
				}
				checkLegs(t, r)
			},
		},
		{
			opts: Options{Scenario: "fanout", Rate: 500, Clients: 50, Machines: 10, Transport: "sse", Warmup: 100 * time.Millisecond},
			check: func(t *testing.T, r *Result) {
				if r.Stream == nil || r.Stream.Connected != 50 || r.Stream.Messages == 0 {
					t.Fatalf("stream = %+v, want 50 clients connected and messages received", r.Stream)
				}
				if r.Stream.RSSDelta == 0 {
					t.Errorf("no memory figure: %+v", r.Stream)
				}
			},
		},
		{
			opts: Options{Scenario: "dashboard", Rate: 2000, Clients: 10, FleetClients: 3, Conflate: 100 * time.Millisecond, Machines: 10, Warmup: 100 * time.Millisecond},
			check: func(t *testing.T, r *Result) {
				checkIngest(t, r)
				if r.Stream == nil || r.Stream.Connected != 13 || r.Stream.Samples == 0 {
					t.Fatalf("stream = %+v, want 13 clients connected and samples received", r.Stream)
				}
				if f := r.Fleet; f == nil || f.Messages == 0 || f.Interval.Count == 0 || f.MachinesPerMessage == 0 || f.Bytes.Max == 0 {
					t.Fatalf("fleet = %+v, want fleet messages measured", r.Fleet)
				}
				if d := r.Stream.Drops; d == nil || !d.ServerRead || d.ServerTotal != 0 || d.ReconnectNotices != 0 || d.CloseNotices != 0 {
					t.Errorf("drops = %+v, want the server's counter read and nothing dropped", d)
				}
			},
		},
		{
			opts: Options{Scenario: "query", Machines: 20, HistoryMachines: 2, History: 10 * time.Minute},
			check: func(t *testing.T, r *Result) {
				if len(r.Queries) != 3 {
					t.Fatalf("queries = %+v, want 3 kinds", r.Queries)
				}
				for _, q := range r.Queries {
					if q.Count == 0 || len(q.Errors) > 0 {
						t.Errorf("query %s: %d answered, errors %v", q.Name, q.Count, q.Errors)
					}
				}
				if p := r.Queries[0].Points; p < 500 || p > 1000 {
					t.Errorf("history-points answered %v points, want about 1000", p)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.opts.Scenario, func(t *testing.T) {
			o := tt.opts
			o.Target = startServer(t, nil)
			o.Duration = 400 * time.Millisecond
			o.Server, o.Embedded = &Process{}, true
			r, err := Run(t.Context(), o)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			tt.check(t, r)
		})
	}
}

// checkLegs checks the legs and backlog an embedded server exposes: the
// in-process log's depth, the stored samples, and every leg it has
// (whichever the server exposes: the others are reported absent).
func checkLegs(t *testing.T, r *Result) {
	t.Helper()
	p := r.Pipeline
	if p == nil || len(p.SourceErrors) > 0 || p.StoringProcesses != 1 || p.StoredSamplesPerS <= 0 {
		t.Fatalf("pipeline = %+v, want the server read and samples stored", p)
	}
	if p.Depth == nil || p.Depth.Readings < 2 {
		t.Errorf("log depth = %+v, want read at the start and end of the phase", p.Depth)
	}
	names := map[string]bool{}
	for _, l := range r.Legs {
		names[l.Name] = true
		if !l.Present {
			continue
		}
		if l.Count < 0 || l.P50Ms > l.P99Ms || l.MeanMs < 0 {
			t.Errorf("leg %+v: want a count and p50 ≤ p99", l)
		}
	}
	for _, sp := range legSpecs {
		if !sp.optional && sp.split == "" && !names[sp.name] {
			t.Errorf("leg %s missing from the report", sp.name)
		}
	}
	// The store's commit histogram exists on every server.
	if !names["store_write{memory}"] {
		t.Errorf("legs %v: want store_write{memory}", names)
	}
	for _, l := range r.Legs {
		if l.Name == "store_write{memory}" && l.Count == 0 {
			t.Errorf("store_write{memory} = %+v, want commits counted in the phase", l)
		}
	}
}

func checkIngest(t *testing.T, r *Result) {
	t.Helper()
	in := r.Ingest
	if in == nil || in.Events == 0 || in.Samples != in.Events*int64(r.Config.Metrics) || len(in.Errors) > 0 || in.Duplicates > 0 {
		t.Fatalf("ingest = %+v, want events acknowledged without errors or duplicates", in)
	}
	if r.Server == nil || r.Server.CPUSeconds <= 0 {
		t.Errorf("server = %+v, want its CPU time", r.Server)
	}
}
