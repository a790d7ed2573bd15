package stream

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/telemetry"
)

func TestWindowStart(t *testing.T) {
	tests := []struct {
		t, size, want int64
	}{
		{0, 10, 0},
		{9, 10, 0},
		{10, 10, 10}, // the end of [0,10) starts the next window
		{11, 10, 10},
		{-1, 10, -10},
		{-10, 10, -10},
		{-11, 10, -20},
		{1_700_000_012_345, 10_000, 1_700_000_010_000},
		{1_700_000_010_000, 10_000, 1_700_000_010_000},
		{1_700_000_009_999, 10_000, 1_700_000_000_000},
		{-9_999, 10_000, -10_000},
		{5, 1, 5},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%d", tt.t, tt.size), func(t *testing.T) {
			if got := windowStart(tt.t, tt.size); got != tt.want {
				t.Errorf("windowStart(%d, %d) = %d, want %d", tt.t, tt.size, got, tt.want)
			}
		})
	}
}

func TestAgg(t *testing.T) {
	var a Agg
	if got := a.Avg(); got != 0 {
		t.Errorf("empty Avg() = %v, want 0", got)
	}
	for _, v := range []float64{3, -1, 4} {
		a.Add(v)
	}
	if diff := cmp.Diff(a, Agg{Count: 3, Sum: 6, Min: -1, Max: 4}); diff != "" {
		t.Errorf("after Add (-got +want):\n%s", diff)
	}
	if got := a.Avg(); got != 2 {
		t.Errorf("Avg() = %v, want 2", got)
	}

	var b Agg
	b.Merge(Agg{})
	if b != (Agg{}) {
		t.Errorf("empty.Merge(empty) = %+v, want empty", b)
	}
	b.Merge(a)
	b.Merge(Agg{})
	if b != a {
		t.Errorf("empty.Merge(a).Merge(empty) = %+v, want %+v", b, a)
	}
	b.Merge(Agg{Count: 2, Sum: 20, Min: 5, Max: 15})
	if diff := cmp.Diff(b, Agg{Count: 5, Sum: 26, Min: -1, Max: 15}); diff != "" {
		t.Errorf("after Merge (-got +want):\n%s", diff)
	}
}

func TestWindowKindString(t *testing.T) {
	got := []string{WindowFinal.String(), WindowCorrection.String(), WindowLate.String(), WindowPartial.String(), WindowKind(0).String()}
	want := []string{"final", "correction", "late", "partial", "WindowKind(0)"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("String() (-got +want):\n%s", diff)
	}
}

// winStep is one call in a table test of Windows: Add (sample set), Advance
// (advance set) or Flush (flush set).
type winStep struct {
	sample  *telemetry.Sample
	wm      int64
	advance string
	flush   bool
}

func winAdd(machine, metric string, t int64, v float64, wm int64) winStep {
	return winStep{sample: &telemetry.Sample{Machine: machine, Metric: metric, Time: t, Value: v}, wm: wm}
}

func winAdvance(machine string, wm int64) winStep { return winStep{advance: machine, wm: wm} }

func winOut(machine, metric string, start int64, kind WindowKind, vs ...float64) Window {
	var a Agg
	for _, v := range vs {
		a.Add(v)
	}
	return Window{Machine: machine, Metric: metric, Start: start, Size: 10, Agg: a, Kind: kind}
}

// run applies steps to w and returns what they emitted.
func (w *Windows) run(steps []winStep) []Window {
	var got []Window
	emit := func(x Window) { got = append(got, x) }
	for _, s := range steps {
		switch {
		case s.sample != nil:
			w.Add(*s.sample, s.wm, emit)
		case s.flush:
			w.Flush(emit)
		default:
			w.Advance(s.advance, s.wm, emit)
		}
	}
	return got
}

// held returns the starts of the windows held for (machine, metric).
func (w *Windows) held(machine, metric string) []int64 {
	m := w.machines[machine]
	if m == nil {
		return nil
	}
	i := m.lookup(metric)
	if i < 0 {
		return nil
	}
	var starts []int64
	for _, ws := range m.series[i].wins {
		starts = append(starts, ws.start)
	}
	return starts
}

func TestWindows(t *testing.T) {
	const no = math.MinInt64 // no watermark yet
	tests := []struct {
		name  string
		grace int64
		steps []winStep
		want  []Window
		held  []int64 // windows still held for (m, x) at the end
	}{{
		name: "final when the watermark reaches the end, exact boundaries",
		steps: []winStep{
			winAdd("m", "x", 0, 1, no),
			winAdd("m", "x", 9, 2, no),
			winAdd("m", "x", 10, 4, no), // exactly at the end: next window
			winAdvance("m", 9),          // not yet
			winAdvance("m", 10),         // [0,10) ends at 10
		},
		want: []Window{winOut("m", "x", 0, WindowFinal, 1, 2)},
		held: []int64{10}, // zero grace: [0,10) dropped once emitted
	}, {
		name: "negative times",
		steps: []winStep{
			winAdd("m", "x", -1, 1, no),
			winAdd("m", "x", -10, 2, no),
			winAdd("m", "x", -11, 3, no),
			winAdvance("m", 0),
		},
		want: []Window{winOut("m", "x", -20, WindowFinal, 3), winOut("m", "x", -10, WindowFinal, 1, 2)},
	}, {
		name:  "advance emits in start order across metrics, then first-seen metric order",
		grace: 100,
		steps: []winStep{
			winAdd("m", "y", 15, 1, no),
			winAdd("m", "x", 25, 2, no),
			winAdd("m", "x", 5, 3, no),
			winAdd("m", "y", 5, 4, no),
			winAdd("n", "x", 5, 5, no),
			winAdvance("m", 30),
		},
		want: []Window{
			winOut("m", "y", 0, WindowFinal, 4),
			winOut("m", "x", 0, WindowFinal, 3),
			winOut("m", "y", 10, WindowFinal, 1),
			winOut("m", "x", 20, WindowFinal, 2),
		},
		held: []int64{0, 20},
	}, {
		name:  "correction within grace carries the full aggregate",
		grace: 20,
		steps: []winStep{
			winAdd("m", "x", 1, 1, no),
			winAdvance("m", 10),
			winAdd("m", "x", 2, 2, 15),
			winAdd("m", "x", 3, 3, 29), // end 10 + grace 20 > 29: still a correction
		},
		want: []Window{
			winOut("m", "x", 0, WindowFinal, 1),
			winOut("m", "x", 0, WindowCorrection, 1, 2),
			winOut("m", "x", 0, WindowCorrection, 1, 2, 3),
		},
		held: []int64{0},
	}, {
		name:  "late after grace carries just the sample; the window is dropped",
		grace: 20,
		steps: []winStep{
			winAdd("m", "x", 1, 1, no),
			winAdvance("m", 10),
			winAdd("m", "x", 2, 2, 30), // end 10 + grace 20 ≤ 30
			winAdd("m", "x", 3, 3, 30),
		},
		want: []Window{
			winOut("m", "x", 0, WindowFinal, 1),
			winOut("m", "x", 0, WindowLate, 2),
			winOut("m", "x", 0, WindowLate, 3),
		},
	}, {
		name:  "drop after grace on advance",
		grace: 20,
		steps: []winStep{
			winAdd("m", "x", 1, 1, no),
			winAdd("m", "x", 11, 2, no),
			winAdvance("m", 29), // [0,10) and [10,20) final, both held
			winAdvance("m", 30), // [0,10) dropped
		},
		want: []Window{winOut("m", "x", 0, WindowFinal, 1), winOut("m", "x", 10, WindowFinal, 2)},
		held: []int64{10},
	}, {
		name: "zero grace: dropped as soon as emitted, any later sample is late",
		steps: []winStep{
			winAdd("m", "x", 1, 1, no),
			winAdvance("m", 10),
			winAdd("m", "x", 2, 2, 10),
		},
		want: []Window{winOut("m", "x", 0, WindowFinal, 1), winOut("m", "x", 0, WindowLate, 2)},
	}, {
		name:  "a new window already past the watermark is final at once",
		grace: 50,
		steps: []winStep{
			winAdd("m", "x", 35, 1, 30),
			winAdd("m", "x", 15, 2, 30), // [10,20) never seen, end 20 ≤ 30 < 20+50
			winAdd("m", "x", 16, 3, 30),
		},
		want: []Window{
			winOut("m", "x", 10, WindowFinal, 2),
			winOut("m", "x", 10, WindowCorrection, 2, 3),
		},
		held: []int64{10, 30},
	}, {
		name:  "add settles its own series first",
		grace: 50,
		steps: []winStep{
			winAdd("m", "x", 5, 1, no),
			winAdd("m", "x", 25, 2, 20), // no Advance: [0,10) is emitted by this Add, before anything else
		},
		want: []Window{winOut("m", "x", 0, WindowFinal, 1)},
		held: []int64{0, 20},
	}, {
		name:  "a lower watermark is ignored",
		grace: 5,
		steps: []winStep{
			winAdd("m", "x", 5, 1, no),
			winAdvance("m", 20),
			winAdvance("m", 0),
			winAdd("m", "x", 6, 2, 0), // still late: the machine's watermark is 20
		},
		want: []Window{winOut("m", "x", 0, WindowFinal, 1), winOut("m", "x", 0, WindowLate, 2)},
	}, {
		name:  "flush emits open windows, later samples correct them",
		grace: 10,
		steps: []winStep{
			winAdd("m", "x", 5, 1, no),
			winAdd("n", "x", 5, 2, no),
			winAdd("m", "x", 25, 3, no),
			{flush: true},
			winAdd("m", "x", 26, 4, no),
			winAdd("m", "x", 15, 5, no), // a window between flushed ones: opened as usual
			{flush: true},
		},
		want: []Window{
			winOut("m", "x", 0, WindowFinal, 1),
			winOut("m", "x", 20, WindowFinal, 3),
			winOut("n", "x", 0, WindowFinal, 2),
			winOut("m", "x", 20, WindowCorrection, 3, 4),
			winOut("m", "x", 10, WindowFinal, 5),
		},
		held: []int64{0, 10, 20},
	}, {
		name:  "advance of an unknown machine is a no-op",
		steps: []winStep{winAdvance("nobody", 100)},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWindows(10*time.Millisecond, time.Duration(tt.grace)*time.Millisecond)
			got := w.run(tt.steps)
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("emitted (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(w.held("m", "x"), tt.held); diff != "" {
				t.Errorf("held windows of (m, x) (-got +want):\n%s", diff)
			}
		})
	}
}

func TestWindowsOpen(t *testing.T) {
	w := NewWindows(10*time.Millisecond, time.Minute)
	var got []Window
	emit := func(x Window) { got = append(got, x) }
	for _, s := range []telemetry.Sample{
		{Machine: "m", Metric: "x", Time: 25, Value: 1},
		{Machine: "m", Metric: "x", Time: 3, Value: 2},
		{Machine: "m", Metric: "x", Time: 15, Value: 3},
		{Machine: "m", Metric: "x", Time: 16, Value: 4},
		{Machine: "m", Metric: "y", Time: 1, Value: 5},
	} {
		w.Add(s, math.MinInt64, emit)
	}
	w.Advance("m", 10, emit) // [0,10) of x and y are final: no longer open

	if diff := cmp.Diff(w.Open("m", "x"), []Window{
		winOut("m", "x", 10, WindowPartial, 3, 4),
		winOut("m", "x", 20, WindowPartial, 1),
	}); diff != "" {
		t.Errorf("Open(m, x) (-got +want):\n%s", diff)
	}
	for _, q := range [][2]string{{"m", "y"}, {"m", "z"}, {"n", "x"}} {
		if got := w.Open(q[0], q[1]); got != nil {
			t.Errorf("Open(%s, %s) = %v, want nil", q[0], q[1], got)
		}
	}
	if diff := cmp.Diff(got, []Window{winOut("m", "x", 0, WindowFinal, 2), winOut("m", "y", 0, WindowFinal, 5)}); diff != "" {
		t.Errorf("emitted (-got +want):\n%s", diff)
	}
}

func TestWindowsManyMetrics(t *testing.T) {
	// Past winLinearMetrics a machine's series are found through a map.
	w := NewWindows(10*time.Millisecond, 0)
	var got []Window
	emit := func(x Window) { got = append(got, x) }
	const n = 3 * winLinearMetrics
	for round := range 2 {
		for i := range n {
			w.Add(telemetry.Sample{Machine: "m", Metric: fmt.Sprint("k", i), Time: 1, Value: float64(i + round)}, math.MinInt64, emit)
		}
	}
	w.Advance("m", 10, emit)
	var want []Window
	for i := range n {
		want = append(want, winOut("m", fmt.Sprint("k", i), 0, WindowFinal, float64(i), float64(i+1)))
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("emitted (-got +want):\n%s", diff)
	}
}

func TestNewWindowsPanicsOnSubMillisecondSize(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewWindows(999µs, 0) did not panic")
		}
	}()
	NewWindows(999*time.Microsecond, 0)
}

// winKey identifies one window in the property test.
type winKey struct {
	Machine, Metric string
	Start           int64
}

// TestWindowsMatchOracle checks the point of Windows: whatever the arrival
// order of a set of distinct samples and however the watermark moves,
// replacing each window's stored aggregate with every Final/Correction and
// merging every Late into it yields the aggregates computed directly from
// the samples grouped by window.
func TestWindowsMatchOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		size := rapid.Int64Range(1, 40).Draw(t, "size")
		grace := rapid.Int64Range(0, 120).Draw(t, "grace")
		maxLateness := rapid.Int64Range(0, 100).Draw(t, "maxLateness")
		type id struct {
			Machine, Metric string
			Time            int64
		}
		// rapid's slices are mostly tiny: draw the length, then drop the
		// draws that repeat a (machine, metric, time).
		n := rapid.IntRange(0, 300).Draw(t, "n")
		seen := map[id]bool{}
		var samples []telemetry.Sample
		for range n {
			x := id{
				Machine: rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "machine"),
				Metric:  rapid.SampledFrom([]string{"x", "y"}).Draw(t, "metric"),
				Time:    rapid.Int64Range(-300, 300).Draw(t, "time"),
			}
			// Integral values: their sums are exact in any order.
			v := float64(rapid.IntRange(-1000, 1000).Draw(t, "value"))
			if !seen[x] {
				seen[x] = true
				samples = append(samples, telemetry.Sample{Machine: x.Machine, Metric: x.Metric, Time: x.Time, Value: v})
			}
		}
		arrival := rapid.Permutation(samples).Draw(t, "arrival")

		w := NewWindows(time.Duration(size)*time.Millisecond, time.Duration(grace)*time.Millisecond)
		wm := map[string]int64{}      // the effective watermark per machine
		maxSeen := map[string]int64{} // highest event time per machine
		flushed := false
		last := map[winKey]Agg{}     // last Final/Correction
		lates := map[winKey]Agg{}    // merged Lates
		kinds := map[winKey]string{} // emission history, as kind initials
		emit := func(x Window) {
			k := winKey{x.Machine, x.Metric, x.Start}
			if x.Size != size || windowStart(x.Start, size) != x.Start || x.Agg.Count == 0 {
				t.Fatalf("malformed window %+v", x)
			}
			switch x.Kind {
			case WindowFinal:
				if kinds[k] != "" {
					t.Fatalf("Final of %v after %q", k, kinds[k])
				}
				if !flushed && x.End() > wm[x.Machine] {
					t.Fatalf("Final of %v before the watermark %d passed its end", k, wm[x.Machine])
				}
				last[k] = x.Agg
			case WindowCorrection:
				if h := kinds[k]; h == "" || h[len(h)-1] == 'L' {
					t.Fatalf("Correction of %v after %q", k, h)
				}
				last[k] = x.Agg
			case WindowLate:
				if x.End()+grace > wm[x.Machine] {
					t.Fatalf("Late for %v within grace at watermark %d", k, wm[x.Machine])
				}
				if x.Agg.Count != 1 {
					t.Fatalf("Late for %v aggregates %d samples, want 1", k, x.Agg.Count)
				}
				a := lates[k]
				a.Merge(x.Agg)
				lates[k] = a
			default:
				t.Fatalf("emitted kind %v", x.Kind)
			}
			kinds[k] += x.Kind.String()[:1]
		}
		watermark := func(machine string) int64 {
			// Possibly lower than before: Windows must keep the highest.
			raw := maxSeen[machine] - rapid.Int64Range(0, maxLateness).Draw(t, "lateness")
			if cur, ok := wm[machine]; !ok || raw > cur {
				wm[machine] = raw
			}
			return raw
		}

		for _, s := range arrival {
			if cur, ok := maxSeen[s.Machine]; !ok || s.Time > cur {
				maxSeen[s.Machine] = s.Time
			}
			w.Add(s, watermark(s.Machine), emit)
			if rapid.Bool().Draw(t, "advance") {
				m := rapid.SampledFrom([]string{"a", "b", "c"}).Draw(t, "advanceMachine")
				if _, ok := maxSeen[m]; ok {
					w.Advance(m, watermark(m), emit)
				}
			}
			// Memory bound: ⌈grace/size⌉ emitted + ⌈lateness/size⌉+1 open.
			bound := (grace+size-1)/size + (maxLateness+size-1)/size + 1
			for _, m := range w.order {
				for _, sr := range m.series {
					want := int64(math.MaxInt64)
					if len(sr.wins) > 0 {
						want = w.dropAt(sr.wins[0].start)
					}
					if sr.dropAt != want {
						t.Fatalf("(%s, %s) dropAt %d, want %d", m.name, sr.metric, sr.dropAt, want)
					}
					if int64(len(sr.wins)) > bound {
						t.Fatalf("(%s, %s) holds %d windows, bound %d", m.name, sr.metric, len(sr.wins), bound)
					}
				}
			}
		}
		flushed = true
		w.Flush(emit)
		for _, m := range w.order {
			for _, sr := range m.series {
				if len(w.Open(m.name, sr.metric)) != 0 {
					t.Fatalf("(%s, %s) has open windows after Flush", m.name, sr.metric)
				}
			}
		}

		got := map[winKey]Agg{}
		for k, a := range last {
			got[k] = a
		}
		for k, a := range lates {
			g := got[k]
			g.Merge(a)
			got[k] = g
		}
		want := map[winKey]Agg{}
		for _, s := range samples {
			k := winKey{s.Machine, s.Metric, windowStart(s.Time, size)}
			a := want[k]
			a.Add(s.Value)
			want[k] = a
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Fatalf("stored aggregates (-got +want):\n%s", diff)
		}
	})
}

// winBench drives Windows like the engine does: each round, every machine
// sends one event carrying every metric, one second of event time later;
// the watermark is the event time minus a 5 s lateness. Windows are 10 s with
// a 1 min grace, so each series holds about 7 windows in steady state.
type winBench struct {
	w        *Windows
	machines []string
	metrics  []string
	i        int // samples added so far
	emitted  int
}

func newWinBench(machines, metrics int) *winBench {
	b := &winBench{w: NewWindows(10*time.Second, time.Minute)}
	for i := range machines {
		b.machines = append(b.machines, fmt.Sprintf("machine-%05d", i))
	}
	for i := range metrics {
		b.metrics = append(b.metrics, fmt.Sprintf("metric-%d", i))
	}
	return b
}

const winBenchStart = 1_700_000_000_000

// add adds the next sample, advancing its machine once per event.
func (b *winBench) add() {
	nm, nk := len(b.machines), len(b.metrics)
	k := b.i % nk
	m := b.machines[(b.i/nk)%nm]
	ts := winBenchStart + int64(b.i/(nk*nm))*1000
	wm := ts - 5000
	emit := func(Window) { b.emitted++ }
	b.w.Add(telemetry.Sample{Machine: m, Metric: b.metrics[k], Time: ts, Value: float64(b.i & 1023)}, wm, emit)
	if k == nk-1 {
		b.w.Advance(m, wm, emit)
	}
	b.i++
}

// warm runs rounds rounds, past the first drops, so that every series'
// backing array has reached its steady-state size.
func (b *winBench) warm(rounds int) {
	for range rounds * len(b.machines) * len(b.metrics) {
		b.add()
	}
}

func TestWindowsAddSteadyStateDoesNotAllocate(t *testing.T) {
	b := newWinBench(50, 5)
	b.warm(100)
	if n := testing.AllocsPerRun(20*50*5, b.add); n != 0 {
		t.Errorf("Add allocates %v times per sample in steady state, want 0", n)
	}
	if b.emitted == 0 {
		t.Error("no window emitted")
	}
}

// BenchmarkWindowsAdd measures Add (and Advance once per event) in steady
// state. With 10 k machines × 5 metrics the state (~25 MB) outgrows the CPU
// caches, as in production; 100 machines shows the cost without cache misses.
func BenchmarkWindowsAdd(b *testing.B) {
	for _, machines := range []int{10_000, 100} {
		b.Run(fmt.Sprintf("machines=%d", machines), func(b *testing.B) {
			wb := newWinBench(machines, 5)
			wb.warm(75) // 75 s: windows have been emitted and dropped
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				wb.add()
				n++
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
