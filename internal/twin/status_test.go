package twin

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestStatusApartFromAlarm: the offline alarm is liveness, not an alarm; a
// threshold alarm is. A machine can be offline and in alarm, and each
// change tells OnChange whether the machine is in alarm after it.
func TestStatusApartFromAlarm(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	type change struct {
		Kind, State, Status string
		Alarmed             bool
	}
	var got []change
	a.OnChange(func(al Alarm, alarmed bool) {
		got = append(got, change{al.Kind, al.State, Liveness(StatusOnline, al), alarmed})
	})
	th := map[string]Threshold{"temp": {High: f(90)}}
	thresholds := func(string) map[string]Threshold { return th }
	at := int64(1_000_000)
	hot := []telemetry.Sample{{Machine: "m", Metric: "temp", Time: at, Value: 95}}
	cool := []telemetry.Sample{{Machine: "m", Metric: "temp", Time: at + 70_000, Value: 20}}

	a.Seen(hot, at)
	a.Tick(time.UnixMilli(at + 31_000)) // silent: offline, not in alarm
	if !a.Active("m") || a.Alarmed("m") {
		t.Errorf("offline only: Active %v Alarmed %v, want true false", a.Active("m"), a.Alarmed("m"))
	}
	a.Observe(hot, thresholds) // released late: offline and in alarm
	if !a.Alarmed("m") {
		t.Error("offline with a high alarm: not Alarmed")
	}
	a.Seen(cool, at+70_000) // back: online, still in alarm
	if !a.Alarmed("m") {
		t.Error("online with a high alarm: not Alarmed")
	}
	a.Observe(cool, thresholds)
	if a.Active("m") || a.Alarmed("m") {
		t.Errorf("all clear: Active %v Alarmed %v", a.Active("m"), a.Alarmed("m"))
	}
	want := []change{
		{AlarmOffline, AlarmActive, StatusOffline, false},
		{AlarmHigh, AlarmActive, StatusOnline, true}, // Liveness of a high alarm is the twin's view
		{AlarmOffline, AlarmCleared, StatusOnline, true},
		{AlarmHigh, AlarmCleared, StatusOnline, false},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("changes (-got +want):\n%s", diff)
	}
}

// TestMachineStatusIsLiveness: a twin's status is online or offline only,
// and it leaves Alarm for the API to fill in.
func TestMachineStatusIsLiveness(t *testing.T) {
	now := time.UnixMilli(1_000_000)
	tw := openFleet(t, filepath.Join(t.TempDir(), "registry.json"), 30*time.Second, 60, func() time.Time { return now })
	tw.live.Observe(&telemetry.Batch{Received: now.UnixMilli()}, []telemetry.Sample{{Machine: "m", Metric: "temp", Time: 1, Value: 1}})
	statusAt := func(d time.Duration) string {
		now = time.UnixMilli(1_000_000).Add(d)
		m, err := tw.get("m")
		if err != nil {
			t.Fatal(err)
		}
		if m.Alarm {
			t.Error("Live set Alarm")
		}
		return m.Status
	}
	if got := statusAt(30 * time.Second); got != StatusOnline {
		t.Errorf("at --offline-after: %q, want online", got)
	}
	if got := statusAt(31 * time.Second); got != StatusOffline {
		t.Errorf("past --offline-after: %q, want offline", got)
	}
}

// TestApplyMedians: medians computed by the replica that processes a
// machine show in this replica's twins, on the metrics it has values of.
func TestApplyMedians(t *testing.T) {
	tw := openFleet(t, filepath.Join(t.TempDir(), "registry.json"), 30*time.Second, 60, time.Now)
	tw.live.Observe(&telemetry.Batch{Received: 1}, []telemetry.Sample{{Machine: "m", Metric: "temp", Time: 5, Value: 9}})
	tw.live.ApplyMedians([]MedianUpdate{
		{Machine: "m", Metric: "temp", Time: 5, Median: 7},
		{Machine: "m", Metric: "rpm", Time: 5, Median: 1},      // no value here: ignored
		{Machine: "other", Metric: "temp", Time: 5, Median: 1}, // unknown: ignored
	})
	m, err := tw.get("m")
	if err != nil {
		t.Fatal(err)
	}
	med := 7.0
	if diff := cmp.Diff(m.Metrics, map[string]Value{"temp": {Value: 9, TS: 5, Median: &med}}); diff != "" {
		t.Errorf("metrics (-got +want):\n%s", diff)
	}
	if _, err := tw.get("other"); err == nil {
		t.Error("a median registered an unknown machine")
	}
}
