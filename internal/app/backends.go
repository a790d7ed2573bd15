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

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/log"
	"github.com/twinline/twinline/internal/source/mqtt"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/embedded"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/telemetry"
)

// openMQTT builds the MQTT sources: the embedded broker (--mqtt-listen)
// and the subscriber to an external broker (--mqtt-broker). They feed the
// event log like the HTTP API, and acknowledge a QoS 1 message once its
// events are durable.
func (a *App) openMQTT(reg prometheus.Registerer) error {
	cfg := a.cfg
	if cfg.MQTTListen == "" && cfg.MQTTBroker == "" {
		return nil
	}
	ingestOpts := mqtt.IngestOptions{
		Decode: ingest.Options{
			Limits: telemetry.Limits{
				MaxMetricsPerEvent: cfg.MaxMetricsPerEvent,
				MaxMachineIDLen:    telemetry.DefaultLimits().MaxMachineIDLen,
				MaxMetricNameLen:   telemetry.DefaultLimits().MaxMetricNameLen,
			},
			MaxLineBytes: cfg.MaxLineBytes,
			MachineTags:  cfg.LPMachineTags,
			AdmitMachine: func(id string) string { return a.twins.Admit(id, cfg.MaxMachines) },
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
	if cfg.MQTTListen != "" {
		br, err := mqtt.NewBroker(cfg.MQTTListen, mqtt.BrokerOptions{Ingest: ingestOpts}, deps)
		if err != nil {
			return fmt.Errorf("starting the embedded MQTT broker: %w", err)
		}
		a.runners = append(a.runners, br.Run)
		a.checks = append(a.checks, br.Ready)
	}
	if cfg.MQTTBroker != "" {
		sub, err := mqtt.NewSubscriber(cfg.MQTTBroker, mqtt.SubscriberOptions{Ingest: ingestOpts}, deps)
		if err != nil {
			return fmt.Errorf("subscribing to the MQTT broker: %w", err)
		}
		a.runners = append(a.runners, sub.Run)
		a.checks = append(a.checks, sub.Ready)
	}
	return nil
}

// submit hands a batch from a source other than HTTP to the event log and
// waits until it is durable; while the log is full it waits for room.
func (a *App) submit(ctx context.Context, b *telemetry.Batch) (accepted, duplicates int, err error) {
	for {
		b.Received = time.Now().UnixMilli()
		entry, err := a.log.Append(b)
		switch {
		case errors.Is(err, log.ErrFull):
			select {
			case <-ctx.Done():
				return 0, 0, fmt.Errorf("%w: %w", mqtt.ErrBusy, ctx.Err())
			case <-time.After(50 * time.Millisecond):
				continue
			}
		case errors.Is(err, log.ErrTooLarge):
			return 0, 0, fmt.Errorf("%w: %w", mqtt.ErrUnprocessable, err)
		case err != nil:
			return 0, 0, err
		}
		res, err := entry.Wait(ctx)
		return res.Accepted, res.Duplicates, err
	}
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
		a.checks = append(a.checks, pg.Ready)
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
