// Package app is twinline's composition root: it builds every part from the
// configuration, wires them source → ingest → log → engine → sinks, and
// runs them as an ordered list of start/stop pairs (runGroup) whose order
// is the shutdown order (App.Run). Domain code lives with its owner (twin,
// sim, hot, hub); what is here only connects parts.
package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/hot"
	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/keylog"
	"github.com/twinline/twinline/internal/memlimit"
	"github.com/twinline/twinline/internal/pipeline"
	"github.com/twinline/twinline/internal/promapi"
	"github.com/twinline/twinline/internal/source/mqtt"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/tracing"
	"github.com/twinline/twinline/internal/twin"
	"github.com/twinline/twinline/internal/web"
)

// App is the platform, built and listening, not yet running.
type App struct {
	cfg     config.Config
	logger  *slog.Logger
	version string

	store store.Store
	// broker is the embedded MQTT broker (nil: none).
	broker *mqtt.Broker
	// pg is the store when it is PostgreSQL, shared by the replicas
	// (registry, notes, alarms, tokens and the processing lock live there
	// too); nil otherwise.
	pg *postgres.Store
	// background are the store's and backends' loops, run by Run and
	// stopped in its first stage; checks are their readiness checks.
	background []part
	checks     []func() error
	// degraded are the checks of parts that can fail without making the
	// server unready (Redis: fan-out, hot window, rate limits).
	degraded []func() error
	rdb      *redis.Client // nil without --redis-url
	hot      *hot.Redis    // nil without --redis-url
	hotW     *hot.Writer   // nil without --redis-url
	registry *twin.Registry
	live     *twin.Live
	notes    *twin.Notes
	alarms   *twin.Alarms
	// alarmDelivery posts alarms to Alertmanager and the webhook.
	alarmDelivery *alarmDelivery
	twins         *control.Twins // desired and reported documents
	// commands are the machines' commands (nil on roles without them);
	// cmdStore is where they persist, closed by Run.
	commands *control.Commands
	// delivery carries desired documents and commands to the machines.
	delivery *delivery
	cmdStore control.CommandStore
	hub      *hub.Hub
	// The event log: in-process (events), or Kafka (producer on the roles
	// that take ingest); proc processes it on the roles that process, with
	// its key journal.
	events   *eventlog.Log
	proc     *pipeline.Processor
	keys     *keylog.Log
	producer *kafka.Producer
	// submitFn hands a batch to the event log and waits until it is
	// durable; nil when the role takes no ingest.
	submitFn api.SubmitFunc
	srv      *http.Server
	ln       net.Listener
	// cleanup releases what New built when it fails.
	cleanup []func()
	// pprof serves net/http/pprof on its own listener (nil: off).
	pprofSrv *http.Server
	pprofLn  net.Listener
	ready    atomic.Bool
	// sec holds the tokens, audit log, tickets and TLS certificate.
	sec *security

	// stamper gives events without a timestamp their server time, shared
	// by every ingest path (HTTP, MQTT).
	stamper *ingest.Stamper

	// tracing is the tracer provider (off without an OTLP endpoint),
	// flushed last by Run.
	tracing *tracing.Tracing

	// legs are the latency legs of sensor → screen (twinline_leg_seconds).
	legs legs
}

// New builds every part from cfg and opens the listener, so a port in use or
// a locked data directory is reported before anything runs. The caller must
// call Run, which releases everything.
func New(ctx context.Context, cfg config.Config, logger *slog.Logger, version string) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := embedded.PrepareDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	// Tracing first, so that every part gets its tracer and the log lines
	// of traced operations their trace ids.
	tr, err := tracing.Setup(ctx, tracing.Config{Endpoint: cfg.Tracing.Endpoint, Protocol: cfg.Tracing.Protocol, Sample: cfg.Tracing.Sample}, tracing.Identity{Version: version, Role: cfg.Role.String(), Replica: replica(cfg)})
	if err != nil {
		return nil, fmt.Errorf("setting up tracing: %w", err)
	}
	if tr.Enabled() {
		logger = slog.New(tracing.LogHandler(logger.Handler()))
	}
	a := &App{cfg: cfg, logger: logger, version: version, stamper: ingest.NewStamper(), tracing: tr}
	// On an error, release what was built, newest first.
	defer func() {
		if err != nil {
			for i := len(a.cleanup) - 1; i >= 0; i-- {
				a.cleanup[i]()
			}
		}
	}()
	a.cleanup = append(a.cleanup, func() { _ = tr.Shutdown(context.Background()) })
	if tr.Enabled() {
		logger.Info("tracing", "endpoint", tr.Endpoint(), "protocol", tr.Protocol())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		// go_gc_heap_live_bytes (the heap the last GC marked live) on top of
		// the default memstats: it tells a leak from heap the runtime has not
		// returned yet (the soak records both).
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(
			collectors.GoRuntimeMetricsRule{Matcher: regexp.MustCompile(`^/gc/heap/live:bytes$`)})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "twinline_build_info", Help: "Build information."}, []string{"version"})
	buildInfo.WithLabelValues(version).Set(1)
	reg.MustRegister(buildInfo)
	a.legs = newLegs(reg)

	// Every role but the gateway reads or writes the history; a gateway on
	// PostgreSQL uses it for the shared registry (site and line of MQTT
	// topics, --max-machines).
	var st store.Store
	if cfg.Role.Processes() || cfg.Role.Queries() || cfg.Store == "postgres" {
		if st, err = a.openStore(ctx, reg); err != nil {
			return nil, err
		}
		a.store = st
		a.cleanup = append(a.cleanup, func() { st.Close() })
	}

	// The registry, notes and alarm journal live with the history: files in
	// the data directory, or PostgreSQL, shared by the replicas.
	ts, err := a.openTwinStores()
	if err != nil {
		return nil, err
	}
	notes := twin.NewNotes(ts.notes, time.Now)
	a.notes = notes
	a.cleanup = append(a.cleanup, func() { notes.Close() })
	twinLog := logger.With("component", "twin")
	registry, err := twin.OpenRegistry(ctx, ts.registry, time.Now, twinLog)
	if err != nil {
		return nil, fmt.Errorf("opening registry: %w", err)
	}
	if ts.shared != nil {
		registry.Follow(ts.shared) // registry writes of the other replicas reach this one
	}
	// The live state registers the machines it sees; a machine deleted
	// from the registry leaves it.
	live := twin.NewLive(twin.LiveOptions{OfflineAfter: cfg.OfflineAfter, MedianWindow: cfg.MedianWindow, Register: registry.AutoRegister})
	registry.OnDelete(live.Forget)
	if st != nil {
		if err := live.RestoreLatest(ctx, st, time.Now(), cfg.MaxFuture); err != nil {
			return nil, fmt.Errorf("restoring the latest values: %w", err)
		}
	}
	a.registry, a.live = registry, live
	// The twins' desired and reported documents: checked against the
	// registry entry's desired schema; a machine deleted from the
	// registry loses them.
	twins := control.NewTwins(ts.docs, func(m string) *twin.Schema {
		in, _ := registry.Get(m)
		return in.DesiredSchema
	}, time.Now, logger)
	a.twins = twins
	registry.OnDelete(func(id string) {
		if err := twins.Delete(context.Background(), id); err != nil {
			logger.Error("deleting the twin documents of a deleted machine", "machine", id, "err", err)
		}
	})
	a.background = append(a.background, part{name: "stopping the twin documents' follower", run: twins.Run})
	for _, w := range []struct {
		label string
		d     time.Duration
	}{{"1m", time.Minute}, {"5m", 5 * time.Minute}} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "twinline_fleet_events_per_second",
			Help:        "Events per second across the fleet over the window (server time).",
			ConstLabels: prometheus.Labels{"window": w.label},
		}, func() float64 { return live.FleetRate(w.d) }))
	}
	// Data freshness per site, the SLI of the freshness alerts
	// (deploy/prometheus/rules/twinline-slo.yml).
	reg.MustRegister(twin.NewSiteFreshness(live, registry))

	alarms, err := twin.NewAlarms(ctx, ts.alarms, cfg.OfflineAfter, logger.With("component", "alarms"))
	if err != nil {
		return nil, err
	}
	a.alarms = alarms
	a.cleanup = append(a.cleanup, func() { alarms.Close() })
	// Alarm changes go out in the order they happen, each followed by the
	// machine's status: its liveness, and whether it is in alarm.
	delivery, err := a.startAlarmDelivery(alarms, registry, reg)
	if err != nil {
		return nil, err
	}
	a.alarmDelivery = delivery
	alarms.OnChange(func(al twin.Alarm, alarmed bool) {
		delivery.notify(al)
		a.hub.PublishAlarm(hub.Alarm(al))
		in, err := registry.Get(al.Machine)
		if err != nil {
			return // deleted
		}
		m := live.Machine(in)
		a.hub.PublishStatus(al.Machine, twin.Liveness(m.Status, al), alarmed, m.LastSeen)
	})
	a.background = append(a.background, part{name: "stopping the live state's trim", run: live.Run})
	if cfg.Role.Processes() {
		// A machine that stays silent from now on gets its offline alarm.
		// Offline alarms are raised where data is processed: a replica
		// that sees none would take every machine for offline.
		alarms.Expect(registry.IDs(), time.Now())
		a.background = append(a.background, part{name: "stopping the offline alarms", run: alarms.Run})
	}

	hubOpts := hub.Options{
		QueueSize:     cfg.StreamQueue,
		MaxQueueBytes: cfg.StreamMaxQueueBytes,
		MaxLag:        cfg.StreamMaxLag,
		Heartbeat:     cfg.StreamHeartbeat,
		ReplaySize:    cfg.StreamReplay,
		ReplayBytes:   cfg.StreamReplayBytes,
		WriteTimeout:  cfg.StreamWriteTimeout,
		MaxClients:    cfg.MaxConns,
		WriteInterval: cfg.StreamWriteInterval,
		MaxPerClient:  cfg.MaxStreamsPerClient,
		PublishWrite:  a.legs.leg(legPublishWrite),
	}
	// With Redis, live messages fan out across replicas, the hot window is
	// shared and the rate limits hold across replicas.
	var rdb redis.UniversalClient // a nil interface without Redis
	if cfg.RedisURL != "" {
		c, err := newRedisClient(cfg.RedisURL)
		if err != nil {
			return nil, err
		}
		a.rdb, rdb = c, c
		a.cleanup = append(a.cleanup, func() { c.Close() })
		hubOpts.Redis, hubOpts.RedisPrefix = rdb, cfg.RedisPrefix
		a.observeRemote(&hubOpts)
		a.hot = hot.NewRedis(rdb, hot.RedisOptions{Options: hot.Options{Window: cfg.HotWindow}, Prefix: cfg.RedisPrefix})
		a.hotW = hot.NewWriter(a.hot, logger.With("component", "hot"), reg)
		a.degraded = append(a.degraded, a.hot.Ready)
	}
	a.hub = hub.New(hubOpts, logger, reg)
	// Every twin change goes out on the stream; with Redis the hub fans
	// out across replicas itself, so a change another replica made
	// (followed through PostgreSQL) is its to publish.
	twins.Subscribe(func(c control.Change) {
		if c.Remote && rdb != nil {
			return
		}
		if c.Kind == control.ChangeDeleted {
			a.hub.PublishTwin(c.Machine, hub.TwinData{Machine: c.Machine, Deleted: true})
			return
		}
		a.hub.PublishTwin(c.Machine, c.Twin)
	})
	if rdb != nil {
		a.degraded = append(a.degraded, a.hub.Ready)
	}
	if a.commands, err = a.openCommands(registry); err != nil {
		return nil, err
	}
	sec, err := a.openSecurity(ctx, rdb, reg)
	if err != nil {
		return nil, err
	}
	a.sec = sec
	var ingestLimit, streamLimit func(http.Handler) http.Handler
	if rateLimited(cfg) {
		il, sl, err := newLimiters(cfg, rdb, logger, reg) // a limiter names itself
		if err != nil {
			return nil, err
		}
		ingestLimit, streamLimit = il.Middleware, sl.Middleware
		a.degraded = append(a.degraded, il.Ready, sl.Ready)
	}
	// The dashboard's spans go to the collector through the server, with
	// the server's own OTLP client.
	var uploadTraces api.UploadTracesFunc
	if a.tracing.Enabled() {
		uploadTraces = a.tracing.Upload
	}
	tracesLimit, err := newTracesLimit(cfg, rdb, logger, reg) // the limiter names itself
	if err != nil {
		return nil, err
	}
	alarmLog := logger.With("component", "alarms")
	var medians []twin.MedianUpdate // reused by the sink goroutine
	hubTracer := tr.Tracer("github.com/twinline/twinline/internal/hub")
	sinks := pipeline.Sinks{
		// The live stream: under Kafka before the store commit (a viewer
		// drops a sample shown twice by its machine, metric and ts), else
		// after it; see internal/pipeline and ADR 0017.
		Live: func(ctx context.Context, b *telemetry.Batch, samples []telemetry.Sample) {
			publishSamples(ctx, hubTracer, a.hub, samples, b.Received)
		},
		// The rest after the commit, with the samples the store took: the
		// twin's live state (and its rates), the hot window (which queries
		// read as history) and the alarms' last seen.
		Batch: func(b *telemetry.Batch, samples []telemetry.Sample) {
			live.Observe(b, samples)
			if a.hotW != nil {
				a.hotW.Add(samples)
			}
			if _, err := alarms.Seen(samples, b.Received); err != nil {
				alarmLog.Error("journaling alarms", "err", err)
			}
		},
		Group: func(released []telemetry.Sample, windows []stream.Window) {
			medians = live.ObserveReleased(released, medians[:0])
			publishMedians(a.hub, medians)
			if _, err := alarms.Observe(released, registry.Thresholds); err != nil {
				alarmLog.Error("journaling alarms", "err", err)
			}
			publishWindows(a.hub, windows)
		},
		// Backfill (ADR 0033) goes to none of the above: its machines are
		// registered, with no live state (no latest values, not online).
		Backfill: func(b *telemetry.Batch) {
			registerMachines(registry, b)
		},
	}
	engineCfg := stream.DefaultEngineConfig()
	engineCfg.Lateness, engineCfg.Window, engineCfg.WindowGrace = cfg.Lateness, cfg.Window, cfg.WindowGrace
	engineCfg.DedupHorizon, engineCfg.DedupMaxKeys = cfg.DedupHorizon, cfg.DedupMaxKeys
	if err := a.claimProcessing(ctx); err != nil {
		return nil, err
	}
	switch {
	case !cfg.Role.Ingests() && !cfg.Role.Processes():
		// Queries and the live stream only: processors elsewhere write.
	case len(cfg.KafkaBrokers) == 0:
		if err := a.openLog(st, sinks, engineCfg, reg); err != nil {
			return nil, err
		}
	default:
		if err := a.openKafka(sinks, engineCfg, reg); err != nil {
			return nil, err
		}
	}

	apiOpts := api.Options{
		MaxBodyBytes:               cfg.MaxBodyBytes,
		MaxDecompressedBytes:       cfg.MaxDecompressedBytes,
		MaxLineBytes:               cfg.MaxLineBytes,
		Limits:                     ingestLimits(cfg),
		MachineTags:                cfg.LPMachineTags,
		Retention:                  cfg.Retention,
		LPMissingMachine:           lpMissingMachine(cfg.LPMissingMachine),
		MaxFuture:                  cfg.MaxFuture,
		MaxInflightIngest:          cfg.MaxInflightIngest,
		ReadTimeout:                cfg.ReadTimeout,
		ReadIdleTimeout:            cfg.ReadIdleTimeout,
		IngestMemory:               memlimit.IngestBudget(cfg.IngestMemory),
		MaxInflightIngestPerClient: cfg.MaxInflightIngestPerClient,
		MaxMachines:                cfg.MaxMachines,
		Lateness:                   cfg.Lateness,
		Role:                       cfg.Role,
		Tracing:                    api.TracingOptions{UIURL: cfg.Tracing.UIURL},
		Security: api.Security{
			AllowedHosts:     allowedHosts(cfg),
			TrustedProxies:   trustedProxies(cfg),
			AuthHeader:       cfg.AuthHeader,
			AuthHeaderScopes: authHeaderScopes(cfg),
			MetricsAuth:      metricsAuth(cfg),
			SessionTTL:       cfg.SessionTTL,
		},
	}
	deps := api.Deps{
		Submit:        a.submitFn,
		Stamper:       a.stamper,
		Store:         st,
		Registry:      registry,
		Live:          live,
		Notes:         notes,
		Alarms:        alarms,
		AlarmDelivery: a.alarmDelivery.states,
		Twins:         twins,
		Commands:      a.commands,
		Publish:       func(n twin.Note) { a.hub.PublishNote(hub.Note(n)) },
		Stream:        a.hub,
		StreamContext: func(ctx context.Context, visible func(string) bool, client string) context.Context {
			if visible != nil {
				ctx = hub.WithFilter(ctx, visible)
			}
			return hub.WithClientKey(ctx, client)
		},
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, EnableOpenMetrics: true}),
		UI:      web.Handler(),
		Docs:    web.NewDocs(),
		Ready: func() error {
			if !a.ready.Load() {
				return errors.New("starting or shutting down")
			}
			return joinChecks(a.checks)
		},
		Degraded:    func() error { return joinChecks(a.degraded) },
		IngestLimit: ingestLimit,
		StreamLimit: streamLimit,
		Clock:       time.Now,
		Logger:      logger.With("component", "api"),
		Registerer:  reg,
		Auth:        sec.apiAuth(cfg),
		Tracer:      tr.Tracer("github.com/twinline/twinline/internal/api"),
	}
	if a.hot != nil {
		deps.Hot = a.hot
	}
	if pr, ok := ts.registry.(*postgres.Registry); ok {
		// Fleet attribute filters through the JSONB index of the
		// registry table.
		deps.AttributeIndex = pr.WithAttributes
	}
	deps.UploadTraces, deps.TracesLimit = uploadTraces, tracesLimit
	if cfg.Role.Queries() {
		deps.Prometheus = prometheusAPI(cfg, st, registry.List, version, logger, reg)
	}
	handler := api.New(apiOpts, deps)

	// The twins' desired documents and the commands go out to the
	// machines over MQTT and the Kafka desired topic; the devices' answers
	// come back.
	if err := a.openDelivery(twins); err != nil {
		return nil, err
	}
	if a.submitFn != nil {
		if err := a.openMQTT(reg); err != nil {
			return nil, err
		}
	}
	if cfg.Demo {
		a.openDemo()
	}

	a.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	a.cleanup = append(a.cleanup, func() { a.ln.Close() })
	a.srv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "http").Handler(), slog.LevelWarn),
	}
	if sec.tls != nil {
		// HTTP/1.1 only: the live stream takes its connection over
		// (Hijack), which HTTP/2 does not allow.
		a.srv.TLSConfig = sec.tls.ListenerConfig()
		a.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}

	if cfg.Pprof != "" {
		if a.pprofLn, err = net.Listen("tcp", cfg.Pprof); err != nil {
			return nil, fmt.Errorf("listening for pprof: %w", err)
		}
		a.pprofSrv = &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: cfg.ReadHeaderTimeout}
	}

	return a, nil
}

// replica names this process among the replicas in its traces: the
// processor's --kafka-instance-id (by default the host name), else the
// host name.
func replica(cfg config.Config) string {
	if cfg.KafkaInstanceID != "" {
		return cfg.KafkaInstanceID
	}
	host, _ := os.Hostname()
	return host
}

// joinChecks runs every check and joins their errors.
func joinChecks(checks []func() error) error {
	var errs []error
	for _, check := range checks {
		errs = append(errs, check())
	}
	return errors.Join(errs...)
}

// Addr returns the address the HTTP server listens on.
func (a *App) Addr() net.Addr { return a.ln.Addr() }

// Run runs the platform until ctx ends (or a part fails), then shuts down
// within cfg.ShutdownTimeout, in this order, each stage once the one
// before has stopped:
//
//  1. not ready; stream clients told to reconnect and in-flight requests
//     finished, while the processor still runs (a request waits for its
//     acknowledgement); the sources (MQTT, the demo), the offline alarms
//     and the background loops stop;
//  2. the Kafka producer flushes what the gateway took;
//  3. the event log drains into the store through the processor: the
//     in-process log to its end; a Kafka processor after its current
//     commit (the rest stays in Kafka, for the next processor);
//  4. the hot-window writer writes what the drain acknowledged;
//  5. the registry persists the machines registered meanwhile;
//  6. notes, then alarms (with PostgreSQL they write through the store's
//     pool), the store, Redis and the dedup key journal close;
//  7. the spans still buffered are exported.
//
// It returns every error met, joined.
func (a *App) Run(ctx context.Context) error {
	g := runGroup{
		// Everything is built and the processor runs: ready from the
		// first request served.
		started: func() { a.ready.Store(true) },
		stopping: func() {
			a.ready.Store(false)
			a.logger.Info("shutting down", "timeout", a.cfg.ShutdownTimeout.String())
		},
	}
	g.add(append([]part{a.serveHTTP(), a.servePprof(), {name: "stopping the live stream", run: a.hub.Run}}, a.background...)...)
	if a.producer != nil {
		g.add(part{name: "flushing the Kafka producer", stop: func(context.Context) error { a.producer.Close(); return nil }})
	}
	if a.proc != nil {
		g.add(a.drainLog())
	}
	if a.hotW != nil {
		g.add(part{name: "writing the hot window", run: a.hotW.Run})
	}
	g.add(part{name: "persisting the registry", run: a.registry.Run})
	g.add(closer("closing notes", a.notes.Close))
	if a.cmdStore != nil {
		g.add(closer("closing commands", a.cmdStore.Close))
	}
	g.add(closer("closing alarms", a.alarms.Close))
	if a.alarmDelivery.hook != nil {
		g.add(closer("closing the alarm outbox", a.alarmDelivery.hook.Close))
	}
	if a.store != nil {
		g.add(closer("closing store", a.store.Close))
	}
	if a.rdb != nil {
		g.add(part{name: "closing redis", stop: func(context.Context) error { a.rdb.Close(); return nil }})
	}
	if a.keys != nil {
		g.add(closer("closing dedup key journal", a.keys.Close))
	}
	// Last, so that the spans of the drain are exported too.
	g.add(part{name: "flushing traces", stop: a.tracing.Shutdown})
	err := g.run(ctx, a.cfg.ShutdownTimeout)
	a.logger.Info("stopped")
	return err
}

// closer is a part that only closes something, its error wrapped in name.
func closer(name string, close func() error) part {
	return part{name: name, stop: func(context.Context) error {
		if err := close(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}}
}

// serveHTTP is the HTTP server: stopping it drains the stream clients
// (told to reconnect) and the in-flight requests, for at most the
// shutdown deadline, then cuts what is left.
func (a *App) serveHTTP() part {
	return part{
		name: "draining clients",
		run: func(context.Context) error {
			scheme := "http://"
			if a.sec.tls != nil {
				scheme = "https://"
			}
			addr := a.ln.Addr().String()
			a.logger.Info("listening", "addr", addr, "url", scheme+addr+"/", "data_dir", a.cfg.DataDir, "version", a.version)
			lim := netutil.LimitListener(a.ln, a.cfg.MaxConns)
			var err error
			if a.sec.tls != nil {
				err = a.srv.ServeTLS(lim, "", "")
			} else {
				err = a.srv.Serve(lim)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving http: %w", err)
			}
			return nil
		},
		stop: func(ctx context.Context) error {
			var sg errgroup.Group
			sg.Go(func() error { return a.hub.Shutdown(ctx) })
			sg.Go(func() error { return a.srv.Shutdown(ctx) })
			if err := sg.Wait(); err != nil {
				a.logger.Warn("draining clients", "err", err)
				a.srv.Close()
			}
			return nil
		},
	}
}

// servePprof is the profiles' listener (--pprof), closed at once on
// shutdown; without --pprof, nothing.
func (a *App) servePprof() part {
	if a.pprofSrv == nil {
		return part{name: "closing pprof"}
	}
	return part{
		name: "closing pprof",
		run: func(context.Context) error {
			a.logger.Info("serving profiles", "addr", a.pprofLn.Addr().String())
			if err := a.pprofSrv.Serve(a.pprofLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving pprof: %w", err)
			}
			return nil
		},
		stop: func(context.Context) error { return a.pprofSrv.Close() },
	}
}

// drainLog is the processor. Stopping it drains the event log into the
// store: the in-process log is closed and processed to its end; a Kafka
// processor is stopped after its current commit (its context cancelled),
// and what it consumed is stored with its offsets.
func (a *App) drainLog() part {
	p := part{name: "draining the event log", run: a.proc.Run}
	if a.events != nil {
		p.stop = func(context.Context) error { a.events.Close(); return nil }
		return p
	}
	p.run = func(ctx context.Context) error {
		if err := a.proc.Run(ctx); !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
	return p
}

// prometheusAPI is the Prometheus query API over the store's
// PromQueryable, or an answer saying the store does not serve PromQL.
func prometheusAPI(cfg config.Config, st store.Store, list func() []twin.Info, version string, logger *slog.Logger, reg prometheus.Registerer) http.Handler {
	pq, ok := st.(store.PromQueryable)
	if !ok {
		return promapi.Unavailable(fmt.Sprintf("the %s store does not serve PromQL in this version", cfg.Store))
	}
	return promapi.New(pq.PromQueryable(), list, promapi.Options{
		Attributes: cfg.Prometheus.Attributes,
		MaxSeries:  cmp.Or(cfg.Prometheus.MaxSeries, -1),
		MaxSamples: cfg.Prometheus.MaxSamples,
		Timeout:    cfg.Prometheus.Timeout,
		Version:    version,
		Logger:     logger.With("component", "promapi"),
		Registerer: reg,
	})
}

// registerMachines registers the machines of b's events the registry does
// not know, at b's arrival time: a backfilled machine is listed in the
// fleet, though nothing of it is live.
func registerMachines(registry *twin.Registry, b *telemetry.Batch) {
	at := time.UnixMilli(b.Received)
	for i := range b.Events {
		if m := b.Events[i].Machine; i == 0 || m != b.Events[i-1].Machine {
			registry.AutoRegister(m, at)
		}
	}
}

// lpMissingMachine is the validated --lp-missing-machine.
func lpMissingMachine(s string) ingest.MissingMachine {
	m, _ := ingest.ParseMissingMachine(s) // config.Validate checked it
	return m
}
