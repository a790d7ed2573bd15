package app

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/pipeline"
	"github.com/twinline/twinline/internal/telemetry"
)

// The legs of sensor → screen, twinline_leg_seconds{leg}: each part
// observes its own (see docs/operations.md).
const (
	legIngestAck    = "ingest_ack"    // the gateway took a batch → the log acknowledged its append
	legLogWait      = "log_wait"      // the gateway took it → the processor read it
	legEngine       = "engine"        // the event-time engine's work on one lane group
	legStoreCommit  = "store_commit"  // one durable commit
	legPublishWrite = "publish_write" // the hub took a message → written to a client
)

// legs is twinline_leg_seconds, each leg's series made at once so that
// every one shows in /metrics from the start.
type legs struct{ vec *prometheus.HistogramVec }

func newLegs(reg prometheus.Registerer) legs {
	vec := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "twinline_leg_seconds",
		Help:    "Latency of each leg of sensor to screen, by leg: ingest_ack, log_wait, engine, store_commit, publish_write.",
		Buckets: telemetry.LatencyBuckets(),
	}, []string{"leg"})
	for _, l := range []string{legIngestAck, legLogWait, legEngine, legStoreCommit, legPublishWrite} {
		vec.WithLabelValues(l)
	}
	reg.MustRegister(vec)
	return legs{vec}
}

func (l legs) leg(name string) prometheus.Observer { return l.vec.WithLabelValues(name) }

// processor returns the processor's legs.
func (l legs) processor() pipeline.Legs {
	return pipeline.Legs{LogWait: l.leg(legLogWait), Engine: l.leg(legEngine), StoreCommit: l.leg(legStoreCommit)}
}

// observeSince observes in o the seconds since b was received (its
// ingest time, Unix ms), with b's trace as the exemplar when it is
// sampled.
func observeSince(o prometheus.Observer, b *telemetry.Batch) {
	v := float64(max(time.Now().UnixMilli()-b.Received, 0)) / 1e3
	if eo, ok := o.(prometheus.ExemplarObserver); ok && b.Trace.IsSampled() {
		eo.ObserveWithExemplar(v, prometheus.Labels{"trace_id": b.Trace.TraceID().String()})
		return
	}
	o.Observe(v)
}
