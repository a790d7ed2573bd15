package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/alerting"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/twin"
)

// alarmDelivery is where alarms go beyond twinline: Alertmanager and a
// webhook, each nil when not configured.
type alarmDelivery struct {
	am   *alerting.Alertmanager
	hook *alerting.Webhook
}

// startAlarmDelivery wires --alertmanager-url and --alarm-webhook to the
// alarms: the webhook is the alarms' outbox (a file in the data directory,
// or the table alarm_outbox with PostgreSQL), delivered by every replica
// (claims keep them from sending one change twice); Alertmanager gets the
// alarms of the replicas that raise them (Processes), each sending its
// view — Alertmanager merges identical alerts.
func (a *App) startAlarmDelivery(alarms *twin.Alarms, registry *twin.Registry, reg prometheus.Registerer) (*alarmDelivery, error) {
	cfg := a.cfg
	d := &alarmDelivery{}
	if len(cfg.AlertmanagerURLs) == 0 && cfg.AlarmWebhook == "" {
		return d, nil
	}
	logger := a.logger.With("component", "alerting")
	metrics := alerting.NewMetrics(reg)
	locate := func(machine string) alerting.Machine {
		in, err := registry.Get(machine)
		if err != nil {
			return alerting.Machine{}
		}
		return alerting.Machine{Site: in.Site, Line: in.Line}
	}
	if cfg.AlarmWebhook != "" {
		var secret []byte
		if cfg.AlarmWebhookSecretFile != "" {
			b, err := os.ReadFile(cfg.AlarmWebhookSecretFile)
			if err != nil {
				return nil, fmt.Errorf("reading --alarm-webhook-secret-file: %w", err)
			}
			secret = []byte(strings.TrimSpace(string(b)))
			if len(secret) == 0 {
				return nil, fmt.Errorf("--alarm-webhook-secret-file %s is empty", cfg.AlarmWebhookSecretFile)
			}
		}
		var outbox alerting.Outbox
		if a.pg != nil {
			outbox = postgres.NewAlarmOutbox(a.pg)
		} else {
			ob, err := alerting.OpenFileOutbox(filepath.Join(cfg.DataDir, "alarm-outbox.jsonl"))
			if err != nil {
				return nil, err
			}
			outbox = ob
		}
		hook, err := alerting.NewWebhook(outbox, alerting.WebhookOptions{
			URL: cfg.AlarmWebhook, Secret: secret, ExternalURL: cfg.ExternalURL, Locate: locate,
			MaxPending: cfg.AlarmWebhookMaxPending, Logger: logger.With("target", "webhook"), Metrics: metrics,
		})
		if err != nil {
			outbox.Close()
			return nil, err
		}
		d.hook = hook
		a.cleanup = append(a.cleanup, func() { hook.Close() })
		alarms.SetOutbox(hook)
		a.background = append(a.background, part{name: "stopping the alarm webhook", run: hook.Run})
		registerOutboxGauges(reg, hook)
	}
	if len(cfg.AlertmanagerURLs) > 0 && cfg.Role.Processes() {
		d.am = alerting.NewAlertmanager(alerting.AlertmanagerOptions{
			URLs: cfg.AlertmanagerURLs, ExternalURL: cfg.ExternalURL, Resend: cfg.AlertmanagerResend, Locate: locate,
			Active: func() []twin.Alarm { return alarms.List(false, "") },
			Logger: logger.With("target", "alertmanager"), Metrics: metrics,
		})
		a.background = append(a.background, part{name: "stopping the Alertmanager notifier", run: d.am.Run})
	}
	return d, nil
}

// registerOutboxGauges exports the outbox's depth and the age of its
// oldest undelivered change, read at scrape time.
func registerOutboxGauges(reg prometheus.Registerer, hook *alerting.Webhook) {
	stats := func() alerting.OutboxStats {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, _ := hook.Stats(ctx)
		return st
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "twinline_alert_outbox_depth",
		Help: "Alarm changes waiting in the webhook outbox.",
	}, func() float64 { return float64(stats().Depth) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "twinline_alert_outbox_oldest_pending_age_seconds",
		Help: "Age of the oldest alarm change waiting in the webhook outbox (0: none).",
	}, func() float64 {
		st := stats()
		if st.Depth == 0 || st.Oldest.IsZero() {
			return 0
		}
		return time.Since(st.Oldest).Seconds()
	}))
}

// notify tells Alertmanager of an alarm change (an OnChange hook).
func (d *alarmDelivery) notify(al twin.Alarm) {
	if d.am != nil {
		d.am.Notify(al)
	}
}

// states returns the delivery state of the alarms ids at each configured
// target; nil when no target is configured.
func (d *alarmDelivery) states(ctx context.Context, ids []string) map[string]alerting.Delivery {
	if d.am == nil && d.hook == nil {
		return nil
	}
	out := make(map[string]alerting.Delivery, len(ids))
	var hook map[string]alerting.State
	if d.hook != nil {
		hook, _ = d.hook.States(ctx, ids) // the list answers without them
	}
	for _, id := range ids {
		var dl alerting.Delivery
		if d.am != nil {
			dl.Alertmanager = d.am.State(id)
		}
		if st, ok := hook[id]; ok {
			dl.Webhook = &st
		}
		if dl.Alertmanager != nil || dl.Webhook != nil {
			out[id] = dl
		}
	}
	return out
}
