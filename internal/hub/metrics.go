package hub

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/telemetry"
)

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
	// delivery is twinline_stream_delivery_seconds; publishWrite the
	// publish_write leg (Options.PublishWrite), or nil.
	delivery     prometheus.Histogram
	publishWrite prometheus.Observer
	busUp        prometheus.Gauge
	busErrors    prometheus.Counter
	busGaps      prometheus.Counter
	busStale     prometheus.Counter
	busLocal     prometheus.Counter
}

// newMetrics makes the hub's metrics and registers them on reg unless it is
// nil; those of the cross-replica fan-out only if fanout. publishWrite, if
// not nil, observes the publish_write leg.
func newMetrics(reg prometheus.Registerer, fanout bool, publishWrite prometheus.Observer) *metrics {
	m := &metrics{
		publishWrite: publishWrite,
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_stream_delivery_seconds",
			Help:    "Time from the server's ingest of a batch (a samples message's ingestTs) to the end of the message's write to a stream client: the server's share of sensor to screen, per written samples message (ms resolution).",
			Buckets: telemetry.LatencyBuckets(), // as the legs'
		}),
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
			Help: "Stream requests refused by reason (bad_request, max_clients, max_per_client, shutting_down).",
		}, []string{"reason"}),
		publishDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "twinline_stream_publish_duration_seconds",
			Help:    "Time to encode and enqueue one publish call for every subscriber.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10), // 1µs … 262ms
		}),
	}
	m.busUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "twinline_stream_fanout_up",
		Help: "1 while the hub is subscribed to the cross-replica fan-out in Redis, else 0 (also without Redis).",
	})
	m.busErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_stream_fanout_errors_total",
		Help: "Failures of the cross-replica fan-out: publishes, subscriptions and undecodable messages.",
	})
	m.busGaps = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_stream_fanout_resets_total",
		Help: "Replay ring resets because the global sequence jumped (messages lost while Redis was unreachable).",
	})
	m.busStale = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_stream_fanout_stale_total",
		Help: "Messages from Redis dropped because this replica had passed their seq (during a recovery).",
	})
	m.busLocal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_stream_fanout_local_total",
		Help: "Messages delivered to this replica's clients only, because the cross-replica fan-out was down.",
	})
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
	for _, r := range []string{rejectBadRequest, rejectMaxClients, rejectMaxPerClient, rejectShuttingDown} {
		m.rejected.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.sent, m.dropped, m.rejected, published, m.publishDuration, m.delivery)
		if fanout {
			reg.MustRegister(m.busUp, m.busErrors, m.busGaps, m.busStale, m.busLocal)
		}
	}
	return m
}

// delivered observes the delivery of live messages written to a client at
// now (Hub.now): the server's share of sensor to screen for each samples
// message, and the publish_write leg for each message. One clock read per
// write, no allocation.
func (m *metrics) delivered(now int64, msgs []*message) {
	var wall int64 // Unix ms, read once a samples message needs it
	for _, x := range msgs {
		if x.ingest > 0 {
			if wall == 0 {
				wall = time.Now().UnixMilli()
			}
			v := float64(max(wall-x.ingest, 0)) / 1e3
			if x.trace != "" {
				// A traced message: its trace is the histogram's exemplar
				// (OpenMetrics), a click from the latency panel to the trace.
				m.delivery.(prometheus.ExemplarObserver).ObserveWithExemplar(v, prometheus.Labels{"trace_id": x.trace})
			} else {
				m.delivery.Observe(v)
			}
		}
		if m.publishWrite != nil && x.at > 0 {
			m.publishWrite.Observe(float64(max(now-x.at, 0)) / 1e9)
		}
	}
}
