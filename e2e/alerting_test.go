package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-openapi/strfmt"
	"github.com/prometheus/alertmanager/api/v2/models"

	"github.com/twinline/twinline/internal/alerting"
	"github.com/twinline/twinline/internal/tcpproxy"
)

// recorder records what a receiver accepted.
type recorder struct {
	mu     sync.Mutex
	alerts []*models.PostableAlert
	hooks  []alerting.Event
	errs   []string
}

func (r *recorder) fail(format string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, a...))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, d)
		}
		time.Sleep(20 * time.Millisecond) // polling an outside process
	}
}

// TestAlarmDelivery: an alarm raised, acknowledged and cleared reaches
// Alertmanager (API v2, validated by its own models) firing then
// resolved, and the webhook receiver — down (connections refused) while
// the changes happen and across a kill -9 of twinline — gets every change
// once it is up, once each, in order, signed; on both stores (the outbox
// is a file, or a PostgreSQL table).
func TestAlarmDelivery(t *testing.T) {
	t.Run("embedded", func(t *testing.T) { alarmDelivery(t) })
	t.Run("postgres", func(t *testing.T) { alarmDelivery(t, "--store", "postgres", "--postgres-url", pgDatabase(t)) })
}

func alarmDelivery(t *testing.T, storeArgs ...string) {
	rec := &recorder{}
	am := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var alerts models.PostableAlerts
		if err := json.Unmarshal(body, &alerts); err != nil {
			rec.fail("decoding alerts: %v", err)
		} else if err := alerts.Validate(strfmt.Default); err != nil {
			rec.fail("invalid alerts: %v\n%s", err, body)
		}
		rec.mu.Lock()
		rec.alerts = append(rec.alerts, alerts...)
		rec.mu.Unlock()
	}))
	defer am.Close()
	secret := "e2e-webhook-secret"
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := alerting.Verify([]byte(secret), r.Header.Get(alerting.HeaderSignature), r.Header.Get(alerting.HeaderTimestamp), body, time.Now(), 5*time.Minute); err != nil {
			rec.fail("delivery %s: %v", r.Header.Get(alerting.HeaderDelivery), err)
		}
		var ev alerting.Event
		json.Unmarshal(body, &ev)
		rec.mu.Lock()
		rec.hooks = append(rec.hooks, ev)
		rec.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer hook.Close()
	proxy := tcpproxy.New(t, strings.TrimPrefix(hook.URL, "http://"))
	proxy.Cut()
	secretFile := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secretFile, []byte(secret+"\n"), 0o600)
	dir := t.TempDir()
	args := []string{"--lateness", "0s", "--offline-after", "1h", "--alertmanager-url", am.URL, "--alertmanager-resend", "1s",
		"--alarm-webhook", "http://" + proxy.Addr() + "/hook", "--alarm-webhook-secret-file", secretFile,
		"--external-url", "https://twinline.example.com"}
	args = append(args, storeArgs...)
	s := start(t, dir, args...)
	if r := s.do("PUT", "/api/v1/machines/press-7", "application/json", []byte(`{"site":"lyon","line":"l2","thresholds":{"temp":{"high":90}}}`)); r.status != 201 {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	ts := time.Now().Add(-time.Minute).UnixMilli()
	post := func(v float64) {
		t.Helper()
		ts += 1000
		if r := s.do("POST", "/api/v1/events", "application/json", []byte(fmt.Sprintf(`{"machineId":"press-7","timestamp":%d,"temp":%g}`, ts, v))); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
	}
	type listed struct {
		ID           string `json:"id"`
		State        string `json:"state"`
		Acknowledged bool   `json:"acknowledged"`
		Delivery     *struct {
			Alertmanager *alerting.State `json:"alertmanager"`
			Webhook      *alerting.State `json:"webhook"`
		} `json:"delivery"`
	}
	alarm := func() (l listed) {
		var list struct{ Alarms []listed }
		s.get("/api/v1/alarms?state=all&machine=press-7").json(t, &list)
		if len(list.Alarms) > 0 {
			l = list.Alarms[0]
		}
		return l
	}
	firing := func(resolved bool) func() bool {
		return func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			for _, a := range rec.alerts {
				if a.Labels["alertname"] == alerting.AlertHigh && a.Labels["machine"] == "press-7" && a.Labels["site"] == "lyon" &&
					time.Time(a.EndsAt).Before(time.Now()) == resolved {
					return true
				}
			}
			return false
		}
	}

	post(95)
	waitFor(t, "firing alert at Alertmanager", 30*time.Second, firing(false))
	id := alarm().ID
	if r := s.do("POST", "/api/v1/alarms/"+id+"/ack", "application/json", []byte(`{"by":"ana"}`)); r.status != 200 {
		t.Fatalf("ack: %d %s", r.status, r.body)
	}
	post(20)
	waitFor(t, "resolved alert at Alertmanager", 30*time.Second, firing(true))
	waitFor(t, "the webhook retrying", 30*time.Second, func() bool {
		l := alarm()
		return l.State == "cleared" && l.Acknowledged && l.Delivery != nil && l.Delivery.Webhook != nil &&
			l.Delivery.Webhook.State == alerting.StateRetrying && l.Delivery.Alertmanager != nil && l.Delivery.Alertmanager.State == alerting.StateDelivered
	})
	depth := regexp.MustCompile(`(?m)^twinline_alert_outbox_depth 3$`)
	waitFor(t, "three changes in the outbox", 30*time.Second, func() bool { return depth.Match(s.get("/metrics").body) })

	// kill -9 while the receiver is down; it comes back with twinline.
	s.kill()
	firstLogs := s.logs.String()
	proxy.Restore()
	s = start(t, dir, args...)
	waitFor(t, "every change at the webhook", 60*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.hooks) >= 3
	})
	waitFor(t, "the webhook delivered", 30*time.Second, func() bool {
		l := alarm()
		return l.Delivery != nil && l.Delivery.Webhook != nil && l.Delivery.Webhook.State == alerting.StateDelivered
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var got []string
	for _, ev := range rec.hooks {
		got = append(got, ev.ID)
	}
	want := []string{"alarm-" + id + "-raised", "alarm-" + id + "-acknowledged", "alarm-" + id + "-cleared"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("webhook deliveries %v, want %v", got, want)
	}
	if ev := rec.hooks[0]; ev.Site != "lyon" || ev.Line != "l2" || ev.Dashboard != "https://twinline.example.com/#/m/press-7" {
		t.Errorf("raised event %+v", ev)
	}
	for _, e := range rec.errs {
		t.Error(e)
	}
	if strings.Contains(firstLogs+s.logs.String(), secret) {
		t.Error("the webhook secret is in the logs")
	}
}
