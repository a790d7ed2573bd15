// Package store defines the storage contract every backend (embedded,
// PostgreSQL) implements, and the store-independent query helpers built on it:
// aggregation by step and min-max downsampling.
package store

import (
	"context"
	"errors"

	"github.com/twinline/twinline/internal/telemetry"
)

// ErrClosed is returned by a store used after Close.
var ErrClosed = errors.New("store closed")

// Point is one (time, value) pair of a series; Time is Unix milliseconds.
type Point struct {
	Time  int64   `json:"t"`
	Value float64 `json:"v"`
}

// SeriesKey names one series: a metric of a machine.
type SeriesKey struct {
	Machine string
	Metric  string
}

// Store is the contract of a storage backend.
//
// Append must be durable when it returns nil: the samples survive a crash of
// the process (kill -9). Samples with the same machine, metric and time as a
// stored one are idempotent duplicates, not errors, whatever their value:
// the first stored value is kept. Samples older than the
// store accepts are reported with an error wrapping ErrOutOfBounds after the
// others were stored.
type Store interface {
	// Append stores samples durably.
	Append(ctx context.Context, samples []telemetry.Sample) error
	// Select calls fn for every sample of one series in [from, to] (ms,
	// inclusive) in time order, until fn returns false.
	Select(ctx context.Context, key SeriesKey, from, to int64, fn func(Point) bool) error
	// Series lists the series that have samples in [from, to].
	Series(ctx context.Context, from, to int64) ([]SeriesKey, error)
	// Close flushes and releases the store.
	Close() error
}

// ErrOutOfBounds reports samples too old (or too far in the future) to store.
var ErrOutOfBounds = errors.New("sample time out of bounds")

// StateChange is one change of a machine's state series (a string field of
// its events: "state", "part"): from Time (Unix ms) on, the state Name of
// Machine is Value, until the next change.
type StateChange struct {
	Machine string `json:"machine"`
	Name    string `json:"name"`
	Time    int64  `json:"t"`
	Value   string `json:"value"`
}

// StateStore is implemented by the stores that keep state series (both
// backends): changes only, not every observation.
type StateStore interface {
	// AppendStates stores changes durably. A change with the machine,
	// name and time of a stored one is an idempotent duplicate.
	AppendStates(ctx context.Context, changes []StateChange) error
	// States returns the changes of one state series in (from, to], in
	// time order, preceded by the change in force at from (the latest at
	// or before from) when there is one: enough to know the state at
	// every instant of [from, to].
	States(ctx context.Context, machine, name string, from, to int64) ([]StateChange, error)
}
