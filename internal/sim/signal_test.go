package sim

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// span is a closed range of plausible values.
type span struct{ lo, hi float64 }

// normalRanges are the plausible values of each kind's metrics in normal
// operation (no faults), spikes included. Counters are checked separately.
var normalRanges = map[string]map[string]span{
	"press": {
		"temp": {25, 85}, "pressure": {100, 300}, "vibration": {0, 14}, "power": {5, 80},
	},
	"oven": {
		"temp": {25, 85}, "chamber_temp": {160, 250}, "power": {30, 160}, "fan_rpm": {900, 1600},
	},
	"cnc": {
		"temp": {20, 75}, "rpm": {500, 14000}, "vibration": {0, 12}, "power": {1, 30},
	},
	"pump": {
		"temp": {25, 80}, "pressure": {2, 12}, "flow": {0, 120}, "rpm": {2200, 3100}, "vibration": {0, 13}, "power": {3, 35},
	},
	"compressor": {
		"temp": {30, 88}, "pressure": {5, 12}, "rpm": {2200, 3100}, "vibration": {0, 13}, "power": {15, 90},
	},
}

var counters = map[string]string{"press": "cycles", "oven": "cycles", "cnc": "cycles", "pump": "volume", "compressor": "cycles"}

func TestMetricNames(t *testing.T) {
	got := map[string][]string{}
	for _, m := range New(Config{Machines: 5}, nil, nil).Machines() {
		got[m.Kind] = m.Metrics
	}
	want := map[string][]string{
		"press":      {"temp", "pressure", "vibration", "power", "cycles", "parts_total", "parts_good"},
		"oven":       {"temp", "chamber_temp", "power", "fan_rpm", "cycles", "parts_total", "parts_good"},
		"cnc":        {"temp", "rpm", "vibration", "power", "cycles", "parts_total", "parts_good"},
		"pump":       {"temp", "pressure", "flow", "rpm", "vibration", "power", "volume", "parts_total", "parts_good"},
		"compressor": {"temp", "pressure", "rpm", "vibration", "power", "cycles", "parts_total", "parts_good"},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("metrics per kind (-got +want):\n%s", diff)
	}
}

func TestValuesStayPlausible(t *testing.T) {
	// 25 machines, 5 of each kind, at 2.5 Hz each for 40 simulated minutes:
	// long enough for the drift, the walk and many spikes.
	cfg := Config{Machines: 25, Rate: 62.5, Duration: 40 * time.Minute, FaultEvery: -1, Seed: 5}
	res := runSim(t, cfg, nil)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	kindOf := map[string]string{}
	for _, m := range res.machines {
		kindOf[m.ID] = m.Kind
	}
	seen := map[string]span{} // kind/metric → observed range
	lastCounter := map[string]float64{}
	spikes := 0
	for _, ev := range res.rec.all() {
		kind := kindOf[ev.Machine]
		for _, m := range ev.Metrics {
			if math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
				t.Fatalf("%s %s = %v", ev.Machine, m.Name, m.Value)
			}
			if m.Name == PartsTotal || m.Name == PartsGood {
				continue // TestOperation
			}
			if m.Name == counters[kind] {
				if m.Value < lastCounter[ev.Machine] {
					t.Fatalf("%s %s went down from %v to %v", ev.Machine, m.Name, lastCounter[ev.Machine], m.Value)
				}
				lastCounter[ev.Machine] = m.Value
				continue
			}
			r, ok := normalRanges[kind][m.Name]
			if !ok {
				t.Fatalf("%s: unexpected metric %q", ev.Machine, m.Name)
			}
			if m.Value < r.lo || m.Value > r.hi {
				t.Errorf("%s %s = %v, want within [%v, %v]", ev.Machine, m.Name, m.Value, r.lo, r.hi)
			}
			if m.Name == "temp" && m.Value >= 90 {
				t.Errorf("%s temp %v reached the ~90 °C alarm threshold without a fault", ev.Machine, m.Value)
			}
			key := kind + "/" + m.Name
			s, ok := seen[key]
			if !ok {
				s = span{m.Value, m.Value}
			}
			seen[key] = span{min(s.lo, m.Value), max(s.hi, m.Value)}
			if m.Name == "vibration" && m.Value > 6 {
				spikes++
			}
		}
	}
	// The signals move: every metric spans a fair part of its range.
	for key, s := range seen {
		if s.hi-s.lo < 0.01*math.Max(math.Abs(s.hi), 1) {
			t.Errorf("%s stayed within [%v, %v]", key, s.lo, s.hi)
		}
	}
	if spikes == 0 {
		t.Errorf("no vibration spike in %d events", len(res.rec.all()))
	}
	// Counters advance at their nominal rates, roughly: a press strokes
	// about 21 times a minute.
	first, last := map[string]float64{}, map[string]float64{}
	for _, ev := range res.rec.all() {
		if kindOf[ev.Machine] != "press" {
			continue
		}
		v := ev.Metrics[len(ev.Metrics)-3].Value // cycles
		if _, ok := first[ev.Machine]; !ok {
			first[ev.Machine] = v
		}
		last[ev.Machine] = v
	}
	for id := range first {
		perMin := (last[id] - first[id]) / 40
		if perMin < 5 || perMin > 40 {
			t.Errorf("%s made %.1f cycles a minute, want 5–40", id, perMin)
		}
	}
}

func TestFaults(t *testing.T) {
	// 10 machines at 2 Hz each for two simulated hours, a fault every 10
	// minutes per machine on average: both kinds of faults happen.
	cfg := Config{Machines: 10, Rate: 20, Duration: 2 * time.Hour, FaultEvery: 10 * time.Minute, Seed: 9}
	res := runSim(t, cfg, nil)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	// The fleet keeps its rate while machines are silent.
	if got, want := res.stats.Events, int64(20*2*3600); got != want {
		t.Errorf("Stats().Events = %d, want %d", got, want)
	}

	const offlineAfter = 30 * 1000 // ms
	overheats := map[string]int{}
	silences := map[string]int{}
	hot := map[string]bool{}
	cooled := 0
	lastTime := map[string]int64{}
	for _, ev := range res.rec.all() {
		if last, ok := lastTime[ev.Machine]; ok && ev.Time-last > offlineAfter {
			silences[ev.Machine]++
		}
		lastTime[ev.Machine] = ev.Time
		temp := ev.Metrics[0]
		if temp.Name != "temp" {
			t.Fatalf("first metric %q, want temp", temp.Name)
		}
		if temp.Value > 140 {
			t.Errorf("%s temp %v, want at most 140 even when overheating", ev.Machine, temp.Value)
		}
		switch {
		case temp.Value > 90 && !hot[ev.Machine]:
			hot[ev.Machine] = true
			overheats[ev.Machine]++
		case temp.Value < 70 && hot[ev.Machine]:
			hot[ev.Machine] = false
			cooled++
		}
	}
	total := func(m map[string]int) int {
		n := 0
		for _, v := range m {
			n += v
		}
		return n
	}
	// 10 machines × 120 min / 10 min ≈ 120 faults, about a third silences.
	if got := total(overheats); got < 30 {
		t.Errorf("%d overheats (temp > 90 °C), want at least 30: %v", got, overheats)
	}
	if got := total(silences); got < 10 {
		t.Errorf("%d silences longer than %d ms, want at least 10: %v", got, offlineAfter, silences)
	}
	if cooled < total(overheats)/2 {
		t.Errorf("%d of %d overheats cooled down below 70 °C, want most", cooled, total(overheats))
	}
}

func TestFaultsDisabled(t *testing.T) {
	res := runSim(t, Config{Machines: 10, Rate: 20, Duration: time.Hour, FaultEvery: -1, Seed: 9}, nil)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	lastTime := map[string]int64{}
	for _, ev := range res.rec.all() {
		if last, ok := lastTime[ev.Machine]; ok && ev.Time-last > 1000 {
			t.Fatalf("%s silent for %d ms with faults disabled", ev.Machine, ev.Time-last)
		}
		lastTime[ev.Machine] = ev.Time
		if v := ev.Metrics[0].Value; v > 88 {
			t.Fatalf("%s temp %v with faults disabled", ev.Machine, v)
		}
	}
}

func TestSingleMachineNeverGoesSilent(t *testing.T) {
	res := runSim(t, Config{Machines: 1, Rate: 1, Interval: time.Second, Duration: 3 * time.Hour, FaultEvery: time.Minute, Seed: 2}, nil)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	var prev int64
	for i, ev := range res.rec.all() {
		if i > 0 && ev.Time-prev > 1000 {
			t.Fatalf("the only machine went silent for %d ms", ev.Time-prev)
		}
		prev = ev.Time
	}
}

func TestMachineID(t *testing.T) {
	tests := []struct {
		prefix, kind string
		i, width     int
		want         string
	}{
		{"", "press", 0, 2, "press-01"},
		{"", "oven", 9, 2, "oven-10"},
		{"", "cnc", 99, 2, "cnc-100"},
		{"", "pump", 3, 4, "pump-0004"},
		{"hall3", "press", 0, 2, "hall3-press-01"},
		{"hall3-", "press", 0, 2, "hall3-press-01"},
		{"site:", "press", 0, 2, "site:press-01"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.prefix, tt.kind, tt.i), func(t *testing.T) {
			if got := machineID(tt.prefix, tt.kind, tt.i, tt.width); got != tt.want {
				t.Errorf("machineID(%q, %q, %d, %d) = %q, want %q", tt.prefix, tt.kind, tt.i, tt.width, got, tt.want)
			}
		})
	}
}
