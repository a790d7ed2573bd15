package mqtt

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the counters of one source ("broker" or "subscriber"); both
// may share a registry, told apart by the source label.
type metrics struct {
	received prometheus.Counter
	accepted prometheus.Counter
	rejected *prometheus.CounterVec // by reason
	events   *prometheus.CounterVec // by outcome: accepted, duplicate, rejected
	submit   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, source string) (*metrics, error) {
	labels := prometheus.Labels{"source": source}
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_mqtt_messages_received_total", ConstLabels: labels,
			Help: "MQTT messages received on telemetry topics.",
		}),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_mqtt_messages_accepted_total", ConstLabels: labels,
			Help: "MQTT messages whose events are durable (and were acknowledged, for QoS 1).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_mqtt_messages_rejected_total", ConstLabels: labels,
			Help: "MQTT messages not accepted, by reason: topic, payload, machine, not_authorized, unprocessable (dropped); busy, error, shutdown (sent again).",
		}, []string{"reason"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_mqtt_events_total", ConstLabels: labels,
			Help: "Events in MQTT messages, by outcome: accepted, duplicate, rejected.",
		}, []string{"outcome"}),
		submit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "twinline_mqtt_submit_duration_seconds", ConstLabels: labels,
			Help:    "Time from handing an MQTT message's events to the log until they are durable.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	for _, r := range allReasons {
		m.rejected.WithLabelValues(r)
	}
	for _, o := range []string{"accepted", "duplicate", "rejected"} {
		m.events.WithLabelValues(o)
	}
	if err := register(reg, m.received, m.accepted, m.rejected, m.events, m.submit); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers cs with reg (nil: not exported).
func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("registering mqtt metrics: %w", err)
	}
	return nil
}
