// Package app is twinline's composition root: it builds every part from the
// configuration, wires them source → ingest → log → engine → sinks, runs
// them under one supervisor and stops them in reverse order.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/twinline/twinline/internal/api"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/keylog"
	"github.com/twinline/twinline/internal/log"
	"github.com/twinline/twinline/internal/sim"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
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

	store  *embedded.Store
	twins  *twin.Twins
	notes  *twin.Notes
	alarms *twin.Alarms
	log    *log.Log
	hub    *hub.Hub
	proc   *stream.Processor
	keys   *keylog.Log
	srv    *http.Server
	ln     net.Listener
	// pprof serves net/http/pprof on its own listener (nil: off).
	pprofSrv *http.Server
	pprofLn  net.Listener
	ready    atomic.Bool
}

// New builds every part from cfg and opens the listener, so a port in use or
// a locked data directory is reported before anything runs. The caller must
// call Run, which releases everything.
func New(ctx context.Context, cfg config.Config, logger *slog.Logger, version string) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	a := &App{cfg: cfg, logger: logger, version: version}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "twinline_build_info", Help: "Build information."}, []string{"version"})
	buildInfo.WithLabelValues(version).Set(1)
	reg.MustRegister(buildInfo)

	st, err := embedded.Open(filepath.Join(cfg.DataDir, "tsdb"), embedded.Options{
		Retention:        cfg.Retention,
		OutOfOrderWindow: cfg.OutOfOrderWindow,
		MaxFuture:        cfg.MaxFuture,
	}, logger.With("component", "store"), reg)
	if err != nil {
		return nil, fmt.Errorf("opening store: %w", err)
	}
	a.store = st
	defer func() {
		if err != nil {
			st.Close()
		}
	}()

	twins, err := twin.Open(filepath.Join(cfg.DataDir, "registry.json"), cfg.OfflineAfter, cfg.MedianWindow, time.Now, logger.With("component", "twin"))
	if err != nil {
		return nil, fmt.Errorf("opening registry: %w", err)
	}
	if err := restoreLatest(ctx, st, twins, time.Now(), cfg.MaxFuture, cfg.MedianWindow); err != nil {
		return nil, err
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

	notes, err := twin.OpenNotes(filepath.Join(cfg.DataDir, "notes.jsonl"), time.Now)
	if err != nil {
		return nil, err
	}
	a.notes = notes
	defer func() {
		if err != nil {
			notes.Close()
		}
	}()

	alarms, err := twin.OpenAlarms(filepath.Join(cfg.DataDir, "alarms.jsonl"), cfg.OfflineAfter)
	if err != nil {
		return nil, err
	}
	a.alarms = alarms
	defer func() {
		if err != nil {
			alarms.Close()
		}
	}()
	// Alarm changes go out in the order they happen, each followed by the
	// machine's status (alarm while any alarm of it is active).
	alarms.OnChange(func(al twin.Alarm, active bool) {
		a.hub.PublishEvent(al.Machine, "alarm", al)
		m, err := twins.Get(al.Machine)
		if err != nil {
			return // deleted
		}
		if active {
			m.Status = twin.StatusAlarm
		}
		a.hub.PublishEvent(al.Machine, "status", struct {
			Status   string `json:"status"`
			LastSeen int64  `json:"lastSeen,omitempty"`
		}{m.Status, m.LastSeen})
	})
	// A machine that stays silent from now on gets its offline alarm.
	var known []string
	for _, m := range twins.List() {
		known = append(known, m.ID)
	}
	alarms.Expect(known, time.Now())

	a.log = log.New(cfg.LogCapacity, reg)
	a.hub = hub.New(hub.Options{
		QueueSize:    cfg.StreamQueue,
		Heartbeat:    cfg.StreamHeartbeat,
		ReplaySize:   cfg.StreamReplay,
		WriteTimeout: cfg.StreamWriteTimeout,
		MaxClients:   cfg.MaxConns,
	}, logger, reg)
	alarmLog := logger.With("component", "alarms")
	var medians []twin.MedianUpdate // reused by the sink goroutine
	a.proc = stream.NewProcessor(a.log, st.Append, stream.Sinks{
		Batch: func(b *telemetry.Batch, samples []telemetry.Sample) {
			twins.Observe(b, samples)
			a.hub.PublishSamples(samples, b.Received)
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
	}, stream.EngineConfig{
		Lateness:     cfg.Lateness,
		Window:       cfg.Window,
		WindowGrace:  cfg.WindowGrace,
		DedupHorizon: cfg.DedupHorizon,
		DedupMaxKeys: cfg.DedupMaxKeys,
		MaxBuffered:  10_000,
	}, logger.With("component", "processor"), reg)

	// Keys of events with an id or seq outlive a restart: their retries
	// stay duplicates even when they carry another event time.
	kl, journaled, err := keylog.Open(filepath.Join(cfg.DataDir, "dedup-keys"), cfg.DedupMaxKeys)
	if err != nil {
		return nil, fmt.Errorf("opening dedup key journal: %w", err)
	}
	a.keys = kl
	defer func() {
		if err != nil {
			kl.Close()
		}
	}()
	a.proc.Remember(journaled)
	a.proc.JournalKeys(kl.Append)

	handler := api.New(api.Options{
		MaxBodyBytes:         cfg.MaxBodyBytes,
		MaxDecompressedBytes: cfg.MaxDecompressedBytes,
		MaxLineBytes:         cfg.MaxLineBytes,
		Limits: telemetry.Limits{
			MaxMetricsPerEvent: cfg.MaxMetricsPerEvent,
			MaxMachineIDLen:    telemetry.DefaultLimits().MaxMachineIDLen,
			MaxMetricNameLen:   telemetry.DefaultLimits().MaxMetricNameLen,
		},
		MachineTags:       cfg.LPMachineTags,
		OutOfOrderWindow:  cfg.OutOfOrderWindow,
		MaxFuture:         cfg.MaxFuture,
		MaxInflightIngest: cfg.MaxInflightIngest,
		ReadTimeout:       cfg.ReadTimeout,
		MaxMachines:       cfg.MaxMachines,
		Lateness:          cfg.Lateness,
	}, api.Deps{
		Log:     a.log,
		Store:   st,
		Twins:   twins,
		Notes:   notes,
		Alarms:  alarms,
		Publish: a.hub.PublishEvent,
		Stream:  a.hub,
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		UI:      web.Handler(),
		Ready: func() error {
			if !a.ready.Load() {
				return errors.New("starting or shutting down")
			}
			return nil
		},
		Clock:      time.Now,
		Logger:     logger.With("component", "api"),
		Registerer: reg,
	})

	a.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	a.srv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.With("component", "http").Handler(), slog.LevelWarn),
	}

	if cfg.Pprof != "" {
		if a.pprofLn, err = net.Listen("tcp", cfg.Pprof); err != nil {
			a.ln.Close()
			return nil, fmt.Errorf("listening for pprof: %w", err)
		}
		a.pprofSrv = &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: cfg.ReadHeaderTimeout}
	}

	return a, nil
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

// Addr returns the address the HTTP server listens on.
func (a *App) Addr() net.Addr { return a.ln.Addr() }

// Run runs the platform until ctx ends, then shuts down gracefully: not
// ready first, stream clients told to reconnect, in-flight requests
// finished, the log drained into the store, the registry flushed, the store
// closed.
func (a *App) Run(ctx context.Context) (err error) {
	cfg, logger := a.cfg, a.logger
	ln, srv, h, lg, proc, twins := a.ln, a.srv, a.hub, a.log, a.proc, a.twins
	defer func() {
		if cerr := a.store.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing store: %w", cerr))
		}
		if cerr := a.notes.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing notes: %w", cerr))
		}
		if cerr := a.alarms.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing alarms: %w", cerr))
		}
		if cerr := a.keys.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing dedup key journal: %w", cerr))
		}
	}()

	// The processor outlives the HTTP server: in-flight requests wait for
	// their acknowledgement while the server shuts down.
	procCtx, procCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer procCancel()
	procDone := make(chan error, 1)
	go func() { procDone <- proc.Run(procCtx) }()

	// Everything is built and the processor runs: ready from the first
	// request served.
	a.ready.Store(true)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		logger.Info("listening", "addr", ln.Addr().String(), "url", "http://"+ln.Addr().String()+"/", "data_dir", cfg.DataDir, "version", a.version)
		if err := srv.Serve(netutil.LimitListener(ln, cfg.MaxConns)); !errors.Is(err, http.ErrServerClosed) {
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
	g.Go(func() error { return h.Run(gctx) })
	g.Go(func() error { return twins.Run(gctx, registryFlushInterval) })
	g.Go(func() error { return a.watchOffline(gctx) })
	if cfg.Demo {
		simulator := sim.New(sim.Config{Machines: cfg.DemoMachines, Rate: cfg.DemoRate, Seed: time.Now().UnixNano(), Interval: 100 * time.Millisecond},
			logEmitter(lg), time.Now)
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

	// Drain the log into the store.
	lg.Close()
	drain := time.NewTimer(max(time.Until(deadline), time.Second))
	defer drain.Stop()
	select {
	case perr := <-procDone:
		err = errors.Join(err, perr)
	case <-drain.C:
		procCancel()
		err = errors.Join(err, <-procDone, errors.New("draining the event log: timed out"))
	}
	if ferr := twins.Flush(); ferr != nil {
		err = errors.Join(err, fmt.Errorf("persisting registry: %w", ferr))
	}
	logger.Info("stopped")
	return err
}

// offlineTick is how often machines are checked for silence.
const offlineTick = time.Second

// watchOffline raises offline alarms until ctx ends.
func (a *App) watchOffline(ctx context.Context) error {
	t := time.NewTicker(offlineTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if _, err := a.alarms.Tick(now); err != nil {
				a.logger.Error("journaling alarms", "component", "alarms", "err", err)
			}
		}
	}
}

// windowMessage is a window aggregate on the live stream.
type windowMessage struct {
	Metric string  `json:"metric"`
	Start  int64   `json:"start"`
	Size   int64   `json:"size"`
	Kind   string  `json:"kind"` // final, correction, late
	Count  int64   `json:"count"`
	Sum    float64 `json:"sum"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	Avg    float64 `json:"avg"`
}

// publishWindows pushes closed and corrected windows to the machines'
// stream subscribers.
func (a *App) publishWindows(ws []stream.Window) {
	for _, w := range ws {
		a.hub.PublishEvent(w.Machine, "window", windowMessage{
			Metric: w.Metric, Start: w.Start, Size: w.Size, Kind: w.Kind.String(),
			Count: w.Agg.Count, Sum: w.Agg.Sum, Min: w.Agg.Min, Max: w.Agg.Max, Avg: w.Agg.Avg(),
		})
	}
}

// medianValue is a metric's sliding median on the live stream, with the
// event time of the newest sample it covers.
type medianValue struct {
	Median float64 `json:"median"`
	Time   int64   `json:"t"`
}

// publishMedians pushes the medians updated by a released group, one
// message per machine: {"metrics":{"temp":{"median":71.2,"t":…}}}.
func (a *App) publishMedians(us []twin.MedianUpdate) {
	for i := 0; i < len(us); {
		j := i + 1
		for j < len(us) && us[j].Machine == us[i].Machine {
			j++
		}
		metrics := make(map[string]medianValue, j-i)
		for _, u := range us[i:j] {
			metrics[u.Metric] = medianValue{Median: u.Median, Time: u.Time}
		}
		a.hub.PublishEvent(us[i].Machine, "median", struct {
			Metrics map[string]medianValue `json:"metrics"`
		}{metrics})
		i = j
	}
}

// registerDemo registers the simulated machines that are not registered
// yet, with their site, line and an equipment temperature alarm at 90 °C
// that the simulator's overheat faults cross; machines an operator already
// registered are left as they are.
func registerDemo(twins *twin.Twins, machines []sim.Machine) error {
	high := 90.0
	infos := make([]twin.Info, len(machines))
	for i, m := range machines {
		infos[i] = twin.Info{
			ID: m.ID, Name: m.Kind + " " + m.ID, Site: m.Site, Line: m.Line,
			Thresholds: map[string]twin.Threshold{"temp": {High: &high, Deadband: 2, For: "10s"}},
			Attributes: map[string]any{"kind": m.Kind, "simulated": true},
		}
	}
	_, err := twins.RegisterMissing(infos)
	return err
}

func machineIDs(ms []sim.Machine) []string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	return ids
}

// logEmitter feeds simulated events straight into the log, waiting for room
// when it is full: the demo fleet is a well-behaved client.
func logEmitter(lg *log.Log) sim.Emit {
	return func(ctx context.Context, events []telemetry.Event) error {
		b := &telemetry.Batch{Events: events, Protocol: "demo"}
		for {
			b.Received = time.Now().UnixMilli()
			entry, err := lg.Append(b)
			if errors.Is(err, log.ErrFull) {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(100 * time.Millisecond):
					continue
				}
			}
			if err != nil {
				return err
			}
			_, err = entry.Wait(ctx)
			return err
		}
	}
}

// restoreLatest seeds the twins from the store at start-up: each series'
// latest value, and its median from its last medianWindow samples.
func restoreLatest(ctx context.Context, st store.Store, twins *twin.Twins, now time.Time, maxFuture time.Duration, medianWindow int) error {
	from, to := now.Add(-restoreWindow).UnixMilli(), now.Add(maxFuture).UnixMilli()
	keys, err := st.Series(ctx, from, to)
	if err != nil {
		return fmt.Errorf("listing recent series: %w", err)
	}
	var history []telemetry.Sample // one series at a time
	// Most series have enough samples in the last minute: read that first,
	// and the whole window only for those that do not.
	recent := max(from, now.Add(-time.Minute).UnixMilli())
	ring := make([]store.Point, medianWindow)
	for _, k := range keys {
		n := 0
		keep := func(p store.Point) bool { ring[n%len(ring)] = p; n++; return true }
		if err := st.Select(ctx, k, recent, to, keep); err != nil {
			return fmt.Errorf("reading latest of %s/%s: %w", k.Machine, k.Metric, err)
		}
		if n < len(ring) && recent > from {
			n = 0
			if err := st.Select(ctx, k, from, to, keep); err != nil {
				return fmt.Errorf("reading latest of %s/%s: %w", k.Machine, k.Metric, err)
			}
		}
		if n == 0 {
			continue
		}
		history = history[:0]
		for i := max(n-len(ring), 0); i < n; i++ { // oldest first
			p := ring[i%len(ring)]
			history = append(history, telemetry.Sample{Machine: k.Machine, Metric: k.Metric, Time: p.Time, Value: p.Value})
		}
		twins.Restore(history[len(history)-1:])
		twins.ObserveReleased(history, nil)
	}
	return nil
}
