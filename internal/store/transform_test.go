package store

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"
)

func TestTransformApply(t *testing.T) {
	pts := []Point{{1, 10}, {2, 13}, {4, 7}, {9, 7}}
	tests := []struct {
		tr   Transform
		want []Point
	}{
		{Transform{Fn: "delta"}, []Point{{2, 3}, {4, -6}, {9, 0}}},
		{Transform{Fn: "rolling_avg", Window: 2}, []Point{{1, 10}, {2, 11.5}, {4, 10}, {9, 7}}},
		{Transform{Fn: "rolling_avg", Window: 1}, pts},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.tr.Apply(pts), tt.want); diff != "" {
			t.Errorf("%+v (-got +want):\n%s", tt.tr, diff)
		}
	}
	if got := (Transform{Fn: "delta"}).Apply(nil); len(got) != 0 {
		t.Errorf("delta of nothing: %v", got)
	}
}

// TestRollingAvgMatchesBruteForce: the running sum equals averaging each
// window anew.
func TestRollingAvgMatchesBruteForce(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 50).Draw(t, "n")
		w := rapid.IntRange(1, 12).Draw(t, "window")
		pts := make([]Point, n)
		for i := range pts {
			pts[i] = Point{Time: int64(i), Value: float64(rapid.IntRange(-1000, 1000).Draw(t, "v"))}
		}
		got := Transform{Fn: "rolling_avg", Window: w}.Apply(pts)
		for i := range pts {
			var sum float64
			lo := max(0, i-w+1)
			for _, p := range pts[lo : i+1] {
				sum += p.Value
			}
			if want := sum / float64(i+1-lo); math.Abs(got[i].Value-want) > 1e-9 {
				t.Fatalf("point %d: %v, want %v", i, got[i].Value, want)
			}
		}
	})
}

func TestParseTransform(t *testing.T) {
	for _, c := range []struct {
		fn, window string
		want       Transform
		ok         bool
	}{
		{"delta", "", Transform{Fn: "delta"}, true},
		{"rolling_avg", "", Transform{Fn: "rolling_avg", Window: 10}, true},
		{"rolling_avg", "60", Transform{Fn: "rolling_avg", Window: 60}, true},
		{"rolling_avg", "0", Transform{}, false},
		{"rolling_avg", "x", Transform{}, false},
		{"delta", "5", Transform{}, false},
		{"median", "", Transform{}, false},
	} {
		got, err := ParseTransform(c.fn, c.window)
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrInvalidQuery)) {
			t.Errorf("ParseTransform(%q, %q) error %v, want ok %v", c.fn, c.window, err, c.ok)
		}
		if got != c.want {
			t.Errorf("ParseTransform(%q, %q) = %+v, want %+v", c.fn, c.window, got, c.want)
		}
	}
}
