package hot

import (
	"context"
	"sync"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// Memory is the in-process hot window of one replica. It is safe for
// concurrent use.
type Memory struct {
	opts   Options
	window int64 // ms
	// since is when the window started (ms): it holds every sample with a
	// time from then on.
	since int64

	mu        sync.RWMutex
	machines  map[string]map[string][]store.Point // machine → metric → points by time
	lastSweep int64
}

// NewMemory returns an empty in-process hot window; it covers samples from
// now on.
func NewMemory(opts Options) *Memory {
	opts = opts.withDefaults()
	now := opts.Now().UnixMilli()
	return &Memory{
		opts:      opts,
		window:    opts.Window.Milliseconds(),
		since:     now,
		machines:  make(map[string]map[string][]store.Point),
		lastSweep: now,
	}
}

// Append adds samples, drops those older than the window, and trims the
// series it writes to. A sample whose machine, metric and time are already
// held is a duplicate: the first value is kept, as in the store.
func (m *Memory) Append(_ context.Context, samples []telemetry.Sample) error {
	now := m.opts.Now().UnixMilli()
	cutoff := now - m.window
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range samples {
		s := &samples[i]
		if s.Time < cutoff {
			continue
		}
		metrics := m.machines[s.Machine]
		if metrics == nil {
			metrics = make(map[string][]store.Point)
			m.machines[s.Machine] = metrics
		}
		metrics[s.Metric] = insert(trim(metrics[s.Metric], cutoff), store.Point{Time: s.Time, Value: s.Value})
	}
	if now-m.lastSweep >= m.window/4 {
		m.sweepLocked(cutoff)
		m.lastSweep = now
	}
	return nil
}

// sweepLocked trims every series, and forgets the idle ones.
func (m *Memory) sweepLocked(cutoff int64) {
	for machine, metrics := range m.machines {
		for metric, pts := range metrics {
			if pts = trim(pts, cutoff); len(pts) == 0 {
				delete(metrics, metric)
			} else {
				metrics[metric] = pts
			}
		}
		if len(metrics) == 0 {
			delete(m.machines, machine)
		}
	}
}

// trim drops the points older than cutoff, giving the memory back once
// most of the slice is dead.
func trim(pts []store.Point, cutoff int64) []store.Point {
	i := search(pts, cutoff)
	if i == 0 {
		return pts
	}
	pts = pts[i:]
	if len(pts) < cap(pts)/4 {
		pts = append([]store.Point(nil), pts...)
	}
	return pts
}

// insert adds p in time order, unless a point with its time is held.
func insert(pts []store.Point, p store.Point) []store.Point {
	if n := len(pts); n == 0 || pts[n-1].Time < p.Time {
		return append(pts, p)
	}
	i := search(pts, p.Time)
	if i < len(pts) && pts[i].Time == p.Time {
		return pts
	}
	pts = append(pts, store.Point{})
	copy(pts[i+1:], pts[i:])
	pts[i] = p
	return pts
}

// Latest returns the newest point (by event time) of each metric of
// machine held in the window; a machine without any gives an empty map.
func (m *Memory) Latest(_ context.Context, machine string) (map[string]store.Point, error) {
	cutoff := m.opts.Now().UnixMilli() - m.window
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[string]store.Point, len(m.machines[machine]))
	for metric, pts := range m.machines[machine] {
		if n := len(pts); n > 0 && pts[n-1].Time >= cutoff {
			out[metric] = pts[n-1]
		}
	}
	return out, nil
}

// Range returns the points of key in [from, to] (ms, inclusive), in time
// order, and whether the window covers that range: when covered is false
// the points may be incomplete and the caller should ask the store.
func (m *Memory) Range(_ context.Context, key store.SeriesKey, from, to int64) ([]store.Point, bool, error) {
	cutoff := m.opts.Now().UnixMilli() - m.window
	m.mu.RLock()
	defer m.mu.RUnlock()
	pts := clip(m.machines[key.Machine][key.Metric], max(from, cutoff), to)
	out := make([]store.Point, len(pts))
	copy(out, pts)
	return out, covered(from, to, max(m.since, cutoff)), nil
}

// Ready reports nil: the in-process window is always available.
func (m *Memory) Ready() error { return nil }
