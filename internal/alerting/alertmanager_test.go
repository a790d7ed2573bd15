package alerting

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/go-openapi/strfmt"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/alertmanager/api/v2/models"

	"github.com/twinline/twinline/internal/twin"
)

// validate decodes body into Alertmanager's own API v2 models and
// validates it as Alertmanager's server does.
func validate(t *testing.T, body []byte) models.PostableAlerts {
	t.Helper()
	var alerts models.PostableAlerts
	if err := json.Unmarshal(body, &alerts); err != nil {
		t.Fatalf("decoding as PostableAlerts: %v\n%s", err, body)
	}
	if err := alerts.Validate(strfmt.Default); err != nil {
		t.Fatalf("PostableAlerts.Validate: %v\n%s", err, body)
	}
	return alerts
}

func TestAlertOfValidates(t *testing.T) {
	now := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	v, lim := 93.5, 90.0
	cleared := now.Add(time.Minute)
	cases := []struct {
		name   string
		al     twin.Alarm
		where  Machine
		labels map[string]string
		endsAt time.Time
	}{
		{"high firing", twin.Alarm{ID: "7", Machine: "press-1", Metric: "temperature", Kind: twin.AlarmHigh, Limit: &lim, Value: &v, State: twin.AlarmActive, RaisedAt: now},
			Machine{Site: "lyon", Line: "l1"},
			map[string]string{"alertname": AlertHigh, "kind": "high", "machine": "press-1", "metric": "temperature", "severity": "critical", "site": "lyon", "line": "l1"},
			now.Add(4 * time.Minute)},
		{"low resolved", twin.Alarm{ID: "8", Machine: "press-1", Metric: "pressure", Kind: twin.AlarmLow, Limit: &lim, Value: &v, State: twin.AlarmCleared, RaisedAt: now, ClearedAt: &cleared},
			Machine{},
			map[string]string{"alertname": AlertLow, "kind": "low", "machine": "press-1", "metric": "pressure", "severity": "critical"},
			cleared},
		{"offline", twin.Alarm{ID: "9", Machine: "m é/1", Kind: twin.AlarmOffline, State: twin.AlarmActive, RaisedAt: now},
			Machine{Site: "lyon"},
			map[string]string{"alertname": AlertOffline, "kind": "offline", "machine": "m é/1", "severity": "warning", "site": "lyon"},
			now.Add(4 * time.Minute)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := AlertOf(tc.al, tc.where, "https://twinline.example.com/base/", now, 4*time.Minute)
			body, err := json.Marshal([]Alert{a})
			if err != nil {
				t.Fatal(err)
			}
			got := validate(t, body)[0]
			if diff := cmp.Diff(map[string]string(got.Labels), tc.labels); diff != "" {
				t.Errorf("labels (-got +want):\n%s", diff)
			}
			if !time.Time(got.EndsAt).Equal(tc.endsAt) || !time.Time(got.StartsAt).Equal(now) {
				t.Errorf("startsAt %v endsAt %v, want %v and %v", got.StartsAt, got.EndsAt, now, tc.endsAt)
			}
			if got.GeneratorURL.String() != a.Annotations["dashboard"] || a.Annotations["dashboard"] == "" {
				t.Errorf("generatorURL %q, dashboard annotation %q", got.GeneratorURL, a.Annotations["dashboard"])
			}
			if a.Annotations["summary"] == "" || a.Annotations["alarm_id"] != tc.al.ID {
				t.Errorf("annotations %v", a.Annotations)
			}
		})
	}
	a := AlertOf(cases[0].al, Machine{}, "https://twinline.example.com/base/", now, time.Minute)
	if got, want := a.GeneratorURL, "https://twinline.example.com/base/#/m/press-1"; got != want {
		t.Errorf("generatorURL %q, want %q", got, want)
	}
	if a.Annotations["value"] != "93.5" || a.Annotations["threshold"] != "90" {
		t.Errorf("annotations %v", a.Annotations)
	}
}

// amReceiver is an Alertmanager stand-in recording the alerts posted.
type amReceiver struct {
	t      *testing.T
	mu     sync.Mutex
	status int
	posts  []models.PostableAlerts
}

func (r *amReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path != "/api/v2/alerts" || req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
		r.t.Errorf("%s %s (%s)", req.Method, req.URL.Path, req.Header.Get("Content-Type"))
	}
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.status != 0 {
		http.Error(w, "unavailable", r.status)
		return
	}
	r.posts = append(r.posts, validate(r.t, body))
}

func (r *amReceiver) take() []models.PostableAlerts {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.posts
	r.posts = nil
	return p
}

func (r *amReceiver) setStatus(s int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status = s
}

// An alarm raised then cleared reaches Alertmanager firing, then
// resolved at its clear time; the resend carries every active alarm.
func TestAlertmanagerFiringThenResolved(t *testing.T) {
	clk := newClock()
	f := newFixture(t, clk)
	rcv := &amReceiver{t: t}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) }))
	defer down.Close()
	n := NewAlertmanager(AlertmanagerOptions{
		URLs: []string{down.URL, srv.URL + "/"}, ExternalURL: "http://twinline:8080", Locate: locate,
		Active: func() []twin.Alarm { return f.alarms.List(false, "") }, Now: clk.Now,
	})
	f.alarms.OnChange(func(al twin.Alarm, _ bool) { n.Notify(al) })
	ctx := context.Background()

	raised := f.observe("press-1", 95)
	if len(raised) != 1 {
		t.Fatalf("raised %v", raised)
	}
	id := raised[0].ID
	if st := n.State(id); st == nil || st.State != StatePending {
		t.Fatalf("state before sending: %+v", st)
	}
	if !n.Send(ctx, false) {
		t.Fatal("send failed")
	}
	posts := rcv.take()
	if len(posts) != 1 || len(posts[0]) != 1 {
		t.Fatalf("posts %v", posts)
	}
	firing := posts[0][0]
	if firing.Labels["alertname"] != AlertHigh || firing.Labels["machine"] != "press-1" || firing.Labels["site"] != "lyon" || firing.Annotations["value"] != "95" {
		t.Errorf("firing alert %+v", firing)
	}
	if got, want := time.Time(firing.EndsAt), clk.Now().Add(4*time.Minute); !got.Equal(want) {
		t.Errorf("firing endsAt %v, want %v", got, want)
	}
	if st := n.State(id); st == nil || st.State != StateDelivered || st.Attempts != 1 || st.DeliveredAt == nil {
		t.Errorf("state after sending: %+v", st)
	}
	// Nothing changed: nothing to send but the resend.
	n.Send(ctx, false)
	if p := rcv.take(); len(p) != 0 {
		t.Errorf("sent without a change: %v", p)
	}
	clk.Add(time.Minute)
	n.Send(ctx, true)
	if p := rcv.take(); len(p) != 1 || len(p[0]) != 1 || !time.Time(p[0][0].EndsAt).Equal(clk.Now().Add(4*time.Minute)) {
		t.Errorf("resend %v", p)
	}

	clk.Add(30 * time.Second)
	clearAt := clk.Now()
	if c := f.observe("press-1", 50); len(c) != 1 {
		t.Fatalf("cleared %v", c)
	}
	clk.Add(time.Second)
	n.Send(ctx, true)
	p := rcv.take()
	if len(p) != 1 || len(p[0]) != 1 {
		t.Fatalf("posts after clearing: %v", p)
	}
	resolved := p[0][0]
	if !time.Time(resolved.EndsAt).Equal(clearAt) || !time.Time(resolved.StartsAt).Equal(time.Time(firing.StartsAt)) {
		t.Errorf("resolved alert %v–%v, want endsAt %v", resolved.StartsAt, resolved.EndsAt, clearAt)
	}
	if diff := cmp.Diff(resolved.Labels, firing.Labels); diff != "" {
		t.Errorf("resolved labels differ (-got +want):\n%s", diff)
	}
	// Resolved once: not sent again.
	clk.Add(time.Minute)
	n.Send(ctx, true)
	if p := rcv.take(); len(p) != 0 {
		t.Errorf("resolved alert sent again: %v", p)
	}
}

// A failed post is retried: the state says so, and the change is sent
// once Alertmanager is back.
func TestAlertmanagerRetries(t *testing.T) {
	clk := newClock()
	f := newFixture(t, clk)
	rcv := &amReceiver{t: t, status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	n := NewAlertmanager(AlertmanagerOptions{URLs: []string{srv.URL}, Now: clk.Now, Metrics: NewMetrics(nil)})
	f.alarms.OnChange(func(al twin.Alarm, _ bool) { n.Notify(al) })
	id := f.observe("m1", 99)[0].ID
	for range 3 {
		if n.Send(context.Background(), false) {
			t.Fatal("send to a 503 succeeded")
		}
	}
	st := n.State(id)
	if st == nil || st.State != StateRetrying || st.Attempts != 3 || st.LastError == "" {
		t.Fatalf("state %+v", st)
	}
	rcv.setStatus(0)
	if !n.Send(context.Background(), false) {
		t.Fatal("send failed")
	}
	if p := rcv.take(); len(p) != 1 {
		t.Fatalf("posts %v", p)
	}
	if st := n.State(id); st.State != StateDelivered || st.Attempts != 4 || st.LastError != "" {
		t.Errorf("state %+v", st)
	}
	// 400: refused for good, not retried.
	rcv.setStatus(http.StatusBadRequest)
	clk.Add(time.Second)
	f.observe("m1", 10)
	n.Send(context.Background(), false)
	if st := n.State(id); st.State != StateFailed {
		t.Errorf("state after a 400: %+v", st)
	}
	rcv.setStatus(0)
	n.Send(context.Background(), false)
	if p := rcv.take(); len(p) != 0 {
		t.Errorf("refused change sent again: %v", p)
	}
}
