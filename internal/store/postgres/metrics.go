package postgres

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus metrics.
type metrics struct {
	rowsWritten   prometheus.Counter
	rowsDuplicate prometheus.Counter
	spooledRows   prometheus.Counter
	replayedRows  prometheus.Counter
	aggUpserts    prometheus.Counter
	compactedRows prometheus.Counter
	appendSeconds prometheus.Histogram
	collectors    []prometheus.Collector
}

func newMetrics(s *Store) *metrics {
	m := &metrics{
		rowsWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_postgres_rows_written_total",
			Help: "Raw sample rows inserted into PostgreSQL.",
		}),
		rowsDuplicate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_postgres_rows_duplicate_total",
			Help: "Sample rows not inserted because a row with their machine, metric and time was stored.",
		}),
		spooledRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_postgres_spooled_rows_total",
			Help: "Sample rows written to the outage spool.",
		}),
		replayedRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_postgres_replayed_rows_total",
			Help: "Sample rows replayed from the outage spool.",
		}),
		aggUpserts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_postgres_aggregate_upserts_total",
			Help: "Aggregate rows inserted or merged.",
		}),
		compactedRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_postgres_compacted_rows_total",
			Help: "Head sample rows packed into chunks by compaction (packed layout).",
		}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_postgres_append_seconds",
			Help:    "Latency of Append, until commit or spool.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	m.collectors = []prometheus.Collector{
		m.rowsWritten, m.rowsDuplicate, m.spooledRows, m.replayedRows, m.aggUpserts, m.compactedRows, m.appendSeconds,
		gauge("twinline_postgres_spool_bytes", "Bytes in the outage spool.", func() float64 {
			if s.spool == nil {
				return 0
			}
			return float64(s.spool.size())
		}),
		gauge("twinline_postgres_unreachable", "1 while the last write found PostgreSQL unreachable.", func() float64 {
			if s.unreachable.Load() {
				return 1
			}
			return 0
		}),
		gauge("twinline_postgres_pool_acquired_conns", "Connections in use.", func() float64 {
			return float64(s.pool.Stat().AcquiredConns())
		}),
		gauge("twinline_postgres_pool_idle_conns", "Idle connections.", func() float64 {
			return float64(s.pool.Stat().IdleConns())
		}),
		gauge("twinline_postgres_pool_total_conns", "Open connections.", func() float64 {
			return float64(s.pool.Stat().TotalConns())
		}),
		gauge("twinline_postgres_pool_max_conns", "Maximum pool size.", func() float64 {
			return float64(s.pool.Stat().MaxConns())
		}),
		// pgxpool's count only grows (the pool lives as long as the
		// store): a counter, so rate() works on it. It was a gauge under
		// the same name until promlint caught the _total suffix.
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "twinline_postgres_pool_empty_acquire_total",
			Help: "Acquires that waited for a connection because the pool was empty.",
		}, func() float64 {
			return float64(s.pool.Stat().EmptyAcquireCount())
		}),
	}
	return m
}

func (m *metrics) register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
