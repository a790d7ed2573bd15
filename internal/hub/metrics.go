package hub

import "github.com/prometheus/client_golang/prometheus"

// Transports, the transport label of the metrics.
const (
	transportWS  = "ws"
	transportSSE = "sse"
)

type metrics struct {
	clients   *prometheus.GaugeVec
	sent      *prometheus.CounterVec
	sentWS    prometheus.Counter
	sentSSE   prometheus.Counter
	dropped   *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	published struct {
		samples prometheus.Counter
		events  prometheus.Counter
	}
	publishDuration prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "twinline_stream_clients",
			Help: "Connected stream clients by transport (ws, sse).",
		}, []string{"transport"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_stream_messages_sent_total",
			Help: "Messages written to stream clients by transport (ws, sse), control messages included.",
		}, []string{"transport"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_stream_clients_dropped_total",
			Help: "Stream clients cut off by the hub by reason (slow_client, write_error, shutdown).",
		}, []string{"reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "twinline_stream_rejected_total",
			Help: "Stream requests refused by reason (bad_request, max_clients, shutting_down).",
		}, []string{"reason"}),
		publishDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_stream_publish_duration_seconds",
			Help:    "Time to encode and enqueue one publish call for every subscriber.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10), // 1µs … 262ms
		}),
	}
	published := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "twinline_stream_messages_published_total",
		Help: "Messages published to the stream by kind (samples, event); one samples message per machine per publish.",
	}, []string{"kind"})
	m.published.samples = published.WithLabelValues("samples")
	m.published.events = published.WithLabelValues("event")
	m.sentWS = m.sent.WithLabelValues(transportWS)
	m.sentSSE = m.sent.WithLabelValues(transportSSE)
	for _, t := range []string{transportWS, transportSSE} {
		m.clients.WithLabelValues(t)
	}
	for _, r := range []string{reasonSlowClient, reasonWriteError, reasonShutdown} {
		m.dropped.WithLabelValues(r)
	}
	for _, r := range []string{rejectBadRequest, rejectMaxClients, rejectShuttingDown} {
		m.rejected.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.sent, m.dropped, m.rejected, published, m.publishDuration)
	}
	return m
}
