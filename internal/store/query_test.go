package store_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

var key = store.SeriesKey{Machine: "m", Metric: "x"}

// memWith returns a Memory store holding points as series key.
func memWith(t testing.TB, points ...store.Point) *storetest.Memory {
	t.Helper()
	m := storetest.NewMemory()
	samples := make([]telemetry.Sample, len(points))
	for i, p := range points {
		samples[i] = telemetry.Sample{Machine: key.Machine, Metric: key.Metric, Time: p.Time, Value: p.Value}
	}
	if err := m.Append(context.Background(), samples); err != nil {
		t.Fatal(err)
	}
	return m
}

// pts builds points from (time, value) pairs.
func pts(tv ...float64) []store.Point {
	out := make([]store.Point, 0, len(tv)/2)
	for i := 0; i < len(tv); i += 2 {
		out = append(out, store.Point{Time: int64(tv[i]), Value: tv[i+1]})
	}
	return out
}

func TestParseAgg(t *testing.T) {
	tests := []struct {
		in      string
		want    store.Agg
		wantErr bool
	}{
		{"avg", store.AggAvg, false},
		{"min", store.AggMin, false},
		{"max", store.AggMax, false},
		{"sum", store.AggSum, false},
		{"count", store.AggCount, false},
		{"", "", true},
		{"AVG", "", true},
		{"mean", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := store.ParseAgg(tt.in)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("ParseAgg(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
			if err != nil && !errors.Is(err, store.ErrInvalidQuery) {
				t.Errorf("ParseAgg(%q) error %v does not wrap ErrInvalidQuery", tt.in, err)
			}
		})
	}
}

func TestAggregate(t *testing.T) {
	// Samples on and around the edges of 1 s buckets, and across zero.
	edges := pts(-1001, 1, -1000, 2, -1, 3, 0, 4, 999, 5, 1000, 6, 1999, 7, 2000, 8, 5500, 9)
	tests := []struct {
		name     string
		data     []store.Point
		from, to int64
		step     time.Duration
		agg      store.Agg
		want     []store.Point
	}{
		{
			name: "count per bucket at edges",
			data: edges, from: math.MinInt64, to: math.MaxInt64, step: time.Second, agg: store.AggCount,
			want: pts(-2000, 1, -1000, 2, 0, 2, 1000, 2, 2000, 1, 5000, 1),
		},
		{
			name: "sum", data: edges, from: math.MinInt64, to: math.MaxInt64, step: time.Second, agg: store.AggSum,
			want: pts(-2000, 1, -1000, 5, 0, 9, 1000, 13, 2000, 8, 5000, 9),
		},
		{
			name: "avg", data: edges, from: math.MinInt64, to: math.MaxInt64, step: time.Second, agg: store.AggAvg,
			want: pts(-2000, 1, -1000, 2.5, 0, 4.5, 1000, 6.5, 2000, 8, 5000, 9),
		},
		{
			name: "min", data: pts(0, 3, 1, -2, 2, 5, 1000, 7), from: 0, to: 5000, step: time.Second, agg: store.AggMin,
			want: pts(0, -2, 1000, 7),
		},
		{
			name: "max", data: pts(0, 3, 1, -2, 2, 5, 1000, 7), from: 0, to: 5000, step: time.Second, agg: store.AggMax,
			want: pts(0, 5, 1000, 7),
		},
		{
			name: "from and to cut buckets, keep their aligned start",
			data: edges, from: 999, to: 1000, step: time.Second, agg: store.AggCount,
			want: pts(0, 1, 1000, 1),
		},
		{
			name: "inclusive to",
			data: edges, from: 0, to: 2000, step: time.Second, agg: store.AggCount,
			want: pts(0, 2, 1000, 2, 2000, 1),
		},
		{
			name: "step larger than data",
			data: edges, from: math.MinInt64, to: math.MaxInt64, step: time.Hour, agg: store.AggCount,
			want: pts(-3600000, 3, 0, 6),
		},
		{
			name: "aligned to the epoch, not to from",
			data: pts(61000, 1, 119000, 2, 121000, 3), from: 60500, to: 200000, step: time.Minute, agg: store.AggSum,
			want: pts(60000, 3, 120000, 3),
		},
		{name: "empty range", data: edges, from: 3000, to: 5000, step: time.Second, agg: store.AggSum, want: nil},
		{name: "from after to", data: edges, from: 2000, to: 0, step: time.Second, agg: store.AggSum, want: nil},
		{name: "no data", data: nil, from: 0, to: 5000, step: time.Second, agg: store.AggAvg, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := store.Aggregate(context.Background(), memWith(t, tt.data...), key, tt.from, tt.to, tt.step, tt.agg)
			if err != nil {
				t.Fatalf("Aggregate: %v", err)
			}
			if got == nil {
				t.Errorf("Aggregate returned nil, want a non-nil slice")
			}
			if diff := cmp.Diff(got, tt.want, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Aggregate mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestAggregateInvalid(t *testing.T) {
	m := memWith(t, pts(0, 1)...)
	tests := []struct {
		name string
		step time.Duration
		agg  store.Agg
	}{
		{"zero step", 0, store.AggAvg},
		{"negative step", -time.Second, store.AggAvg},
		{"sub-millisecond step", 500 * time.Microsecond, store.AggAvg},
		{"unknown aggregation", time.Second, "median"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := store.Aggregate(context.Background(), m, key, 0, 10, tt.step, tt.agg)
			if !errors.Is(err, store.ErrInvalidQuery) {
				t.Errorf("Aggregate(step %v, %q) = %v, want ErrInvalidQuery", tt.step, tt.agg, err)
			}
		})
	}
}

func TestDownsample(t *testing.T) {
	ramp := func(n int) []store.Point {
		out := make([]store.Point, n)
		for i := range out {
			out[i] = store.Point{Time: int64(i), Value: float64(i)}
		}
		return out
	}
	tests := []struct {
		name     string
		data     []store.Point
		from, to int64
		n        int
		want     []store.Point
	}{
		{
			name: "at most n samples come back raw",
			data: ramp(4), from: 0, to: 3, n: 4,
			want: ramp(4),
		},
		{
			name: "n+1 samples are bucketed",
			data: ramp(5), from: 0, to: 4, n: 4,
			// two buckets over 5 ms: [0,2] and [3,4]
			want: pts(0, 0, 2, 2, 3, 3, 4, 4),
		},
		{
			name: "bucket edge: 10 ms in 2 buckets splits 4|5",
			data: pts(0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 5, 0, 6, 1, 7, 2, 8, 3, 9, 4), from: 0, to: 9, n: 4,
			want: pts(0, 5, 4, 9, 5, 0, 9, 4),
		},
		{
			name: "bucket edge: 11 ms in 2 buckets splits 5|6",
			data: pts(0, 1, 5, 9, 6, -9, 10, 1, 3, 0), from: 0, to: 10, n: 4,
			want: pts(3, 0, 5, 9, 6, -9, 10, 1),
		},
		{
			name: "bucket edges follow from, not zero",
			data: pts(100, 1, 101, 0, 104, 2, 105, 3, 108, 5, 109, 4, 110, 9), from: 100, to: 109, n: 4,
			want: pts(101, 0, 104, 2, 105, 3, 108, 5),
		},
		{
			name: "peaks in the middle of a bucket survive",
			data: pts(0, 0, 1, 0, 2, 100, 3, 0, 4, 0, 5, 0, 6, 0, 7, -100, 8, 0, 9, 0), from: 0, to: 9, n: 4,
			want: pts(0, 0, 2, 100, 5, 0, 7, -100),
		},
		{
			name: "max before min keeps time order",
			data: pts(0, 9, 1, 5, 2, 1, 3, 5, 4, 5, 5, 5, 6, 5), from: 0, to: 6, n: 2,
			want: pts(0, 9, 2, 1),
		},
		{
			name: "flat bucket gives one point",
			data: pts(0, 7, 1, 7, 2, 7, 3, 7, 4, 7, 5, 1, 6, 2, 7, 3, 8, 4, 9, 5), from: 0, to: 9, n: 4,
			want: pts(0, 7, 5, 1, 9, 5),
		},
		{
			name: "ties keep the earliest point",
			data: pts(0, 1, 1, 3, 2, 3, 3, 1, 4, 2), from: 0, to: 4, n: 2,
			want: pts(0, 1, 1, 3),
		},
		{
			name: "odd n rounds the bucket count down",
			data: ramp(20), from: 0, to: 19, n: 5,
			want: pts(0, 0, 9, 9, 10, 10, 19, 19),
		},
		{
			name: "empty buckets are omitted",
			// three buckets over 100 ms: [0,33] [34,66] [67,99]
			data: pts(0, 1, 1, 2, 2, 3, 3, 0, 97, 4, 98, 5, 99, 6), from: 0, to: 99, n: 6,
			want: pts(2, 3, 3, 0, 97, 4, 99, 6),
		},
		{
			name: "single-sample bucket gives one point",
			data: pts(0, 1, 1, 2, 2, 3, 3, 0, 99, 4), from: 0, to: 99, n: 4,
			want: pts(2, 3, 3, 0, 99, 4),
		},
		{
			name: "range cuts the data",
			data: ramp(100), from: 10, to: 19, n: 4,
			want: pts(10, 10, 14, 14, 15, 15, 19, 19),
		},
		{
			name: "whole int64 range",
			data: []store.Point{{Time: math.MinInt64, Value: 1}, {Time: 0, Value: 0}, {Time: math.MaxInt64, Value: 2}},
			from: math.MinInt64, to: math.MaxInt64, n: 2,
			want: []store.Point{{Time: 0, Value: 0}, {Time: math.MaxInt64, Value: 2}},
		},
		{name: "empty range", data: ramp(10), from: 20, to: 30, n: 4, want: nil},
		{name: "from after to", data: ramp(10), from: 9, to: 0, n: 4, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := store.Downsample(context.Background(), memWith(t, tt.data...), key, tt.from, tt.to, tt.n)
			if err != nil {
				t.Fatalf("Downsample: %v", err)
			}
			if got == nil {
				t.Errorf("Downsample returned nil, want a non-nil slice")
			}
			if len(got) > tt.n {
				t.Errorf("Downsample returned %d points, more than n = %d", len(got), tt.n)
			}
			if diff := cmp.Diff(got, tt.want, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Downsample mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestDownsampleInvalid(t *testing.T) {
	m := memWith(t, pts(0, 1, 1, 2)...)
	for _, n := range []int{-1, 0, 1} {
		if _, err := store.Downsample(context.Background(), m, key, 0, 10, n); !errors.Is(err, store.ErrInvalidQuery) {
			t.Errorf("Downsample(n=%d) = %v, want ErrInvalidQuery", n, err)
		}
	}
}

// TestDownsampleKeepsExtremes checks, on a day at 1 Hz with noise, that the
// global extremes survive and the result stays within n.
func TestDownsampleKeepsExtremes(t *testing.T) {
	const day = 86400
	data := make([]store.Point, day)
	for i := range data {
		data[i] = store.Point{Time: int64(i) * 1000, Value: math.Sin(float64(i)/500) + float64(i%7)/10}
	}
	data[12345].Value = 50
	data[54321].Value = -50
	m := memWith(t, data...)
	for _, n := range []int{2, 3, 999, 1000, 1001} {
		got, err := store.Downsample(context.Background(), m, key, 0, (day-1)*1000, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > n {
			t.Errorf("n=%d: %d points", n, len(got))
		}
		for _, want := range []store.Point{data[12345], data[54321]} {
			found := false
			for _, p := range got {
				found = found || p == want
			}
			if !found {
				t.Errorf("n=%d: lost %v", n, want)
			}
		}
	}
}

func BenchmarkDownsample(b *testing.B) {
	const day = 86400
	data := make([]store.Point, day)
	for i := range data {
		data[i] = store.Point{Time: int64(i) * 1000, Value: float64(i % 600)}
	}
	m := memWith(b, data...)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := store.Downsample(context.Background(), m, key, 0, (day-1)*1000, 1000); err != nil {
			b.Fatal(err)
		}
	}
}
