// Package hot keeps the hot window: the latest few minutes (HotWindow,
// default 5m) of samples per machine and metric, so that "the latest values
// of machine X" and "series X over the last minutes" are answered without
// touching the store.
//
// Two implementations share one contract: [Memory], in-process (the
// embedded default), and [Redis], shared by every replica. Both trim by time
// on write: a sample older than now − window is dropped, and so is every
// held sample that has become that old. Range reports whether the window
// covers the asked range, so that the caller falls back to the store when it
// does not (the window is younger than the range, or writes were lost while
// Redis was unreachable).
package hot

import (
	"context"
	"time"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// Window is the contract of both implementations.
type Window interface {
	// Append adds samples; those older than the window are skipped. An
	// error means the window may have missed them (Range will not claim
	// their range); the samples are still for the store to keep.
	Append(ctx context.Context, samples []telemetry.Sample) error
	// Latest returns the newest point, by event time, of each metric of
	// machine within the window.
	Latest(ctx context.Context, machine string) (map[string]store.Point, error)
	// Range returns the points of key in [from, to] (ms, inclusive) in
	// time order, and whether the window covers that whole range; when
	// not, ask the store.
	Range(ctx context.Context, key store.SeriesKey, from, to int64) ([]store.Point, bool, error)
	// Ready reports whether the window's backend answers.
	Ready() error
}

var (
	_ Window = (*Memory)(nil)
	_ Window = (*Redis)(nil)
)

// DefaultWindow is the hot window's length when none is given.
const DefaultWindow = 5 * time.Minute

// Options configure a hot window. Zero values take the defaults.
type Options struct {
	// Window is how much recent history per series is kept (default 5m).
	Window time.Duration
	// Now is the clock (default time.Now); tests inject their own.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// covered reports whether a window that holds every sample with time ≥
// since covers [from, to].
func covered(from, to, since int64) bool { return from >= since && from <= to }

// clip returns the points of pts (sorted by time) within [from, to].
func clip(pts []store.Point, from, to int64) []store.Point {
	if from > to {
		return nil
	}
	lo := search(pts, from)
	hi := search(pts, to+1)
	return pts[lo:hi]
}

// search returns the index of the first point with time ≥ t.
func search(pts []store.Point, t int64) int {
	lo, hi := 0, len(pts)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if pts[m].Time < t {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
