package bench

import (
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestHistogramSummary(t *testing.T) {
	h := NewHistogram()
	// 1..1000 ms, one each: p50 = 500 ms, p90 = 900, p99 = 990, p99.9 = 999.
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	got := h.Summary()
	want := Summary{Count: 1000, MeanMs: 500.5, P50Ms: 500, P90Ms: 900, P99Ms: 990, P999Ms: 999, MaxMs: 1000}
	// HDR: 3 significant digits, so each value within 0.1 %.
	approx := cmp.Comparer(func(a, b float64) bool {
		d := a - b
		if d < 0 {
			d = -d
		}
		return d <= 0.001*max(a, b)+0.001
	})
	if diff := cmp.Diff(got, want, approx); diff != "" {
		t.Errorf("Summary mismatch (-got +want):\n%s", diff)
	}
}

func TestHistogramEmptyAndClamped(t *testing.T) {
	if got := NewHistogram().Summary(); got != (Summary{}) {
		t.Errorf("empty Summary = %+v, want zero", got)
	}
	h := NewHistogram()
	h.Record(-5 * time.Millisecond) // clock skew: counted as the 1 µs floor
	h.Record(0)
	h.Record(2 * time.Hour) // beyond the range: counted at 1 h, reported
	s := h.Summary()
	if s.Count != 3 || s.OverRange != 1 {
		t.Errorf("Count, OverRange = %d, %d, want 3, 1", s.Count, s.OverRange)
	}
	if s.P50Ms != 0.001 {
		t.Errorf("P50Ms = %v, want 0.001 (the 1 µs floor)", s.P50Ms)
	}
	if s.MaxMs < 3_599_000 || s.MaxMs > 3_604_000 {
		t.Errorf("MaxMs = %v, want about 3 600 000 (1 h)", s.MaxMs)
	}
}

func TestShardsMergeConcurrentWriters(t *testing.T) {
	s := NewShards(4)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ds := make([]time.Duration, 100)
			for i := range ds {
				ds[i] = time.Duration(w+1) * time.Millisecond
			}
			s.Shard(w).RecordMany(ds)
			s.Shard(w).Record(time.Duration(w+1) * time.Millisecond)
		}()
	}
	wg.Wait()
	m := s.Merged()
	if got, want := m.Count(), int64(16*101); got != want {
		t.Errorf("Count = %d, want %d", got, want)
	}
	if got := m.Quantile(1); got < 16*time.Millisecond || got > 16016*time.Microsecond {
		t.Errorf("max = %v, want 16 ms (within 0.1 %%)", got)
	}
	if got := m.Quantile(0.5); got < 8*time.Millisecond || got > 9009*time.Microsecond {
		t.Errorf("p50 = %v, want 8 or 9 ms", got)
	}
}

func BenchmarkHistogramRecordMany(b *testing.B) {
	b.ReportAllocs()
	h := NewHistogram()
	ds := make([]time.Duration, 64)
	for i := range ds {
		ds[i] = time.Duration(i*137) * time.Microsecond
	}
	for b.Loop() {
		h.RecordMany(ds)
	}
}
