package store

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

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
// would read more samples than the budget its context carries
// (WithSampleLimit): a store that reads a selection whole before the
// engine iterates it (PostgreSQL) is bounded by it, not by the engine's
// own limit, which counts only what the engine holds at once.
var ErrTooManySamples = errors.New("too many samples")

type sampleBudgetKey struct{}

// sampleBudget is what is left of one query's samples, shared by all its
// Selects (a query has one per selector).
type sampleBudget struct {
	limit int64
	left  atomic.Int64
}

// WithSampleLimit returns ctx carrying a budget of n samples that every
// Select of a PromQueryable under it draws from (n <= 0: no limit).
func WithSampleLimit(ctx context.Context, n int) context.Context {
	if n <= 0 {
		return ctx
	}
	b := &sampleBudget{limit: int64(n)}
	b.left.Store(int64(n))
	return context.WithValue(ctx, sampleBudgetKey{}, b)
}

// TakeSamples draws n samples from ctx's budget. It returns nil while the
// budget lasts (or there is none), else an error wrapping
// ErrTooManySamples that names the limit.
func TakeSamples(ctx context.Context, n int) error {
	b, _ := ctx.Value(sampleBudgetKey{}).(*sampleBudget)
	if b == nil || n <= 0 || b.left.Add(-int64(n)) >= 0 {
		return nil
	}
	return fmt.Errorf("%w: the query's selectors read more than %d samples in the range; narrow the selectors or the range", ErrTooManySamples, b.limit)
}

// rawOnlyKey marks a context whose PromQL Selects must read raw samples.
type rawOnlyKey struct{}

// WithRawSamples returns ctx marked so that a PromQueryable's Select reads
// raw samples, never pre-aggregated data (rollup tiers, window
// aggregates), whatever its hints. The query API marks a query that has
// a subquery: the engine gives the selectors under it hints derived from
// the outer query's times and the subquery's step, while the subquery
// evaluates at multiples of its step since the epoch, so a plan that the
// hints show aligned to buckets may be a millisecond off in fact.
func WithRawSamples(ctx context.Context) context.Context {
	return context.WithValue(ctx, rawOnlyKey{}, true)
}

// RawSamplesOnly reports whether ctx was marked by WithRawSamples.
func RawSamplesOnly(ctx context.Context) bool {
	v, _ := ctx.Value(rawOnlyKey{}).(bool)
	return v
}
