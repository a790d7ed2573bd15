package storetest

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// Memory is an in-memory store.Store for tests of the store's consumers. It
// is the reference the conformance suite is checked against: no bounds, no
// durability, first write wins at equal timestamps.
type Memory struct {
	// MemoryStates makes Memory a store.StateStore too.
	MemoryStates

	mu     sync.RWMutex
	closed bool
	series map[store.SeriesKey][]store.Point // sorted by Time, unique times
}

var (
	_ store.Store      = (*Memory)(nil)
	_ store.StateStore = (*Memory)(nil)
)

// NewMemory returns an empty Memory store.
func NewMemory() *Memory {
	return &Memory{series: make(map[store.SeriesKey][]store.Point)}
}

// Append stores samples; a sample at the time of a stored one is dropped.
func (m *Memory) Append(ctx context.Context, samples []telemetry.Sample) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("appending samples: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("appending samples: %w", store.ErrClosed)
	}
	for _, s := range samples {
		k := store.SeriesKey{Machine: s.Machine, Metric: s.Metric}
		pts := m.series[k]
		p := store.Point{Time: s.Time, Value: s.Value}
		if n := len(pts); n == 0 || pts[n-1].Time < s.Time {
			m.series[k] = append(pts, p)
			continue
		}
		i, found := slices.BinarySearchFunc(pts, s.Time, func(p store.Point, t int64) int { return cmp.Compare(p.Time, t) })
		if found {
			continue
		}
		m.series[k] = slices.Insert(pts, i, p)
	}
	return nil
}

// Select calls fn for the points of key in [from, to] in time order.
func (m *Memory) Select(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("selecting samples: %w", err)
	}
	m.mu.RLock()
	if m.closed {
		m.mu.RUnlock()
		return fmt.Errorf("selecting samples: %w", store.ErrClosed)
	}
	// Copy the window under the lock: Append may shift points in place.
	pts := m.series[key]
	i, _ := slices.BinarySearchFunc(pts, from, func(p store.Point, t int64) int { return cmp.Compare(p.Time, t) })
	j, found := slices.BinarySearchFunc(pts, to, func(p store.Point, t int64) int { return cmp.Compare(p.Time, t) })
	if found {
		j++
	}
	var window []store.Point
	if i < j {
		window = slices.Clone(pts[i:j])
	}
	m.mu.RUnlock()
	for _, p := range window {
		if !fn(p) {
			return nil
		}
	}
	return nil
}

// Series lists the keys with points in [from, to], sorted.
func (m *Memory) Series(ctx context.Context, from, to int64) ([]store.SeriesKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("listing series: %w", err)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, fmt.Errorf("listing series: %w", store.ErrClosed)
	}
	var keys []store.SeriesKey
	for k, pts := range m.series {
		i, _ := slices.BinarySearchFunc(pts, from, func(p store.Point, t int64) int { return cmp.Compare(p.Time, t) })
		if i < len(pts) && pts[i].Time <= to {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, compareKeys)
	return keys, nil
}

// Close releases the store; later calls fail with store.ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

func compareKeys(a, b store.SeriesKey) int {
	return cmp.Or(cmp.Compare(a.Machine, b.Machine), cmp.Compare(a.Metric, b.Metric))
}
