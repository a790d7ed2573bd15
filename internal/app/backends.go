package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/keylog"
	"github.com/twinline/twinline/internal/pipeline"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tlsconf"
	"github.com/twinline/twinline/internal/twin"
)

// openLog builds the in-process event log and its processor: the
// embedded default. A store that reports which samples it held already
// decides on sample duplicates (at any age, across restarts); otherwise
// the engine remembers sample keys for the dedup horizon.
func (a *App) openLog(st store.Store, sinks pipeline.Sinks, engineCfg stream.EngineConfig, reg prometheus.Registerer) error {
	a.events = eventlog.New(a.cfg.LogCapacity, reg)
	ack := a.legs.leg(legIngestAck)
	a.submitFn = func(ctx context.Context, b *telemetry.Batch) (eventlog.Result, error) {
		e, err := a.events.Append(b)
		if err != nil {
			return eventlog.Result{}, err
		}
		observeSince(ack, b) // the log took it; the client waits for durable
		return e.Wait(ctx)
	}
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
	proc.ObserveLegs(a.legs.processor())
	proc.Backfill(a.cfg.OutOfOrderWindow) // older samples are stored, not replayed live (ADR 0033)
	a.proc = proc
	a.traceProcessor(proc, log)
	a.registry.OnDelete(proc.ForgetMachine) // a deleted machine leaves the engines
	kl, journaled, err := keylog.Open(filepath.Join(a.cfg.DataDir, "dedup-keys"), a.cfg.DedupMaxKeys)
	if err != nil {
		return fmt.Errorf("opening dedup key journal: %w", err)
	}
	a.keys = kl
	a.cleanup = append(a.cleanup, func() { kl.Close() })
	proc.Remember(journaled)
	proc.JournalKeys(kl.Append)
	// Both stores keep state series: their changes are stored with each
	// group and go to the live stream once committed.
	if ss, ok := a.store.(store.StateStore); ok {
		if err := proc.States(ss, func(cs []store.StateChange) { publishStates(a.hub, cs) }, reg); err != nil {
			return fmt.Errorf("starting the processor: %w", err)
		}
	}
	return nil
}

// openKafka makes Kafka the event log: a producer for the roles that take
// ingest (acknowledging a client once Kafka has), a consumer-group
// processor for the roles that process, storing samples and the consumed
// offsets in one PostgreSQL transaction.
func (a *App) openKafka(sinks pipeline.Sinks, engineCfg stream.EngineConfig, reg prometheus.Registerer) error {
	// The producer and the consumer name themselves (kafka_producer,
	// kafka_consumer): a component given here would be a second one.
	cfg, logger := a.cfg, a.logger
	kopts := []kafka.Option{kafka.WithTracer(a.tracing.Tracer("github.com/twinline/twinline/internal/eventlog/kafka")), kafka.WithTuning(cfg.KafkaTuning)}
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
		ack := a.legs.leg(legIngestAck)
		a.submitFn = func(ctx context.Context, b *telemetry.Batch) (eventlog.Result, error) {
			if err := p.Append(ctx, b); err != nil {
				return eventlog.Result{}, err
			}
			observeSince(ack, b) // Kafka holds every record of it
			// Duplicates are recognised downstream, by the processors.
			return eventlog.Result{Accepted: len(b.Events)}, nil
		}
		a.checks = append(a.checks, p.Ready)
	}
	if cfg.Role.Processes() {
		if a.pg == nil {
			return errors.New("the Kafka processor needs --store postgres")
		}
		kc, err := kafka.NewConsumer(cfg.KafkaBrokers, cfg.KafkaTopic, cfg.KafkaGroup, a.pg, logger, reg,
			append(kopts, kafka.WithInstanceID(cfg.KafkaInstanceID), kafka.WithClientOptions(kgo.SessionTimeout(cfg.KafkaSessionTimeout)))...)
		if err != nil {
			return fmt.Errorf("starting the Kafka consumer: %w", err)
		}
		a.checks = append(a.checks, kc.Ready)
		return a.openProcessor(kc, "kafka", sinks, engineCfg, reg)
	}
	return nil
}

// traceProcessor makes the processor trace its sampled groups, with the
// messaging attributes of its log and the database ones of its store.
func (a *App) traceProcessor(proc *pipeline.Processor, log string) {
	tr := a.tracing.Tracer("github.com/twinline/twinline/internal/pipeline")
	if tr == nil {
		return
	}
	process := []attribute.KeyValue{semconv.MessagingOperationTypeProcess, semconv.MessagingOperationName("process")}
	if log == "kafka" {
		process = append(process, semconv.MessagingSystemKafka, semconv.MessagingDestinationName(a.cfg.KafkaTopic),
			semconv.MessagingConsumerGroupName(a.cfg.KafkaGroup))
	} else {
		process = append(process, semconv.MessagingSystemKey.String("twinline.memory"))
	}
	commit := []attribute.KeyValue{semconv.DBOperationName("commit"), semconv.DBSystemNameKey.String("twinline.embedded")}
	if a.pg != nil {
		commit[1] = semconv.DBSystemNamePostgreSQL
	}
	proc.Trace(tr, process, commit)
}

// twinStores are where the registry, the notes and the alarm journal
// persist.
type twinStores struct {
	registry twin.RegistryStore
	notes    twin.NoteStore
	alarms   twin.AlarmStore
	// docs keeps the twins' desired and reported documents.
	docs control.TwinStore
	// shared is the registry when other replicas write it too
	// (PostgreSQL); nil for the files of the data directory.
	shared twin.SharedStore
}

// openTwinStores opens where the registry, the notes and the alarm
// journal persist: PostgreSQL with --store postgres (shared by replicas,
// the registry cache invalidated across them by LISTEN/NOTIFY), else files
// in the data directory.
func (a *App) openTwinStores() (twinStores, error) {
	if a.pg != nil {
		reg, err := postgres.NewRegistry(a.pg, postgres.RegistryOptions{})
		if err != nil {
			return twinStores{}, fmt.Errorf("opening the registry in postgres: %w", err)
		}
		a.background = append(a.background, part{name: "stopping the registry listener", run: reg.Run})
		// Until the twins' follower listens, other replicas' changes
		// miss this replica's stream and MQTT clients: degraded.
		docs := postgres.NewTwinDocs(a.pg)
		a.degraded = append(a.degraded, docs.Ready)
		return twinStores{registry: reg, notes: postgres.NewNoteStore(a.pg), alarms: postgres.NewAlarmLog(a.pg), shared: reg,
			docs: docs}, nil
	}
	notes, err := twin.OpenNoteFile(filepath.Join(a.cfg.DataDir, "notes.jsonl"))
	if err != nil {
		return twinStores{}, err
	}
	docs, err := control.OpenTwinFiles(filepath.Join(a.cfg.DataDir, "twins"))
	if err != nil {
		return twinStores{}, err
	}
	return twinStores{
		docs:     docs,
		registry: twin.NewRegistryFile(filepath.Join(a.cfg.DataDir, "registry.json")),
		notes:    notes,
		alarms:   twin.NewAlarmFile(filepath.Join(a.cfg.DataDir, "alarms.jsonl")),
	}, nil
}

// openStore opens the configured storage backend; a PostgreSQL store is
// also kept typed in a.pg.
func (a *App) openStore(ctx context.Context, reg prometheus.Registerer) (store.Store, error) {
	cfg := a.cfg
	switch cfg.Store {
	case "postgres":
		pg, err := postgres.Open(ctx, cfg.PostgresURL, postgres.Options{
			Retention:   cfg.Retention,
			Retention1m: cfg.Retention1m,
			Retention1h: cfg.Retention1h,
			MaxFuture:   cfg.MaxFuture,
			Window:      cfg.Window,
			SpoolDir:    filepath.Join(cfg.DataDir, "spool"),
			SpoolBytes:  cfg.SpoolBytes,
			StartWait:   cfg.PostgresStartWait,
			Layout:      cfg.PostgresLayout,
		}, a.logger, reg) // it names itself postgres_store
		if err != nil {
			return nil, fmt.Errorf("opening postgres store: %w", err)
		}
		a.pg = pg
		a.background = append(a.background, part{name: "stopping the postgres store's loops", run: pg.Run})
		// While PostgreSQL is down the spool takes ingest (503 once it is
		// full): degraded, not unready — a load balancer pulling every
		// replica would leave the spool unused.
		a.degraded = append(a.degraded, pg.Ready)
		return pg, nil
	default:
		// The store takes samples of any age within the retention
		// (its out-of-order window defaults to it): a backfill.
		st, err := embedded.Open(filepath.Join(cfg.DataDir, "tsdb"), embedded.Options{
			Retention: cfg.Retention,
			// Any age within the retention: --out-of-order-window is the
			// processor's backfill horizon, not a bound of the store's
			// (ADR 0033).
			OutOfOrderWindow: cfg.Retention,
			MaxFuture:        cfg.MaxFuture,
			Retention1m:      cfg.Retention1m,
			Retention1h:      cfg.Retention1h,
		}, a.logger.With("component", "store"), reg)
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
