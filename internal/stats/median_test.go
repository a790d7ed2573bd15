package stats

import (
	"math"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

// medianOracle returns the two middle values of the sorted window (the same
// value twice for an odd count), the brute-force answer Median must give.
func medianOracle(window []float64) (a, b float64) {
	s := slices.Clone(window)
	slices.Sort(s)
	n := len(s)
	return s[(n-1)/2], s[n/2]
}

// medianCheck fails t unless m's heaps are consistent: positions recorded in
// the slots, both heap orders, every lower value ≤ every upper value, and the
// sizes balanced.
func medianCheck(t interface{ Fatalf(string, ...any) }, m *Median) {
	if got, want := len(m.lo)+len(m.hi), m.count; got != want {
		t.Fatalf("heaps hold %d slots, count is %d", got, want)
	}
	if d := len(m.lo) - len(m.hi); d != 0 && d != 1 {
		t.Fatalf("len(lo)=%d len(hi)=%d, want lo = hi or hi+1", len(m.lo), len(m.hi))
	}
	for _, side := range []bool{false, true} {
		h := *m.heap(side)
		for i, s := range h {
			if sl := m.slots[s]; !sl.inUse || sl.inHi != side || int(sl.pos) != i {
				t.Fatalf("slot %d at heap(hi=%v)[%d] records %+v", s, side, i, sl)
			}
			if i > 0 && m.above(h, side, i, (i-1)/2) {
				t.Fatalf("heap(hi=%v) order broken at %d", side, i)
			}
		}
	}
	if len(m.hi) > 0 {
		for _, s := range m.lo {
			if m.slots[s].v > m.slots[m.hi[0]].v {
				t.Fatalf("lower half holds %v > upper minimum %v", m.slots[s].v, m.slots[m.hi[0]].v)
			}
		}
	}
}

func TestMedianTable(t *testing.T) {
	type result struct {
		Median float64
		OK     bool
		Len    int
	}
	tests := []struct {
		name string
		n    int
		add  []float64
		want result
	}{
		{name: "empty", n: 3, want: result{}},
		{name: "one", n: 3, add: []float64{7}, want: result{7, true, 1}},
		{name: "two is the mean", n: 3, add: []float64{1, 2}, want: result{1.5, true, 2}},
		{name: "odd full", n: 3, add: []float64{9, 1, 5}, want: result{5, true, 3}},
		{name: "n=1 keeps the last", n: 1, add: []float64{1, 100, -3}, want: result{-3, true, 1}},
		{name: "even n", n: 4, add: []float64{10, 1, 4, 2}, want: result{3, true, 4}},
		{name: "oldest leaves", n: 3, add: []float64{100, 100, 1, 2, 3}, want: result{2, true, 3}},
		{name: "slides past a spike", n: 3, add: []float64{1, 1e9, 2, 3, 4}, want: result{3, true, 3}},
		{name: "duplicates", n: 5, add: []float64{2, 2, 2, 1, 2}, want: result{2, true, 5}},
		{name: "negative", n: 4, add: []float64{-1, -5, -3, -7}, want: result{-4, true, 4}},
		{name: "signed zeros", n: 2, add: []float64{math.Copysign(0, -1), 0}, want: result{0, true, 2}},
		{name: "large mean does not overflow", n: 2, add: []float64{math.MaxFloat64, math.MaxFloat64}, want: result{math.MaxFloat64, true, 2}},
		{name: "opposite extremes", n: 2, add: []float64{-math.MaxFloat64, math.MaxFloat64}, want: result{0, true, 2}},
		{name: "tiny values", n: 2, add: []float64{5e-324, 5e-324}, want: result{5e-324, true, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMedian(tt.n)
			for _, v := range tt.add {
				m.Add(v)
				medianCheck(t, m)
			}
			var got result
			got.Median, got.OK = m.Median()
			got.Len = m.Len()
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("after %v (-got +want):\n%s", tt.add, diff)
			}
		})
	}
}

func TestMedianZeroValue(t *testing.T) {
	var m Median
	m.Add(1)
	if v, ok := m.Median(); ok || v != 0 || m.Len() != 0 {
		t.Errorf("zero Median after Add: Median() = %v, %v; Len() = %d; want 0, false; 0", v, ok, m.Len())
	}
}

func TestNewMedianPanicsOnBadSize(t *testing.T) {
	for _, n := range []int{0, -1, math.MaxInt32 + 1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewMedian(%d) did not panic", n)
				}
			}()
			NewMedian(n)
		}()
	}
}

// medianValue draws values that exercise the median: many duplicates, both
// signs, and magnitudes up to the largest finite float64.
func medianValue() *rapid.Generator[float64] {
	return rapid.OneOf(
		rapid.Map(rapid.IntRange(-3, 3), func(i int) float64 { return float64(i) }),
		rapid.Float64Range(-1e6, 1e6),
		rapid.Float64Range(-math.MaxFloat64, math.MaxFloat64),
		rapid.SampledFrom([]float64{math.MaxFloat64, -math.MaxFloat64, 5e-324, math.Copysign(0, -1)}),
	)
}

func TestMedianMatchesSortedWindow(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.OneOf(rapid.IntRange(1, 8), rapid.IntRange(1, 100)).Draw(t, "n")
		// Lengths up to several windows, so the ring wraps many times.
		length := rapid.IntRange(0, 4*n+20).Draw(t, "length")
		vs := rapid.SliceOfN(medianValue(), length, length).Draw(t, "values")
		m := NewMedian(n)
		for i, v := range vs {
			m.Add(v)
			medianCheck(t, m)
			window := vs[max(0, i+1-n) : i+1]
			if got, want := m.Len(), len(window); got != want {
				t.Fatalf("after %d adds: Len() = %d, want %d", i+1, got, want)
			}
			a, b, ok := m.middle()
			wa, wb := medianOracle(window)
			if !ok || a != wa || b != wb {
				t.Fatalf("after %d adds: middle() = %v, %v, %v; want %v, %v, true", i+1, a, b, ok, wa, wb)
			}
			if got, ok := m.Median(); !ok || got != medianMidpoint(wa, wb) {
				t.Fatalf("after %d adds: Median() = %v, %v; want %v, true", i+1, got, ok, medianMidpoint(wa, wb))
			}
		}
		if got, want := m.AppendWindow(nil), vs[max(0, len(vs)-n):]; !slices.Equal(got, want) {
			t.Fatalf("AppendWindow = %v, want %v", got, want)
		}
	})
}

func TestMedianMidpoint(t *testing.T) {
	tests := []struct{ a, b, want float64 }{
		{1, 2, 1.5},
		{-3, -1, -2},
		{math.MaxFloat64, math.MaxFloat64, math.MaxFloat64},
		{-math.MaxFloat64, -math.MaxFloat64, -math.MaxFloat64},
		{-math.MaxFloat64, math.MaxFloat64, 0},
		{math.MaxFloat64 / 2, math.MaxFloat64, 0.75 * math.MaxFloat64},
	}
	for _, tt := range tests {
		if got := medianMidpoint(tt.a, tt.b); got != tt.want {
			t.Errorf("medianMidpoint(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestMedianAppendWindowRestores(t *testing.T) {
	m := NewMedian(4)
	for _, v := range []float64{5, 3, 8, 1, 9, 2} {
		m.Add(v)
	}
	got := m.AppendWindow([]float64{-1})
	if diff := cmp.Diff(got, []float64{-1, 8, 1, 9, 2}); diff != "" {
		t.Fatalf("AppendWindow (-got +want):\n%s", diff)
	}
	r := NewMedian(4)
	for _, v := range got[1:] {
		r.Add(v)
	}
	for _, v := range []float64{7, 0, 4} { // both go on identically
		m.Add(v)
		r.Add(v)
		gm, _ := m.Median()
		gr, _ := r.Median()
		if gm != gr {
			t.Fatalf("restored Median() = %v, original %v", gr, gm)
		}
	}
}

func TestMedianAddDoesNotAllocate(t *testing.T) {
	m := NewMedian(60)
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		m.Add(float64((i * 7919) % 101))
		i++
	})
	if allocs != 0 {
		t.Errorf("Add allocates %v times per call, want 0", allocs)
	}
}

// BenchmarkMedianAdd measures Add on a full window of 60, the default
// --median-window, with values in a pseudo-random order.
func BenchmarkMedianAdd(b *testing.B) {
	const n = 60
	vs := make([]float64, 1024)
	x := uint32(1)
	for i := range vs {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		vs[i] = float64(x%10000) / 100
	}
	m := NewMedian(n)
	for i := range n {
		m.Add(vs[i])
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Add(vs[i&1023])
		i++
	}
}
