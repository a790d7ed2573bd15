package alerting

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/twin"
)

// Webhook headers.
const (
	HeaderSignature = "X-Twinline-Signature" // sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">
	HeaderTimestamp = "X-Twinline-Timestamp" // Unix seconds of the attempt
	HeaderDelivery  = "X-Twinline-Delivery"  // the delivery id, stable across attempts
	HeaderEvent     = "X-Twinline-Event"     // alarm.raised, alarm.cleared, alarm.acknowledged
)

// Event is the JSON body of a webhook delivery: one alarm change.
type Event struct {
	// ID is the delivery id: a receiver that sees it twice (delivery is at
	// least once) drops the second.
	ID        string     `json:"id"`
	Type      string     `json:"type"` // alarm.raised, alarm.cleared, alarm.acknowledged
	At        time.Time  `json:"at"`   // when the change happened
	Alarm     twin.Alarm `json:"alarm"`
	Site      string     `json:"site,omitempty"`
	Line      string     `json:"line,omitempty"`
	Dashboard string     `json:"dashboard,omitempty"`
}

// eventTypes maps journal ops to event types.
var eventTypes = map[string]string{twin.OpRaise: "raised", twin.OpClear: "cleared", twin.OpAck: "acknowledged"}

// DeliveryID is the stable id of an alarm change: an alarm is raised,
// cleared and acknowledged at most once each.
func DeliveryID(alarmID, op string) string {
	return "alarm-" + alarmID + "-" + eventTypes[op]
}

// Sign returns the signature header value of body sent at timestamp ts
// (Unix seconds) with secret.
func Sign(secret []byte, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(strconv.FormatInt(ts, 10)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a delivery's signature header against its timestamp
// header and body, and that the timestamp is within tolerance of now (a
// replayed old delivery fails).
func Verify(secret []byte, signature, timestamp string, body []byte, now time.Time, tolerance time.Duration) error {
	ts, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil {
		return fmt.Errorf("bad timestamp %q", timestamp)
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("timestamp %d is %s away from now", ts, d.Round(time.Second))
	}
	if !hmac.Equal([]byte(signature), []byte(Sign(secret, ts, body))) {
		return errors.New("signature mismatch")
	}
	return nil
}

// WebhookOptions configures a webhook.
type WebhookOptions struct {
	URL string
	// Secret signs the deliveries (nil: unsigned).
	Secret      []byte
	ExternalURL string
	Locate      Locate
	// Timeout bounds one attempt (default 10 s); BackoffBase and
	// BackoffMax the waits between attempts (default 1 s doubling up to
	// 5 min, jittered).
	Timeout, BackoffBase, BackoffMax time.Duration
	// MaxPending bounds the undelivered messages (default 100 000): past
	// it a change is dropped, counted and logged.
	MaxPending int
	// Poll is how often Run looks for messages other replicas enqueued
	// (default 5 s).
	Poll    time.Duration
	Client  *http.Client
	Now     func() time.Time
	Logger  *slog.Logger
	Metrics *Metrics
}

// Webhook posts every alarm change to a URL from a durable outbox. It is
// the Alarms' twin.AlarmOutbox: Add takes a change as it is journaled,
// Sync puts the changes in the outbox before the alarm call returns; Run
// delivers them, in order per alarm, retried with backoff until the
// receiver answers 2xx (at least once: a receiver deduplicates by the
// delivery id). A 4xx other than 408, 425 and 429 fails the delivery for
// good.
type Webhook struct {
	opts   WebhookOptions
	outbox Outbox

	mu      sync.Mutex
	buf     []Message // added, not yet in the outbox
	depth   int       // in the outbox, as last seen
	dropped int       // since the last log
	wake    chan struct{}
}

var _ twin.AlarmOutbox = (*Webhook)(nil)

// NewWebhook returns a webhook delivering from outbox.
func NewWebhook(outbox Outbox, opts WebhookOptions) (*Webhook, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("alarm webhook URL %q: must be an http or https URL", redactURL(opts.URL))
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = time.Second
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 5 * time.Minute
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 100_000
	}
	if opts.Poll <= 0 {
		opts.Poll = 5 * time.Second
	}
	senderDefaults(&opts.Client, &opts.Now, &opts.Logger, &opts.Locate)
	w := &Webhook{opts: opts, outbox: outbox, wake: make(chan struct{}, 1)}
	st, err := outbox.Stats(context.Background())
	if err == nil {
		w.depth = st.Depth
	}
	return w, nil
}

// Add implements twin.AlarmOutbox: it builds the change's message.
func (w *Webhook) Add(e twin.AlarmEntry) {
	typ, ok := eventTypes[e.Op]
	if !ok {
		return
	}
	where := w.opts.Locate(e.Alarm.Machine)
	ev := Event{ID: DeliveryID(e.Alarm.ID, e.Op), Type: "alarm." + typ, At: e.At.UTC(), Alarm: e.Alarm,
		Site: where.Site, Line: where.Line, Dashboard: DashboardURL(w.opts.ExternalURL, e.Alarm.Machine)}
	body, err := json.Marshal(ev)
	if err != nil {
		return // an Alarm always encodes
	}
	now := w.opts.Now().UTC()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.depth+len(w.buf) >= w.opts.MaxPending {
		w.dropped++
		w.opts.Metrics.count(targetWebhook, outcomeDropped, 1)
		return
	}
	w.buf = append(w.buf, Message{ID: ev.ID, Alarm: e.Alarm.ID, Body: string(body), Created: now, NextAt: now})
}

// Sync implements twin.AlarmOutbox: the changes added go into the
// outbox, durably; on failure they stay for the next Sync.
func (w *Webhook) Sync(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dropped > 0 {
		w.opts.Logger.Error("alarm webhook outbox full: alarm changes dropped", "dropped", w.dropped, "max_pending", w.opts.MaxPending)
		w.dropped = 0
	}
	if len(w.buf) == 0 {
		return nil
	}
	if err := w.outbox.Enqueue(ctx, w.buf); err != nil {
		return fmt.Errorf("enqueuing %d alarm changes for the webhook: %w", len(w.buf), err)
	}
	w.depth += len(w.buf)
	w.buf = w.buf[:0]
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// States returns the webhook delivery state of the alarms ids.
func (w *Webhook) States(ctx context.Context, ids []string) (map[string]State, error) {
	return w.outbox.States(ctx, ids)
}

// Stats describes the outbox.
func (w *Webhook) Stats(ctx context.Context) (OutboxStats, error) {
	return w.outbox.Stats(ctx)
}

// claimBatch is how many messages one Claim takes.
const claimBatch = 32

// Step delivers every message due now, then returns when the next one is
// due (zero: none pending).
func (w *Webhook) Step(ctx context.Context) (time.Time, error) {
	lease := 2*w.opts.Timeout + 5*time.Second
claiming:
	for ctx.Err() == nil {
		claimed := w.opts.Now()
		msgs, err := w.outbox.Claim(ctx, claimed, lease, claimBatch)
		if err != nil {
			return time.Time{}, err
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			// A post starts only if it ends (Timeout) and is settled
			// within the claim's lease: past it another replica may have
			// claimed the rest of the batch and delivered an alarm's later
			// changes, which this post would then overtake. The messages
			// left are claimed again once the lease ends.
			if w.opts.Now().Add(w.opts.Timeout + time.Second).After(claimed.Add(lease)) {
				break claiming
			}
			if err := w.deliver(ctx, m); err != nil {
				return time.Time{}, err
			}
		}
	}
	st, err := w.outbox.Stats(ctx)
	if err != nil {
		return time.Time{}, err
	}
	w.mu.Lock()
	w.depth = st.Depth
	w.mu.Unlock()
	return st.NextDue, nil
}

// deliver attempts m once and settles it.
func (w *Webhook) deliver(ctx context.Context, m Message) error {
	err := w.post(ctx, m)
	permanent := isPermanent(err)
	now := w.opts.Now()
	oc := Outcome{State: StateDelivered, At: now}
	switch {
	case err == nil:
		w.opts.Metrics.count(targetWebhook, outcomeDelivered, 1)
	case permanent:
		oc.State, oc.Err = StateFailed, err.Error()
		w.opts.Metrics.count(targetWebhook, outcomeFailed, 1)
		w.opts.Logger.Error("alarm webhook refused a delivery for good", "delivery", m.ID, "err", err)
	default:
		oc.State, oc.Err = StateRetrying, err.Error()
		oc.NextAt = now.Add(Backoff(m.Attempts+1, w.opts.BackoffBase, w.opts.BackoffMax))
		w.opts.Metrics.count(targetWebhook, outcomeRetry, 1)
		w.opts.Logger.Warn("alarm webhook delivery failed", "delivery", m.ID, "attempts", m.Attempts+1, "next", oc.NextAt, "err", err)
	}
	if ctx.Err() != nil && err != nil {
		return nil // stopping: the attempt did not count
	}
	return w.outcome(ctx, m, oc)
}

func (w *Webhook) outcome(ctx context.Context, m Message, oc Outcome) error {
	if err := w.outbox.Settle(context.WithoutCancel(ctx), m, oc); err != nil {
		return fmt.Errorf("settling delivery %s: %w", m.ID, err)
	}
	return nil
}

// post sends m; a failure is permanent when the receiver refused it with
// a 4xx other than 408, 425 and 429.
func (w *Webhook) post(ctx context.Context, m Message) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	body := []byte(m.Body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.opts.URL, bytes.NewReader(body))
	if err != nil {
		return permanentIf(fmt.Errorf("building request: %w", err), true)
	}
	ts := w.opts.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "twinline")
	req.Header.Set(HeaderDelivery, m.ID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	var ev struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(body, &ev) == nil && ev.Type != "" {
		req.Header.Set(HeaderEvent, ev.Type)
	}
	if len(w.opts.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(w.opts.Secret, ts, body))
	}
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may hold credentials
		}
		return fmt.Errorf("posting: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	return permanentIf(fmt.Errorf("receiver answered %s: %s", resp.Status, strings.TrimSpace(string(msg))), !retryable(resp.StatusCode))
}

// Run delivers until ctx ends: whenever a change is enqueued, when the
// next retry is due, and every Poll for other replicas' messages.
func (w *Webhook) Run(ctx context.Context) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		case <-t.C:
		}
		wait := w.opts.Poll
		next, err := w.Step(ctx)
		if err != nil && ctx.Err() == nil {
			w.opts.Logger.Error("delivering alarm webhooks", "err", err)
		} else if !next.IsZero() {
			wait = min(wait, next.Sub(w.opts.Now()))
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

// Close closes the outbox.
func (w *Webhook) Close() error { return w.outbox.Close() }

// redactURL drops the password and query of u, for logs and errors.
// hostOnly is u's scheme and host, without credentials, path or query.
func hostOnly(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return p.Scheme + "://" + p.Host
}

func redactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	p.RawQuery = ""
	return p.Redacted()
}
