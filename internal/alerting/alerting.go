// Package alerting delivers twinline's alarms to the tools a plant already
// pages with: Alertmanager, through its API v2 the way Prometheus does
// (Alertmanager), and any HTTP receiver, through HMAC-signed JSON posted
// from a durable outbox (Webhook). Both report a delivery state per alarm
// for the alarms API.
package alerting

import (
	"errors"
	"math/rand/v2"
	"net/url"
	"time"
)

// Delivery states of an alarm at one target.
const (
	StatePending   = "pending"   // not tried yet
	StateDelivered = "delivered" // the target accepted the latest change
	StateRetrying  = "retrying"  // tried, failed, will try again
	StateFailed    = "failed"    // refused for good (a 4xx other than 408/429)
)

// State is an alarm's delivery state at one target: that of its latest
// change (webhook) or latest post (Alertmanager).
type State struct {
	State       string     `json:"state"`
	Attempts    int        `json:"attempts"`
	LastError   string     `json:"lastError,omitempty"`
	DeliveredAt *time.Time `json:"deliveredAt,omitempty"`
}

// Delivery is an alarm's delivery state at each configured target; a
// target not configured is omitted.
type Delivery struct {
	Alertmanager *State `json:"alertmanager,omitempty"`
	Webhook      *State `json:"webhook,omitempty"`
}

// Machine is where a machine sits, for labels and payloads.
type Machine struct {
	Site, Line string
}

// Locate returns where a machine sits (zero when it is not registered).
type Locate func(machine string) Machine

// DashboardURL is the link to a machine's page in the dashboard served at
// external (e.g. https://twinline.example.com), "" without external.
func DashboardURL(external, machine string) string {
	if external == "" {
		return ""
	}
	u, err := url.Parse(external)
	if err != nil {
		return ""
	}
	u.Path = trimSlash(u.Path) + "/"
	u.RawQuery = ""
	u.Fragment = "/m/" + url.PathEscape(machine)
	return u.String()
}

func trimSlash(s string) string {
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}

// Backoff is the wait before attempt n+1 after n failed ones: doubling
// from base, capped at limit, with jitter (a random time in its upper
// half), so receivers coming back are not hit by every sender at once.
func Backoff(n int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// retryable reports whether an HTTP status may succeed if tried again.
func retryable(status int) bool {
	return status < 400 || status >= 500 || status == 408 || status == 425 || status == 429
}

// permanentError marks a delivery failure that trying again cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// permanentIf marks err permanent when permanent is true.
func permanentIf(err error, permanent bool) error {
	if err == nil || !permanent {
		return err
	}
	return permanentError{err}
}

func isPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}
