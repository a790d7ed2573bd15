package oee

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

var pressSpec = twin.OEESpec{
	StateMetric:       "state",
	RunningStates:     []string{"RUNNING"},
	PlannedStopStates: []string{"PLANNED"},
	TotalCount:        "parts_total",
	GoodCount:         "parts_good",
	IdealCycleSeconds: 6,
}

func f(v float64) *float64 { return &v }

func changes(kv ...any) []store.StateChange {
	var out []store.StateChange
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, store.StateChange{Machine: "m", Name: "state", Time: int64(kv[i].(int)), Value: kv[i+1].(string)})
	}
	return out
}

func mustGrid(t testing.TB, from, to, step int64) Grid {
	t.Helper()
	g, err := NewGrid(from, to, step)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestCompute(t *testing.T) {
	const min = 60_000
	tests := []struct {
		name        string
		grid        [3]int64
		spec        twin.OEESpec
		changes     []store.StateChange
		total, good []float64
		until       int64
		want        []Bucket // without sums
	}{
		{
			name: "one hour: 45 min running, 10 down, 5 planned stop",
			grid: [3]int64{0, 60 * min, 0}, spec: pressSpec,
			changes: changes(-5*min, "RUNNING", 45*min, "DOWN", 55*min, "PLANNED"),
			total:   []float64{400}, good: []float64{392}, until: math.MaxInt64,
			want: []Bucket{{From: 0, To: 60 * min, PlannedMs: 55 * min, RunMs: 45 * min, TotalCount: 400, GoodCount: 392,
				Availability: f(45.0 / 55), Performance: f(6000.0 * 400 / (45 * min)), Quality: f(392.0 / 400),
				OEE: f(45.0 / 55 * 6000.0 * 400 / (45 * min) * 392 / 400), Downtime: []Downtime{{"DOWN", 10 * min}}}},
		},
		{
			name: "hourly buckets, unknown start, the future not counted",
			grid: [3]int64{30 * min, 150 * min, 60 * min}, spec: pressSpec,
			changes: changes(40*min, "IDLE", 50*min, "RUNNING", 70*min, "DOWN", 80*min, "IDLE", 90*min, "RUNNING"),
			total:   []float64{10, 0, 0}, good: []float64{9, 0, 0}, until: 100 * min,
			want: []Bucket{
				{From: 30 * min, To: 60 * min, PlannedMs: 20 * min, RunMs: 10 * min, TotalCount: 10, GoodCount: 9,
					Availability: f(0.5), Performance: f(0.1), Quality: f(0.9), OEE: f(0.5 * 0.1 * 0.9), Downtime: []Downtime{{"IDLE", 10 * min}}},
				{From: 60 * min, To: 120 * min, PlannedMs: 40 * min, RunMs: 20 * min, Availability: f(0.5), Performance: f(0), Quality: nil,
					Downtime: []Downtime{{"DOWN", 10 * min}, {"IDLE", 10 * min}}},
				{From: 120 * min, To: 150 * min, Downtime: []Downtime{}},
			},
		},
		{
			name: "no counters: performance and quality undefined",
			grid: [3]int64{0, 10 * min, 0}, spec: twin.OEESpec{StateMetric: "s", RunningStates: []string{"ON"}},
			changes: changes(0, "ON", 5*min, "OFF"), until: math.MaxInt64,
			want: []Bucket{{From: 0, To: 10 * min, PlannedMs: 10 * min, RunMs: 5 * min, Availability: f(0.5),
				Downtime: []Downtime{{"OFF", 5 * min}}}},
		},
		{
			name: "no ideal cycle: performance undefined, quality computed",
			grid: [3]int64{0, 10 * min, 0}, spec: twin.OEESpec{StateMetric: "s", RunningStates: []string{"ON"}, TotalCount: "t", GoodCount: "g"},
			changes: changes(0, "ON"), total: []float64{10}, good: []float64{8}, until: math.MaxInt64,
			want: []Bucket{{From: 0, To: 10 * min, PlannedMs: 10 * min, RunMs: 10 * min, TotalCount: 10, GoodCount: 8,
				Availability: f(1), Quality: f(0.8), Downtime: []Downtime{}}},
		},
		{
			name: "performance above 1 is not capped",
			grid: [3]int64{0, min, 0}, spec: pressSpec,
			changes: changes(0, "RUNNING"), total: []float64{20}, good: []float64{20}, until: math.MaxInt64,
			want: []Bucket{{From: 0, To: min, PlannedMs: min, RunMs: min, TotalCount: 20, GoodCount: 20,
				Availability: f(1), Performance: f(2), Quality: f(1), OEE: f(2), Downtime: []Downtime{}}},
		},
		{
			name: "all planned stop: everything undefined",
			grid: [3]int64{0, min, 0}, spec: pressSpec,
			changes: changes(0, "PLANNED"), total: []float64{0}, good: []float64{0}, until: math.MaxInt64,
			want: []Bucket{{From: 0, To: min, Downtime: []Downtime{}}},
		},
		{
			name: "a change out of time order is ignored, the last of the same instant wins",
			grid: [3]int64{0, 100, 0}, spec: pressSpec,
			changes: changes(0, "RUNNING", 50, "DOWN", 20, "IDLE", 80, "JAM", 80, "RUNNING"), until: math.MaxInt64,
			want: []Bucket{{From: 0, To: 100, PlannedMs: 100, RunMs: 70, Availability: f(0.7),
				Downtime: []Downtime{{"DOWN", 30}}}},
		},
		{
			name: "top five reasons, longest first, ties by name",
			grid: [3]int64{0, 100, 0}, spec: pressSpec,
			changes: changes(0, "A", 10, "B", 30, "C", 40, "D", 60, "E", 70, "F", 75, "G", 100, "RUNNING"), until: math.MaxInt64,
			want: []Bucket{{From: 0, To: 100, PlannedMs: 100, Availability: f(0),
				Downtime: []Downtime{{"G", 25}, {"B", 20}, {"D", 20}, {"A", 10}, {"C", 10}}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := mustGrid(t, tt.grid[0], tt.grid[1], tt.grid[2])
			got := Compute(g, tt.spec, tt.changes, tt.total, tt.good, tt.until)
			if diff := cmp.Diff(got.Buckets, tt.want, cmpopts.IgnoreUnexported(Bucket{}), cmpopts.EquateApprox(1e-12, 0)); diff != "" {
				t.Errorf("buckets (-got +want):\n%s", diff)
			}
		})
	}
}

func TestBucketJSON(t *testing.T) {
	g := mustGrid(t, 0, 1000, 0)
	s := Compute(g, twin.OEESpec{StateMetric: "s", RunningStates: []string{"ON"}}, changes(0, "ON"), nil, nil, math.MaxInt64)
	b, err := json.Marshal(s.Buckets[0])
	if err != nil {
		t.Fatal(err)
	}
	want := `{"from":0,"to":1000,"plannedMs":1000,"runMs":1000,"totalCount":0,"goodCount":0,"availability":1,` +
		`"performance":null,"quality":null,"oee":null,"downtime":[]}`
	if got := string(b); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestGrid(t *testing.T) {
	tests := []struct {
		from, to, step int64
		want           [][2]int64
	}{
		{0, 10, 0, [][2]int64{{0, 10}}},
		{5, 25, 10, [][2]int64{{5, 10}, {10, 20}, {20, 25}}},
		{10, 30, 10, [][2]int64{{10, 20}, {20, 30}}},
		{-15, 5, 10, [][2]int64{{-15, -10}, {-10, 0}, {0, 5}}},
		{3, 4, 10, [][2]int64{{3, 4}}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.from, tt.to, tt.step), func(t *testing.T) {
			g := mustGrid(t, tt.from, tt.to, tt.step)
			var got [][2]int64
			for i := range g.Len() {
				lo, hi := g.Bounds(i)
				got = append(got, [2]int64{lo, hi})
				if g.index(lo) != i || g.index(hi-1) != i {
					t.Errorf("index of bucket %d's ends: %d, %d", i, g.index(lo), g.index(hi-1))
				}
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("buckets (-got +want):\n%s", diff)
			}
		})
	}
	for _, bad := range [][3]int64{{10, 10, 0}, {10, 5, 0}, {0, 10, -1}, {0, 1001, 1}} {
		if _, err := NewGrid(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("NewGrid%v: no error", bad)
		}
	}
}

func TestParseStep(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		fmt  string
	}{
		{"1h", time.Hour, "1h"}, {"8h", 8 * time.Hour, "8h"}, {"1d", 24 * time.Hour, "1d"}, {"7d", 7 * 24 * time.Hour, "7d"},
		{"2w", 14 * 24 * time.Hour, "14d"}, {"90m", 90 * time.Minute, "90m"}, {"1h30m", 90 * time.Minute, "90m"},
		{"1500ms", 1500 * time.Millisecond, "1500ms"}, {"24h", 24 * time.Hour, "1d"},
	}
	for _, tt := range tests {
		got, err := ParseStep(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseStep(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if s := FormatStep(got); s != tt.fmt {
			t.Errorf("FormatStep(%v) = %q, want %q", got, s, tt.fmt)
		}
	}
	for _, bad := range []string{"", "d", "0d", "-1d", "1x", "0s", "1us", "1.5d", "d1", "100001d", "100000w", "99999999999999999999d"} {
		if _, err := ParseStep(bad); err == nil {
			t.Errorf("ParseStep(%q): no error", bad)
		}
	}
}

func TestCounter(t *testing.T) {
	g := mustGrid(t, 100, 400, 100)
	c := NewCounter(g)
	for _, p := range []store.Point{
		{Time: 50, Value: 1000},  // before the grid: the baseline
		{Time: 100, Value: 1010}, // +10 in bucket 0
		{Time: 150, Value: math.NaN()},
		{Time: 199, Value: 1015}, // +5
		{Time: 200, Value: 3},    // reset: +3 in bucket 1
		{Time: 250, Value: 7},    // +4
		{Time: 399, Value: 17},   // +10 in bucket 2
		{Time: 400, Value: 99},   // after the grid
	} {
		c.Add(p)
	}
	if diff := cmp.Diff(c.Increases(), []float64{15, 7, 10}); diff != "" {
		t.Errorf("increases (-got +want):\n%s", diff)
	}
	first := NewCounter(g)
	first.Add(store.Point{Time: 150, Value: 40}) // no baseline: counts nothing
	first.Add(store.Point{Time: 160, Value: 42})
	if diff := cmp.Diff(first.Increases(), []float64{2, 0, 0}); diff != "" {
		t.Errorf("without a baseline (-got +want):\n%s", diff)
	}
}

// machineData is one random machine: spec, state changes, counters.
type machineData struct {
	spec        twin.OEESpec
	changes     []store.StateChange
	total, good []store.Point
}

var stateNames = []string{"RUNNING", "FAST", "IDLE", "DOWN", "JAM", "PLANNED", "BREAK", "SETUP"}

func drawMachine(t *rapid.T, label string, from, to int64) machineData {
	var m machineData
	m.spec.StateMetric = "state"
	m.spec.RunningStates = []string{"RUNNING"}
	if rapid.Bool().Draw(t, label+"fast_runs") {
		m.spec.RunningStates = append(m.spec.RunningStates, "FAST")
	}
	if rapid.Bool().Draw(t, label+"planned") {
		m.spec.PlannedStopStates = []string{"PLANNED", "BREAK"}
	}
	counters := rapid.IntRange(0, 2).Draw(t, label+"counters")
	if counters > 0 {
		m.spec.TotalCount = "total"
	}
	if counters > 1 {
		m.spec.GoodCount = "good"
	}
	m.spec.IdealCycleSeconds = []float64{0, 0.001, 0.05, 1.5}[rapid.IntRange(0, 3).Draw(t, label+"ideal")]

	tm := from - int64(rapid.IntRange(-500, 500).Draw(t, label+"first"))
	disorder := rapid.IntRange(0, 4).Draw(t, label+"disorder") == 0 // a store bug: changes out of order
	for range rapid.IntRange(0, 30).Draw(t, label+"changes") {
		m.changes = append(m.changes, store.StateChange{Machine: label, Name: "state", Time: tm,
			Value: stateNames[rapid.IntRange(0, len(stateNames)-1).Draw(t, label+"value")]})
		lo := 0
		if disorder {
			lo = -int(to-from) / 8
		}
		tm += int64(rapid.IntRange(lo, int(to-from)/4+1).Draw(t, label+"gap"))
	}
	drawCounter := func(name string) []store.Point {
		var pts []store.Point
		tm, v := from-int64(rapid.IntRange(0, 300).Draw(t, label+name+"first")), 0.0
		for range rapid.IntRange(0, 40).Draw(t, label+name+"samples") {
			if rapid.IntRange(0, 9).Draw(t, label+name+"reset") == 0 {
				v = float64(rapid.IntRange(0, 5).Draw(t, label+name+"restart"))
			} else {
				v += float64(rapid.IntRange(0, 20).Draw(t, label+name+"inc"))
			}
			pts = append(pts, store.Point{Time: tm, Value: v})
			tm += int64(rapid.IntRange(1, int(to-from)/10+1).Draw(t, label+name+"gap"))
		}
		return pts
	}
	if m.spec.TotalCount != "" {
		m.total = drawCounter("total")
	}
	if m.spec.GoodCount != "" {
		m.good = drawCounter("good")
	}
	return m
}

// compute runs the package's path: counters through Counter, then Compute.
func compute(g Grid, m machineData, until int64) Series {
	var total, good []float64
	if m.spec.TotalCount != "" {
		c := NewCounter(g)
		for _, p := range m.total {
			c.Add(p)
		}
		total = c.Increases()
	}
	if m.spec.GoodCount != "" {
		c := NewCounter(g)
		for _, p := range m.good {
			c.Add(p)
		}
		good = c.Increases()
	}
	return Compute(g, m.spec, m.changes, total, good, until)
}

// oracleBucket is the naive recomputation of one bucket.
type oracleBucket struct {
	planned, run  int64
	total, good   float64
	down          map[string]int64
	a, p, q, oeev *float64
}

// oracle recomputes a machine's buckets millisecond by millisecond: the
// state in force at each instant is found by scanning every change, the
// bucket of each instant and sample by scanning every bucket's bounds.
func oracle(from, to, step int64, m machineData, until int64) []oracleBucket {
	var bounds [][2]int64
	if step == 0 {
		bounds = [][2]int64{{from, to}}
	} else {
		for lo := from; lo < to; {
			hi := (lo/step + 1) * step
			if lo < 0 && lo%step != 0 {
				hi = lo / step * step
			}
			hi = min(hi, to)
			bounds = append(bounds, [2]int64{lo, hi})
			lo = hi
		}
	}
	bucketOf := func(t int64) int {
		for i, b := range bounds {
			if b[0] <= t && t < b[1] {
				return i
			}
		}
		return -1
	}
	out := make([]oracleBucket, len(bounds))
	for i := range out {
		out[i].down = map[string]int64{}
	}
	running, stop := map[string]bool{}, map[string]bool{}
	for _, s := range m.spec.RunningStates {
		running[s] = true
	}
	for _, s := range m.spec.PlannedStopStates {
		stop[s] = true
	}
	// Changes out of time order are dropped (store.StateIntervals' rule).
	var inOrder []store.StateChange
	for _, c := range m.changes {
		if len(inOrder) == 0 || c.Time >= inOrder[len(inOrder)-1].Time {
			inOrder = append(inOrder, c)
		}
	}
	for t := from; t < min(to, until); t++ {
		state, known := "", false
		for _, c := range inOrder {
			if c.Time <= t {
				state, known = c.Value, true
			}
		}
		if !known || stop[state] {
			continue
		}
		b := &out[bucketOf(t)]
		b.planned++
		if running[state] {
			b.run++
		} else {
			b.down[state]++
		}
	}
	increases := func(pts []store.Point, add func(b *oracleBucket, v float64)) {
		for i, p := range pts {
			if i == 0 || p.Time < from || p.Time >= to {
				continue
			}
			d := p.Value - pts[i-1].Value
			if d < 0 {
				d = p.Value
			}
			add(&out[bucketOf(p.Time)], d)
		}
	}
	increases(m.total, func(b *oracleBucket, v float64) { b.total += v })
	increases(m.good, func(b *oracleBucket, v float64) { b.good += v })
	for i := range out {
		b := &out[i]
		if b.planned > 0 {
			b.a = f(float64(b.run) / float64(b.planned))
		}
		if m.spec.TotalCount != "" && m.spec.IdealCycleSeconds > 0 && b.run > 0 {
			b.p = f(m.spec.IdealCycleSeconds * 1000 * b.total / float64(b.run))
		}
		if m.spec.GoodCount != "" && b.total > 0 {
			b.q = f(b.good / b.total)
		}
		if b.a != nil && b.p != nil && b.q != nil {
			b.oeev = f(*b.a * *b.p * *b.q)
		}
	}
	return out
}

func topDown(down map[string]int64) []Downtime {
	out := []Downtime{}
	for s, ms := range down {
		out = append(out, Downtime{s, ms})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Ms != out[j].Ms {
			return out[i].Ms > out[j].Ms
		}
		return out[i].State < out[j].State
	})
	return out[:min(len(out), TopDowntime)]
}

var approx = cmpopts.EquateApprox(1e-9, 1e-9)

// TestComputeMatchesOracle: on random state and counter streams, every
// bucket equals the naive per-millisecond recomputation.
func TestComputeMatchesOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		from := int64(rapid.IntRange(-3000, 3000).Draw(t, "from"))
		to := from + int64(rapid.IntRange(1, 4000).Draw(t, "len"))
		step := int64(0)
		if rapid.Bool().Draw(t, "stepped") {
			step = int64(rapid.IntRange(1, 1500).Draw(t, "step"))
			if (to-from)/step > 900 {
				step = (to-from)/900 + 1
			}
		}
		until := to + 10
		if rapid.Bool().Draw(t, "until_in_range") {
			until = from + int64(rapid.IntRange(-10, int(to-from)).Draw(t, "until"))
		}
		m := drawMachine(t, "m", from, to)
		g, err := NewGrid(from, to, step)
		if err != nil {
			t.Fatal(err)
		}
		got := compute(g, m, until)
		want := oracle(from, to, step, m, until)
		if len(got.Buckets) != len(want) {
			t.Fatalf("%d buckets, want %d", len(got.Buckets), len(want))
		}
		for i, b := range got.Buckets {
			w := want[i]
			gotV := []any{b.PlannedMs, b.RunMs, b.TotalCount, b.Availability, b.Performance, b.Quality, b.OEE, b.Downtime}
			wantV := []any{w.planned, w.run, w.total, w.a, w.p, w.q, w.oeev, topDown(w.down)}
			if m.spec.GoodCount != "" {
				gotV, wantV = append(gotV, b.GoodCount), append(wantV, w.good)
			}
			if diff := cmp.Diff(gotV, wantV, approx); diff != "" {
				t.Fatalf("bucket %d [%d, %d) (-got +want):\n%s", i, b.From, b.To, diff)
			}
		}
		// The total over the range is the one-bucket computation.
		one, err := NewGrid(from, to, 0)
		if err != nil {
			t.Fatal(err)
		}
		whole := compute(one, m, until)
		if diff := cmp.Diff(got.Total, whole.Buckets[0], cmpopts.IgnoreUnexported(Bucket{}), approx); diff != "" {
			t.Fatalf("total vs one bucket (-got +want):\n%s", diff)
		}
	})
}

// TestRollupIsTimeWeighted: a line's bucket is the time-weighted
// combination of its machines' buckets: ratios of sums, not means of
// ratios.
func TestRollupIsTimeWeighted(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		from := int64(rapid.IntRange(0, 1000).Draw(t, "from"))
		to := from + int64(rapid.IntRange(1, 3000).Draw(t, "len"))
		step := int64(rapid.IntRange(0, 1000).Draw(t, "step"))
		if step > 0 && (to-from)/step > 900 {
			step = (to-from)/900 + 1
		}
		g, err := NewGrid(from, to, step)
		if err != nil {
			t.Fatal(err)
		}
		n := rapid.IntRange(0, 4).Draw(t, "machines")
		var parts []*Series
		var ms []machineData
		for i := range n {
			m := drawMachine(t, fmt.Sprintf("m%d", i), from, to)
			s := compute(g, m, to)
			parts = append(parts, &s)
			ms = append(ms, m)
		}
		line := Rollup(g, parts)
		check := func(what string, got Bucket, pick func(*Series) Bucket) {
			var planned, run, perfRun int64
			var total, good, ideal, qTotal, qGood float64
			down := map[string]int64{}
			for i, p := range parts {
				b := pick(p)
				planned += b.PlannedMs
				run += b.RunMs
				total += b.TotalCount
				good += b.GoodCount
				spec := ms[i].spec
				if spec.TotalCount != "" && spec.IdealCycleSeconds > 0 {
					perfRun += b.RunMs
					ideal += spec.IdealCycleSeconds * 1000 * b.TotalCount
				}
				if spec.GoodCount != "" {
					qTotal += b.TotalCount
					qGood += b.GoodCount
				}
				for _, d := range b.sums.down {
					down[d.State] += d.Ms
				}
			}
			var want oracleBucket
			if planned > 0 {
				want.a = f(float64(run) / float64(planned))
			}
			if perfRun > 0 {
				want.p = f(ideal / float64(perfRun))
			}
			if qTotal > 0 {
				want.q = f(qGood / qTotal)
			}
			if want.a != nil && want.p != nil && want.q != nil {
				want.oeev = f(*want.a * *want.p * *want.q)
			}
			gotV := []any{got.PlannedMs, got.RunMs, got.TotalCount, got.GoodCount, got.Availability, got.Performance, got.Quality, got.OEE, got.Downtime}
			wantV := []any{planned, run, total, good, want.a, want.p, want.q, want.oeev, topDown(down)}
			if diff := cmp.Diff(gotV, wantV, approx); diff != "" {
				t.Fatalf("%s (-got +want):\n%s", what, diff)
			}
		}
		for i := range line.Buckets {
			check(fmt.Sprintf("bucket %d", i), line.Buckets[i], func(s *Series) Bucket { return s.Buckets[i] })
		}
		check("total", line.Total, func(s *Series) Bucket { return s.Total })
		// A site of lines equals the site of their machines.
		k := rapid.IntRange(0, n).Draw(t, "split")
		l1, l2 := Rollup(g, parts[:k]), Rollup(g, parts[k:])
		site := Rollup(g, []*Series{&l1, &l2})
		if diff := cmp.Diff(site, line, cmpopts.IgnoreUnexported(Bucket{}), approx); diff != "" {
			t.Fatalf("site of lines vs of machines (-got +want):\n%s", diff)
		}
	})
}

// BenchmarkFleetDay computes 1 000 machines × 24 h by the hour (state
// changes every few minutes, counters sampled every 10 s) and their
// rollups into 20 lines and 2 sites.
func BenchmarkFleetDay(b *testing.B) {
	const (
		machines = 1000
		day      = int64(24 * time.Hour / time.Millisecond)
		from     = int64(1_765_000_000_000) / day * day
		to       = from + day
	)
	g := mustGrid(b, from, to, int64(time.Hour/time.Millisecond))
	// A few distinct machines, shared: the data is read-only.
	type profile struct {
		changes     []store.StateChange
		total, good []store.Point
	}
	profiles := make([]profile, 16)
	seed := uint64(1)
	rnd := func(n int64) int64 { seed = seed*6364136223846793005 + 1442695040888963407; return int64(seed>>33) % n }
	states := []string{"RUNNING", "RUNNING", "RUNNING", "IDLE", "DOWN", "SETUP", "PLANNED"}
	for i := range profiles {
		p := &profiles[i]
		for tm := from - rnd(600_000); tm < to; tm += 60_000 + rnd(900_000) {
			p.changes = append(p.changes, store.StateChange{Machine: "m", Name: "state", Time: tm, Value: states[rnd(int64(len(states)))]})
		}
		var total, good float64
		for tm := from - 10_000; tm < to; tm += 10_000 {
			n := float64(rnd(3))
			total += n
			if rnd(50) > 0 {
				good += n
			}
			p.total = append(p.total, store.Point{Time: tm, Value: total})
			p.good = append(p.good, store.Point{Time: tm, Value: good})
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		series := make([]Series, machines)
		for m := range machines {
			p := &profiles[m%len(profiles)]
			tc, gc := NewCounter(g), NewCounter(g)
			for _, pt := range p.total {
				tc.Add(pt)
			}
			for _, pt := range p.good {
				gc.Add(pt)
			}
			series[m] = Compute(g, pressSpec, p.changes, tc.Increases(), gc.Increases(), to)
		}
		var sites []*Series
		for s := range 2 {
			var lines []*Series
			for l := range 10 {
				var parts []*Series
				for m := s*500 + l*50; m < s*500+(l+1)*50; m++ {
					parts = append(parts, &series[m])
				}
				line := Rollup(g, parts)
				lines = append(lines, &line)
			}
			site := Rollup(g, lines)
			sites = append(sites, &site)
		}
		if slices.ContainsFunc(sites, func(s *Series) bool { return s.Total.OEE == nil }) {
			b.Fatal("a site without OEE")
		}
	}
}
