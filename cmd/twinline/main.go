// Command twinline is the twinline binary: the platform (serve), a fleet
// simulator (simulate) and its version. Flags become a config.Config here;
// every flag also reads from TWINLINE_<FLAG>.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel"

	"github.com/twinline/twinline/internal/app"
	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/memlimit"
	"github.com/twinline/twinline/internal/sim"
	"github.com/twinline/twinline/internal/store/postgres"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, stop catching: a second one kills at once.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "twinline:", err)
		os.Exit(1)
	}
}

const usage = `twinline — real-time digital-twin telemetry for manufacturing

Usage:
  twinline serve [flags]      run the platform (see: twinline serve -h)
  twinline simulate [flags]   send a simulated fleet to a running server
  twinline bench [flags]      measure ingest, latency, fan-out and queries (see: twinline bench -h)
  twinline migrate [flags]    apply the PostgreSQL schema migrations (also done by serve --store postgres)
  twinline token create|list|revoke   manage API tokens (see: twinline token help)
  twinline privacy erase --author NAME  replace a person's name in notes, alarm acks and the audit log
  twinline version            print the version

Every flag also reads from TWINLINE_<FLAG> (upper case, - becomes _),
e.g. TWINLINE_DATA_DIR=/var/lib/twinline.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "simulate":
		return simulate(ctx, args[1:], stdout, stderr)
	case "bench":
		return bench(ctx, args[1:], stdout, stderr)
	case "migrate":
		return migrate(ctx, args[1:], stdout, stderr)
	case "token":
		return token(ctx, args[1:], stdout, stderr)
	case "privacy":
		return privacy(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "twinline", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("twinline serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	serveFlags(fs, &cfg)
	if err := parse(fs, args); err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.LogLevel)
	setMemoryLimit(logger, cfg.IngestMemory)
	// The OpenTelemetry SDK reports failed exports through its global
	// handler (the process's own, like the memory limit): as log lines.
	otelLog := logger.With("component", "tracing")
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { otelLog.Warn("opentelemetry", "err", err) }))
	a, err := app.New(ctx, cfg, logger, buildVersion())
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// serveFlags defines the flags of `twinline serve` on fs, bound to cfg, with
// cfg's values as defaults. `twinline bench` reuses them for the server it
// starts itself.
func serveFlags(fs *flag.FlagSet, cfg *config.Config) {
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "HTTP listen `address` (loopback by default; 0.0.0.0:8080 to expose)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "`directory` of the embedded store and the machine registry")
	fs.BoolVar(&cfg.Demo, "demo", cfg.Demo, "run the fleet simulator in-process, so the dashboard shows live data at once")
	fs.IntVar(&cfg.DemoMachines, "demo-machines", cfg.DemoMachines, "machines simulated by --demo")
	fs.Float64Var(&cfg.DemoRate, "demo-rate", cfg.DemoRate, "events per second sent by --demo, across the fleet")
	durationVar(fs, &cfg.Retention, "retention", "how long samples are kept (e.g. 30d, 12h)")
	durationVar(fs, &cfg.Retention1m, "retention-1m", "how long the 1 min rollup tier is kept (at least --retention; default max(90d, --retention))")
	durationVar(fs, &cfg.Retention1h, "retention-1h", "how long the 1 h rollup tier is kept (at least --retention-1m; default max(1825d, the 1 min tier's))")
	durationVar(fs, &cfg.OutOfOrderWindow, "out-of-order-window", "the backfill horizon: events older than this behind the server clock (within --retention) are stored without going to the live stream, the twin or the alarms")
	durationVar(fs, &cfg.MaxFuture, "max-future", "how far ahead of the server clock an event time may be")
	fs.IntVar(&cfg.LogCapacity, "log-capacity", cfg.LogCapacity, "capacity of the in-process event log in `samples`; when full, ingest answers 503")
	fs.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", cfg.MaxBodyBytes, "largest request body as sent (compressed)")
	fs.Int64Var(&cfg.MaxDecompressedBytes, "max-decompressed-bytes", cfg.MaxDecompressedBytes, "largest request body after decompression")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", cfg.MaxHeaderBytes, "largest request header block (431 beyond)")
	fs.IntVar(&cfg.MaxLineBytes, "max-line-bytes", cfg.MaxLineBytes, "longest NDJSON or line-protocol line")
	fs.IntVar(&cfg.MaxMetricsPerEvent, "max-metrics-per-event", cfg.MaxMetricsPerEvent, "most metrics one event may carry")
	fs.IntVar(&cfg.MaxConns, "max-conns", cfg.MaxConns, "most simultaneous TCP connections (stream clients included)")
	fs.IntVar(&cfg.MaxInflightIngest, "max-inflight-ingest", cfg.MaxInflightIngest, "most ingest requests read and decoded at once (503 beyond)")
	durationVar(fs, &cfg.ReadHeaderTimeout, "read-header-timeout", "time allowed to read request headers")
	durationVar(fs, &cfg.ReadTimeout, "read-timeout", "time allowed to read one ingest request body")
	durationVar(fs, &cfg.ReadIdleTimeout, "read-idle-timeout", "an ingest body that sends nothing for this long is cut off with 408")
	fs.Int64Var(&cfg.IngestMemory, "ingest-memory", cfg.IngestMemory, "`bytes` ingest requests may hold at once (bodies and decoding); beyond, requests wait up to 1s, then 503 (0: a quarter of the memory limit, else 192 MiB)")
	fs.IntVar(&cfg.MaxInflightIngestPerClient, "max-inflight-ingest-per-client", cfg.MaxInflightIngestPerClient, "most ingest requests one client (token, or address) has decoded at once (429 beyond)")
	listVar(fs, &cfg.LPMachineTags, "lp-machine-tags", "line-protocol tags carrying the machine id, first present wins")
	fs.StringVar(&cfg.LPMissingMachine, "lp-missing-machine", cfg.LPMissingMachine, "a line-protocol line without a machine id tag: reject (400 naming it), drop (204, counted in twinline_ingest_lines_dropped_total) or measurement (its measurement name is the machine id)")
	fs.IntVar(&cfg.StreamQueue, "stream-queue", cfg.StreamQueue, "deprecated: most `messages` queued per stream client, a safety cap far above use (queues are bounded by --stream-max-queue-bytes and --stream-max-lag)")
	durationVar(fs, &cfg.StreamHeartbeat, "stream-heartbeat", "interval of stream heartbeats")
	fs.IntVar(&cfg.StreamReplay, "stream-replay", cfg.StreamReplay, "recent stream `messages` kept for clients resuming after a reconnect")
	durationVar(fs, &cfg.StreamWriteInterval, "stream-write-interval", "least time between two writes to one stream client: messages arriving sooner go out together (fewer system calls for busy dashboards; 0: at once)")
	fs.IntVar(&cfg.StreamMaxQueueBytes, "stream-max-queue-bytes", cfg.StreamMaxQueueBytes, "most `bytes` queued for one stream client; a client that falls this far behind is dropped with a reconnect notice and resumes")
	durationVar(fs, &cfg.StreamMaxLag, "stream-max-lag", "how far behind the newest message one stream client may fall before it is dropped with a reconnect notice")
	fs.IntVar(&cfg.StreamReplayBytes, "stream-replay-bytes", cfg.StreamReplayBytes, "most `bytes` of recent stream messages kept for clients resuming (with --stream-replay, the most messages)")
	durationVar(fs, &cfg.StreamWriteTimeout, "stream-write-timeout", "time a stream client has to take one burst of messages before it is disconnected")
	fs.IntVar(&cfg.MaxMachines, "max-machines", cfg.MaxMachines, "most machines in the fleet; events of further new machines are rejected (0: no limit)")
	durationVar(fs, &cfg.Lateness, "lateness", "how far behind a machine's newest event time its watermark trails: samples are released in event-time order, windows close, behind it")
	durationVar(fs, &cfg.Window, "window", "tumbling window size of the live aggregates")
	durationVar(fs, &cfg.WindowGrace, "window-grace", "how long after its end a window still takes late samples as corrections")
	fs.IntVar(&cfg.MedianWindow, "median-window", cfg.MedianWindow, "samples covered by each metric's sliding median")
	durationVar(fs, &cfg.DedupHorizon, "dedup-horizon", "how far back in event time duplicate keys are remembered")
	fs.IntVar(&cfg.DedupMaxKeys, "dedup-max-keys", cfg.DedupMaxKeys, "most duplicate keys remembered (about 50 bytes each)")
	durationVar(fs, &cfg.OfflineAfter, "offline-after", "silence after which a machine shows offline")
	fs.Var(newAppendListValue(&cfg.AlertmanagerURLs), "alertmanager-url", "Alertmanager base `URL` (http://alertmanager:9093) the alarms are posted to, as Prometheus does; repeatable or comma-separated")
	durationVar(fs, &cfg.AlertmanagerResend, "alertmanager-resend", "how often active alarms are posted to Alertmanager again (an alert holds for 4 times that)")
	fs.StringVar(&cfg.AlarmWebhook, "alarm-webhook", cfg.AlarmWebhook, "`URL` every alarm change (raised, cleared, acknowledged) is posted to as signed JSON, from a durable outbox, retried until accepted")
	fs.StringVar(&cfg.AlarmWebhookSecretFile, "alarm-webhook-secret-file", cfg.AlarmWebhookSecretFile, "`file` holding the HMAC-SHA256 key of the webhook's X-Twinline-Signature (empty: unsigned)")
	fs.IntVar(&cfg.AlarmWebhookMaxPending, "alarm-webhook-max-pending", cfg.AlarmWebhookMaxPending, "most undelivered webhook changes kept; further ones are dropped, counted and logged")
	fs.StringVar(&cfg.ExternalURL, "external-url", cfg.ExternalURL, "`URL` users reach twinline at (e.g. https://twinline.example.com), for the dashboard links of alerts and webhooks")
	durationVar(fs, &cfg.ShutdownTimeout, "shutdown-timeout", "time allowed to drain clients and the event log on shutdown")
	fs.StringVar(&cfg.Store, "store", cfg.Store, "storage backend: embedded or postgres")
	fs.StringVar(&cfg.PostgresURL, "postgres-url", cfg.PostgresURL, "PostgreSQL connection `URL` of --store postgres (e.g. postgres://user@host:5432/twinline)")
	durationVar(fs, &cfg.PostgresStartWait, "postgres-start-wait", "how long a start waits for an unreachable PostgreSQL (retrying, logging each attempt) before giving up")
	fs.StringVar(&cfg.PostgresLayout, "postgres-layout", cfg.PostgresLayout, "how --store postgres keeps samples: packed (series ids, hourly chunks, rollups) or rows (a row per sample, the layout before migration 0010); empty: the store's own, packed for a new one")
	fs.Int64Var(&cfg.SpoolBytes, "spool-bytes", cfg.SpoolBytes, "local durable buffer for acknowledged samples while PostgreSQL is unreachable; 503 beyond")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "Redis `URL` (redis://host:6379/0) for the hot window, cross-replica fan-out and rate limits; empty: in-memory")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", cfg.RedisPrefix, "prefix of every Redis key and channel")
	durationVar(fs, &cfg.HotWindow, "hot-window", "recent history per series kept hot (in memory, or in Redis)")
	fs.StringVar(&cfg.RateLimit, "rate-limit", cfg.RateLimit, "per-client rate limits: auto (on unless listening on loopback), on or off")
	fs.Float64Var(&cfg.IngestRate, "ingest-rate", cfg.IngestRate, "ingest requests per second per client (token or IP)")
	fs.IntVar(&cfg.IngestBurst, "ingest-burst", cfg.IngestBurst, "ingest requests a client may send at once above --ingest-rate")
	fs.Float64Var(&cfg.StreamRate, "stream-rate", cfg.StreamRate, "new stream connections per second per client")
	fs.IntVar(&cfg.StreamBurst, "stream-burst", cfg.StreamBurst, "new stream connections a client may open at once above --stream-rate")
	fs.StringVar(&cfg.MQTTListen, "mqtt-listen", cfg.MQTTListen, "start the embedded MQTT broker on this `address` (e.g. 127.0.0.1:1883); empty: off")
	fs.StringVar(&cfg.MQTTBroker, "mqtt-broker", cfg.MQTTBroker, "subscribe to an external MQTT broker at this `URL` (e.g. mqtt://127.0.0.1:1883); empty: off")
	listVar(fs, &cfg.KafkaBrokers, "kafka-brokers", "Kafka seed brokers; replaces the in-process log")
	fs.StringVar(&cfg.KafkaTopic, "kafka-topic", cfg.KafkaTopic, "Kafka topic of the event log")
	fs.StringVar(&cfg.KafkaDesiredTopic, "kafka-desired-topic", cfg.KafkaDesiredTopic, "Kafka topic (compacted) that receives each machine's desired document, keyed by machine id; a tombstone when it is deleted")
	fs.StringVar(&cfg.KafkaGroup, "kafka-group", cfg.KafkaGroup, "Kafka consumer group of the processors")
	durationVar(fs, &cfg.KafkaSessionTimeout, "kafka-session-timeout", "how long the group waits for a silent (crashed) processor before moving its partitions")
	durationVar(fs, &cfg.KafkaTuning.Linger, "kafka-linger", "how long the gateway's producer holds a partition's batch for more records (0: send at once; batches form while earlier requests are in flight)")
	int32Var(fs, &cfg.KafkaTuning.BatchMaxBytes, "kafka-batch-max-bytes", "largest record batch the producer sends per partition, before compression (the topic's max.message.bytes must allow it)")
	fs.StringVar(&cfg.KafkaTuning.Compression, "kafka-compression", cfg.KafkaTuning.Compression, "compression of produced batches: none, snappy, lz4, zstd or gzip")
	durationVar(fs, &cfg.KafkaTuning.FetchMaxWait, "kafka-fetch-max-wait", "longest a broker holds a processor's fetch while it has less than --kafka-fetch-min-bytes")
	int32Var(fs, &cfg.KafkaTuning.FetchMinBytes, "kafka-fetch-min-bytes", "bytes a broker waits for before answering a fetch (1: answer as soon as anything is there)")
	int32Var(fs, &cfg.KafkaTuning.FetchMaxBytes, "kafka-fetch-max-bytes", "largest fetch response a processor asks for")
	int32Var(fs, &cfg.KafkaTuning.FetchMaxPartitionBytes, "kafka-fetch-max-partition-bytes", "largest part of one partition in a fetch response")
	fs.IntVar(&cfg.KafkaTuning.MaxPollRecords, "kafka-max-poll-records", cfg.KafkaTuning.MaxPollRecords, "most records a processor takes per read (and so commits per partition at once)")
	fs.StringVar(&cfg.KafkaInstanceID, "kafka-instance-id", cfg.KafkaInstanceID, "stable id of this processor in its Kafka group (static membership: a restart gets its partitions back at once); unique per replica; \"\": a dynamic member. Default: the host name")
	fs.Var(&cfg.Role, "role", "all, gateway (ingest → log), processor (log → engine → store) or api (queries, stream, dashboard)")
	fs.StringVar(&cfg.Pprof, "pprof", cfg.Pprof, "serve net/http/pprof on this separate `address` (never on --listen); empty: off")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	securityFlags(fs, cfg)
	tracingFlags(fs, cfg)
	prometheusFlags(fs, cfg)
}

// prometheusFlags defines the flags of docs/prometheus-api.md.
func prometheusFlags(fs *flag.FlagSet, cfg *config.Config) {
	listVar(fs, &cfg.Prometheus.Attributes, "prometheus-attributes", "registry attributes exposed as labels of the Prometheus query API's series, next to machine, site and line")
	fs.IntVar(&cfg.Prometheus.MaxSeries, "prometheus-max-series", cfg.Prometheus.MaxSeries, "most series one PromQL query or series call reads (0: no bound); more is a cost_limit error")
	fs.IntVar(&cfg.Prometheus.MaxSamples, "prometheus-max-samples", cfg.Prometheus.MaxSamples, "most samples one PromQL query holds in memory at once (Prometheus' --query.max-samples)")
	durationVar(fs, &cfg.Prometheus.Timeout, "prometheus-timeout", "most time one PromQL query may take (Prometheus' --query.timeout)")
}

// tracingFlags defines the flags of docs/observability.md; the standard
// OTEL_* variables fill what they leave unset.
func tracingFlags(fs *flag.FlagSet, cfg *config.Config) {
	fs.StringVar(&cfg.Tracing.Endpoint, "otlp-endpoint", cfg.Tracing.Endpoint, "OpenTelemetry collector `URL` to export traces to (e.g. http://otel-collector:4318); empty: OTEL_EXPORTER_OTLP_ENDPOINT, and tracing is off without either")
	fs.StringVar(&cfg.Tracing.Protocol, "otlp-protocol", cfg.Tracing.Protocol, "OTLP protocol: grpc or http/protobuf (default: OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf)")
	fs.Float64Var(&cfg.Tracing.Sample, "trace-sample", cfg.Tracing.Sample, "`fraction` of new traces sampled (0 to 1, parent-based: a sampled traceparent is always followed); negative: OTEL_TRACES_SAMPLER decides")
	fs.StringVar(&cfg.Tracing.UIURL, "trace-ui-url", cfg.Tracing.UIURL, "trace viewer `URL` containing {traceId} (e.g. http://localhost:16686/trace/{traceId}): the dashboard's latency badge links to the trace")
}

// securityFlags defines the flags of docs/security.md.
func securityFlags(fs *flag.FlagSet, cfg *config.Config) {
	fs.StringVar(&cfg.Auth, "auth", cfg.Auth, "auto (tokens required once one exists; without tokens, open on loopback and refusing to start on any other address), on, or off (open to anyone who reaches the port: warns)")
	fs.StringVar(&cfg.BootstrapTokenFile, "bootstrap-token-file", cfg.BootstrapTokenFile, "`file` holding a token secret: an admin token named bootstrap is created from it at start (for automated deploys)")
	fs.StringVar(&cfg.TLSCert, "tls-cert", cfg.TLSCert, "PEM certificate `file` (chain) to serve HTTPS on --listen; reloaded when it changes")
	fs.StringVar(&cfg.TLSKey, "tls-key", cfg.TLSKey, "PEM private key `file` of --tls-cert")
	fs.StringVar(&cfg.TLSClientCA, "tls-client-ca", cfg.TLSClientCA, "PEM CA `file`: device client certificates signed by it authenticate (mutual TLS); the certificate's CN (or a DNS SAN) names the machine it may write for")
	fs.StringVar(&cfg.MQTTTLSListen, "mqtt-tls-listen", cfg.MQTTTLSListen, "serve MQTT over TLS (MQTTS) on this `address` (e.g. 0.0.0.0:8883) with --tls-cert; empty: off")
	listVar(fs, &cfg.AllowedHosts, "allowed-hosts", "Host names accepted, with or without port; IP addresses always are (default: localhost, the --listen host and this machine's host name)")
	listVar(fs, &cfg.TrustedProxies, "trusted-proxies", "CIDRs of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed")
	fs.StringVar(&cfg.AuthHeader, "auth-header", cfg.AuthHeader, "`header` naming the user, set by an authenticating proxy in --trusted-proxies (e.g. X-Forwarded-User); empty: off")
	fs.StringVar(&cfg.AuthHeaderScopes, "auth-header-scopes", cfg.AuthHeaderScopes, "scopes of users named by --auth-header (e.g. read,operate)")
	fs.StringVar(&cfg.MetricsAuth, "metrics-auth", cfg.MetricsAuth, "whether /metrics needs a read token: auto (unless listening on loopback), on or off")
	fs.IntVar(&cfg.MaxStreamsPerClient, "max-streams-per-client", cfg.MaxStreamsPerClient, "most live stream connections of one identity (token, or IP when unauthenticated)")
	durationVar(fs, &cfg.AuditRetention, "audit-retention", "how long the audit log is kept")
	durationVar(fs, &cfg.SessionTTL, "session-ttl", "how long a dashboard sign-in lasts")
	fs.IntVar(&cfg.MQTTMaxRetained, "mqtt-max-retained", cfg.MQTTMaxRetained, "most retained messages one MQTT client may leave on the embedded broker")
	fs.IntVar(&cfg.MQTTMaxRetainedBytes, "mqtt-max-retained-bytes", cfg.MQTTMaxRetainedBytes, "most bytes of retained messages one MQTT client may leave on the embedded broker")
	fs.BoolVar(&cfg.KafkaTLS, "kafka-tls", cfg.KafkaTLS, "connect to the Kafka brokers over TLS (system roots, or --kafka-tls-ca)")
	fs.StringVar(&cfg.KafkaTLSCA, "kafka-tls-ca", cfg.KafkaTLSCA, "PEM CA `file` for --kafka-tls")
}

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("twinline migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.PostgresURL, "postgres-url", cfg.PostgresURL, "PostgreSQL connection `URL` (e.g. postgres://user@host:5432/twinline)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	packed := fs.Bool("packed", false, "also move the samples of a store in the rows layout to the packed layout (online, in batches, resumable: run it again after an interruption); restart the servers once it has switched the layout")
	batch := fs.Int("batch-series", 500, "series moved per transaction by --packed")
	durationVar(fs, &cfg.Window, "window", "the store's aggregate window (--packed)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if strings.TrimSpace(cfg.PostgresURL) == "" {
		return errors.New("--postgres-url (or TWINLINE_POSTGRES_URL) is required")
	}
	logger := newLogger(stderr, cfg.LogLevel)
	if err := postgres.Migrate(ctx, cfg.PostgresURL, logger); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "migrations applied")
	if *packed {
		n, err := postgres.MigratePacked(ctx, cfg.PostgresURL, postgres.Options{Window: cfg.Window, StartWait: -1}, *batch, logger)
		if err != nil {
			return fmt.Errorf("%w (%d samples moved; run it again to carry on)", err, n)
		}
		fmt.Fprintf(stdout, "layout packed: %d samples moved\n", n)
	}
	return nil
}

func simulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := sim.Config{Machines: 20, Rate: 200, Interval: 100 * time.Millisecond, Seed: time.Now().UnixNano()}
	target, token := "http://127.0.0.1:8080", ""
	ctl := sim.ControlConfig{Machines: 10, Wait: sim.DefaultControlWait}
	fs := flag.NewFlagSet("twinline simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&target, "target", target, "`URL` of the twinline server")
	fs.StringVar(&token, "token", token, "API token with the ingest scope (twinline token create --scopes ingest), sent as Authorization: Bearer")
	fs.IntVar(&cfg.Machines, "machines", cfg.Machines, "number of simulated machines")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "events per second across the fleet")
	fs.Float64Var(&cfg.OutOfOrder, "out-of-order", cfg.OutOfOrder, "fraction of events sent late, out of event-time order (0..1)")
	fs.Float64Var(&cfg.Duplicates, "duplicates", cfg.Duplicates, "fraction of events sent twice (0..1)")
	fs.Int64Var(&cfg.Seed, "seed", cfg.Seed, "random seed (same seed, same signals)")
	fs.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "machine id prefix")
	durationVar(fs, &cfg.Interval, "interval", "how often a batch is sent")
	durationVar(fs, &cfg.Duration, "duration", "stop after this long (0: until interrupted)")
	fs.Int64Var(&cfg.Count, "count", cfg.Count, "stop after this many events (0: unlimited)")
	fs.IntVar(&ctl.Machines, "control-machines", ctl.Machines, fmt.Sprintf("how many machines (the first ones) follow their desired twin and take commands, two long-polls each (0: none, at most %d)", sim.MaxControlMachines))
	durationVar(fs, &ctl.Wait, "control-wait", "how long a desired-twin or command long-poll waits on the server")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := errors.Join(cfg.Validate(), ctl.Validate()); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	s := sim.New(cfg, sim.NewHTTPEmitter(strings.TrimRight(target, "/"), &http.Client{Timeout: 30 * time.Second, Transport: auth.BearerTransport(token, nil)}), time.Now)
	fmt.Fprintf(stdout, "simulating %d machines at %g events/s → %s (Ctrl-C to stop)\n", cfg.Machines, cfg.Rate, target)

	runCtx, stop := context.WithCancel(ctx)
	var devices sync.WaitGroup
	defer func() {
		stop()
		devices.Wait()
	}()
	if ctl.Machines > 0 {
		ctl.Machines = min(ctl.Machines, len(s.Machines()))
		// The long-polls need connections of their own: two per machine.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 2*ctl.Machines + 4
		control := sim.NewHTTPControl(target, &http.Client{Transport: auth.BearerTransport(token, tr)}, ctl.Wait)
		fmt.Fprintf(stdout, "%d machines follow their desired twin and take commands\n", ctl.Machines)
		devices.Go(func() { _ = s.RunControl(runCtx, control, ctl, newLogger(stderr, "info")) })
	}

	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case err := <-done:
			stop()
			st := s.Stats()
			fmt.Fprintf(stdout, "sent %d events (%d duplicates, %d out of order) in %s\n", st.Events, st.Duplicates, st.OutOfOrder, time.Since(start).Round(time.Millisecond))
			return err
		case <-tick.C:
			st := s.Stats()
			fmt.Fprintf(stdout, "%s: %d events sent, %.0f/s\n", time.Since(start).Round(time.Second), st.Events, float64(st.Events)/time.Since(start).Seconds())
		}
	}
}

// parse applies TWINLINE_<FLAG> environment variables, then the command
// line (which wins), and reports every bad value at once.
func parse(fs *flag.FlagSet, args []string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := "TWINLINE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	// The command line replaces what the environment gave a repeatable flag.
	fs.VisitAll(func(f *flag.Flag) {
		if o, ok := f.Value.(interface{ overridable() }); ok {
			o.overridable()
		}
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments: %q", fs.Args()))
	}
	return errors.Join(errs...)
}

type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil {
		return ""
	}
	return model.Duration(*v.d).String()
}

func (v durationValue) Set(s string) error {
	d, err := model.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration like 30s, 5m, 12h or 30d")
	}
	*v.d = time.Duration(d)
	return nil
}

// durationVar defines a duration flag that also accepts days, weeks and
// years (30d), with its current value as the default.
func int32Var(fs *flag.FlagSet, v *int32, name, usage string) {
	fs.Var(int32Value{v}, name, usage)
}

type int32Value struct{ v *int32 }

func (i int32Value) String() string {
	if i.v == nil {
		return "0"
	}
	return strconv.FormatInt(int64(*i.v), 10)
}

func (i int32Value) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, 32)
	if err != nil {
		return errors.New("not a 32-bit integer")
	}
	*i.v = int32(n)
	return nil
}

func durationVar(fs *flag.FlagSet, d *time.Duration, name, usage string) {
	fs.Var(durationValue{d}, name, usage)
}

type listValue struct{ l *[]string }

func (v listValue) String() string {
	if v.l == nil {
		return ""
	}
	return strings.Join(*v.l, ",")
}

func (v listValue) Set(s string) error {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	*v.l = out
	return nil
}

// appendListValue is a list flag that may be repeated: each use adds its
// comma-separated items. The command line replaces the environment's
// items (parse marks the value overridable in between).
type appendListValue struct {
	l *[]string
	// replace makes the next Set start the list afresh.
	replace *bool
}

func newAppendListValue(l *[]string) appendListValue {
	return appendListValue{l: l, replace: new(bool)}
}

func (v appendListValue) String() string {
	if v.l == nil {
		return ""
	}
	return strings.Join(*v.l, ",")
}

func (v appendListValue) Set(s string) error {
	var add []string
	if err := (listValue{&add}).Set(s); err != nil {
		return err
	}
	if *v.replace {
		*v.l, *v.replace = nil, false
	}
	*v.l = append(*v.l, add...)
	return nil
}

// overridable makes the next Set replace the items set so far.
func (v appendListValue) overridable() { *v.replace = true }

func listVar(fs *flag.FlagSet, l *[]string, name, usage string) {
	fs.Var(listValue{l}, name, usage+" (comma-separated)")
}

func newLogger(w io.Writer, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level)) // validated by config
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv}))
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// setMemoryLimit fits the Go memory limit to the container's (unless
// GOMEMLIMIT is given) and logs it. TWINLINE_CGROUP_ROOT points at another
// cgroup mount, for tests only.
func setMemoryLimit(logger *slog.Logger, ingestMemory int64) {
	root := cmp.Or(os.Getenv("TWINLINE_CGROUP_ROOT"), memlimit.DefaultRoot)
	res, err := memlimit.Apply(root, os.Getenv("GOMEMLIMIT"), memlimit.DefaultShare)
	if err != nil {
		logger.Warn("reading the cgroup memory limit", "err", err)
	}
	logger.Info("memory limit", "go_limit_bytes", res.Limit, "cgroup_limit_bytes", res.Cgroup, "source", res.Source,
		"ingest_memory_bytes", memlimit.IngestBudget(ingestMemory))
}
