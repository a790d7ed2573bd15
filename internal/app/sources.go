package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/sim"
	"github.com/twinline/twinline/internal/source/mqtt"
	"github.com/twinline/twinline/internal/telemetry"
)

// ingestLimits are the limits every ingest path (HTTP, MQTT) decodes with.
func ingestLimits(cfg config.Config) telemetry.Limits {
	l := telemetry.DefaultLimits()
	l.MaxMetricsPerEvent = cfg.MaxMetricsPerEvent
	return l
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
			AdmitMachine: func(id string) string { return a.registry.Admit(id, cfg.MaxMachines) },
			Stamper:      a.stamper,
		},
		Retention: cfg.Retention,
		MaxFuture: cfg.MaxFuture,
	}
	deps := mqtt.Deps{
		Control:    a.delivery.handlers(),
		Submit:     a.submit,
		Register:   a.registry.Locate,
		Logger:     a.logger.With("component", "mqtt"),
		Registerer: reg,
		Tracer:     a.tracing.Tracer("github.com/twinline/twinline/internal/source/mqtt"),
	}
	if cfg.MQTTListen != "" || cfg.MQTTTLSListen != "" {
		bdeps := deps
		bdeps.Authenticate = a.sec.mqttAuthenticate(cfg)
		bdeps.Authorize = func(_ context.Context, id auth.Identity, machine string) error {
			if reason := a.registry.AdmitFor(id, machine); reason != "" {
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
		a.broker = br
		a.delivery.add(br, false)
		a.background = append(a.background, part{name: "stopping the MQTT broker", run: br.Run})
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
		a.background = append(a.background, part{name: "stopping the MQTT subscriber", run: sub.Run})
		a.delivery.add(sub, true)
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

// openDemo builds the demo fleet (--demo): registered with its alarm
// thresholds, expected by the offline alarms, and sending to the event log
// like a well-behaved client, waiting for room (submit).
func (a *App) openDemo() {
	cfg := a.cfg
	simulator := sim.New(sim.Config{Machines: cfg.DemoMachines, Rate: cfg.DemoRate, Seed: time.Now().UnixNano()},
		func(ctx context.Context, events []telemetry.Event) error {
			_, _, err := a.submit(ctx, &telemetry.Batch{Events: events, Protocol: "demo"})
			return err
		}, time.Now)
	if err := sim.Register(a.registry, simulator.Machines()); err != nil {
		a.logger.Warn("registering the demo fleet", "err", err)
	}
	a.alarms.Expect(sim.IDs(simulator.Machines()), time.Now())
	a.background = append(a.background, part{name: "stopping the demo fleet", run: func(ctx context.Context) error {
		a.logger.Info("demo fleet simulator running", "machines", cfg.DemoMachines, "rate", cfg.DemoRate)
		if err := simulator.Run(ctx); err != nil && ctx.Err() == nil {
			return fmt.Errorf("running demo simulator: %w", err)
		}
		return nil
	}})
	if a.twins == nil || a.commands == nil {
		return
	}
	// The demo machines are devices too: they follow their desired
	// documents and carry out their commands, in process.
	twins, commands := a.twins, a.commands
	ctl := sim.ControlFuncs{
		DesiredFunc: func(ctx context.Context, m string, after uint64) (uint64, map[string]any, error) {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			tw, err := twins.Wait(wctx, m, after)
			if err != nil {
				return 0, nil, err
			}
			return tw.Version, tw.Desired, nil
		},
		ReportFunc: func(ctx context.Context, m string, patch map[string]any) error {
			b, err := json.Marshal(patch)
			if err != nil {
				return err
			}
			_, err = twins.PatchReported(ctx, m, b, "demo")
			return err
		},
		CommandsFunc: func(ctx context.Context, m string, wait time.Duration) ([]sim.Cmd, error) {
			cs, err := commands.FetchVia(ctx, m, wait, "demo")
			if err != nil {
				return nil, err
			}
			out := make([]sim.Cmd, len(cs))
			for i, c := range cs {
				out[i] = sim.Cmd{ID: c.ID, Name: c.Name, Params: c.Params}
			}
			return out, nil
		},
		RespondFunc: func(ctx context.Context, m, id, state string, result any, reason string) error {
			_, err := commands.Respond(ctx, m, id, control.Response{State: control.State(state), Result: result, Reason: reason, By: "demo", Via: "demo"})
			return err
		},
	}
	a.background = append(a.background, part{name: "stopping the demo devices", run: func(ctx context.Context) error {
		return simulator.RunControl(ctx, ctl, sim.ControlConfig{}, a.logger.With("component", "demo_devices"))
	}})
}

// MQTTAddr is the address of the embedded MQTT broker's listener, nil when
// it does not run.
func (a *App) MQTTAddr() net.Addr {
	if a.broker == nil {
		return nil
	}
	return a.broker.Addr()
}
