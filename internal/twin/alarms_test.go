package twin

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

type changeSummary struct {
	ID, Kind, State string
}

func summarize(as []Alarm) []changeSummary {
	var out []changeSummary
	for _, a := range as {
		out = append(out, changeSummary{a.ID, a.Kind, a.State})
	}
	return out
}

func TestAlarmsLifecycleAndRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alarms.jsonl")
	a, err := OpenAlarms(path, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	th := map[string]Threshold{"temp": {High: f(90), Deadband: 2, For: "10s"}}
	thresholds := func(string) map[string]Threshold { return th }
	sample := func(t int64, v float64) []telemetry.Sample {
		return []telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: t, Value: v}, {Machine: "press-07", Metric: "rpm", Time: t, Value: 1}}
	}
	observe := func(ts int64, v float64) []changeSummary {
		t.Helper()
		ss := sample(ts, v)
		ch, err := a.Seen(ss, ts)
		if err != nil {
			t.Fatal(err)
		}
		more, err := a.Observe(ss, thresholds)
		if err != nil {
			t.Fatal(err)
		}
		return summarize(append(ch, more...))
	}
	if got := observe(1_000_000, 95); got != nil {
		t.Errorf("first breach: %v, want no change (for 10s)", got)
	}
	if diff := cmp.Diff(observe(1_010_000, 96), []changeSummary{{"1", AlarmHigh, AlarmActive}}); diff != "" {
		t.Errorf("after 10s (-got +want):\n%s", diff)
	}
	if !a.Active("press-07") || len(a.List(false, "")) != 1 {
		t.Errorf("Active = %v, active list %v; want one active alarm", a.Active("press-07"), a.List(false, ""))
	}
	if got := observe(1_011_000, 89); got != nil {
		t.Errorf("within the deadband: %v, want no change", got)
	}
	for _, bad := range [][2]string{{"a\x00na", ""}, {"ana", "cooler\x00"}, {"ana", "\xff"}} {
		if _, err := a.Ack("1", bad[0], bad[1], time.UnixMilli(1_012_000)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Ack(%q, %q) = %v, want ErrInvalid", bad[0], bad[1], err)
		}
	}
	al, err := a.Ack("1", "ana", "checking the cooler", time.UnixMilli(1_012_000))
	if err != nil || !al.Acked || al.AckedBy != "ana" || al.State != AlarmActive {
		t.Fatalf("Ack = %+v, %v", al, err)
	}
	if _, err := a.Ack("1", "bo", "", time.UnixMilli(1_013_000)); !errors.Is(err, ErrConflict) {
		t.Errorf("second Ack: %v, want ErrConflict", err)
	}
	if _, err := a.Ack("99", "bo", "", time.UnixMilli(1_013_000)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Ack unknown: %v, want ErrNotFound", err)
	}
	a.Close()

	// After a restart the alarm is still active, acknowledged, and the
	// rule carries on: no second raise while still beyond, then a clear.
	a, err = OpenAlarms(path, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got := a.List(false, "press-07"); len(got) != 1 || !got[0].Acked || got[0].AckNote != "checking the cooler" {
		t.Fatalf("after restart: %+v", got)
	}
	if got := observe(1_020_000, 97); got != nil {
		t.Errorf("still beyond after restart: %v, want no change", got)
	}
	if diff := cmp.Diff(observe(1_021_000, 87), []changeSummary{{"1", AlarmHigh, AlarmCleared}}); diff != "" {
		t.Errorf("back past the deadband (-got +want):\n%s", diff)
	}
	if a.Active("press-07") || len(a.List(false, "")) != 0 || len(a.List(true, "")) != 1 {
		t.Errorf("after clear: active %v, lists %d/%d", a.Active("press-07"), len(a.List(false, "")), len(a.List(true, "")))
	}

	// Offline: seen, silent past offline-after, seen again.
	if ch, _ := a.Tick(time.UnixMilli(1_021_000 + 30_000)); len(ch) != 0 {
		t.Errorf("tick at exactly offline-after: %v", summarize(ch))
	}
	ch, err := a.Tick(time.UnixMilli(1_021_000 + 30_001))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(summarize(ch), []changeSummary{{"2", AlarmOffline, AlarmActive}}); diff != "" {
		t.Errorf("offline (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(observe(1_060_000, 50), []changeSummary{{"2", AlarmOffline, AlarmCleared}}); diff != "" {
		t.Errorf("back online (-got +want):\n%s", diff)
	}
}

func TestAlarmsThresholdChangeKeepsActive(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	th := map[string]Threshold{"temp": {High: f(90)}}
	thresholds := func(string) map[string]Threshold { return th }
	s := func(v float64) []telemetry.Sample {
		return []telemetry.Sample{{Machine: "m", Metric: "temp", Time: 1, Value: v}}
	}
	if ch, _ := a.Observe(s(95), thresholds); len(ch) != 1 {
		t.Fatalf("raise: %v", summarize(ch))
	}
	th = map[string]Threshold{"temp": {High: f(96), Deadband: 2}}
	if ch, _ := a.Observe(s(95), thresholds); len(ch) != 0 {
		t.Errorf("new limit, value within it but not past the deadband: %v, want no change", summarize(ch))
	}
	if ch, _ := a.Observe(s(93), thresholds); len(ch) != 1 || ch[0].State != AlarmCleared || ch[0].ID != "1" {
		t.Errorf("below the new limit − deadband: %v, want alarm 1 cleared", summarize(ch))
	}
}

func TestAlarmsClearWhenTheirRuleGoes(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var notified []changeSummary
	a.OnChange(func(al Alarm, active bool) {
		notified = append(notified, changeSummary{al.ID, al.Kind, al.State})
	})
	th := map[string]Threshold{"temp": {High: f(90), Low: f(10)}}
	thresholds := func(string) map[string]Threshold { return th }
	s := func(v float64) []telemetry.Sample {
		return []telemetry.Sample{{Machine: "m", Metric: "temp", Time: 1, Value: v}}
	}

	if ch, _ := a.Observe(s(95), thresholds); len(ch) != 1 {
		t.Fatalf("raise: %v", summarize(ch))
	}
	th = map[string]Threshold{"temp": {Low: f(10)}} // high limit removed
	ch, _ := a.Observe(s(95), thresholds)
	if diff := cmp.Diff(summarize(ch), []changeSummary{{"1", AlarmHigh, AlarmCleared}}); diff != "" {
		t.Errorf("high limit removed (-got +want):\n%s", diff)
	}
	if ch, _ := a.Observe(s(5), thresholds); len(ch) != 1 || ch[0].Kind != AlarmLow {
		t.Fatalf("low raise: %v", summarize(ch))
	}
	th = nil // threshold removed
	if ch, _ := a.Observe(s(5), thresholds); len(ch) != 1 || ch[0].State != AlarmCleared {
		t.Errorf("threshold removed: %v, want the low alarm cleared", summarize(ch))
	}
	th = map[string]Threshold{"temp": {High: f(90)}}
	a.Observe(s(99), thresholds)
	a.Tick(time.UnixMilli(0)) // never seen: no offline alarm
	if ch, _ := a.Forget("m", time.UnixMilli(2)); len(ch) != 1 || ch[0].State != AlarmCleared {
		t.Errorf("Forget: %v, want the active alarm cleared", summarize(ch))
	}
	if a.Active("m") {
		t.Error("a forgotten machine still has an active alarm")
	}
	want := []changeSummary{
		{"1", AlarmHigh, AlarmActive}, {"1", AlarmHigh, AlarmCleared},
		{"2", AlarmLow, AlarmActive}, {"2", AlarmLow, AlarmCleared},
		{"3", AlarmHigh, AlarmActive}, {"3", AlarmHigh, AlarmCleared},
	}
	if diff := cmp.Diff(notified, want); diff != "" {
		t.Errorf("OnChange, in order (-got +want):\n%s", diff)
	}
}

func TestAlarmsExpectAfterRestart(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	start := time.UnixMilli(1_000_000)
	a.Expect([]string{"silent"}, start)
	if ch, _ := a.Tick(start.Add(30 * time.Second)); len(ch) != 0 {
		t.Errorf("tick at offline-after: %v", summarize(ch))
	}
	ch, _ := a.Tick(start.Add(31 * time.Second))
	if len(ch) != 1 || ch[0].Machine != "silent" || ch[0].Kind != AlarmOffline {
		t.Errorf("a machine silent since the start: %v, want an offline alarm", summarize(ch))
	}
}

// TestAlarmsApplyRemote: alarms raised, acknowledged and cleared on another
// replica show in this one's list; states only move forward.
func TestAlarmsApplyRemote(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	raised := time.UnixMilli(1_000_000).UTC()
	al := Alarm{ID: "9001", Machine: "m", Metric: "temp", Kind: "high", State: AlarmActive, RaisedAt: raised}
	a.Apply(al)
	if got := a.List(false, "m"); len(got) != 1 || got[0].ID != "9001" || !a.Active("m") {
		t.Fatalf("after a remote raise: %+v, active %v", got, a.Active("m"))
	}
	acked := al
	at := raised.Add(time.Second)
	acked.Acked, acked.AckedAt, acked.AckedBy = true, &at, "ana"
	a.Apply(acked)
	a.Apply(al) // a late copy of the raise does not undo the ack
	if got := a.List(true, "m"); !got[0].Acked || got[0].AckedBy != "ana" {
		t.Errorf("after a remote ack and a stale raise: %+v", got[0])
	}
	cleared := al
	cat := raised.Add(2 * time.Second)
	cleared.State, cleared.ClearedAt = AlarmCleared, &cat
	a.Apply(cleared)
	a.Apply(al)
	got := a.List(true, "m")
	if got[0].State != AlarmCleared || !got[0].Acked || a.Active("m") {
		t.Errorf("after a remote clear and a stale raise: %+v, active %v", got[0], a.Active("m"))
	}
}

// TestAlarmsApplyRemoteOffline: a replica that learned of another's
// offline alarm does not raise its own for the machine, and clears the
// adopted one when the machine is seen again.
func TestAlarmsApplyRemoteOffline(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	t0 := time.UnixMilli(1_000_000)
	a.Expect([]string{"m"}, t0)
	a.Apply(Alarm{ID: "77", Machine: "m", Kind: AlarmOffline, State: AlarmActive, RaisedAt: t0.Add(time.Second)})
	if raised, err := a.Tick(t0.Add(5 * time.Second)); err != nil || len(raised) != 0 {
		t.Fatalf("Tick raised %+v, %v; want nothing (another replica's offline alarm is active)", raised, err)
	}
	changed, err := a.Seen([]telemetry.Sample{{Machine: "m", Metric: "x", Time: 1, Value: 1}}, t0.Add(6*time.Second).UnixMilli())
	if err != nil {
		t.Fatal(err)
	}
	if len(changed) != 1 || changed[0].ID != "77" || changed[0].State != AlarmCleared {
		t.Errorf("seen again: %+v, want alarm 77 cleared", changed)
	}
	if a.Active("m") {
		t.Error("machine still has an active alarm")
	}
}
