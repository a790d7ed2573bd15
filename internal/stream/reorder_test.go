package stream

import (
	stdcmp "cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/telemetry"
)

func TestReorder(t *testing.T) {
	s := func(m string, t int64, v float64) telemetry.Sample {
		return telemetry.Sample{Machine: m, Metric: "x", Time: t, Value: v}
	}
	type step struct {
		add      telemetry.Sample
		wantLate bool
		release  string // machine to release after the add, if any
		want     []telemetry.Sample
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"ordered by event time once the watermark passes", []step{
			{add: s("a", 100, 1)},
			{add: s("a", 105, 2)},
			{add: s("a", 103, 3), release: "a"},
			{add: s("a", 110, 4), release: "a", want: []telemetry.Sample{s("a", 100, 1)}}, // watermark 100
			{add: s("a", 114, 5), release: "a", want: []telemetry.Sample{s("a", 103, 3)}}, // watermark 104
			{add: s("a", 200, 6), release: "a", want: []telemetry.Sample{s("a", 105, 2), s("a", 110, 4), s("a", 114, 5)}},
		}},
		{"ties in arrival order", []step{
			{add: s("a", 100, 1)},
			{add: s("a", 101, 2)},
			{add: s("a", 100, 3)},
			{add: s("a", 101, 4)},
			{add: s("a", 111, 5), release: "a", want: []telemetry.Sample{s("a", 100, 1), s("a", 100, 3), s("a", 101, 2), s("a", 101, 4)}},
		}},
		{"at or before the watermark is late", []step{
			{add: s("a", 100, 1)},
			{add: s("a", 120, 2)}, // watermark 110
			{add: s("a", 110, 3), wantLate: true},
			{add: s("a", 111, 4)},
			{add: s("a", 50, 5), wantLate: true, release: "a", want: []telemetry.Sample{s("a", 100, 1)}},
		}},
		{"machines are independent", []step{
			{add: s("a", 100, 1)},
			{add: s("b", 50, 2)}, // not late: b has its own watermark
			{add: s("a", 200, 3), release: "b"},
			{add: s("b", 45, 4), release: "a", want: []telemetry.Sample{s("a", 100, 1)}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReorder(10*time.Millisecond, 100)
			for i, st := range tt.steps {
				if got := r.Add(st.add); got != st.wantLate {
					t.Errorf("step %d: Add(%v) late = %v, want %v", i, st.add, got, st.wantLate)
				}
				var got []telemetry.Sample
				if st.release != "" {
					r.Release(st.release, func(s telemetry.Sample) { got = append(got, s) })
				}
				if diff := cmp.Diff(got, st.want); diff != "" {
					t.Errorf("step %d: released (-got +want):\n%s", i, diff)
				}
			}
		})
	}
}

func TestReorderWatermark(t *testing.T) {
	r := NewReorder(5*time.Second, 10)
	if _, ok := r.Watermark("a"); ok {
		t.Errorf("Watermark of an unknown machine: ok = true")
	}
	r.Add(telemetry.Sample{Machine: "a", Time: 10_000})
	r.Add(telemetry.Sample{Machine: "a", Time: 8_000})
	if wm, ok := r.Watermark("a"); !ok || wm != 5_000 {
		t.Errorf("Watermark = %d, %v; want 5000, true", wm, ok)
	}
}

func TestReorderCapReleasesOldestEarly(t *testing.T) {
	r := NewReorder(time.Hour, 2)
	for _, tm := range []int64{30, 10, 20} {
		if r.Add(telemetry.Sample{Machine: "a", Time: tm}) {
			t.Fatalf("Add(%d) late", tm)
		}
	}
	var got []int64
	r.ReleaseReady(func(s telemetry.Sample) { got = append(got, s.Time) })
	if diff := cmp.Diff(got, []int64{10}); diff != "" {
		t.Errorf("released (-got +want):\n%s", diff)
	}
	if wm, _ := r.Watermark("a"); wm != 10 {
		t.Errorf("Watermark = %d, want 10 (raised to the oldest buffered)", wm)
	}
	if !r.Add(telemetry.Sample{Machine: "a", Time: 5}) {
		t.Errorf("Add(5) after the early release: late = false, want true")
	}
	if got := r.Buffered(); got != 2 {
		t.Errorf("Buffered = %d, want 2", got)
	}
}

func TestReorderFlush(t *testing.T) {
	r := NewReorder(time.Hour, 100)
	for _, s := range []telemetry.Sample{
		{Machine: "b", Time: 3}, {Machine: "a", Time: 2}, {Machine: "b", Time: 1}, {Machine: "a", Time: 1},
	} {
		r.Add(s)
	}
	var got []telemetry.Sample
	r.Flush(func(s telemetry.Sample) { got = append(got, s) })
	want := []telemetry.Sample{{Machine: "b", Time: 1}, {Machine: "b", Time: 3}, {Machine: "a", Time: 1}, {Machine: "a", Time: 2}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Flush (-got +want):\n%s", diff)
	}
	if r.Buffered() != 0 {
		t.Errorf("Buffered = %d after Flush, want 0", r.Buffered())
	}
	if !r.Add(telemetry.Sample{Machine: "b", Time: 3}) {
		t.Errorf("Add at the flushed time: late = false, want true")
	}
}

// reorderArrival is a sample with its position in the input.
type reorderArrival struct {
	s telemetry.Sample
	n int
}

// TestReorderWithinLateness: when every sample is displaced by less than the
// lateness, none is late, and each machine's released sequence is its input
// stably sorted by event time.
func TestReorderWithinLateness(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		lateness := rapid.Int64Range(1, 1000).Draw(t, "lateness")
		var in []telemetry.Sample
		var arrive []int64
		times := map[string]int64{}
		for i := range rapid.IntRange(0, 300).Draw(t, "samples") {
			m := "m" + strconv.Itoa(rapid.IntRange(0, 3).Draw(t, "machine"))
			times[m] += rapid.Int64Range(0, 50).Draw(t, "step")
			in = append(in, telemetry.Sample{Machine: m, Metric: "x" + strconv.Itoa(i%3), Time: times[m], Value: float64(i)})
			// It arrives less than lateness after its event time, so
			// no sample that arrived before it is lateness newer.
			arrive = append(arrive, times[m]+rapid.Int64Range(0, lateness-1).Draw(t, "delay"))
		}
		order := make([]int, len(in))
		for i := range order {
			order[i] = i
		}
		sort.SliceStable(order, func(a, b int) bool { return arrive[order[a]] < arrive[order[b]] })

		r := NewReorder(time.Duration(lateness)*time.Millisecond, len(in)+1)
		got := map[string][]telemetry.Sample{}
		emit := func(s telemetry.Sample) { got[s.Machine] = append(got[s.Machine], s) }
		want := map[string][]telemetry.Sample{}
		for _, i := range order {
			if r.Add(in[i]) {
				t.Fatalf("sample %v reported late", in[i])
			}
			want[in[i].Machine] = append(want[in[i].Machine], in[i])
			if rapid.Bool().Draw(t, "release") {
				r.ReleaseReady(emit)
			}
		}
		r.Flush(emit)
		for m := range want {
			slices.SortStableFunc(want[m], func(a, b telemetry.Sample) int { return stdcmp.Compare(a.Time, b.Time) })
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Fatalf("released per machine (-got +want):\n%s", diff)
		}
	})
}

// TestReorderAnyOrder: for arbitrary arrival orders, releases and caps,
// nothing is lost (released + late + buffered = input), each machine's
// released sequence is ordered by event time (ties in arrival order), late
// is exactly "at or before the watermark", releases leave nothing at or
// before the watermark, watermarks never go back, and without the cap a
// watermark is the highest time seen minus the lateness.
func TestReorderAnyOrder(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		lateness := rapid.Int64Range(0, 300).Draw(t, "lateness")
		maxBuffered := rapid.SampledFrom([]int{1, 3, 10, 1000}).Draw(t, "maxBuffered")
		r := NewReorder(time.Duration(lateness)*time.Millisecond, maxBuffered)
		machines := []string{"a", "b", "c"}
		ordered := rapid.Bool().Draw(t, "ordered")

		var (
			released = map[string][]reorderArrival{}
			late     []reorderArrival
			input    []reorderArrival
			arrival  = map[telemetry.Sample]int{}
			maxTime  = map[string]int64{}
			lastWM   = map[string]int64{}
			sinceRel = map[string]int{}
			capped   = false
		)
		emit := func(s telemetry.Sample) {
			wm, _ := r.Watermark(s.Machine)
			if s.Time > wm {
				t.Fatalf("released %v beyond the watermark %d", s, wm)
			}
			released[s.Machine] = append(released[s.Machine], reorderArrival{s, arrival[s]})
		}
		checkReleased := func(m string) {
			sinceRel[m] = 0
			if wm, ok := r.Watermark(m); ok {
				if rm := r.index[m]; rm.n > 0 && rm.first().time <= wm {
					t.Fatalf("machine %s: %d still buffered at watermark %d", m, rm.first().time, wm)
				}
			}
		}
		for i := range rapid.IntRange(0, 300).Draw(t, "steps") {
			switch rapid.IntRange(0, 9).Draw(t, "op") {
			case 0:
				m := rapid.SampledFrom(machines).Draw(t, "machine")
				r.Release(m, emit)
				checkReleased(m)
				continue
			case 1:
				r.ReleaseReady(emit)
				for _, m := range machines {
					checkReleased(m)
				}
				continue
			}
			m := rapid.SampledFrom(machines).Draw(t, "machine")
			// Value i makes every sample distinct.
			// Arbitrary times, or times that mostly rise (live data: the
			// in-order run takes most, the heap the jitter).
			tm := rapid.Int64Range(0, 1000).Draw(t, "time")
			if ordered {
				tm = int64(i/2) - rapid.Int64Range(0, 3).Draw(t, "jitter")
			}
			s := telemetry.Sample{Machine: m, Metric: "x", Time: tm, Value: float64(i)}
			a := reorderArrival{s, i}
			arrival[s] = i
			input = append(input, a)
			wmBefore, known := r.Watermark(m)
			gotLate := r.Add(s)
			if wantLate := known && s.Time <= wmBefore; gotLate != wantLate {
				t.Fatalf("Add(%v) late = %v, want %v (watermark %d)", s, gotLate, wantLate, wmBefore)
			}
			if gotLate {
				late = append(late, a)
			} else {
				sinceRel[m]++
			}
			if mt, ok := maxTime[m]; !ok || s.Time > mt {
				maxTime[m] = s.Time
			}
			wm, _ := r.Watermark(m)
			if last, ok := lastWM[m]; ok && wm < last {
				t.Fatalf("machine %s: watermark went back from %d to %d", m, last, wm)
			}
			lastWM[m] = wm
			if n := r.index[m].n; n > maxBuffered {
				capped = true
				if n > maxBuffered+sinceRel[m] {
					t.Fatalf("machine %s buffers %d > cap %d + %d added since its release", m, n, maxBuffered, sinceRel[m])
				}
			}
			if !capped && wm != maxTime[m]-lateness {
				t.Fatalf("machine %s: watermark %d, want %d", m, wm, maxTime[m]-lateness)
			}
		}

		// Each machine's released sequence is ordered.
		for m, seq := range released {
			for i := 1; i < len(seq); i++ {
				p, c := seq[i-1], seq[i]
				if c.s.Time < p.s.Time || (c.s.Time == p.s.Time && c.n < p.n) {
					t.Fatalf("machine %s: released %v (arrival %d) after %v (arrival %d)", m, c.s, c.n, p.s, p.n)
				}
			}
		}
		// Released + late + buffered = input.
		var all []reorderArrival
		for _, seq := range released {
			all = append(all, seq...)
		}
		all = append(all, late...)
		if got := len(all) + r.Buffered(); got != len(input) {
			t.Fatalf("released %d + late %d + buffered %d != input %d", len(all)-len(late), len(late), r.Buffered(), len(input))
		}
		r.Flush(func(s telemetry.Sample) { all = append(all, reorderArrival{s, arrival[s]}) })
		byArrival := func(a, b reorderArrival) int { return a.n - b.n }
		slices.SortFunc(all, byArrival)
		if diff := cmp.Diff(all, input, cmp.AllowUnexported(reorderArrival{})); diff != "" {
			t.Fatalf("released + late + flushed vs input (-got +want):\n%s", diff)
		}
	})
}

func TestReorderSteadyStateAllocs(t *testing.T) {
	g := newReorderBench(100, 5, 2)
	r := NewReorder(2*time.Second, 1000)
	emit := func(telemetry.Sample) {}
	g.run(r, emit, 10*len(g.round))
	if got := testing.AllocsPerRun(10, func() { g.run(r, emit, len(g.round)) }); got != 0 {
		t.Errorf("allocs per round of %d samples = %v, want 0", len(g.round), got)
	}
}

// reorderBench is a steady stream: every machine sends an event with every
// metric once a second, an event's samples together; within a window of
// rounds the events are shuffled (small disorder).
type reorderBench struct {
	round  []telemetry.Sample // window rounds, shuffled, times relative
	window int64              // rounds per shuffled window
	base   int64
	i      int
}

func newReorderBench(machines, metrics, window int) *reorderBench {
	g := &reorderBench{window: int64(window), base: 1_700_000_000_000}
	type event struct {
		machine string
		time    int64
	}
	var events []event
	for m := range machines {
		name := fmt.Sprintf("machine-%05d", m)
		for w := range window {
			events = append(events, event{name, int64(w) * 1000})
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
	for _, ev := range events {
		for k := range metrics {
			g.round = append(g.round, telemetry.Sample{Machine: ev.machine, Metric: "metric" + strconv.Itoa(k), Time: ev.time, Value: float64(k)})
		}
	}
	return g
}

// run adds n samples to r, releasing ready machines after each batch of
// 1000 samples.
func (g *reorderBench) run(r *Reorder, emit func(telemetry.Sample), n int) {
	for range n {
		s := g.round[g.i]
		s.Time += g.base
		r.Add(s)
		g.i++
		if g.i == len(g.round) {
			g.i = 0
			g.base += g.window * 1000
		}
		if g.i%1000 == 0 {
			r.ReleaseReady(emit)
		}
	}
}

// BenchmarkReorder measures Add plus the amortised release, per sample, in
// steady state: 10 k machines × 5 metrics, disorder within two seconds, a
// lateness of two seconds.
func BenchmarkReorder(b *testing.B) {
	g := newReorderBench(10_000, 5, 2)
	r := NewReorder(2*time.Second, 1000)
	var released int
	emit := func(telemetry.Sample) { released++ }
	g.run(r, emit, 10*len(g.round))
	b.ReportAllocs()
	for b.Loop() {
		g.run(r, emit, 1)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "samples/s")
}

// TestReorderShrinksAfterBurst: a machine that buffered a burst of 100 k
// out-of-order samples gives the heap's memory back once they are
// released, and its steady state then does not allocate.
func TestReorderShrinksAfterBurst(t *testing.T) {
	r := NewReorder(time.Hour, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	const burst = 100_000
	for _, i := range rng.Perm(burst) {
		r.Add(telemetry.Sample{Machine: "m", Metric: "x", Time: int64(i), Value: 1})
	}
	if got := r.heapCap("m"); got < burst {
		t.Fatalf("heap capacity during the burst = %d, want ≥ %d", got, burst)
	}
	var last int64 = -1
	released := 0
	r.Flush(func(s telemetry.Sample) {
		if s.Time < last {
			t.Fatalf("released %d after %d", s.Time, last)
		}
		last = s.Time
		released++
	})
	if released != burst {
		t.Fatalf("released %d, want %d", released, burst)
	}
	if got := r.heapCap("m"); got > 2*reorderMinCap { // run and heap
		t.Errorf("heap capacity after the burst drained = %d, want ≤ %d", got, 2*reorderMinCap)
	}
	// Quiet traffic after the burst: in order, a few buffered at a time.
	emit := func(telemetry.Sample) {}
	next := int64(burst + time.Hour.Milliseconds())
	steady := func() {
		for range 8 {
			r.Add(telemetry.Sample{Machine: "m", Metric: "x", Time: next, Value: 1})
			next += time.Hour.Milliseconds() / 4
		}
		r.ReleaseReady(emit)
	}
	steady()
	if got := testing.AllocsPerRun(100, steady); got != 0 {
		t.Errorf("allocs per quiet round = %v, want 0", got)
	}
	if got := r.heapCap("m"); got > 2*reorderMinCap { // run and heap
		t.Errorf("heap capacity in quiet traffic = %d, want ≤ %d", got, 2*reorderMinCap)
	}
}
