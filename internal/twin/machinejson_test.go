package twin

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestAppendMachineMatchesEncodingJSON checks the fleet list's encoder
// against encoding/json of the Machine Live.Machine returns, over twins
// of every shape: unseen, restored (no lastSeen), offline, online with
// medians and states, odd names.
func TestAppendMachineMatchesEncodingJSON(t *testing.T) {
	now := time.UnixMilli(1_765_000_000_000)
	clock := func() time.Time { return now }
	reg, err := OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	live := NewLive(LiveOptions{OfflineAfter: time.Minute, MedianWindow: 5, Now: clock, Register: reg.AutoRegister})
	high := 1e22
	if _, err := reg.RegisterMissing([]Info{
		{ID: "unseen", Name: `a "quoted" <name> & more`, Site: "s1", Line: "l1",
			Attributes: map[string]any{"vendor": "acme", "n": 2.5, "nested": map[string]any{"x": []any{1.0, "y"}}},
			Thresholds: map[string]Threshold{"temp": {High: &high}}},
		{ID: "bare"},
	}); err != nil {
		t.Fatal(err)
	}
	live.Restore([]telemetry.Sample{{Machine: "restored", Metric: "temp", Time: now.UnixMilli() - 5000, Value: 1e-7}})
	observe := func(id string, at time.Time, ms map[string]float64, states ...telemetry.State) {
		b := &telemetry.Batch{Received: at.UnixMilli()}
		ev := telemetry.Event{Machine: id, Time: at.UnixMilli() - 3, States: states}
		var samples []telemetry.Sample
		for name, v := range ms {
			ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: name, Value: v})
			samples = append(samples, telemetry.Sample{Machine: id, Metric: name, Time: ev.Time, Value: v})
		}
		b.Events = []telemetry.Event{ev}
		live.Observe(b, samples)
		live.ObserveReleased(samples, nil)
	}
	observe("old", now.Add(-time.Hour), map[string]float64{"x": 3})
	for i := range 5 {
		observe("busy", now.Add(time.Duration(i-5)*time.Second), map[string]float64{"temp": 20.5 + float64(i), "rpm": 1e21, `we"ird\u2028`: -0.000001, "zero": 0},
			telemetry.State{Name: "state", Value: fmt.Sprintf("running %d <&>", i)}, telemetry.State{Name: "mode", Value: "auto"})
	}
	observe("states-only", now.Add(-time.Second), nil, telemetry.State{Name: "state", Value: "idle"})
	reg.Locate("busy", "s2", "l9")

	entries := reg.Listing()
	if len(entries) != 6 {
		t.Fatalf("Listing has %d entries, want 6", len(entries))
	}
	view := live.View()
	for i, e := range entries {
		if i > 0 && entries[i-1].ID >= e.ID {
			t.Errorf("Listing not sorted: %q before %q", entries[i-1].ID, e.ID)
		}
		alarm := i%2 == 0
		m := live.Machine(e.Info)
		m.Alarm = alarm
		wantJSON, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		gotJSON := view.AppendMachine(nil, &e, alarm)
		var got, want any
		if err := json.Unmarshal(gotJSON, &got); err != nil {
			t.Fatalf("%s: AppendMachine wrote invalid JSON: %v\n%s", e.ID, err, gotJSON)
		}
		if err := json.Unmarshal(wantJSON, &want); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("%s: AppendMachine differs from encoding/json (-got +want):\n%s\ngot  %s\nwant %s", e.ID, diff, gotJSON, wantJSON)
		}
		if got, want := view.Status(e.ID), m.Status; got != want {
			t.Errorf("%s: Status = %q, want %q", e.ID, got, want)
		}
	}

	// AppendMachines over more than one lock run: the documents of
	// AppendMachine, comma-separated, in order.
	var list []*Entry
	var alarms []bool
	var want []byte
	for i := range 3*lockRun + 5 {
		e := &entries[i%len(entries)]
		list, alarms = append(list, e), append(alarms, i%3 == 0)
		if i > 0 {
			want = append(want, ',')
		}
		want = view.AppendMachine(want, e, i%3 == 0)
	}
	if got := view.AppendMachines([]byte("x"), list, alarms); string(got) != "x"+string(want) {
		t.Errorf("AppendMachines differs from AppendMachine of each:\ngot  %.300s\nwant x%.300s", got, want)
	}
}

// TestListingFollowsChanges checks that the shared listing is rebuilt
// after each kind of registry change, and reused when nothing changed.
func TestListingFollowsChanges(t *testing.T) {
	reg, err := OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), time.Now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ids := func() (out []string) {
		for _, e := range reg.Listing() {
			var in Info
			if err := json.Unmarshal(e.JSON, &in); err != nil || in.ID != e.ID || in.Name != e.Name || in.Site != e.Site {
				t.Errorf("entry %q: JSON %s does not match it (%v)", e.ID, e.JSON, err)
			}
			out = append(out, e.ID+"/"+e.Name+"/"+e.Site)
		}
		return out
	}
	check := func(step string, want ...string) {
		t.Helper()
		if diff := cmp.Diff(ids(), want); diff != "" {
			t.Errorf("after %s (-got +want):\n%s", step, diff)
		}
	}
	reg.AutoRegister("b", time.Now())
	check("AutoRegister", "b//")
	first := reg.Listing()
	if second := reg.Listing(); &first[0] != &second[0] {
		t.Error("Listing rebuilt without a change")
	}
	if _, _, err := reg.Put("a", Info{Name: "A"}); err != nil {
		t.Fatal(err)
	}
	check("Put", "a/A/", "b//")
	if _, err := reg.Patch("a", []byte(`{"name":"A2"}`)); err != nil {
		t.Fatal(err)
	}
	check("Patch", "a/A2/", "b//")
	reg.Locate("b", "lyon", "")
	check("Locate", "a/A2/", "b//lyon")
	if _, err := reg.RegisterMissing([]Info{{ID: "c"}}); err != nil {
		t.Fatal(err)
	}
	check("RegisterMissing", "a/A2/", "b//lyon", "c//")
	if err := reg.Delete("b"); err != nil {
		t.Fatal(err)
	}
	check("Delete", "a/A2/", "c//")
	get := func(_ context.Context, id string) (Info, error) {
		if id == "a" {
			return Info{ID: "a", Name: "remote"}, nil
		}
		return Info{}, ErrNotFound
	}
	if err := reg.Refresh(context.Background(), []string{"a", "c"}, get, nil); err != nil {
		t.Fatal(err)
	}
	check("Refresh", "a/remote/")
}
