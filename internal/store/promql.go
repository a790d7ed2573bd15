package store

import "github.com/prometheus/prometheus/storage"

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
