package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/alerting"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// GET /api/v1/alarms items carry their delivery state when a target is
// configured, and no "delivery" field otherwise.
func TestAlarmsDelivery(t *testing.T) {
	now := time.UnixMilli(1_796_018_400_000).UTC()
	reg, live := openTwins(t, time.Minute, func() time.Time { return now })
	alarms, err := twin.NewAlarms(context.Background(), twin.NewAlarmFile(filepath.Join(t.TempDir(), "alarms.jsonl")), time.Minute, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer alarms.Close()
	high := 90.0
	for _, m := range []string{"m1", "m2"} {
		if _, err := alarms.Observe([]telemetry.Sample{{Machine: m, Metric: "temp", Time: now.UnixMilli(), Value: 95}},
			func(string) map[string]twin.Threshold { return map[string]twin.Threshold{"temp": {High: &high}} }); err != nil {
			t.Fatal(err)
		}
	}
	var asked []string
	states := func(_ context.Context, ids []string) map[string]alerting.Delivery {
		asked = ids
		return map[string]alerting.Delivery{"1": {
			Alertmanager: &alerting.State{State: alerting.StateDelivered, Attempts: 1, DeliveredAt: &now},
			Webhook:      &alerting.State{State: alerting.StateRetrying, Attempts: 3, LastError: "receiver answered 503"},
		}}
	}
	list := func(delivery func(context.Context, []string) map[string]alerting.Delivery) []map[string]json.RawMessage {
		a := New(Options{MaxInflightIngest: 1}, Deps{
			Submit: (&fakeLog{real: eventlog.New(10, nil)}).Submit, Registry: reg, Live: live, Alarms: alarms, AlarmDelivery: delivery,
			Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
			Ready: func() error { return nil }, Logger: slog.New(slog.DiscardHandler),
		})
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/alarms", nil))
		if rec.Code != 200 {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
		var out struct{ Alarms []map[string]json.RawMessage }
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out.Alarms
	}
	got := list(states)
	if diff := cmp.Diff(asked, []string{"2", "1"}); diff != "" {
		t.Errorf("ids asked (-got +want):\n%s", diff)
	}
	if len(got) != 2 || string(got[0]["id"]) != `"2"` || got[0]["delivery"] != nil {
		t.Fatalf("alarm 2: %v", got)
	}
	want := `{"alertmanager":{"state":"delivered","attempts":1,"deliveredAt":"2026-11-30T06:00:00Z"},"webhook":{"state":"retrying","attempts":3,"lastError":"receiver answered 503"}}`
	if string(got[1]["delivery"]) != want || string(got[1]["machine"]) != `"m1"` {
		t.Errorf("alarm 1: delivery %s machine %s, want %s", got[1]["delivery"], got[1]["machine"], want)
	}
	for _, al := range list(nil) {
		if al["delivery"] != nil {
			t.Errorf("delivery without a target: %s", al["delivery"])
		}
	}
}
