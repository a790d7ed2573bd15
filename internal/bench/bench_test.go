package bench

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	ok := func(scenario string) Options {
		return Options{Scenario: scenario, Target: "http://127.0.0.1:8080"}.WithDefaults()
	}
	tests := []struct {
		name  string
		opts  Options
		flags []string // each must be named in the error; none: valid
	}{
		{name: "ingest-json defaults", opts: ok("ingest-json")},
		{name: "ingest-lp defaults", opts: ok("ingest-lp")},
		{name: "latency defaults", opts: ok("latency")},
		{name: "fanout defaults", opts: ok("fanout")},
		{name: "query defaults", opts: ok("query")},
		{name: "dashboard defaults", opts: ok("dashboard")},
		{name: "dashboard conflate out of the server's bounds", opts: func() Options {
			o := ok("dashboard")
			o.Conflate = 20 * time.Millisecond
			return o
		}(), flags: []string{"--conflate"}},
		{name: "fleet clients outside the stream scenarios", opts: func() Options {
			o := ok("query")
			o.FleetClients = 3
			return o
		}(), flags: []string{"--fleet-clients"}},
		{name: "unknown scenario and bad target", opts: Options{Scenario: "nope", Target: "127.0.0.1:8080"}.WithDefaults(), flags: []string{"--scenario", "--target"}},
		{name: "too fast for the machines", opts: func() Options {
			o := ok("latency")
			o.Rate, o.Machines = 50_000, 10
			return o
		}(), flags: []string{"--rate"}},
		{name: "every problem at once", opts: func() Options {
			o := ok("latency")
			o.Workers, o.Batch, o.Transport, o.AllClients, o.Warmup = 0, -1, "udp", o.Clients+1, o.Duration
			return o
		}(), flags: []string{"--workers", "--batch", "--transport", "--all-clients", "--warmup"}},
		{name: "fewer machines than ingest workers", opts: func() Options {
			o := ok("ingest-lp")
			o.Machines, o.Workers = 2, 4
			return o
		}(), flags: []string{"--machines"}},
		{name: "prefix with a control character", opts: func() Options {
			o := ok("ingest-json")
			o.Prefix = "bench\x01"
			return o
		}(), flags: []string{"--prefix"}},
		{name: "query history", opts: func() Options {
			o := ok("query")
			o.HistoryMachines, o.History = o.Machines+1, time.Second
			return o
		}(), flags: []string{"--history-machines", "--history"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if len(tt.flags) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors naming %v", tt.flags)
			}
			for _, f := range tt.flags {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("Validate() = %v, want it to name %s", err, f)
				}
			}
		})
	}
}

func TestDashboardDefaults(t *testing.T) {
	got := Options{Scenario: "dashboard"}.WithDefaults()
	if got.Rate != 50_000 || got.Clients != 1000 || got.FleetClients != 50 || got.Conflate != 250*time.Millisecond {
		t.Errorf("dashboard defaults: rate %v, clients %d, fleet clients %d, conflate %s; want 50000, 1000, 50, 250ms",
			got.Rate, got.Clients, got.FleetClients, got.Conflate)
	}
	if lat := (Options{Scenario: "latency"}).WithDefaults(); lat.FleetClients != 0 {
		t.Errorf("latency defaults: %d fleet clients, want 0", lat.FleetClients)
	}
}

func TestProcessSelf(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("no /proc: process statistics are Linux only")
	}
	for _, p := range []Process{{}, {PID: os.Getpid()}} {
		rss, err := p.RSS()
		if err != nil || rss < 1<<20 {
			t.Errorf("Process%+v.RSS() = %d, %v, want at least 1 MiB", p, rss, err)
		}
		// Burn a little CPU so that even /proc's 10 ms ticks see some.
		deadline := time.Now().Add(30 * time.Millisecond)
		for time.Now().Before(deadline) {
		}
		cpu, err := p.CPU()
		if err != nil || cpu <= 0 {
			t.Errorf("Process%+v.CPU() = %v, %v, want > 0", p, cpu, err)
		}
	}
}

func TestRaiseOpenFiles(t *testing.T) {
	got, err := RaiseOpenFiles(64)
	if err != nil || got < 64 {
		t.Errorf("RaiseOpenFiles(64) = %d, %v, want ≥ 64", got, err)
	}
}
