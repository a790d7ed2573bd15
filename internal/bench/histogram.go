package bench

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram range: 1 µs to 1 h at 3 significant figures (an error of at
// most 0.1 % on any percentile).
const (
	histLowest  = int64(time.Microsecond)
	histHighest = int64(time.Hour)
	histDigits  = 3
)

// Histogram records durations in an HDR histogram. It is safe for
// concurrent use; writers that record often use one Histogram each (or a
// [Shards]) and merge at the end.
type Histogram struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
	// clamped counts values outside the range, recorded at its bound.
	clamped int64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{h: hdrhistogram.New(histLowest, histHighest, histDigits)}
}

// Record adds one duration; a value below 1 µs counts as 1 µs (the clock
// and the millisecond event times cannot resolve less), one above 1 h as
// 1 h.
func (h *Histogram) Record(d time.Duration) {
	h.mu.Lock()
	h.recordLocked(int64(d), 1)
	h.mu.Unlock()
}

// RecordMany adds each of ds under one lock.
func (h *Histogram) RecordMany(ds []time.Duration) {
	h.mu.Lock()
	for _, d := range ds {
		h.recordLocked(int64(d), 1)
	}
	h.mu.Unlock()
}

func (h *Histogram) recordLocked(v, n int64) {
	if v < histLowest {
		v = histLowest
	} else if v > histHighest {
		v = histHighest
		h.clamped += n
	}
	// In range by construction, so RecordValues cannot fail.
	_ = h.h.RecordValues(v, n)
}

// Merge adds every value of o to h.
func (h *Histogram) Merge(o *Histogram) {
	o.mu.Lock()
	c := o.h.Export()
	clamped := o.clamped
	o.mu.Unlock()
	h.mu.Lock()
	h.h.Merge(hdrhistogram.Import(c))
	h.clamped += clamped
	h.mu.Unlock()
}

// Count returns how many values were recorded.
func (h *Histogram) Count() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.h.TotalCount()
}

// Quantile returns the value at quantile q (0..100 percentile / 100), or 0
// when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return time.Duration(h.h.ValueAtQuantile(q * 100))
}

// Summary is the percentile report of a Histogram, in milliseconds.
type Summary struct {
	Count  int64   `json:"count"`
	MeanMs float64 `json:"meanMs"`
	P50Ms  float64 `json:"p50Ms"`
	P90Ms  float64 `json:"p90Ms"`
	P99Ms  float64 `json:"p99Ms"`
	P999Ms float64 `json:"p999Ms"`
	MaxMs  float64 `json:"maxMs"`
	// OverRange counts values above the histogram's 1 h range, recorded
	// as 1 h.
	OverRange int64 `json:"overRange,omitempty"`
}

// Summary reports count, mean, p50, p90, p99, p99.9 and max. Percentiles
// are the HDR histogram's: the highest value equivalent (within 0.1 %) to
// the value at the quantile.
func (h *Histogram) Summary() Summary {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h.TotalCount() == 0 {
		return Summary{}
	}
	ps := h.h.ValueAtPercentiles([]float64{50, 90, 99, 99.9})
	return Summary{
		Count:     h.h.TotalCount(),
		MeanMs:    ms(int64(h.h.Mean())),
		P50Ms:     ms(ps[50]),
		P90Ms:     ms(ps[90]),
		P99Ms:     ms(ps[99]),
		P999Ms:    ms(ps[99.9]),
		MaxMs:     ms(h.h.Max()),
		OverRange: h.clamped,
	}
}

// ms converts nanoseconds to milliseconds rounded to the microsecond.
func ms(ns int64) float64 { return float64(ns/1000) / 1000 }

// Shards spreads concurrent recorders over several histograms to keep lock
// contention low; writer i records into shard i mod n.
type Shards struct{ hs []*Histogram }

// NewShards returns n empty shards (at least one).
func NewShards(n int) *Shards {
	s := &Shards{hs: make([]*Histogram, max(n, 1))}
	for i := range s.hs {
		s.hs[i] = NewHistogram()
	}
	return s
}

// Shard returns the histogram writer i records into.
func (s *Shards) Shard(i int) *Histogram { return s.hs[i%len(s.hs)] }

// Merged returns one histogram holding every shard's values.
func (s *Shards) Merged() *Histogram {
	m := NewHistogram()
	for _, h := range s.hs {
		m.Merge(h)
	}
	return m
}
