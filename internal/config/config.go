// Package config holds twinline's typed configuration: defaults, and
// validation that reports every problem at once. Flags and environment
// variables are mapped onto it in cmd/twinline; no other package reads them.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/hot"
	"github.com/twinline/twinline/internal/sim"
	"github.com/twinline/twinline/internal/stream"
)

// Config is the whole configuration of `twinline serve`.
type Config struct {
	// Listen is the HTTP listen address.
	Listen string
	// DataDir holds the embedded store and the machine registry.
	DataDir string
	// Demo runs the fleet simulator in-process.
	Demo         bool
	DemoMachines int
	DemoRate     float64

	// Retention is how long samples are kept; ingest accepts events of
	// any age within it.
	Retention time.Duration
	// Retention1m and Retention1h are how long the 1 min and 1 h rollup
	// tiers are kept (docs/decisions/0031-rollups.md). Zero: the store's
	// default, max(90 days, Retention) and max(5 years, Retention1m).
	Retention1m, Retention1h time.Duration
	// OutOfOrderWindow is the backfill horizon: an event at most this far
	// behind the server clock takes the live path (live stream, twin,
	// windows, medians, alarms; a late one as a correction); an older one,
	// within Retention, is backfill: stored, and pushed nowhere (ADR 0033).
	OutOfOrderWindow time.Duration
	// MaxFuture is how far ahead of the server clock an event may be.
	MaxFuture time.Duration

	// LogCapacity bounds the in-process event log, in samples.
	LogCapacity int

	// HTTP limits.
	MaxBodyBytes         int64
	MaxDecompressedBytes int64
	MaxHeaderBytes       int
	MaxLineBytes         int
	MaxMetricsPerEvent   int
	MaxConns             int
	MaxInflightIngest    int
	ReadHeaderTimeout    time.Duration
	// ReadTimeout bounds reading one ingest request body.
	ReadTimeout time.Duration
	// ReadIdleTimeout cuts an ingest body that sends nothing for this long
	// (408).
	ReadIdleTimeout time.Duration
	// IngestMemory bounds the bytes ingest requests hold at once (bodies
	// and their decoding); 0 sizes it from the memory limit.
	IngestMemory int64
	// MaxInflightIngestPerClient bounds the ingest requests one client
	// (identity, or address) has decoded at once.
	MaxInflightIngestPerClient int
	// LPMachineTags are the line-protocol tags that carry the machine id, in
	// order of preference.
	LPMachineTags []string
	// LPMissingMachine says what becomes of a line-protocol line without
	// any of LPMachineTags: "reject" (400 naming it), "drop" (counted in
	// /metrics) or "measurement" (its measurement is the machine id).
	LPMissingMachine string

	// Live stream.
	// StreamQueue caps the messages queued for one stream client
	// (deprecated: a safety cap far above use; the queue is bounded by
	// StreamMaxQueueBytes and StreamMaxLag).
	StreamQueue     int
	StreamHeartbeat time.Duration
	StreamReplay    int
	// StreamWriteTimeout bounds one burst of writes to a stream client.
	StreamWriteTimeout time.Duration
	// StreamWriteInterval is the least time between two writes to one
	// stream client (0: write as soon as a message is queued).
	StreamWriteInterval time.Duration
	// StreamMaxQueueBytes bounds the bytes queued for one stream client,
	// and StreamMaxLag how far behind the head it may fall, before it is
	// dropped with a reconnect notice.
	StreamMaxQueueBytes int
	StreamMaxLag        time.Duration
	// StreamReplayBytes bounds the bytes of the replay ring (with
	// StreamReplay, its messages).
	StreamReplayBytes int

	// MaxMachines bounds the fleet: events of further new machines are
	// rejected (0: no limit).
	MaxMachines int

	// Event-time engine.
	Lateness     time.Duration
	Window       time.Duration
	WindowGrace  time.Duration
	MedianWindow int
	DedupHorizon time.Duration
	DedupMaxKeys int

	// OfflineAfter is how long a machine may be silent and still be online.
	OfflineAfter time.Duration

	// Alarm delivery (internal/alerting).
	// AlertmanagerURLs are the Alertmanagers (base URLs) the alarms are
	// posted to, as Prometheus posts its alerts (none: off).
	AlertmanagerURLs []string
	// AlertmanagerResend is how often active alarms are posted again; an
	// alert holds for four times that.
	AlertmanagerResend time.Duration
	// AlarmWebhook is the URL every alarm change is posted to, from a
	// durable outbox ("": off); AlarmWebhookSecretFile holds the key of
	// its HMAC-SHA256 signature ("": unsigned); AlarmWebhookMaxPending
	// bounds the undelivered changes.
	AlarmWebhook           string
	AlarmWebhookSecretFile string
	AlarmWebhookMaxPending int
	// ExternalURL is where users reach twinline (e.g.
	// https://twinline.example.com): the alarms' dashboard links.
	ExternalURL string

	// Store selects the storage backend: "embedded" (default) or "postgres".
	Store string
	// PostgresURL is the PostgreSQL connection string of --store postgres.
	PostgresURL string
	// PostgresStartWait is how long a start waits for an unreachable
	// PostgreSQL (a restart during an outage) before giving up.
	PostgresStartWait time.Duration
	// PostgresLayout is the PostgreSQL store's layout (postgres.Options.Layout):
	// "packed", "rows", or empty for the store's own (packed when new).
	PostgresLayout string
	// SpoolBytes bounds the local durable buffer that holds acknowledged
	// samples while PostgreSQL is unreachable; beyond it ingest answers 503.
	SpoolBytes int64

	// RedisURL enables the Redis backends (hot window, cross-replica
	// fan-out, distributed rate limits); "" runs the in-memory equivalents.
	RedisURL    string
	RedisPrefix string
	// HotWindow is how much recent history per series the hot window holds.
	HotWindow time.Duration

	// RateLimit is "auto" (on unless listening on loopback), "on" or "off".
	RateLimit string
	// IngestRate and IngestBurst limit ingest requests per client (token or
	// IP): a sustained rate per second and a burst.
	IngestRate  float64
	IngestBurst int
	// StreamRate and StreamBurst limit new stream connections per client.
	StreamRate  float64
	StreamBurst int

	// MQTTListen starts the embedded MQTT broker on this address ("": off).
	MQTTListen string
	// MQTTBroker subscribes to an external MQTT broker at this URL ("": off).
	MQTTBroker string

	// KafkaBrokers replaces the in-process log with Kafka ("": in-process).
	KafkaBrokers []string
	KafkaTopic   string
	// KafkaDesiredTopic receives every machine's desired document, keyed
	// by machine id, a tombstone when the machine is deleted (a
	// compacted topic).
	KafkaDesiredTopic string
	// KafkaGroup is the consumer group of the processors.
	KafkaGroup string
	// KafkaSessionTimeout is how long the group waits for a processor that
	// stopped heart-beating (crashed) before giving its partitions to the
	// others.
	KafkaSessionTimeout time.Duration
	// KafkaInstanceID makes the processor a static member of its consumer
	// group under this id, stable across its restarts, so a restarted
	// replica gets its partitions back at once instead of after the
	// session timeout ("": a dynamic member). Default: the host name (a
	// StatefulSet pod's name in Kubernetes).
	KafkaInstanceID string
	// KafkaTuning trades the Kafka legs' latency against their
	// throughput: the producer's linger, batch size and compression, the
	// consumer's fetch wait and sizes and records per read
	// (docs/kafka.md, Tuning).
	KafkaTuning kafka.Tuning
	// Role is the part of the platform this replica runs.
	Role Role

	// Pprof is the address of a separate net/http/pprof listener ("": off).
	Pprof string

	// Security (docs/security.md).
	//
	// Auth is "auto" (tokens required once any exists; without tokens the
	// server stays open on a loopback listener and refuses to start on any
	// other), "on" (tokens always required) or "off" (open, with a warning).
	Auth string
	// BootstrapTokenFile names a file holding a token secret from which an
	// admin token named "bootstrap" is created at start (Kubernetes Secret).
	BootstrapTokenFile string
	// TLSCert and TLSKey serve HTTPS on --listen (reloaded when they
	// change); TLSClientCA verifies device certificates (mutual TLS).
	TLSCert, TLSKey, TLSClientCA string
	// MQTTTLSListen starts the embedded broker's TLS listener ("": off).
	MQTTTLSListen string
	// AllowedHosts are the Host header values accepted (nil: the loopback
	// names and the listen address).
	AllowedHosts []string
	// TrustedProxies are the peers (CIDRs) whose X-Forwarded-For and
	// X-Forwarded-Proto are believed.
	TrustedProxies []string
	// AuthHeader names a header set by a trusted authenticating proxy that
	// carries the user ("": off); AuthHeaderScopes are that user's scopes.
	AuthHeader       string
	AuthHeaderScopes string
	// MetricsAuth is "auto" (/metrics needs read unless on loopback), "on"
	// or "off".
	MetricsAuth string
	// MaxStreamsPerClient caps the live stream connections of one identity
	// (or IP when unauthenticated).
	MaxStreamsPerClient int
	// AuditRetention is how long the audit log is kept.
	AuditRetention time.Duration
	// SessionTTL is how long a dashboard sign-in lasts.
	SessionTTL time.Duration
	// MQTTMaxRetained and MQTTMaxRetainedBytes cap the retained messages
	// one MQTT client may leave on the embedded broker.
	MQTTMaxRetained      int
	MQTTMaxRetainedBytes int
	// KafkaTLS connects to the brokers over TLS (system roots, or
	// KafkaTLSCA).
	KafkaTLS   bool
	KafkaTLSCA string

	// Tracing configures OpenTelemetry tracing (docs/observability.md).
	Tracing Tracing

	// Prometheus configures the Prometheus query API
	// (docs/prometheus-api.md).
	Prometheus Prometheus

	ShutdownTimeout time.Duration
	LogLevel        string
}

// Tracing configures OpenTelemetry tracing. Tracing is off unless an OTLP
// endpoint is given, by --otlp-endpoint or the standard
// OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT variable; the flags win over the
// OTEL_* variables, which fill what the flags leave unset.
type Tracing struct {
	// Endpoint is the OTLP collector's URL ("": the OTEL_* variables).
	Endpoint string
	// Protocol is "grpc" or "http/protobuf" ("": OTEL_EXPORTER_OTLP_PROTOCOL,
	// else http/protobuf).
	Protocol string
	// Sample is the fraction of new traces sampled, 0 to 1, parent-based
	// (a request whose traceparent says sampled is traced); negative:
	// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG decide.
	Sample float64
	// UIURL is a trace viewer's URL with {traceId} in it (e.g.
	// http://jaeger:16686/trace/{traceId}): the dashboard's latency badge
	// links there ("": no link).
	UIURL string
}

// Prometheus configures the Prometheus query API (/prometheus/api/v1/…).
type Prometheus struct {
	// Attributes are the registry attributes exposed as series labels,
	// next to site and line.
	Attributes []string
	// MaxSeries bounds the series one query or series call reads (0: no
	// bound).
	MaxSeries int
	// MaxSamples bounds the samples one query holds in memory at once.
	MaxSamples int
	// Timeout bounds one query's evaluation.
	Timeout time.Duration
}

// promLabelName is a Prometheus label name (the legacy character set,
// which Grafana's query builder expects).
var promLabelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// validatePrometheus checks the Prometheus query API's flags.
func (c Config) validatePrometheus(bad func(flag, format string, a ...any)) {
	p := c.Prometheus
	seen := map[string]bool{}
	for _, a := range p.Attributes {
		switch {
		case !promLabelName.MatchString(a) || strings.HasPrefix(a, "__"):
			bad("prometheus-attributes", "%q is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", a)
		case a == "machine" || a == "site" || a == "line":
			bad("prometheus-attributes", "%q is a label twinline sets itself", a)
		case seen[a]:
			bad("prometheus-attributes", "%q is listed twice", a)
		}
		seen[a] = true
	}
	if p.MaxSeries < 0 {
		bad("prometheus-max-series", "must be 0 (no bound) or positive, got %d", p.MaxSeries)
	}
	if p.MaxSamples < 1 {
		bad("prometheus-max-samples", "must be positive, got %d", p.MaxSamples)
	}
	if p.Timeout <= 0 {
		bad("prometheus-timeout", "must be positive, got %s", p.Timeout)
	}
}

// Default returns the embedded-defaults configuration. The defaults of
// the engine, the demo fleet and the hot window are their packages' own.
func Default() Config {
	engine := stream.DefaultEngineConfig()
	return Config{
		Listen:               "127.0.0.1:8080",
		DataDir:              "./data",
		DemoMachines:         sim.DefaultMachines,
		DemoRate:             sim.DefaultRate,
		Retention:            30 * 24 * time.Hour,
		OutOfOrderWindow:     24 * time.Hour,
		MaxFuture:            10 * time.Minute,
		LogCapacity:          1 << 20,
		MaxBodyBytes:         25 << 20,
		MaxDecompressedBytes: 100 << 20,
		MaxHeaderBytes:       64 << 10,
		MaxLineBytes:         64 << 10,
		MaxMetricsPerEvent:   256,
		MaxConns:             25000,
		MaxInflightIngest:    64,
		ReadHeaderTimeout:    10 * time.Second,
		ReadTimeout:          60 * time.Second,
		ReadIdleTimeout:      10 * time.Second,
		// IngestMemory 0: a quarter of the memory limit, else 192 MiB.
		MaxInflightIngestPerClient: 16,
		LPMachineTags:              []string{"machineId", "machine_id", "machine", "host", "name"},
		LPMissingMachine:           "reject",
		StreamQueue:                65536,
		StreamMaxQueueBytes:        8 << 20,
		StreamMaxLag:               30 * time.Second,
		StreamReplayBytes:          32 << 20,
		StreamHeartbeat:            15 * time.Second,
		StreamReplay:               8192,
		StreamWriteTimeout:         10 * time.Second,
		MaxMachines:                100_000,
		Lateness:                   engine.Lateness,
		Window:                     engine.Window,
		WindowGrace:                engine.WindowGrace,
		MedianWindow:               60,
		DedupHorizon:               engine.DedupHorizon,
		DedupMaxKeys:               engine.DedupMaxKeys,
		OfflineAfter:               30 * time.Second,
		AlertmanagerResend:         time.Minute,
		AlarmWebhookMaxPending:     100_000,
		Store:                      "embedded",
		SpoolBytes:                 1 << 30,
		RedisPrefix:                "twinline:",
		HotWindow:                  hot.DefaultWindow,
		RateLimit:                  "auto",
		IngestRate:                 200,
		IngestBurst:                400,
		StreamRate:                 5,
		StreamBurst:                50,
		KafkaTopic:                 "twinline.telemetry",
		KafkaDesiredTopic:          "twinline.desired",
		KafkaGroup:                 "twinline-processor",
		KafkaSessionTimeout:        45 * time.Second,
		KafkaInstanceID:            hostname(),
		KafkaTuning:                kafka.DefaultTuning(),
		Role:                       RoleAll,
		Auth:                       "auto",
		MetricsAuth:                "auto",
		MaxStreamsPerClient:        100,
		AuditRetention:             365 * 24 * time.Hour,
		SessionTTL:                 12 * time.Hour,
		MQTTMaxRetained:            100,
		MQTTMaxRetainedBytes:       1 << 20,
		PostgresStartWait:          2 * time.Minute,
		Tracing:                    Tracing{Sample: -1},
		Prometheus:                 Prometheus{MaxSeries: 10000, MaxSamples: 50_000_000, Timeout: 2 * time.Minute},
		ShutdownTimeout:            15 * time.Second,
		LogLevel:                   "info",
	}
}

// samePort reports whether two host:port addresses use the same port (and
// so cannot both be listened on, or one is the other).
func samePort(a, b string) bool {
	_, pa, errA := net.SplitHostPort(a)
	_, pb, errB := net.SplitHostPort(b)
	return errA == nil && errB == nil && pa == pb && pa != "0"
}

// Validate reports every problem of c at once, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, format string, a ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, a...)))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	}
	if strings.TrimSpace(c.DataDir) == "" {
		bad("data-dir", "must not be empty")
	}
	if c.Demo {
		if c.DemoMachines < 1 {
			bad("demo-machines", "must be at least 1, got %d", c.DemoMachines)
		}
		if c.DemoRate <= 0 {
			bad("demo-rate", "must be positive, got %g", c.DemoRate)
		}
	}
	if c.Retention < time.Hour {
		bad("retention", "must be at least 1h, got %s", c.Retention)
	}
	// Zero is the store's default, which follows the finer retention.
	if c.Retention1m != 0 && c.Retention1m < c.Retention {
		bad("retention-1m", "must be at least --retention (%s), got %s", c.Retention, c.Retention1m)
	}
	if c.Retention1h != 0 && c.Retention1h < max(c.Retention1m, c.Retention) {
		bad("retention-1h", "must be at least --retention-1m and --retention (%s), got %s", max(c.Retention1m, c.Retention), c.Retention1h)
	}
	if c.MaxFuture < 0 {
		bad("max-future", "must not be negative, got %s", c.MaxFuture)
	}
	// Ingest accepts event times in [now − retention + max-future,
	// now + max-future]; those older than now − window are backfill: the
	// window must leave room for the present.
	if c.OutOfOrderWindow <= c.MaxFuture || c.OutOfOrderWindow > c.Retention {
		bad("out-of-order-window", "must exceed --max-future (%s) and not exceed --retention, got %s", c.MaxFuture, c.OutOfOrderWindow)
	}
	if c.LogCapacity < 1000 {
		bad("log-capacity", "must be at least 1000 samples, got %d", c.LogCapacity)
	}
	if c.MaxBodyBytes < 1024 {
		bad("max-body-bytes", "must be at least 1024, got %d", c.MaxBodyBytes)
	}
	if c.MaxDecompressedBytes < c.MaxBodyBytes {
		bad("max-decompressed-bytes", "must be at least --max-body-bytes (%d), got %d", c.MaxBodyBytes, c.MaxDecompressedBytes)
	}
	if c.MaxHeaderBytes < 4096 {
		bad("max-header-bytes", "must be at least 4096, got %d", c.MaxHeaderBytes)
	}
	if c.MaxLineBytes < 256 {
		bad("max-line-bytes", "must be at least 256, got %d", c.MaxLineBytes)
	}
	if c.MaxMetricsPerEvent < 1 {
		bad("max-metrics-per-event", "must be at least 1, got %d", c.MaxMetricsPerEvent)
	}
	if c.MaxConns < 16 {
		bad("max-conns", "must be at least 16, got %d", c.MaxConns)
	}
	if c.MaxInflightIngest < 1 {
		bad("max-inflight-ingest", "must be at least 1, got %d", c.MaxInflightIngest)
	}
	if c.ReadHeaderTimeout <= 0 {
		bad("read-header-timeout", "must be positive, got %s", c.ReadHeaderTimeout)
	}
	if c.ReadTimeout <= 0 {
		bad("read-timeout", "must be positive, got %s", c.ReadTimeout)
	}
	if c.ReadIdleTimeout <= 0 {
		bad("read-idle-timeout", "must be positive, got %s", c.ReadIdleTimeout)
	}
	if c.IngestMemory != 0 && c.IngestMemory < 16<<20 {
		bad("ingest-memory", "must be 0 (from the memory limit) or at least 16 MiB, got %d", c.IngestMemory)
	}
	if c.MaxInflightIngestPerClient < 1 {
		bad("max-inflight-ingest-per-client", "must be at least 1, got %d", c.MaxInflightIngestPerClient)
	}
	if len(c.LPMachineTags) == 0 {
		bad("lp-machine-tags", "must name at least one tag")
	}
	for _, t := range c.LPMachineTags {
		if strings.TrimSpace(t) == "" {
			bad("lp-machine-tags", "contains an empty tag name")
			break
		}
	}
	switch c.LPMissingMachine {
	case "reject", "drop", "measurement":
	default:
		bad("lp-missing-machine", "must be reject, drop or measurement, got %q", c.LPMissingMachine)
	}
	if c.StreamQueue < 8 {
		bad("stream-queue", "must be at least 8 messages, got %d", c.StreamQueue)
	}
	if c.StreamHeartbeat < 100*time.Millisecond {
		bad("stream-heartbeat", "must be at least 100ms, got %s", c.StreamHeartbeat)
	}
	if c.StreamWriteTimeout < 100*time.Millisecond {
		bad("stream-write-timeout", "must be at least 100ms, got %s", c.StreamWriteTimeout)
	}
	if c.StreamWriteInterval < 0 || c.StreamWriteInterval > 5*time.Second {
		bad("stream-write-interval", "must be between 0 and 5s, got %s", c.StreamWriteInterval)
	}
	if c.StreamMaxQueueBytes < 64<<10 {
		bad("stream-max-queue-bytes", "must be at least 64 KiB, got %d", c.StreamMaxQueueBytes)
	}
	if c.StreamMaxLag < time.Second {
		bad("stream-max-lag", "must be at least 1s, got %s", c.StreamMaxLag)
	}
	if c.StreamReplayBytes < 0 {
		bad("stream-replay-bytes", "must not be negative, got %d", c.StreamReplayBytes)
	}
	if c.StreamReplay < 0 {
		bad("stream-replay", "must not be negative, got %d", c.StreamReplay)
	}
	if c.Lateness < 0 {
		bad("lateness", "must not be negative, got %s", c.Lateness)
	}
	if c.Window < time.Second || c.Window > time.Hour {
		bad("window", "must be between 1s and 1h, got %s", c.Window)
	}
	if c.WindowGrace < 0 {
		bad("window-grace", "must not be negative, got %s", c.WindowGrace)
	}
	if c.MedianWindow < 1 || c.MedianWindow > 100_000 {
		bad("median-window", "must be between 1 and 100000 samples, got %d", c.MedianWindow)
	}
	if c.DedupHorizon < 0 {
		bad("dedup-horizon", "must not be negative, got %s", c.DedupHorizon)
	}
	if c.DedupMaxKeys < 1000 {
		bad("dedup-max-keys", "must be at least 1000, got %d", c.DedupMaxKeys)
	}
	if c.MaxMachines < 0 {
		bad("max-machines", "must not be negative, got %d", c.MaxMachines)
	}
	for _, u := range c.AlertmanagerURLs {
		if !httpURL(u) {
			bad("alertmanager-url", "%q is not an http or https URL", redactURL(u))
		}
	}
	if c.AlertmanagerResend < time.Second {
		bad("alertmanager-resend", "must be at least 1s, got %s", c.AlertmanagerResend)
	}
	if c.AlarmWebhook != "" && !httpURL(c.AlarmWebhook) {
		bad("alarm-webhook", "%q is not an http or https URL", redactURL(c.AlarmWebhook))
	}
	if c.AlarmWebhookSecretFile != "" && c.AlarmWebhook == "" {
		bad("alarm-webhook-secret-file", "needs --alarm-webhook")
	}
	if c.AlarmWebhookMaxPending < 1 {
		bad("alarm-webhook-max-pending", "must be at least 1, got %d", c.AlarmWebhookMaxPending)
	}
	if c.ExternalURL != "" && !httpURL(c.ExternalURL) {
		bad("external-url", "%q is not an http or https URL", c.ExternalURL)
	}
	if c.OfflineAfter <= 0 {
		bad("offline-after", "must be positive, got %s", c.OfflineAfter)
	}
	switch c.Store {
	case "embedded":
	case "postgres":
		if strings.TrimSpace(c.PostgresURL) == "" {
			bad("postgres-url", "is required with --store postgres")
		}
	default:
		bad("store", "must be embedded or postgres, got %q", c.Store)
	}
	switch c.PostgresLayout {
	case "", "packed", "rows":
	default:
		bad("postgres-layout", "must be packed or rows, got %q", c.PostgresLayout)
	}
	if c.SpoolBytes < 1<<20 {
		bad("spool-bytes", "must be at least 1MiB, got %d", c.SpoolBytes)
	}
	if c.RedisURL != "" && strings.TrimSpace(c.RedisPrefix) == "" {
		bad("redis-prefix", "must not be empty with --redis-url")
	}
	if c.HotWindow < time.Second {
		bad("hot-window", "must be at least 1s, got %s", c.HotWindow)
	}
	switch c.RateLimit {
	case "auto", "on", "off":
	default:
		bad("rate-limit", "must be auto, on or off, got %q", c.RateLimit)
	}
	if c.IngestRate <= 0 || c.IngestBurst < 1 {
		bad("ingest-rate", "rate must be positive and burst at least 1, got %g and %d", c.IngestRate, c.IngestBurst)
	}
	if c.StreamRate <= 0 || c.StreamBurst < 1 {
		bad("stream-rate", "rate must be positive and burst at least 1, got %g and %d", c.StreamRate, c.StreamBurst)
	}
	if c.MQTTListen != "" {
		if _, _, err := net.SplitHostPort(c.MQTTListen); err != nil {
			bad("mqtt-listen", "%q is not host:port", c.MQTTListen)
		}
	}
	kafka := len(c.KafkaBrokers) > 0
	if kafka && strings.TrimSpace(c.KafkaDesiredTopic) == "" {
		bad("kafka-desired-topic", "must not be empty")
	}
	if kafka && (strings.TrimSpace(c.KafkaTopic) == "" || strings.TrimSpace(c.KafkaGroup) == "") {
		bad("kafka-topic", "--kafka-topic and --kafka-group must not be empty with --kafka-brokers")
	}
	if c.KafkaInstanceID != "" && !validInstanceID(c.KafkaInstanceID) {
		bad("kafka-instance-id", "%q is not a Kafka group instance id: at most 249 of [a-zA-Z0-9._-]", c.KafkaInstanceID)
	}
	if c.KafkaSessionTimeout < 6*time.Second || c.KafkaSessionTimeout > 30*time.Minute {
		bad("kafka-session-timeout", "must be between 6s and 30m (the brokers' group session bounds), got %s", c.KafkaSessionTimeout)
	}
	c.validateKafkaTuning(bad)
	c.validatePrometheus(bad)
	switch c.Role {
	case RoleAll:
		if kafka && c.Store != "postgres" {
			bad("kafka-brokers", "needs --store postgres: processors store samples and Kafka offsets in one PostgreSQL transaction")
		}
	case RoleGateway:
		if !kafka {
			bad("role", "gateway needs --kafka-brokers: it writes ingested events to Kafka")
		}
	case RoleProcessor:
		if !kafka || c.Store != "postgres" || c.RedisURL == "" {
			bad("role", "processor needs --kafka-brokers, --store postgres and --redis-url (its live messages reach the api replicas through Redis)")
		}
	case RoleAPI:
		if c.Store != "postgres" || c.RedisURL == "" {
			bad("role", "api needs --store postgres (the history it serves) and --redis-url (the live messages of the processors)")
		}
	default:
		bad("role", "must be all, gateway, processor or api, got %q", c.Role)
	}
	if !c.Role.Ingests() {
		if c.Demo {
			bad("demo", "needs a role that takes ingest (all or gateway), not %s", c.Role)
		}
		if c.MQTTListen != "" || c.MQTTTLSListen != "" || c.MQTTBroker != "" {
			bad("role", "%s takes no ingest: --mqtt-listen, --mqtt-tls-listen and --mqtt-broker belong on all or gateway", c.Role)
		}
	}
	if c.Pprof != "" {
		if _, _, err := net.SplitHostPort(c.Pprof); err != nil {
			bad("pprof", "%q is not host:port", c.Pprof)
		} else if samePort(c.Pprof, c.Listen) {
			bad("pprof", "must use another port than --listen: profiles are never served on the public listener")
		}
	}
	c.validateSecurity(bad)
	if c.ShutdownTimeout <= 0 {
		bad("shutdown-timeout", "must be positive, got %s", c.ShutdownTimeout)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	return errors.Join(errs...)
}

// Loopback reports whether addr (host:port) listens on loopback only.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

func (c Config) validateSecurity(bad func(flag, format string, a ...any)) {
	switch c.Auth {
	case "auto", "on", "off":
	default:
		bad("auth", "must be auto, on or off, got %q", c.Auth)
	}
	switch c.MetricsAuth {
	case "auto", "on", "off":
	default:
		bad("metrics-auth", "must be auto, on or off, got %q", c.MetricsAuth)
	}
	switch c.Tracing.Protocol {
	case "", "grpc", "http/protobuf":
	default:
		bad("otlp-protocol", "must be grpc or http/protobuf, got %q", c.Tracing.Protocol)
	}
	if c.Tracing.Sample > 1 {
		bad("trace-sample", "must be at most 1 (a fraction of traces), got %g", c.Tracing.Sample)
	}
	if c.Tracing.UIURL != "" && !strings.Contains(c.Tracing.UIURL, "{traceId}") {
		bad("trace-ui-url", "must contain {traceId}, got %q", c.Tracing.UIURL)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls-cert", "--tls-cert and --tls-key go together")
	}
	if c.TLSClientCA != "" && c.TLSCert == "" && c.MQTTTLSListen == "" {
		bad("tls-client-ca", "needs --tls-cert (HTTPS) or --mqtt-tls-listen: client certificates are asked for on a TLS listener")
	}
	if c.MQTTTLSListen != "" {
		if _, _, err := net.SplitHostPort(c.MQTTTLSListen); err != nil {
			bad("mqtt-tls-listen", "%q is not host:port", c.MQTTTLSListen)
		}
		if c.TLSCert == "" {
			bad("mqtt-tls-listen", "needs --tls-cert and --tls-key (the broker serves the same certificate)")
		}
	}
	for _, h := range c.AllowedHosts {
		if strings.TrimSpace(h) == "" || strings.ContainsAny(h, "/ ") {
			bad("allowed-hosts", "%q is not a host name or host:port", h)
		}
	}
	for _, p := range c.TrustedProxies {
		if _, _, err := net.ParseCIDR(p); err != nil && net.ParseIP(p) == nil {
			bad("trusted-proxies", "%q is not an IP address or CIDR", p)
		}
	}
	if c.AuthHeader != "" {
		if len(c.TrustedProxies) == 0 {
			bad("auth-header", "needs --trusted-proxies: the header is believed only from the proxy that sets it")
		}
		if strings.TrimSpace(c.AuthHeaderScopes) == "" {
			bad("auth-header-scopes", "is required with --auth-header (e.g. read,operate)")
		} else if _, err := auth.ParseScopes(c.AuthHeaderScopes); err != nil {
			bad("auth-header-scopes", "%v", err)
		}
	}
	if c.KafkaTLSCA != "" && !c.KafkaTLS {
		bad("kafka-tls-ca", "needs --kafka-tls")
	}
	if c.MaxStreamsPerClient < 1 {
		bad("max-streams-per-client", "must be at least 1, got %d", c.MaxStreamsPerClient)
	}
	if c.AuditRetention < 24*time.Hour {
		bad("audit-retention", "must be at least 1d, got %s", c.AuditRetention)
	}
	if c.SessionTTL < time.Minute || c.SessionTTL > 30*24*time.Hour {
		bad("session-ttl", "must be between 1m and 30d, got %s", c.SessionTTL)
	}
	if c.MQTTMaxRetained < 0 || c.MQTTMaxRetainedBytes < 0 {
		bad("mqtt-max-retained", "must not be negative")
	}
}

// validateKafkaTuning checks the Kafka tuning flags against what franz-go
// and the brokers accept.
func (c Config) validateKafkaTuning(bad func(flag, format string, a ...any)) {
	t := c.KafkaTuning
	if t.Linger < 0 || t.Linger > time.Second {
		bad("kafka-linger", "must be between 0 and 1s, got %s", t.Linger)
	}
	// franz-go's bounds of a record batch.
	if t.BatchMaxBytes < 512 || t.BatchMaxBytes > 1<<30 {
		bad("kafka-batch-max-bytes", "must be between 512 and 1 GiB, got %d", t.BatchMaxBytes)
	}
	if !slices.Contains(kafka.Compressions, t.Compression) {
		bad("kafka-compression", "must be one of %s, got %q", strings.Join(kafka.Compressions, ", "), t.Compression)
	}
	if t.FetchMaxWait < 10*time.Millisecond || t.FetchMaxWait > 30*time.Second {
		bad("kafka-fetch-max-wait", "must be between 10ms and 30s, got %s", t.FetchMaxWait)
	}
	if t.FetchMaxBytes < 1<<10 || t.FetchMaxBytes > 1<<30 {
		bad("kafka-fetch-max-bytes", "must be between 1 KiB and 1 GiB, got %d", t.FetchMaxBytes)
	}
	if t.FetchMinBytes < 1 || t.FetchMinBytes > t.FetchMaxBytes {
		bad("kafka-fetch-min-bytes", "must be between 1 and --kafka-fetch-max-bytes (%d), got %d", t.FetchMaxBytes, t.FetchMinBytes)
	}
	if t.FetchMaxPartitionBytes < 1<<10 || t.FetchMaxPartitionBytes > t.FetchMaxBytes {
		bad("kafka-fetch-max-partition-bytes", "must be between 1 KiB and --kafka-fetch-max-bytes (%d), got %d", t.FetchMaxBytes, t.FetchMaxPartitionBytes)
	}
	if t.MaxPollRecords < 1 || t.MaxPollRecords > 1<<20 {
		bad("kafka-max-poll-records", "must be between 1 and 1048576, got %d", t.MaxPollRecords)
	}
}

// hostname returns the host name as a Kafka group instance id: "" when it
// is unknown or is not one.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || !validInstanceID(h) {
		return ""
	}
	return h
}

// validInstanceID reports whether id is a valid Kafka group instance id:
// the brokers take the characters and length of a topic name.
func validInstanceID(id string) bool {
	if id == "" || len(id) > 249 || id == "." || id == ".." {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// httpURL reports whether s is an absolute http or https URL.
func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// redactURL hides a URL's password, for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
