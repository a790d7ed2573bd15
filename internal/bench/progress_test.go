package bench

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestProgressLine(t *testing.T) {
	start := t0
	tests := []struct {
		name      string
		scenario  string
		prev, cur counters
		want      string
	}{
		{
			name:     "ingest",
			scenario: "ingest-json",
			prev:     counters{at: t0.Add(2 * time.Second), events: 400_000, samples: 1_200_000},
			cur:      counters{at: t0.Add(3 * time.Second), phase: "measure", events: 654_312, samples: 1_962_936, errors: 2},
			want:     "[   3s] ingest-json measure · events/s 254 312 · samples/s 762 936 · errors 2",
		},
		{
			name:     "latency with clients and a backlog, half a second apart",
			scenario: "latency",
			prev:     counters{at: t0.Add(11500 * time.Millisecond), events: 100, messages: 10, received: 30},
			cur: counters{at: t0.Add(12 * time.Second), phase: "measure", events: 25_100, samples: 75_000,
				clients: 1000, connected: 998, messages: 50_010, received: 150_030, behind: 1234},
			want: "[  12s] latency measure · events/s 50 000 · samples/s 150 000 · clients 998/1000 · msgs/s 100 000 · recv samples/s 300 000 · backlog 1 234 · errors 0",
		},
		{
			name:     "query phase",
			scenario: "query",
			prev:     counters{at: t0.Add(time.Second), queries: 10},
			cur:      counters{at: t0.Add(2 * time.Second), phase: "queries", queries: 310},
			want:     "[   2s] query queries · queries/s 300 · errors 0",
		},
		{
			name:     "same instant: no division by zero",
			scenario: "ingest-lp",
			prev:     counters{at: t0, events: 5},
			cur:      counters{at: t0, phase: "starting", events: 9},
			want:     "[   0s] ingest-lp starting · events/s 0 · samples/s 0 · errors 0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := lineFor(tt.scenario, start, tt.prev, tt.cur).String()
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("progress line mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestRender(t *testing.T) {
	if got, want := render("x", true), "\rx\x1b[K"; got != want {
		t.Errorf("render on a terminal = %q, want %q", got, want)
	}
	if got, want := render("x", false), "x\n"; got != want {
		t.Errorf("render elsewhere = %q, want %q", got, want)
	}
}

func TestMeterRead(t *testing.T) {
	m := newMeter(t0)
	m.setPhase("measure")
	m.events.Add(3)
	m.connected.Add(2)
	got := m.read(t0.Add(time.Second))
	want := counters{at: t0.Add(time.Second), phase: "measure", events: 3, connected: 2}
	if diff := cmp.Diff(got, want, cmp.AllowUnexported(counters{})); diff != "" {
		t.Errorf("read mismatch (-got +want):\n%s", diff)
	}
}
