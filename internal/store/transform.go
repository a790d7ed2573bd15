package store

import (
	"context"
	"fmt"
	"strconv"
)

// Transform is a function applied to the raw samples of a range, point by
// point in time order.
type Transform struct {
	// Fn is "delta" (each value minus the one before it in the range: the
	// first sample of the range has no point) or "rolling_avg" (the mean of
	// the sample and the Window−1 before it in the range).
	Fn string
	// Window is the number of samples of rolling_avg.
	Window int
}

// MaxRollingWindow bounds Transform.Window.
const MaxRollingWindow = 10_000

// ParseTransform returns the transform named fn, with window (for
// rolling_avg; "" means 10).
func ParseTransform(fn, window string) (Transform, error) {
	switch fn {
	case "delta":
		if window != "" {
			return Transform{}, fmt.Errorf("window applies to rolling_avg only: %w", ErrInvalidQuery)
		}
		return Transform{Fn: fn}, nil
	case "rolling_avg":
		n := 10
		if window != "" {
			var err error
			if n, err = strconv.Atoi(window); err != nil || n < 1 || n > MaxRollingWindow {
				return Transform{}, fmt.Errorf("window %q: want a number of samples from 1 to %d: %w", window, MaxRollingWindow, ErrInvalidQuery)
			}
		}
		return Transform{Fn: fn, Window: n}, nil
	}
	return Transform{}, fmt.Errorf("transform %q (want delta or rolling_avg): %w", fn, ErrInvalidQuery)
}

// Apply returns the transformed points of pts (in time order).
func (tr Transform) Apply(pts []Point) []Point {
	out := make([]Point, 0, len(pts))
	switch tr.Fn {
	case "delta":
		for i := 1; i < len(pts); i++ {
			out = append(out, Point{Time: pts[i].Time, Value: pts[i].Value - pts[i-1].Value})
		}
	case "rolling_avg":
		var sum float64
		for i, p := range pts {
			sum += p.Value
			if i >= tr.Window {
				sum -= pts[i-tr.Window].Value
			}
			out = append(out, Point{Time: p.Time, Value: sum / float64(min(i+1, tr.Window))})
		}
	}
	return out
}

// Transformer is implemented by stores that transform in the backend (SQL
// window functions). TransformRange has the contract and the result of
// Select then Transform.Apply, up to floating-point rounding, returning at
// most limit points.
type Transformer interface {
	TransformRange(ctx context.Context, key SeriesKey, from, to int64, tr Transform, limit int) ([]Point, error)
}
