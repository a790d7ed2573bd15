package oee

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// MaxBuckets bounds the buckets of one grid.
const MaxBuckets = 1000

// ErrInvalid reports a grid that cannot be built: an empty range, a step
// below one millisecond, too many buckets.
var ErrInvalid = errors.New("invalid oee query")

// Grid is the bucketing of a time range [From, To) (Unix ms). With Step
// 0 it is one bucket, the whole range; else bucket boundaries are the
// multiples of Step since the Unix epoch (so a day is a UTC day), and the
// first and last buckets are clipped to the range.
type Grid struct {
	From, To int64
	Step     int64
	start    int64 // first boundary at or before From
}

// NewGrid returns the grid of [from, to) by step ms (0: one bucket).
func NewGrid(from, to, step int64) (Grid, error) {
	if from >= to {
		return Grid{}, fmt.Errorf("bucketing [%d, %d): from must be before to: %w", from, to, ErrInvalid)
	}
	if step < 0 {
		return Grid{}, fmt.Errorf("bucketing by %dms: step must be positive: %w", step, ErrInvalid)
	}
	g := Grid{From: from, To: to, Step: step, start: from}
	if step > 0 {
		g.start = floorDiv(from, step) * step
		if n := (to - g.start + step - 1) / step; n > MaxBuckets {
			return Grid{}, fmt.Errorf("bucketing [%d, %d) by %dms: %d buckets, more than %d: %w", from, to, step, n, MaxBuckets, ErrInvalid)
		}
	}
	return g, nil
}

// Len is the number of buckets.
func (g Grid) Len() int {
	if g.Step == 0 {
		return 1
	}
	return int((g.To - g.start + g.Step - 1) / g.Step)
}

// Bounds returns bucket i's range [from, to).
func (g Grid) Bounds(i int) (from, to int64) {
	if g.Step == 0 {
		return g.From, g.To
	}
	lo := g.start + int64(i)*g.Step
	return max(lo, g.From), min(lo+g.Step, g.To)
}

// index returns the bucket of t, which must be in [From, To).
func (g Grid) index(t int64) int {
	if g.Step == 0 {
		return 0
	}
	return int((t - g.start) / g.Step)
}

// floorDiv is a / b rounded towards negative infinity (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// ParseStep parses a bucket width: a Go duration ("15m", "1h30m") or a
// whole number of days or weeks ("1d", "7d", "2w"), at least 1ms.
func ParseStep(s string) (time.Duration, error) {
	if n, unit := strings.TrimRight(s, "dw"), strings.TrimLeft(s, "0123456789"); (unit == "d" || unit == "w") && n != "" {
		days, err := strconv.Atoi(n)
		if unit == "w" && days <= 100_000 {
			days *= 7
		}
		if err == nil && days > 0 && days <= 100_000 { // about 270 years: no overflow
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Millisecond {
		return 0, fmt.Errorf("%q is not a duration of at least 1ms, like 15m, 1h, 8h or 1d: %w", s, ErrInvalid)
	}
	return d, nil
}

// FormatStep writes d in its largest whole unit: "1d", "8h", "90m",
// "30s", "1500ms" (days for whole days: the way ParseStep reads it back).
func FormatStep(d time.Duration) string {
	ms := d.Milliseconds()
	for _, u := range []struct {
		ms   int64
		name string
	}{{24 * 3_600_000, "d"}, {3_600_000, "h"}, {60_000, "m"}, {1000, "s"}} {
		if ms >= u.ms && ms%u.ms == 0 {
			return strconv.FormatInt(ms/u.ms, 10) + u.name
		}
	}
	return strconv.FormatInt(ms, 10) + "ms"
}
