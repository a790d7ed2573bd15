package twin

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// TestLiveRegistersWhatItSees: the live state registers a machine the
// first time it sees it, at the server time of its batch, and again once
// a deletion made it forget the machine; a machine operators registered
// keeps its entry.
func TestLiveRegistersWhatItSees(t *testing.T) {
	clk := &fakeClock{time.UnixMilli(5_000_000)}
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), clk)
	if _, _, err := tw.Put("known", Info{Name: "by an operator"}); err != nil {
		t.Fatal(err)
	}
	samples := []telemetry.Sample{{Machine: "known", Metric: "x", Time: 1, Value: 1}, {Machine: "new-1", Metric: "x", Time: 1, Value: 2}}
	tw.live.Observe(&telemetry.Batch{Received: 4_000_000}, samples)
	got, err := tw.Get("new-1")
	if err != nil {
		t.Fatalf("a machine first seen: %v, want registered", err)
	}
	if want := time.UnixMilli(4_000_000).UTC(); !got.CreatedAt.Equal(want) {
		t.Errorf("registered at %v, want the batch's server time %v", got.CreatedAt, want)
	}
	if in, _ := tw.Get("known"); in.Name != "by an operator" {
		t.Errorf("known machine's entry = %+v, want kept", in)
	}
	if err := tw.Delete("new-1"); err != nil {
		t.Fatal(err)
	}
	if m := tw.live.Machine(Info{ID: "new-1"}); len(m.Metrics) != 0 || m.LastSeen != 0 {
		t.Errorf("live state of a deleted machine = %+v, want forgotten", m)
	}
	tw.live.Observe(&telemetry.Batch{Received: 4_500_000}, samples[1:])
	if _, err := tw.Get("new-1"); err != nil {
		t.Errorf("a deleted machine sending again: %v, want registered again", err)
	}
}

// history is a store of a few series.
type history map[store.SeriesKey][]store.Point

func (h history) Series(_ context.Context, from, to int64) ([]store.SeriesKey, error) {
	var out []store.SeriesKey
	for k, pts := range h {
		for _, p := range pts {
			if p.Time >= from && p.Time <= to {
				out = append(out, k)
				break
			}
		}
	}
	return out, nil
}

func (h history) Select(_ context.Context, k store.SeriesKey, from, to int64, fn func(store.Point) bool) error {
	for _, p := range h[k] {
		if p.Time >= from && p.Time <= to && !fn(p) {
			break
		}
	}
	return nil
}

// TestRestoreLatest: start-up restores each recent series' latest value
// and the median of its last samples, registers the machines, and claims
// none is online; a series older than the restore window is left out.
func TestRestoreLatest(t *testing.T) {
	now := time.UnixMilli(10_000_000)
	tw := openFleet(t, filepath.Join(t.TempDir(), "registry.json"), 30*time.Second, 3, func() time.Time { return now })
	var temps []store.Point // one a second for 5 minutes: values 0…299
	for i := range 300 {
		temps = append(temps, store.Point{Time: now.Add(-5*time.Minute).UnixMilli() + int64(i)*1000, Value: float64(i)})
	}
	h := history{
		{Machine: "press-07", Metric: "temp"}: temps,
		// Two samples, 2 and 5 minutes old: the whole window is read.
		{Machine: "press-07", Metric: "rpm"}: {{Time: now.Add(-5 * time.Minute).UnixMilli(), Value: 10}, {Time: now.Add(-2 * time.Minute).UnixMilli(), Value: 30}},
		{Machine: "old-1", Metric: "temp"}:   {{Time: now.Add(-RestoreWindow - time.Second).UnixMilli(), Value: 1}},
	}
	if err := tw.live.RestoreLatest(context.Background(), h, now, time.Minute); err != nil {
		t.Fatal(err)
	}
	got, err := tw.get("press-07")
	if err != nil {
		t.Fatalf("restored machine not registered: %v", err)
	}
	med := func(v float64) *float64 { return &v }
	want := map[string]Value{
		"temp": {Value: 299, TS: temps[299].Time, Median: med(298)}, // of 297, 298, 299
		"rpm":  {Value: 30, TS: now.Add(-2 * time.Minute).UnixMilli(), Median: med(20)},
	}
	if diff := cmp.Diff(got.Metrics, want); diff != "" {
		t.Errorf("restored metrics (-got +want):\n%s", diff)
	}
	if got.Status != StatusOffline || got.LastSeen != 0 {
		t.Errorf("restored twin: status %s, lastSeen %d; want offline, 0", got.Status, got.LastSeen)
	}
	if _, err := tw.Get("old-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a machine silent for longer than the window: %v, want not restored", err)
	}
}

// TestAlarmsRunRaisesOffline: Run raises the offline alarm of a machine
// expected and silent for longer than --offline-after, and returns once
// its context ends.
func TestAlarmsRunRaisesOffline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		changes := make(chan Alarm, 4)
		a.OnChange(func(al Alarm, _ bool) { changes <- al })
		a.Expect([]string{"silent"}, time.Now())
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()

		time.Sleep(30 * time.Second)
		synctest.Wait()
		select {
		case al := <-changes:
			t.Errorf("at --offline-after: %+v, want no alarm yet", al)
		default:
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		select {
		case al := <-changes:
			if al.Machine != "silent" || al.Kind != AlarmOffline || al.State != AlarmActive {
				t.Errorf("alarm = %+v, want silent's offline alarm", al)
			}
		default:
			t.Error("past --offline-after: no offline alarm")
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	})
}

// TestLiveStates: the twin keeps each state series' value of the newest
// event (event time), a late event does not overwrite it, and an event of
// states only counts the machine as seen.
func TestLiveStates(t *testing.T) {
	now := time.UnixMilli(10_000)
	l := NewLive(LiveOptions{OfflineAfter: time.Minute, Now: func() time.Time { return now }})
	st := func(ts int64, kv ...string) telemetry.Event {
		ev := telemetry.Event{Machine: "m", Time: ts}
		for i := 0; i < len(kv); i += 2 {
			ev.States = append(ev.States, telemetry.State{Name: kv[i], Value: kv[i+1]})
		}
		return ev
	}
	l.Observe(&telemetry.Batch{Received: 9_000, Events: []telemetry.Event{st(100, "state", "RUNNING", "mode", "auto"), st(200, "state", "DOWN")}}, nil)
	l.Observe(&telemetry.Batch{Received: 9_500, Events: []telemetry.Event{st(150, "state", "IDLE")}}, nil)
	got := l.Machine(Info{ID: "m"})
	want := map[string]StateValue{"state": {Value: "DOWN", TS: 200}, "mode": {Value: "auto", TS: 100}}
	if diff := cmp.Diff(got.States, want); diff != "" {
		t.Errorf("states (-got +want):\n%s", diff)
	}
	if got.Status != StatusOnline || got.LastSeen != 9_500 {
		t.Errorf("status %q, lastSeen %d; want online, 9500", got.Status, got.LastSeen)
	}
	if m := l.Machine(Info{ID: "other"}); m.States != nil {
		t.Errorf("states of a machine never seen = %v, want none", m.States)
	}

	// Another replica's changes: newer ones win, older ones do not, and a
	// machine this one never saw is left alone.
	l.ApplyState("m", "state", "RUNNING", 300)
	l.ApplyState("m", "mode", "manual", 50)
	l.ApplyState("other", "state", "DOWN", 300)
	want = map[string]StateValue{"state": {Value: "RUNNING", TS: 300}, "mode": {Value: "auto", TS: 100}}
	if diff := cmp.Diff(l.Machine(Info{ID: "m"}).States, want); diff != "" {
		t.Errorf("states after ApplyState (-got +want):\n%s", diff)
	}
	if m := l.Machine(Info{ID: "other"}); m.States != nil {
		t.Errorf("ApplyState made a twin of a machine never seen: %v", m.States)
	}
}
