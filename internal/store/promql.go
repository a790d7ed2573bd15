package store

import (
	"context"
	"errors"

	"github.com/prometheus/prometheus/storage"
)

// Labels of the series a PromQueryable serves.
const (
	// PromLabelName is the metric (Prometheus' __name__).
	PromLabelName = "__name__"
	// PromLabelMachine is the machine id.
	PromLabelMachine = "machine"
)

// PromQueryable is implemented by the stores that serve PromQL (both
// backends). The series of its Queryable carry exactly two labels,
// __name__ (the metric) and machine, and float samples only; the query
// API (internal/promapi) adds the registry's labels (site, line, chosen
// attributes) above it and resolves matchers on them to a machine set.
//
// Its Select honours matchers of every type on __name__ and machine; a
// matcher on any other label applies to the empty value, as Prometheus
// does for a label a series lacks. SelectHints.Start and End bound the
// samples read; Step, Range and Func may let a store read pre-aggregated
// data where the answer is the same (documented by the store).
type PromQueryable interface {
	PromQueryable() storage.Queryable
}

// ErrTooManySamples is returned (wrapped) by a PromQueryable's Select that
// would read more samples than the limit its context carries
// (WithSampleLimit): a store that reads a selection whole before the
// engine iterates it (PostgreSQL) is bounded by it, not by the engine's
// own limit, which counts only what the engine holds at once.
var ErrTooManySamples = errors.New("too many samples")

type sampleLimitKey struct{}

// WithSampleLimit returns ctx carrying the most samples one Select of a
// PromQueryable may read (n <= 0: no limit).
func WithSampleLimit(ctx context.Context, n int) context.Context {
	return context.WithValue(ctx, sampleLimitKey{}, n)
}

// SampleLimit returns the limit WithSampleLimit put in ctx, or 0 (none).
func SampleLimit(ctx context.Context) int {
	n, _ := ctx.Value(sampleLimitKey{}).(int)
	return max(n, 0)
}
