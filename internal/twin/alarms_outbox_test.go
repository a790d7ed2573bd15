package twin

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// recordingOutbox records what an AlarmOutbox is told.
type recordingOutbox struct {
	added  []string // op:id
	synced int      // entries added when Sync was last called
}

func (o *recordingOutbox) Add(e AlarmEntry) { o.added = append(o.added, e.Op+":"+e.Alarm.ID) }

func (o *recordingOutbox) Sync(context.Context) error {
	o.synced = len(o.added)
	return nil
}

// The outbox gets every change this process journals, in order, synced
// before the call returns; not the changes Apply records.
func TestAlarmsOutbox(t *testing.T) {
	a, err := OpenAlarms(filepath.Join(t.TempDir(), "alarms.jsonl"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ob := &recordingOutbox{}
	a.SetOutbox(ob)
	high := 90.0
	ths := func(string) map[string]Threshold { return map[string]Threshold{"temp": {High: &high}} }
	now := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	observe := func(v float64) {
		t.Helper()
		now = now.Add(time.Second)
		if _, err := a.Observe([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: now.UnixMilli(), Value: v}}, ths); err != nil {
			t.Fatal(err)
		}
		if ob.synced != len(ob.added) {
			t.Fatalf("Observe returned with %d changes not synced to the outbox", len(ob.added)-ob.synced)
		}
	}
	observe(95)
	if _, err := a.Ack("1", "ana", "", now); err != nil {
		t.Fatal(err)
	}
	if ob.synced != len(ob.added) {
		t.Fatal("Ack returned before the outbox was synced")
	}
	observe(10)
	a.Apply(Alarm{ID: "99", Machine: "other", Kind: AlarmOffline, State: AlarmActive, RaisedAt: now})
	a.Expect([]string{"m"}, now)
	if _, err := a.Tick(now.Add(2 * time.Minute)); err != nil { // m offline
		t.Fatal(err)
	}
	if diff := cmp.Diff(ob.added, []string{"raise:1", "ack:1", "clear:1", "raise:2"}); diff != "" {
		t.Errorf("outbox (-got +want):\n%s", diff)
	}
}
