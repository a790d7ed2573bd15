// Package app is twinline's composition root: it builds every part from the
// configuration, wires them source → ingest → log → engine → sinks, runs
// them under one supervisor and stops them in reverse order.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/eventlog/kafka"
	"github.com/twinline/twinline/internal/hot"
	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/keylog"
	"github.com/twinline/twinline/internal/memlimit"
	"github.com/twinline/twinline/internal/pipeline"
	"github.com/twinline/twinline/internal/sim"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
	"github.com/twinline/twinline/internal/web"
)

// restoreWindow is how far back start-up looks for each series' latest value.
const restoreWindow = 10 * time.Minute

// registryFlushInterval is how often auto-registered machines are persisted.
const registryFlushInterval = 5 * time.Second

// App is the platform, built and listening, not yet running.
type App struct {
	cfg     config.Config
	logger  *slog.Logger
	version string

	store store.Store
	// runners are the store's and backends' background loops, run under
	// Run's supervisor; checks are their readiness checks.
	runners []func(context.Context) error
	checks  []func() error
	// degraded are the checks of parts that can fail without making the
	// server unready (Redis: fan-out, hot window, rate limits).
	degraded []func() error
	rdb      *redis.Client // nil without --redis-url
	hot      *hot.Redis    // nil without --redis-url
	hotW     *hotWriter    // nil without --redis-url
	twins    *twin.Twins
	notes    *twin.Notes
	alarms   *twin.Alarms
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
	a := &App{cfg: cfg, logger: logger, version: version}
	// On an error, release what was built, newest first.
	defer func() {
		if err != nil {
			for i := len(a.cleanup) - 1; i >= 0; i-- {
				a.cleanup[i]()
			}
		}
	}()

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
	registry, noteStore, alarmStore, err := a.openTwinStores(ctx)
	if err != nil {
		return nil, err
	}
	notes := twin.NewNotes(noteStore, time.Now)
	a.notes = notes
	a.cleanup = append(a.cleanup, func() { notes.Close() })
	twins, err := twin.OpenWith(ctx, registry, cfg.OfflineAfter, cfg.MedianWindow, time.Now, logger.With("component", "twin"))
	if err != nil {
		return nil, fmt.Errorf("opening registry: %w", err)
	}
	if pr, ok := registry.(*postgres.Registry); ok {
		// Registry writes of the other replicas reach this one's twins.
		twinLog := logger.With("component", "twin")
		pr.OnChange(func(ids []string) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := twins.Refresh(ctx, ids, pr.Get, pr.Snapshot); err != nil {
				twinLog.Warn("refreshing registry entries changed by another replica", "err", err)
			}
		})
	}
	if st != nil {
		if err := restoreLatest(ctx, st, twins, time.Now(), cfg.MaxFuture, cfg.MedianWindow); err != nil {
			return nil, err
		}
	}
	a.twins = twins
	for _, w := range []struct {
		label string
		d     time.Duration
	}{{"1m", time.Minute}, {"5m", 5 * time.Minute}} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "twinline_fleet_events_per_second",
			Help:        "Events per second across the fleet over the window (server time).",
			ConstLabels: prometheus.Labels{"window": w.label},
		}, func() float64 { return twins.FleetRate(w.d) }))
	}

	alarms, err := twin.NewAlarms(ctx, alarmStore, cfg.OfflineAfter)
	if err != nil {
		return nil, err
	}
	a.alarms = alarms
	a.cleanup = append(a.cleanup, func() { alarms.Close() })
	// Alarm changes go out in the order they happen, each followed by the
	// machine's status: its liveness, and whether it is in alarm.
	alarms.OnChange(func(al twin.Alarm, alarmed bool) {
		a.hub.PublishAlarm(hub.Alarm(al))
		m, err := twins.Get(al.Machine)
		if err != nil {
			return // deleted
		}
		a.hub.PublishStatus(al.Machine, twin.Liveness(m.Status, al), alarmed, m.LastSeen)
	})
	// A machine that stays silent from now on gets its offline alarm.
	var known []string
	for _, m := range twins.List() {
		known = append(known, m.ID)
	}
	if a.processes() {
		alarms.Expect(known, time.Now())
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
		// The samples other replicas processed keep this replica's twins
		// current: status, lastSeen, latest values and rates.
		hubOpts.OnRemoteSamples, hubOpts.OnRemoteAlarm, hubOpts.OnRemoteMedians = a.observeRemoteSamples, a.observeRemoteAlarm, a.observeRemoteMedians
		a.hot = hot.NewRedis(rdb, hot.RedisOptions{Options: hot.Options{Window: cfg.HotWindow}, Prefix: cfg.RedisPrefix})
		a.hotW = newHotWriter(a.hot, logger.With("component", "hot"), reg)
		a.degraded = append(a.degraded, a.hot.Ready)
	}
	a.hub = hub.New(hubOpts, logger, reg)
	if rdb != nil {
		a.degraded = append(a.degraded, a.hub.Ready)
	}
	sec, err := a.openSecurity(ctx, rdb, reg)
	if err != nil {
		return nil, err
	}
	a.sec = sec
	var ingestLimit, streamLimit func(http.Handler) http.Handler
	if rateLimited(cfg) {
		il, sl, err := newLimiters(cfg, rdb, logger.With("component", "ratelimit"), reg)
		if err != nil {
			return nil, err
		}
		ingestLimit, streamLimit = il.Middleware, sl.Middleware
		a.degraded = append(a.degraded, il.Ready, sl.Ready)
	}
	alarmLog := logger.With("component", "alarms")
	var medians []twin.MedianUpdate // reused by the sink goroutine
	sinks := pipeline.Sinks{
		Batch: func(b *telemetry.Batch, samples []telemetry.Sample) {
			twins.Observe(b, samples)
			a.hub.PublishSamples(samples, b.Received)
			if a.hotW != nil {
				a.hotW.add(samples)
			}
			if _, err := alarms.Seen(samples, b.Received); err != nil {
				alarmLog.Error("journaling alarms", "err", err)
			}
		},
		Group: func(released []telemetry.Sample, windows []stream.Window) {
			medians = twins.ObserveReleased(released, medians[:0])
			a.publishMedians(medians)
			if _, err := alarms.Observe(released, twins.Thresholds); err != nil {
				alarmLog.Error("journaling alarms", "err", err)
			}
			a.publishWindows(windows)
		},
	}
	engineCfg := stream.EngineConfig{
		Lateness:     cfg.Lateness,
		Window:       cfg.Window,
		WindowGrace:  cfg.WindowGrace,
		DedupHorizon: cfg.DedupHorizon,
		DedupMaxKeys: cfg.DedupMaxKeys,
		MaxBuffered:  10_000,
		EvictAfter:   stream.DefaultEngineConfig().EvictAfter,
	}
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
		if err := a.openKafka(st, sinks, engineCfg, reg); err != nil {
			return nil, err
		}
	}

	apiOpts := api.Options{
		MaxBodyBytes:               cfg.MaxBodyBytes,
		MaxDecompressedBytes:       cfg.MaxDecompressedBytes,
		MaxLineBytes:               cfg.MaxLineBytes,
		Limits:                     ingestLimits(cfg),
		MachineTags:                cfg.LPMachineTags,
		OutOfOrderWindow:           cfg.OutOfOrderWindow,
		MaxFuture:                  cfg.MaxFuture,
		MaxInflightIngest:          cfg.MaxInflightIngest,
		ReadTimeout:                cfg.ReadTimeout,
		ReadIdleTimeout:            cfg.ReadIdleTimeout,
		IngestMemory:               memlimit.IngestBudget(cfg.IngestMemory),
		MaxInflightIngestPerClient: cfg.MaxInflightIngestPerClient,
		MaxMachines:                cfg.MaxMachines,
		Lateness:                   cfg.Lateness,
		Role:                       cfg.Role,
		Security: api.Security{
			AllowedHosts:     allowedHosts(cfg),
			TrustedProxies:   trustedProxies(cfg),
			AuthHeader:       cfg.AuthHeader,
			AuthHeaderScopes: authHeaderScopes(cfg),
			MetricsAuth:      metricsAuth(cfg),
			SessionTTL:       cfg.SessionTTL,
		},
	}
	a.stamper = ingest.NewStamper()
	deps := api.Deps{
		Submit:  a.submitFn,
		Stamper: a.stamper,
		Store:   st,
		Twins:   twins,
		Notes:   notes,
		Alarms:  alarms,
		Publish: func(n twin.Note) { a.hub.PublishNote(hub.Note(n)) },
		Stream:  a.hub,
		StreamContext: func(ctx context.Context, visible func(string) bool, client string) context.Context {
			if visible != nil {
				ctx = hub.WithFilter(ctx, visible)
			}
			return hub.WithClientKey(ctx, client)
		},
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		UI:      web.Handler(),
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
	}
	if a.hot != nil {
		deps.Hot = a.hot
	}
	handler := api.New(apiOpts, deps)

	if a.submitFn != nil {
		if err := a.openMQTT(reg); err != nil {
			return nil, err
		}
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

// processes reports whether this replica processes data (runs the engine):
// roles all and processor.
func (a *App) processes() bool { return a.cfg.Role.Processes() }

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

// Run runs the platform until ctx ends, then shuts down gracefully: not
// ready first, stream clients told to reconnect, in-flight requests
// finished, the log drained into the store, the registry flushed, the store
// closed.
func (a *App) Run(ctx context.Context) (err error) {
	cfg, logger := a.cfg, a.logger
	ln, srv, h, twins := a.ln, a.srv, a.hub, a.twins
	defer func() {
		// Alarms and notes first: with PostgreSQL they write through the
		// store's pool.
		if cerr := a.notes.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing notes: %w", cerr))
		}
		if cerr := a.alarms.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing alarms: %w", cerr))
		}
		if a.store != nil {
			if cerr := a.store.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("closing store: %w", cerr))
			}
		}
		if a.rdb != nil {
			a.rdb.Close()
		}
		if a.keys != nil {
			if cerr := a.keys.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("closing dedup key journal: %w", cerr))
			}
		}
	}()

	// The processor outlives the HTTP server: in-flight requests wait for
	// their acknowledgement while the server shuts down.
	procCtx, procCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer procCancel()
	// The hot-window writer outlives the processor: it takes what the
	// drain at shutdown acknowledges.
	hotCtx, hotCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hotCancel()
	hotDone := make(chan struct{})
	go func() {
		defer close(hotDone)
		if a.hotW != nil {
			_ = a.hotW.Run(hotCtx, 2*time.Second)
		}
	}()
	procDone := make(chan error, 1)
	if a.proc != nil {
		go func() {
			err := a.proc.Run(procCtx)
			if a.events == nil && errors.Is(err, context.Canceled) {
				err = nil // Kafka, stopped: what it consumed is stored with its offsets
			}
			procDone <- err
		}()
	} else {
		procDone <- nil
	}

	// Everything is built and the processor runs: ready from the first
	// request served.
	a.ready.Store(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		scheme := "http://"
		if a.sec.tls != nil {
			scheme = "https://"
		}
		logger.Info("listening", "addr", ln.Addr().String(), "url", scheme+ln.Addr().String()+"/", "data_dir", cfg.DataDir, "version", a.version)
		lim := netutil.LimitListener(ln, cfg.MaxConns)
		var err error
		if a.sec.tls != nil {
			err = srv.ServeTLS(lim, "", "")
		} else {
			err = srv.Serve(lim)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving http: %w", err)
		}
		return nil
	})
	if a.pprofSrv != nil {
		g.Go(func() error {
			logger.Info("serving profiles", "addr", a.pprofLn.Addr().String())
			if err := a.pprofSrv.Serve(a.pprofLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving pprof: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			return a.pprofSrv.Close()
		})
	}
	for _, run := range a.runners {
		g.Go(func() error { return run(gctx) })
	}
	g.Go(func() error { return h.Run(gctx) })
	g.Go(func() error { return twins.Run(gctx, registryFlushInterval) })
	if a.processes() {
		// Offline alarms are raised where data is processed: a replica
		// that sees none would take every machine for offline.
		g.Go(func() error { return a.watchOffline(gctx) })
	}
	if cfg.Demo {
		simulator := sim.New(sim.Config{Machines: cfg.DemoMachines, Rate: cfg.DemoRate, Seed: time.Now().UnixNano(), Interval: 100 * time.Millisecond},
			func(ctx context.Context, events []telemetry.Event) error {
				// The demo fleet is a well-behaved client: it waits for room.
				_, _, err := a.submit(ctx, &telemetry.Batch{Events: events, Protocol: "demo"})
				return err
			}, time.Now)
		if err := registerDemo(twins, simulator.Machines()); err != nil {
			logger.Warn("registering the demo fleet", "err", err)
		}
		a.alarms.Expect(machineIDs(simulator.Machines()), time.Now())
		g.Go(func() error {
			logger.Info("demo fleet simulator running", "machines", cfg.DemoMachines, "rate", cfg.DemoRate)
			if err := simulator.Run(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("running demo simulator: %w", err)
			}
			return nil
		})
	}
	// One deadline for the whole shutdown, so it fits in an orchestrator's
	// grace period: draining clients, then the log.
	var deadline time.Time
	g.Go(func() error {
		<-gctx.Done()
		a.ready.Store(false)
		logger.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
		deadline = time.Now().Add(cfg.ShutdownTimeout)
		sdCtx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
		var sg errgroup.Group
		sg.Go(func() error { return h.Shutdown(sdCtx) })
		sg.Go(func() error { return srv.Shutdown(sdCtx) })
		if err := sg.Wait(); err != nil {
			logger.Warn("draining clients", "err", err)
			srv.Close()
		}
		return nil
	})
	err = g.Wait()

	// Drain the log into the store: the in-process log to its end; Kafka's
	// producer flushes, its processor stops after its current commit (the
	// rest stays in Kafka, for the next processor).
	if a.producer != nil {
		a.producer.Close()
	}
	if a.events != nil {
		a.events.Close()
	} else {
		procCancel()
	}
	drain := time.NewTimer(max(time.Until(deadline), time.Second))
	defer drain.Stop()
	select {
	case perr := <-procDone:
		err = errors.Join(err, perr)
	case <-drain.C:
		procCancel()
		err = errors.Join(err, <-procDone, errors.New("draining the event log: timed out"))
	}
	hotCancel()
	<-hotDone
	if ferr := twins.Flush(); ferr != nil {
		err = errors.Join(err, fmt.Errorf("persisting registry: %w", ferr))
	}
	logger.Info("stopped")
	return err
}
