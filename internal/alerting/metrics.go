package alerting

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts deliveries; one value serves both targets.
type Metrics struct {
	notifications *prometheus.CounterVec
}

// NewMetrics registers the delivery counters with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_alert_notifications_total",
			Help: "Alarm notifications by target (alertmanager, webhook) and outcome (delivered, retry, failed, dropped).",
		}, []string{"target", "outcome"}),
	}
	for _, t := range []string{targetAlertmanager, targetWebhook} {
		for _, o := range []string{outcomeDelivered, outcomeRetry, outcomeFailed} {
			m.notifications.WithLabelValues(t, o)
		}
	}
	m.notifications.WithLabelValues(targetWebhook, outcomeDropped)
	if reg != nil {
		reg.MustRegister(m.notifications)
	}
	return m
}

const (
	targetAlertmanager = "alertmanager"
	targetWebhook      = "webhook"

	outcomeDelivered = "delivered"
	outcomeRetry     = "retry"
	outcomeFailed    = "failed"
	outcomeDropped   = "dropped"
)

func (m *Metrics) count(target, outcome string, n int) {
	if m != nil && n > 0 {
		m.notifications.WithLabelValues(target, outcome).Add(float64(n))
	}
}
