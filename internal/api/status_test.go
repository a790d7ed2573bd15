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

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// TestMachineStatusAndAlarm: the machine JSON of the fleet, one machine and
// /latest carry the liveness in status and the alarms apart in alarm; an
// offline machine is "offline" (not "alarm"), also while in alarm.
func TestMachineStatusAndAlarm(t *testing.T) {
	now := time.UnixMilli(1_796_018_400_000)
	clock := func() time.Time { return now }
	reg, live := openTwins(t, 30*time.Second, clock)
	alarms, err := twin.NewAlarms(context.Background(), twin.NewAlarmFile(filepath.Join(t.TempDir(), "alarms.jsonl")), 30*time.Second, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer alarms.Close()
	high := 90.0
	thresholds := func(string) map[string]twin.Threshold { return map[string]twin.Threshold{"temp": {High: &high}} }
	see := func(machine string, v float64, at time.Time) {
		ss := []telemetry.Sample{{Machine: machine, Metric: "temp", Time: at.UnixMilli(), Value: v}}
		live.Observe(&telemetry.Batch{Received: at.UnixMilli()}, ss)
		if _, err := alarms.Seen(ss, at.UnixMilli()); err != nil {
			t.Fatal(err)
		}
		if _, err := alarms.Observe(ss, thresholds); err != nil {
			t.Fatal(err)
		}
	}
	start := now
	see("silent-hot", 95, start)  // will be offline and in alarm
	see("silent-cool", 20, start) // offline only
	now = start.Add(time.Minute)
	if _, err := alarms.Tick(now); err != nil {
		t.Fatal(err)
	}
	see("live-hot", 95, now)  // online and in alarm
	see("live-cool", 20, now) // online only

	a := New(Options{MaxInflightIngest: 1}, Deps{
		Submit: (&fakeLog{real: eventlog.New(10, nil)}).Submit, Registry: reg, Live: live, Alarms: alarms, Clock: clock,
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready: func() error { return nil }, Logger: slog.New(slog.DiscardHandler),
	})
	get := func(path string, v any) {
		t.Helper()
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if rec.Code != 200 {
			t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
			t.Fatal(err)
		}
	}
	type state struct {
		Status string
		Alarm  bool
	}
	want := map[string]state{
		"silent-hot": {"offline", true}, "silent-cool": {"offline", false},
		"live-hot": {"online", true}, "live-cool": {"online", false},
	}
	var fleet struct {
		Machines []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Alarm  *bool  `json:"alarm"`
		} `json:"machines"`
	}
	get("/api/v1/machines", &fleet)
	got := map[string]state{}
	for _, m := range fleet.Machines {
		if m.Alarm == nil {
			t.Fatalf("machine %s has no alarm field", m.ID)
		}
		got[m.ID] = state{m.Status, *m.Alarm}
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("fleet (-got +want):\n%s", diff)
	}
	for id, w := range want {
		for _, path := range []string{"/api/v1/machines/" + id, "/api/v1/machines/" + id + "/latest"} {
			var one state
			get(path, &one)
			if one != w {
				t.Errorf("GET %s: %+v, want %+v", path, one, w)
			}
		}
	}
}
