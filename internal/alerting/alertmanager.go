package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/twin"
)

// Alert names, one per alarm kind.
const (
	AlertHigh    = "TwinlineThresholdHigh"
	AlertLow     = "TwinlineThresholdLow"
	AlertOffline = "TwinlineMachineOffline"
)

// Alert is one alert of Alertmanager's API v2 (PostableAlert): its JSON
// is what POST /api/v2/alerts takes.
type Alert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// AlertOf is the alert of an alarm at time now: firing (endsAt = now +
// hold, the time Alertmanager resolves it by itself unless it is sent
// again) while the alarm is active, resolved (endsAt = the clear time)
// once it is cleared.
func AlertOf(al twin.Alarm, where Machine, external string, now time.Time, hold time.Duration) Alert {
	name, severity := AlertOffline, "warning"
	switch al.Kind {
	case twin.AlarmHigh:
		name, severity = AlertHigh, "critical"
	case twin.AlarmLow:
		name, severity = AlertLow, "critical"
	}
	labels := map[string]string{"alertname": name, "machine": al.Machine, "severity": severity, "kind": al.Kind}
	for k, v := range map[string]string{"site": where.Site, "line": where.Line, "metric": al.Metric} {
		if v != "" { // an empty label is no label to Alertmanager
			labels[k] = v
		}
	}
	ann := map[string]string{"alarm_id": al.ID}
	var summary string
	switch al.Kind {
	case twin.AlarmOffline:
		summary = fmt.Sprintf("Machine %s is offline (no data)", al.Machine)
	default:
		dir := "above"
		if al.Kind == twin.AlarmLow {
			dir = "below"
		}
		summary = fmt.Sprintf("%s of machine %s is %s its threshold", al.Metric, al.Machine, dir)
		if al.Value != nil && al.Limit != nil {
			summary = fmt.Sprintf("%s of machine %s is %s, %s its threshold %s", al.Metric, al.Machine,
				formatFloat(*al.Value), dir, formatFloat(*al.Limit))
		}
	}
	ann["summary"] = summary
	if al.Value != nil {
		ann["value"] = formatFloat(*al.Value)
	}
	if al.Limit != nil {
		ann["threshold"] = formatFloat(*al.Limit)
	}
	link := DashboardURL(external, al.Machine)
	if link != "" {
		ann["dashboard"] = link
	}
	if al.Acked {
		ann["acknowledged_by"] = al.AckedBy
	}
	a := Alert{Labels: labels, Annotations: ann, StartsAt: al.RaisedAt.UTC(), EndsAt: now.Add(hold).UTC(), GeneratorURL: link}
	if al.State == twin.AlarmCleared && al.ClearedAt != nil {
		a.EndsAt = al.ClearedAt.UTC()
	}
	return a
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// AlertmanagerOptions configures an Alertmanager notifier.
type AlertmanagerOptions struct {
	// URLs are the Alertmanagers' base URLs (http://host:9093); each one
	// gets every alert, as Prometheus sends to each.
	URLs []string
	// ExternalURL is where users reach the dashboard (for links).
	ExternalURL string
	// Resend is how often the active alarms are sent again (default 1 min,
	// Prometheus' resend delay); an alert holds for 4 × Resend.
	Resend time.Duration
	// Timeout bounds one post (default 10 s).
	Timeout time.Duration
	Client  *http.Client
	Locate  Locate
	// Active lists the active alarms.
	Active  func() []twin.Alarm
	Now     func() time.Time
	Logger  *slog.Logger
	Metrics *Metrics
}

// maxAlertBatch is the most alerts one post carries (Prometheus' too).
const maxAlertBatch = 256

// maxAlertStates bounds the delivery states kept of cleared alarms.
const maxAlertStates = 10_000

// Alertmanager sends the alarms to Alertmanager: a change at once (Notify),
// and every active alarm again every Resend, so an Alertmanager that
// restarted or missed a post learns them; a cleared alarm is sent once
// resolved. A failed post is tried again with backoff. Replicas may each
// send: Alertmanager merges identical alerts.
type Alertmanager struct {
	opts AlertmanagerOptions

	mu       sync.Mutex
	pending  map[string]twin.Alarm // changed since the last accepted post
	states   map[string]*State
	clearedQ []string // ids of cleared alarms with a state, oldest first
	wake     chan struct{}
}

// NewAlertmanager returns a notifier; Run sends.
func NewAlertmanager(opts AlertmanagerOptions) *Alertmanager {
	if opts.Resend <= 0 {
		opts.Resend = time.Minute
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	senderDefaults(&opts.Client, &opts.Now, &opts.Logger, &opts.Locate)
	return &Alertmanager{opts: opts, pending: map[string]twin.Alarm{}, states: map[string]*State{}, wake: make(chan struct{}, 1)}
}

// Notify queues an alarm change to send at once; it does not block.
func (n *Alertmanager) Notify(al twin.Alarm) {
	n.mu.Lock()
	prev, had := n.pending[al.ID]
	if !had || prev.State != al.State {
		n.resetState(al)
	}
	n.pending[al.ID] = al
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// resetState starts the state of an alarm's new state (firing, then
// resolved) as pending; n.mu must be held.
func (n *Alertmanager) resetState(al twin.Alarm) {
	st := n.states[al.ID]
	if st == nil {
		st = &State{}
		n.states[al.ID] = st
	}
	if al.State == twin.AlarmCleared {
		n.clearedQ = append(n.clearedQ, al.ID)
		if len(n.clearedQ) > maxAlertStates {
			delete(n.states, n.clearedQ[0])
			n.clearedQ = n.clearedQ[1:]
		}
	}
	*st = State{State: StatePending}
}

// State returns the delivery state of the alarm id (nil: none yet).
func (n *Alertmanager) State(id string) *State {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st := n.states[id]; st != nil {
		c := *st
		return &c
	}
	return nil
}

// Run sends until ctx ends: at once, on every change, every Resend, and
// after a failure with backoff (a failed resend is retried whole).
func (n *Alertmanager) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	failures := 0
	nextResend := time.Time{}
	retryAll := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.wake:
		case <-t.C:
		}
		all := retryAll || !n.opts.Now().Before(nextResend)
		if !n.opts.Now().Before(nextResend) {
			nextResend = n.opts.Now().Add(n.opts.Resend)
		}
		wait := nextResend.Sub(n.opts.Now())
		if !n.Send(ctx, all) {
			failures++
			retryAll = all
			wait = min(wait, Backoff(failures, time.Second, n.opts.Resend))
		} else {
			failures, retryAll = 0, false
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(max(wait, 0))
	}
}

// Send posts the changed alarms (all active ones too when all) to every
// Alertmanager; it reports whether they were accepted (by at least one:
// Alertmanagers of one cluster share alerts). Unaccepted changes stay
// queued for the next Send.
func (n *Alertmanager) Send(ctx context.Context, all bool) bool {
	now := n.opts.Now()
	hold := 4 * n.opts.Resend
	n.mu.Lock()
	batch := maps.Clone(n.pending)
	n.mu.Unlock()
	if all && n.opts.Active != nil {
		for _, al := range n.opts.Active() {
			if _, ok := batch[al.ID]; !ok {
				batch[al.ID] = al
			}
		}
	}
	if len(batch) == 0 {
		return true
	}
	ids := slices.SortedFunc(maps.Keys(batch), func(x, y string) int {
		xi, _ := strconv.ParseUint(x, 10, 64)
		yi, _ := strconv.ParseUint(y, 10, 64)
		return int(min(max(int64(xi)-int64(yi), -1), 1))
	})
	alerts := make([]Alert, 0, len(ids))
	for _, id := range ids {
		al := batch[id]
		alerts = append(alerts, AlertOf(al, n.opts.Locate(al.Machine), n.opts.ExternalURL, now, hold))
	}
	ok := true
	for start := 0; start < len(alerts); start += maxAlertBatch {
		end := min(start+maxAlertBatch, len(alerts))
		err := n.post(ctx, alerts[start:end])
		n.record(batch, ids[start:end], err, isPermanent(err), now)
		if err != nil {
			ok = false
		}
	}
	return ok
}

// record updates the states of the alarms ids after a post.
func (n *Alertmanager) record(batch map[string]twin.Alarm, ids []string, err error, permanent bool, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	outcome := outcomeDelivered
	switch {
	case err != nil && permanent:
		outcome = outcomeFailed
	case err != nil:
		outcome = outcomeRetry
	}
	n.opts.Metrics.count(targetAlertmanager, outcome, 1)
	for _, id := range ids {
		al := batch[id]
		st := n.states[id]
		if st == nil {
			n.resetState(al)
			st = n.states[id]
		}
		st.Attempts++
		switch {
		case err == nil:
			at := now.UTC()
			st.State, st.LastError, st.DeliveredAt = StateDelivered, "", &at
		case permanent:
			st.State, st.LastError = StateFailed, err.Error()
		default:
			st.State, st.LastError = StateRetrying, err.Error()
		}
		// An accepted (or refused for good) change leaves the queue,
		// unless the alarm changed again meanwhile.
		if cur, ok := n.pending[id]; ok && (err == nil || permanent) && cur.State == al.State && cur.Acked == al.Acked {
			delete(n.pending, id)
		}
	}
}

// post sends alerts to every Alertmanager; it fails when none accepted
// them, for good when each refused them for good.
func (n *Alertmanager) post(ctx context.Context, alerts []Alert) error {
	body, err := json.Marshal(alerts)
	if err != nil {
		return permanentIf(fmt.Errorf("encoding alerts: %w", err), true)
	}
	// Every Alertmanager gets them, as Prometheus sends them: peers share
	// silences and the notification log, not alerts. One acceptance is
	// enough; the next resend reaches the others again.
	var errs []error
	permanent, accepted := true, false
	for _, base := range n.opts.URLs {
		err := n.postOne(ctx, base, body)
		if err == nil {
			accepted = true
			continue
		}
		n.opts.Logger.Warn("sending alerts to alertmanager", "url", redactURL(base), "alerts", len(alerts), "err", err)
		errs = append(errs, err)
		permanent = permanent && isPermanent(err)
	}
	if accepted {
		return nil
	}
	return permanentIf(errors.Join(errs...), permanent)
}

func (n *Alertmanager) postOne(ctx context.Context, base string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.opts.Timeout)
	defer cancel()
	u := strings.TrimRight(base, "/") + "/api/v2/alerts"
	// Errors name only scheme://host: they reach every reader of GET
	// /api/v1/alarms (lastError); the log has the redacted URL.
	where := hostOnly(base)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return permanentIf(fmt.Errorf("posting to %s: %w", where, err), true)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "twinline")
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return fmt.Errorf("posting to %s: %w", where, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	return permanentIf(fmt.Errorf("posting to %s: %s: %s", where, resp.Status, strings.TrimSpace(string(msg))), !retryable(resp.StatusCode))
}

// senderDefaults fills the options both senders share and a caller may
// leave zero: a default HTTP client, the system clock, a discarding
// logger and a machine locator that knows no site or line.
func senderDefaults(client **http.Client, now *func() time.Time, logger **slog.Logger, locate *Locate) {
	if *client == nil {
		*client = &http.Client{}
	}
	if *now == nil {
		*now = time.Now
	}
	if *logger == nil {
		*logger = slog.New(slog.DiscardHandler)
	}
	if *locate == nil {
		*locate = func(string) Machine { return Machine{} }
	}
}
