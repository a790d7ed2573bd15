package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/keylog"
	"github.com/twinline/twinline/internal/pipeline"
	"github.com/twinline/twinline/internal/source/mqtt"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tlsconf"
	"github.com/twinline/twinline/internal/twin"
)

// ingestLimits are the limits every ingest path (HTTP, MQTT) decodes with.
func ingestLimits(cfg config.Config) telemetry.Limits {
	return telemetry.Limits{
		MaxMetricsPerEvent: cfg.MaxMetricsPerEvent,
		MaxMachineIDLen:    telemetry.DefaultLimits().MaxMachineIDLen,
		MaxMetricNameLen:   telemetry.DefaultLimits().MaxMetricNameLen,
	}
}

// openMQTT builds the MQTT sources: the embedded broker (--mqtt-listen)
// and the subscriber to an external broker (--mqtt-broker). They feed the
// event log like the HTTP API, and acknowledge a QoS 1 message once its
// events are durable.
func (a *App) openMQTT(reg prometheus.Registerer) error {
	cfg := a.cfg
	if cfg.MQTTListen == "" && cfg.MQTTTLSListen == "" && cfg.MQTTBroker == "" {
		return nil
	}
	ingestOpts := mqtt.IngestOptions{
		Decode: ingest.Options{
			Limits:       ingestLimits(cfg),
			MaxLineBytes: cfg.MaxLineBytes,
			MachineTags:  cfg.LPMachineTags,
			AdmitMachine: func(id string) string { return a.twins.Admit(id, cfg.MaxMachines) },
			Stamper:      a.stamper,
		},
		OutOfOrderWindow: cfg.OutOfOrderWindow,
		MaxFuture:        cfg.MaxFuture,
	}
	deps := mqtt.Deps{
		Submit:     a.submit,
		Register:   a.twins.Locate,
		Logger:     a.logger.With("component", "mqtt"),
		Registerer: reg,
	}
	if cfg.MQTTListen != "" || cfg.MQTTTLSListen != "" {
		bdeps := deps
		bdeps.Authenticate = a.sec.mqttAuthenticate(cfg)
		bdeps.Authorize = func(_ context.Context, id auth.Identity, machine string) error {
			if reason := a.twins.AdmitFor(id, machine); reason != "" {
				return errors.New(reason)
			}
			return nil
		}
		opts := mqtt.BrokerOptions{Ingest: ingestOpts, MaxRetained: cfg.MQTTMaxRetained, MaxRetainedBytes: cfg.MQTTMaxRetainedBytes}
		if cfg.MQTTTLSListen != "" {
			opts.TLSListen, opts.TLSConfig = cfg.MQTTTLSListen, a.sec.tls.ListenerConfig()
		}
		br, err := mqtt.NewBroker(cfg.MQTTListen, opts, bdeps)
		if err != nil {
			return fmt.Errorf("starting the embedded MQTT broker: %w", err)
		}
		a.runners = append(a.runners, br.Run)
		a.checks = append(a.checks, br.Ready)
		a.cleanup = append(a.cleanup, func() {
			// Run with an ended context closes the listener and returns.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = br.Run(ctx)
		})
	}
	if cfg.MQTTBroker != "" {
		sub, err := mqtt.NewSubscriber(cfg.MQTTBroker, mqtt.SubscriberOptions{Ingest: ingestOpts}, deps)
		if err != nil {
			return fmt.Errorf("subscribing to the MQTT broker: %w", err)
		}
		a.runners = append(a.runners, sub.Run)
		// Another broker being down does not stop HTTP ingest: degraded.
		a.degraded = append(a.degraded, sub.Ready)
	}
	return nil
}

// submit hands a batch from a source other than HTTP to the event log and
// waits until it is durable; while the log is full it waits for room.
func (a *App) submit(ctx context.Context, b *telemetry.Batch) (accepted, duplicates int, err error) {
	for {
		b.Received = time.Now().UnixMilli()
		res, err := a.submitFn(ctx, b)
		switch {
		case errors.Is(err, eventlog.ErrFull):
			select {
			case <-ctx.Done():
				return 0, 0, fmt.Errorf("%w: %w", mqtt.ErrBusy, ctx.Err())
			case <-time.After(50 * time.Millisecond):
				continue
			}
		case errors.Is(err, eventlog.ErrTooLarge):
			return 0, 0, fmt.Errorf("%w: %w", mqtt.ErrUnprocessable, err)
		}
		return res.Accepted, res.Duplicates, err
	}
}

// openLog builds the in-process event log and its processor: the
// embedded default. A store that reports which samples it held already
// decides on sample duplicates (at any age, across restarts); otherwise
// the engine remembers sample keys for the dedup horizon.
func (a *App) openLog(st store.Store, sinks pipeline.Sinks, engineCfg stream.EngineConfig, reg prometheus.Registerer) error {
	a.events = eventlog.New(a.cfg.LogCapacity, reg)
	a.submitFn = a.events.Submit
	return a.openProcessor(pipeline.NewLogSource(a.events, st), "memory", sinks, engineCfg, reg)
}

// openProcessor builds the processor of src. Keys of events with an id or
// seq are journaled, so their retries stay duplicates across a restart
// even with another event time.
func (a *App) openProcessor(src pipeline.Source, log string, sinks pipeline.Sinks, engineCfg stream.EngineConfig, reg prometheus.Registerer) error {
	proc, err := pipeline.New(src, log, engineCfg, sinks, a.logger.With("component", "processor", "log", log), reg)
	if err != nil {
		return fmt.Errorf("starting the processor: %w", err)
	}
	a.proc = proc
	a.twins.OnDelete(proc.ForgetMachine) // a deleted machine leaves the engines
	kl, journaled, err := keylog.Open(filepath.Join(a.cfg.DataDir, "dedup-keys"), a.cfg.DedupMaxKeys)
	if err != nil {
		return fmt.Errorf("opening dedup key journal: %w", err)
	}
	a.keys = kl
	a.cleanup = append(a.cleanup, func() { kl.Close() })
	proc.Remember(journaled)
	proc.JournalKeys(kl.Append)
	return nil
}

// openKafka makes Kafka the event log: a producer for the roles that take
// ingest (acknowledging a client once Kafka has), a consumer-group
// processor for the roles that process, storing samples and the consumed
// offsets in one PostgreSQL transaction.
func (a *App) openKafka(st store.Store, sinks pipeline.Sinks, engineCfg stream.EngineConfig, reg prometheus.Registerer) error {
	cfg, logger := a.cfg, a.logger.With("component", "kafka")
	var kopts []kafka.Option
	if cfg.KafkaTLS {
		tc, err := tlsconf.ClientConfig(cfg.KafkaTLSCA)
		if err != nil {
			return fmt.Errorf("--kafka-tls-ca: %w", err)
		}
		kopts = append(kopts, kafka.WithTLS(tc))
	}
	if cfg.Role.Ingests() {
		p, err := kafka.NewProducer(cfg.KafkaBrokers, cfg.KafkaTopic, logger, reg, kopts...)
		if err != nil {
			return fmt.Errorf("starting the Kafka producer: %w", err)
		}
		a.producer = p
		a.cleanup = append(a.cleanup, p.Close)
		a.submitFn = func(ctx context.Context, b *telemetry.Batch) (eventlog.Result, error) {
			if err := p.Append(ctx, b); err != nil {
				return eventlog.Result{}, err
			}
			// Duplicates are recognised downstream, by the processors.
			return eventlog.Result{Accepted: len(b.Events)}, nil
		}
		a.checks = append(a.checks, p.Ready)
	}
	if cfg.Role.Processes() {
		ost, ok := st.(kafka.OffsetStore)
		if !ok {
			return errors.New("the Kafka processor needs --store postgres")
		}
		kc, err := kafka.NewConsumer(cfg.KafkaBrokers, cfg.KafkaTopic, cfg.KafkaGroup, ost, logger, reg,
			append(kopts, kafka.WithInstanceID(cfg.KafkaInstanceID), kafka.WithClientOptions(kgo.SessionTimeout(cfg.KafkaSessionTimeout)))...)
		if err != nil {
			return fmt.Errorf("starting the Kafka consumer: %w", err)
		}
		a.checks = append(a.checks, kc.Ready)
		return a.openProcessor(kc, "kafka", sinks, engineCfg, reg)
	}
	return nil
}

// openTwinStores returns where the registry, the notes and the alarm
// journal persist: PostgreSQL with --store postgres (shared by replicas,
// the registry cache invalidated across them by LISTEN/NOTIFY), else files
// in the data directory.
func (a *App) openTwinStores(ctx context.Context) (twin.RegistryStore, twin.NoteStore, twin.AlarmStore, error) {
	if pg, ok := a.store.(*postgres.Store); ok {
		reg, err := postgres.NewRegistry(pg, postgres.RegistryOptions{})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("opening the registry in postgres: %w", err)
		}
		a.runners = append(a.runners, reg.Run)
		return reg, postgres.NewNoteStore(pg), postgres.NewAlarmLog(pg), nil
	}
	notes, err := twin.OpenNoteFile(filepath.Join(a.cfg.DataDir, "notes.jsonl"))
	if err != nil {
		return nil, nil, nil, err
	}
	return twin.NewRegistryFile(filepath.Join(a.cfg.DataDir, "registry.json")), notes,
		twin.NewAlarmFile(filepath.Join(a.cfg.DataDir, "alarms.jsonl")), nil
}

// openStore opens the configured storage backend.
func (a *App) openStore(ctx context.Context, reg prometheus.Registerer) (store.Store, error) {
	cfg, logger := a.cfg, a.logger.With("component", "store")
	switch cfg.Store {
	case "postgres":
		pg, err := postgres.Open(ctx, cfg.PostgresURL, postgres.Options{
			Retention:  cfg.Retention,
			MaxFuture:  cfg.MaxFuture,
			Window:     cfg.Window,
			SpoolDir:   filepath.Join(cfg.DataDir, "spool"),
			SpoolBytes: cfg.SpoolBytes,
		}, logger, reg)
		if err != nil {
			return nil, fmt.Errorf("opening postgres store: %w", err)
		}
		a.runners = append(a.runners, pg.Run)
		// While PostgreSQL is down the spool takes ingest (503 once it is
		// full): degraded, not unready — a load balancer pulling every
		// replica would leave the spool unused.
		a.degraded = append(a.degraded, pg.Ready)
		return pg, nil
	default:
		st, err := embedded.Open(filepath.Join(cfg.DataDir, "tsdb"), embedded.Options{
			Retention:        cfg.Retention,
			OutOfOrderWindow: cfg.OutOfOrderWindow,
			MaxFuture:        cfg.MaxFuture,
		}, logger, reg)
		if err != nil {
			return nil, fmt.Errorf("opening store: %w", err)
		}
		return st, nil
	}
}

// pprofHandler serves the runtime profiles, on a mux of its own: they are
// never reachable through the public listener.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
