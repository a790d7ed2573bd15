package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"image/png"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestCSVWriter(t *testing.T) {
	var b bytes.Buffer
	w, err := newCSVWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	s := sample{Elapsed: 10 * time.Second, RSS: 100 << 20, HeapInuse: -1, HeapLive: 50 << 20, Goroutines: 42, OpenFDs: 17,
		Sent: 1000, Acked: 990, AckedPerS: 99, Received: 5, Restarts: 1}
	s.Lag[groupMachine] = lagStat{N: 3, P50: 1500 * time.Microsecond, P99: 20 * time.Millisecond}
	if err := w.Write(s); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rows), 2; got != want {
		t.Fatalf("rows = %d, want %d", got, want)
	}
	if diff := cmp.Diff(csvHeader, rows[0]); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	got := map[string]string{}
	for i, h := range rows[0] {
		got[h] = rows[1][i]
	}
	want := map[string]string{
		"elapsed_s": "10.000", "rss_bytes": "104857600", "rss_anon_bytes": "0", "heap_inuse_bytes": "", "heap_live_bytes": "52428800", "goroutines": "42",
		"open_fds": "17", "events_sent": "1000", "events_acked": "990", "acked_per_s": "99.000",
		"lag_machine_n": "3", "lag_machine_p50_ms": "1.500", "lag_machine_p99_ms": "20.000",
		"lag_fleet_n": "0", "lag_fleet_p50_ms": "", "lag_fleet_p99_ms": "",
		"lag_conflate_n": "0", "lag_conflate_p50_ms": "", "lag_conflate_p99_ms": "",
		"stream_samples": "5", "stream_reconnects": "0", "server_restarts": "1",
		"requests_unanswered": "0", "requests_retried": "0", "sender_behind": "0",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("row (-want +got):\n%s", diff)
	}
}

func TestDrift(t *testing.T) {
	tests := []struct {
		name   string
		t, v   []float64
		want   float64
		wantOK bool
	}{
		{"flat", []float64{0, 10, 20, 30}, []float64{100, 100, 100, 100}, 0, true},
		{"grows 10 %", []float64{0, 10, 20, 30}, []float64{100, 100 + 10.0/3, 100 + 20.0/3, 110}, 10, true},
		{"noise around a flat line", []float64{0, 10, 20, 30}, []float64{100, 110, 90, 100}, -600.0 / 103, true}, // line 103 → 97,
		{"shrinks", []float64{0, 100}, []float64{200, 150}, -25, true},
		{"one sample", []float64{0}, []float64{100}, 0, false},
		{"none", nil, nil, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := drift(tt.t, tt.v)
			if ok != tt.wantOK || math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("drift = %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestWarmupAndFlatness(t *testing.T) {
	if got, want := warmupFor(30*time.Minute), 5*time.Minute; got != want {
		t.Errorf("warmupFor(30m) = %v, want %v", got, want)
	}
	if got, want := warmupFor(2*time.Minute), 20*time.Second; got != want {
		t.Errorf("warmupFor(2m) = %v, want %v", got, want)
	}
	ss := []sample{
		{Elapsed: 10 * time.Second, Goroutines: 500},
		{Elapsed: 20 * time.Second, Goroutines: 100},
		{Elapsed: 30 * time.Second, Goroutines: -1},
		{Elapsed: 40 * time.Second, Goroutines: 130},
	}
	_, v := afterWarmup(ss, 20*time.Second, func(s sample) int64 { return s.Goroutines })
	if diff := cmp.Diff([]float64{100, 130}, v); diff != "" {
		t.Errorf("afterWarmup (-want +got):\n%s", diff)
	}
	if f := flat("goroutines", v, 50, 0.1); !f.ok() {
		t.Errorf("%v: not flat, want flat", f)
	}
	if f := flat("goroutines", v, 20, 0.1); f.ok() {
		t.Errorf("%v: flat, want not flat", f)
	}
	if f := flat("goroutines", nil, 20, 0.1); f.ok() {
		t.Errorf("%v: flat without samples", f)
	}
	// Bursts leave the baseline: flat; a baseline that climbs: not flat.
	bursts := []float64{80, 81, 80, 137, 80, 82, 130, 80, 81, 80}
	if f := flat("goroutines", bursts, 20, 0.1); !f.ok() {
		t.Errorf("%v: bursts over a flat baseline, want flat", f)
	}
	climb := []float64{80, 85, 90, 95, 100, 105, 110, 115, 120, 125}
	if f := flat("goroutines", climb, 20, 0.1); f.ok() {
		t.Errorf("%v: a climbing baseline, want not flat", f)
	}
}

func TestRenderPlot(t *testing.T) {
	var ss []sample
	for i := range 30 {
		s := sample{Elapsed: time.Duration(i+1) * 10 * time.Second, RSS: int64(100+i) << 20, HeapInuse: 50 << 20,
			Goroutines: 200, OpenFDs: 40, AckedPerS: 20_000, Retries: int64(i)}
		s.Lag[groupMachine] = lagStat{N: 10, P50: 5 * time.Millisecond, P99: 40 * time.Millisecond}
		if i == 7 {
			s.RSS = -1 // the server was down
		}
		ss = append(ss, s)
	}
	x := make([]time.Duration, len(ss))
	for i, s := range ss {
		x[i] = s.Elapsed
	}
	var b bytes.Buffer
	ps := soakPanels(ss)
	if err := renderPlot(&b, "soak test", x, ps, []time.Duration{time.Minute}, 1000); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatalf("decoding the plot: %v", err)
	}
	got := img.Bounds().Size()
	if got.X != 1000 || got.Y != marginTop+len(ps)*panelH+axisBottom {
		t.Errorf("plot size = %v, want 1000×%d", got, marginTop+len(ps)*panelH+axisBottom)
	}
	// Something was drawn in the line colour of the first panel.
	found := false
	for y := marginTop; y < marginTop+panelH && !found; y++ {
		for x := marginLeft; x < 1000; x++ {
			if r, g, b, _ := img.At(x, y).RGBA(); r>>8 == uint32(colBlue.R) && g>>8 == uint32(colBlue.G) && b>>8 == uint32(colBlue.B) {
				found = true
				break
			}
		}
	}
	if !found {
		t.Error("no RSS line drawn in the first panel")
	}
}

func TestNiceTicks(t *testing.T) {
	tests := []struct {
		lo, hi float64
		n      int
		want   []float64
	}{
		{0, 10, 4, []float64{0, 2.5, 5, 7.5, 10}},
		{0, 97, 4, []float64{0, 25, 50, 75, 100}},
		{0, 1, 4, []float64{0, 0.25, 0.5, 0.75, 1}},
	}
	for _, tt := range tests {
		if got := niceTicks(tt.lo, tt.hi, tt.n); !cmp.Equal(got, tt.want) {
			t.Errorf("niceTicks(%v, %v, %d) = %v, want %v", tt.lo, tt.hi, tt.n, got, tt.want)
		}
	}
	if got, want := tickLabel(25_000), "25K"; got != want {
		t.Errorf("tickLabel(25000) = %q, want %q", got, want)
	}
}

// fakeStore is the store side of the loss check: stored samples per
// machine, metric and bucket.
type fakeStore map[string]map[int64]int64

func (f fakeStore) count(_ context.Context, machine, metric string, from, to int64) (map[int64]int64, error) {
	out := map[int64]int64{}
	for b, n := range f[machine+"/"+metric] {
		if b >= from && b < to {
			out[b] = n
		}
	}
	return out, nil
}

func TestLedgerCheck(t *testing.T) {
	// 40 events, machine i%2, 1 s apart from t0: machine 0 has 5 events in
	// each of the buckets t0 and t0+10s, …
	t0 := int64(1_800_000_000_000)
	ev := func(i int64) (int, int64) { return int(i % 2), t0 + i*1000 }
	names := []string{"m0", "m1"}
	metrics := []string{"temp", "rpm"}
	newLedgerWith := func() *ledger {
		l := newLedger(2)
		l.add(0, 36, true, ev)
		l.add(36, 40, false, ev) // sent, never answered 2xx
		return l
	}
	complete := func() fakeStore {
		f := fakeStore{}
		for i := range int64(40) {
			m, ts := ev(i)
			for _, metric := range metrics {
				k := names[m] + "/" + metric
				if f[k] == nil {
					f[k] = map[int64]int64{}
				}
				f[k][ts-ts%bucketMs]++
			}
		}
		return f
	}

	tests := []struct {
		name   string
		store  func() fakeStore
		want   verdict
		wantOK bool
	}{
		{"everything stored, the unanswered too", complete,
			verdict{Acked: 36, Unsure: 4, Found: 40, StoredUnsure: 4}, true},
		{"the unanswered not stored", func() fakeStore {
			f := complete()
			for i := int64(36); i < 40; i++ {
				m, ts := ev(i)
				for _, metric := range metrics {
					f[names[m]+"/"+metric][ts-ts%bucketMs]--
				}
			}
			return f
		}, verdict{Acked: 36, Unsure: 4, Found: 36}, true},
		{"an acknowledged one lost in one metric", func() fakeStore {
			f := complete()
			f["m0/rpm"][t0]--
			return f
		}, verdict{Acked: 36, Unsure: 4, Found: 40, Lost: 1, StoredUnsure: 4}, false},
		{"stored twice", func() fakeStore {
			f := complete()
			f["m1/temp"][t0] += 2
			f["m1/rpm"][t0] += 2
			return f
		}, verdict{Acked: 36, Unsure: 4, Found: 42, Duplicates: 2, StoredUnsure: 4}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := newLedgerWith().check(context.Background(), names, metrics, tt.store().count)
			if err != nil {
				t.Fatal(err)
			}
			if ok := len(got.Worst) == 0; ok != tt.wantOK {
				t.Errorf("notes %q; want clean %v", got.Worst, tt.wantOK)
			}
			got.Worst = nil
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("verdict (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGlyphsCoverLabels(t *testing.T) {
	for _, p := range soakPanels(nil) {
		for _, s := range append([]string{p.title}, func() []string {
			var n []string
			for _, l := range p.lines {
				n = append(n, l.name)
			}
			return n
		}()...) {
			for _, r := range strings.ToUpper(s) {
				if _, ok := glyphs[r]; !ok {
					t.Errorf("no glyph for %q (in %q)", r, s)
				}
			}
		}
	}
}

func TestSampleTimes(t *testing.T) {
	tests := []struct {
		name, msg string
		want      []int64
	}{
		{"samples", `{"seq":1,"type":"samples","machine":"m","ingestTs":9,"samples":[{"metric":"a","ts":100,"value":1},{"metric":"b","ts":101,"value":2}]}`, []int64{100, 101}},
		{"fleet", `{"type":"fleet","seq":3,"machines":[{"machine":"m","lastSeen":9,"metrics":{"a":{"value":1,"ts":200}}},{"machine":"n","metrics":{"a":{"value":2,"ts":201}}}]}`, []int64{200, 201}},
		{"heartbeat", `{"type":"heartbeat","ts":5}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sampleTimes([]byte(tt.msg), nil); !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
