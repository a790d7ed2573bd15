// Package telemetry holds twinline's domain types: the events machines send,
// the samples they become, and the batches that flow from ingest to the sinks.
package telemetry

import "go.opentelemetry.io/otel/trace"

// Event is one message from one machine: a set of metric values observed at
// one event time. Decoders produce events; the engine turns them into samples.
type Event struct {
	// Machine is the machine id (required, non-empty).
	Machine string
	// ID is an optional idempotency key chosen by the sender.
	ID string
	// Seq is an optional per-machine sequence number; HasSeq says it was set.
	Seq    uint64
	HasSeq bool
	// Time is the event time in Unix milliseconds.
	Time int64
	// Metrics holds the numeric values carried by the event.
	Metrics []Metric
	// States holds the string values carried by the event ("state":
	// "RUNNING", "part": "A-1183"): each is a state series of the
	// machine, stored as its changes.
	States []State
	// Tags are optional string labels sent with the event. They are passed
	// through to the registry; they are not part of a series' identity.
	Tags map[string]string
}

// Metric is one named numeric value of an event.
type Metric struct {
	Name  string
	Value float64
}

// State is one named string value of an event: a machine's mode, the
// part it makes.
type State struct {
	Name  string
	Value string
}

// Sample is one value of one metric of one machine at one event time: the
// unit the store keeps and the stream delivers.
type Sample struct {
	Machine string
	Metric  string
	// Time is the event time in Unix milliseconds.
	Time  int64
	Value float64
}

// Batch is what one ingest request (or one MQTT/Kafka message) hands to the
// log: events decoded together, and the moment the server received them.
type Batch struct {
	Events []Event
	// Protocol names the ingest path ("json", "lineprotocol", "mqtt", "kafka", "demo").
	Protocol string
	// Received is the server's ingest time in Unix milliseconds.
	Received int64
	// Trace is the span context of the sampled trace the batch belongs
	// to (the span that took it in: an ingest request's, an MQTT
	// message's, a Kafka record's producer span), which the next hop
	// continues; the zero value when it is not traced.
	Trace trace.SpanContext
}

// NumSamples returns the number of samples the batch will produce.
func (b *Batch) NumSamples() int {
	n := 0
	for i := range b.Events {
		n += len(b.Events[i].Metrics)
	}
	return n
}

// Limits bounds what one event may carry. Decoders enforce them.
type Limits struct {
	// MaxMetricsPerEvent caps the number of metrics one event may carry.
	MaxMetricsPerEvent int
	// MaxMachineIDLen caps the length of a machine id, in bytes.
	MaxMachineIDLen int
	// MaxMetricNameLen caps the length of a metric name, in bytes.
	MaxMetricNameLen int
}

// DefaultLimits returns the limits used when none are configured.
func DefaultLimits() Limits {
	return Limits{MaxMetricsPerEvent: 256, MaxMachineIDLen: 128, MaxMetricNameLen: 128}
}

// LatencyBuckets are the buckets (seconds) of the latency histograms of
// sensor → screen (twinline_ingest_durable_seconds, twinline_leg_seconds,
// twinline_stream_delivery_seconds): 0.5 ms to 30 s in 1-2.5-5 steps, with
// the bounds the SLOs of deploy/prometheus select (0.25 s, 1 s, and the
// brief's 3 s budget) among them. A new slice each call.
func LatencyBuckets() []float64 {
	return []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 3, 5, 10, 30}
}
