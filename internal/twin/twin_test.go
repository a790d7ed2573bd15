package twin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// fleet is a registry and the live state that registers into it, wired
// as the server wires them.
type fleet struct {
	*Registry
	live *Live
}

func open(t *testing.T, path string, clk *fakeClock) *fleet {
	t.Helper()
	return openFleet(t, path, 30*time.Second, 60, clk.now)
}

func openFleet(t *testing.T, path string, offlineAfter time.Duration, medianWindow int, now func() time.Time) *fleet {
	t.Helper()
	reg, err := OpenRegistryFile(path, now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	live := NewLive(LiveOptions{OfflineAfter: offlineAfter, MedianWindow: medianWindow, Now: now, Register: reg.AutoRegister})
	reg.OnDelete(live.Forget)
	return &fleet{Registry: reg, live: live}
}

// get returns a twin as the API does: its entry and live state.
func (f *fleet) get(id string) (Machine, error) {
	in, err := f.Get(id)
	if err != nil {
		return Machine{}, err
	}
	return f.live.Machine(in), nil
}

// list returns every twin as the API does.
func (f *fleet) list() []Machine { return f.live.Machines(f.List()) }

func f(v float64) *float64 { return &v }

func TestObserveRegistersAndTracksLatestByEventTime(t *testing.T) {
	clk := &fakeClock{time.UnixMilli(1_000_000)}
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), clk)
	b := &telemetry.Batch{Received: 1_000_000}
	tw.live.Observe(b, []telemetry.Sample{
		{Machine: "press-07", Metric: "temp", Time: 900_000, Value: 70},
		{Machine: "press-07", Metric: "temp", Time: 800_000, Value: 60}, // older event arriving later
		{Machine: "press-07", Metric: "rpm", Time: 900_000, Value: 1200},
		{Machine: "oven-01", Metric: "temp", Time: 950_000, Value: 180},
	})
	got, err := tw.get("press-07")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Value{"temp": {Value: 70, TS: 900_000}, "rpm": {Value: 1200, TS: 900_000}}
	if diff := cmp.Diff(got.Metrics, want); diff != "" {
		t.Errorf("metrics (-got +want):\n%s", diff)
	}
	if got.Status != StatusOnline || got.LastSeen != 1_000_000 {
		t.Errorf("status, lastSeen = %s, %d; want online, 1000000", got.Status, got.LastSeen)
	}
	clk.t = clk.t.Add(31 * time.Second)
	if got, _ := tw.get("press-07"); got.Status != StatusOffline {
		t.Errorf("status after 31s of silence = %s, want offline", got.Status)
	}
	var ids []string
	for _, m := range tw.list() {
		ids = append(ids, m.ID)
	}
	if diff := cmp.Diff(ids, []string{"oven-01", "press-07"}); diff != "" {
		t.Errorf("List ids (-got +want):\n%s", diff)
	}
}

func TestRegistryPersistsAcrossOpen(t *testing.T) {
	clk := &fakeClock{time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "registry.json")
	tw := open(t, path, clk)

	_, created, err := tw.Put("press-07", Info{Name: "Press 7", Site: "lyon", Line: "A",
		Thresholds: map[string]Threshold{"temp": {High: f(90), Low: f(10), Deadband: 2, For: "10s"}},
		Attributes: map[string]any{"vendor": "Schuler"}})
	if err != nil || !created {
		t.Fatalf("Put = created %v, %v; want created", created, err)
	}
	if _, created, _ := tw.Put("press-07", Info{Name: "Press 7", Site: "lyon", Line: "A"}); created {
		t.Error("second Put reported created")
	}
	m, err := tw.Patch("press-07", []byte(`{"line":"B","attributes":{"vendor":null,"bay":3}}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Line != "B" || m.Name != "Press 7" {
		t.Errorf("after patch: line %q name %q; want B, Press 7", m.Line, m.Name)
	}
	tw.live.Observe(&telemetry.Batch{Received: 1}, []telemetry.Sample{{Machine: "auto-1", Metric: "x", Time: 1, Value: 1}})
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}

	again := open(t, path, clk)
	got, err := again.get("press-07")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got.Info, m); diff != "" {
		t.Errorf("reopened entry (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(got.Attributes, map[string]any{"bay": float64(3)}); diff != "" {
		t.Errorf("merge patch attributes (-got +want):\n%s", diff)
	}
	if _, err := again.get("auto-1"); err != nil {
		t.Errorf("auto-registered machine not persisted: %v", err)
	}
	if err := again.Delete("press-07"); err != nil {
		t.Fatal(err)
	}
	if _, err := open(t, path, clk).get("press-07"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete and reopen: got %v, want ErrNotFound", err)
	}
}

func TestValidation(t *testing.T) {
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), &fakeClock{time.Unix(0, 0)})
	tests := []struct {
		name string
		in   Info
		want string
	}{
		{"low above high", Info{Thresholds: map[string]Threshold{"temp": {High: f(10), Low: f(90)}}}, "low (90) must be below high (10)"},
		{"no limit", Info{Thresholds: map[string]Threshold{"temp": {Deadband: 1}}}, "needs high or low"},
		{"bad for", Info{Thresholds: map[string]Threshold{"temp": {High: f(1), For: "soon"}}}, "thresholds.temp.for"},
		{"negative deadband", Info{Thresholds: map[string]Threshold{"temp": {High: f(1), Deadband: -1}}}, "deadband"},
		{"long name", Info{Name: strings.Repeat("x", 300)}, "name: longer than 256"},
		{"NUL in site", Info{Site: "plant\x001"}, "site: must not contain a NUL byte"},
		{"invalid UTF-8 in line", Info{Line: "a\xff"}, "line: is not valid UTF-8"},
		{"NUL in threshold metric", Info{Thresholds: map[string]Threshold{"t\x00": {High: f(1)}}}, "thresholds: metric name must not contain a NUL byte"},
		{"NUL in attributes", Info{Attributes: map[string]any{"a": "b\x00"}}, "attributes: must not contain a NUL byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := tw.Put("m", tt.in)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Put = %v, want ErrInvalid containing %q", err, tt.want)
			}
		})
	}
	if _, err := tw.Patch("nope", []byte(`{}`)); !errors.Is(err, ErrNotFound) {
		t.Errorf("Patch unknown: got %v, want ErrNotFound", err)
	}
	if _, _, err := tw.Put("m", Info{}); err != nil {
		t.Fatal(err)
	}
	for _, patch := range []string{`[1]`, `{"unknown":1}`, `not json`} {
		if _, err := tw.Patch("m", []byte(patch)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Patch(%s) = %v, want ErrInvalid", patch, err)
		}
	}
}

func TestRestoreDoesNotClaimOnline(t *testing.T) {
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), &fakeClock{time.UnixMilli(10_000)})
	tw.live.Restore([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: 9_000, Value: 5}})
	got, err := tw.get("m")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusOffline || got.LastSeen != 0 || got.Metrics["temp"].Value != 5 {
		t.Errorf("restored twin = %+v; want offline, no lastSeen, temp 5", got)
	}
}

func TestDecodeInfoStrict(t *testing.T) {
	if _, err := DecodeInfo([]byte(`{"name":"x","colour":"red"}`)); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown field: got %v, want ErrInvalid", err)
	}
	// A document from GET can be sent back with PUT.
	if _, err := DecodeInfo([]byte(`{"id":"m","name":"x","status":"online","lastSeen":5,"metrics":{}}`)); err != nil {
		t.Errorf("echoed GET document: %v", err)
	}
}

func TestAdmit(t *testing.T) {
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), &fakeClock{time.Unix(0, 0)})
	tw.live.Observe(&telemetry.Batch{Received: 1}, []telemetry.Sample{{Machine: "a", Metric: "x", Time: 1}, {Machine: "b", Metric: "x", Time: 1}})
	tests := []struct {
		id    string
		limit int
		ok    bool
	}{
		{"a", 2, true},  // known
		{"c", 2, false}, // new, fleet full
		{"c", 3, true},  // new, room left
		{"c", 0, true},  // no limit
	}
	for _, tt := range tests {
		if got := tw.Admit(tt.id, tt.limit) == ""; got != tt.ok {
			t.Errorf("Admit(%q, %d) admitted = %v, want %v", tt.id, tt.limit, got, tt.ok)
		}
	}
}

func TestMedianAndRates(t *testing.T) {
	clk := &fakeClock{time.UnixMilli(600_000)}
	tw := openFleet(t, filepath.Join(t.TempDir(), "registry.json"), 30*time.Second, 3, clk.now)
	// 120 events over the last minute of server time, one sample each.
	for i := range 120 {
		received := int64(540_500 + i*500)
		tw.live.Observe(&telemetry.Batch{Received: received}, []telemetry.Sample{{Machine: "m", Metric: "temp", Time: int64(i), Value: float64(i)}})
	}
	// Released in event-time order: the median of the last 3.
	updates := tw.live.ObserveReleased([]telemetry.Sample{
		{Machine: "m", Metric: "temp", Time: 1, Value: 10},
		{Machine: "m", Metric: "rpm", Time: 1, Value: 7},
		{Machine: "m", Metric: "temp", Time: 2, Value: 30},
		{Machine: "gone", Metric: "temp", Time: 2, Value: 1},
		{Machine: "m", Metric: "temp", Time: 3, Value: 20},
		{Machine: "m", Metric: "temp", Time: 4, Value: 50},
	}, nil)
	// One update per series, the median after the whole group; unknown
	// machines are skipped.
	wantUpdates := []MedianUpdate{
		{Machine: "m", Metric: "temp", Time: 4, Median: 30},
		{Machine: "m", Metric: "rpm", Time: 1, Median: 7},
	}
	if diff := cmp.Diff(updates, wantUpdates); diff != "" {
		t.Errorf("median updates (-got +want):\n%s", diff)
	}
	got, err := tw.get("m")
	if err != nil {
		t.Fatal(err)
	}
	if med := got.Metrics["temp"].Median; med == nil || *med != 30 {
		t.Errorf("median = %v, want 30 (of 30, 20, 50)", med)
	}
	if got.Rate1m < 1.9 || got.Rate1m > 2.0 {
		t.Errorf("rate1m = %v, want about 2 events/s", got.Rate1m)
	}
	if want := 120.0 / 300; got.Rate5m < want*0.99 || got.Rate5m > want {
		t.Errorf("rate5m = %v, want about %v", got.Rate5m, want)
	}
	if fleet := tw.live.FleetRate(time.Minute); fleet != got.Rate1m {
		t.Errorf("fleet rate = %v, want the one machine's %v", fleet, got.Rate1m)
	}
}

func TestRegisterMissingKeepsRegisteredMachines(t *testing.T) {
	clk := &fakeClock{time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "registry.json")
	tw := open(t, path, clk)
	if _, _, err := tw.Put("press-07", Info{Name: "edited by an operator"}); err != nil {
		t.Fatal(err)
	}
	n, err := tw.RegisterMissing([]Info{
		{ID: "press-07", Name: "demo press"},
		{ID: "oven-01", Name: "demo oven", Site: "lyon", Thresholds: map[string]Threshold{"temp": {High: f(90)}}},
	})
	if err != nil || n != 1 {
		t.Fatalf("RegisterMissing = %d, %v; want 1, nil", n, err)
	}
	if _, err := tw.RegisterMissing([]Info{{ID: "bad", Thresholds: map[string]Threshold{"temp": {For: "soon"}}}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("invalid entry: %v, want ErrInvalid", err)
	}
	again := open(t, path, clk)
	var got []string
	for _, m := range again.list() {
		got = append(got, m.ID+": "+m.Name)
	}
	if diff := cmp.Diff(got, []string{"oven-01: demo oven", "press-07: edited by an operator"}); diff != "" {
		t.Errorf("persisted registry (-got +want):\n%s", diff)
	}
}

func TestLocateFillsInSiteAndLine(t *testing.T) {
	clk := &fakeClock{time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "registry.json")
	tw := open(t, path, clk)
	if _, _, err := tw.Put("press-07", Info{Site: "lyon"}); err != nil {
		t.Fatal(err)
	}
	tw.Locate("press-07", "paris", "A") // the operator's site stays
	tw.Locate("oven-01", "lyon", "B")   // unknown: registered there
	tw.Locate("oven-01", "", "")
	if err := tw.Flush(); err != nil {
		t.Fatal(err)
	}
	again := open(t, path, clk)
	var got []string
	for _, m := range again.list() {
		got = append(got, m.ID+"@"+m.Site+"/"+m.Line)
	}
	if diff := cmp.Diff(got, []string{"oven-01@lyon/B", "press-07@lyon/A"}); diff != "" {
		t.Errorf("registry (-got +want):\n%s", diff)
	}
}

func TestRefreshFollowsTheStore(t *testing.T) {
	clk := &fakeClock{time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)}
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), clk)
	if _, _, err := tw.Put("press-07", Info{Name: "old name"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tw.Put("gone-1", Info{}); err != nil {
		t.Fatal(err)
	}
	tw.live.Observe(&telemetry.Batch{Received: clk.t.UnixMilli()}, []telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: 1, Value: 70}})
	stored := map[string]Info{
		"press-07": {ID: "press-07", Name: "renamed elsewhere", Thresholds: map[string]Threshold{"temp": {High: f(90)}}},
		"new-1":    {ID: "new-1", Site: "lyon"},
	}
	get := func(_ context.Context, id string) (Info, error) {
		if in, ok := stored[id]; ok {
			return in, nil
		}
		return Info{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	load := func(context.Context) ([]Info, error) {
		return []Info{stored["press-07"], stored["new-1"]}, nil
	}
	if err := tw.Refresh(context.Background(), []string{"press-07", "gone-1", "new-1"}, get, load); err != nil {
		t.Fatal(err)
	}
	m, err := tw.get("press-07")
	if err != nil || m.Name != "renamed elsewhere" || tw.Thresholds("press-07")["temp"].High == nil {
		t.Errorf("press-07 after refresh: %+v, %v", m.Info, err)
	}
	if m.Metrics["temp"].Value != 70 {
		t.Errorf("live state lost in a refresh: %+v", m.Metrics)
	}
	if _, err := tw.get("gone-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a machine removed elsewhere: %v, want ErrNotFound", err)
	}
	if m, err := tw.get("new-1"); err != nil || m.Site != "lyon" {
		t.Errorf("a machine registered elsewhere: %+v, %v", m.Info, err)
	}
	// Everything (a lost LISTEN connection): adds and updates only.
	tw.live.Observe(&telemetry.Batch{Received: 1}, []telemetry.Sample{{Machine: "local-only", Metric: "x", Time: 1, Value: 1}})
	stored["new-2"] = Info{ID: "new-2"}
	load = func(context.Context) ([]Info, error) { return []Info{stored["new-2"]}, nil }
	if err := tw.Refresh(context.Background(), nil, get, load); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"new-2", "local-only", "press-07"} {
		if _, err := tw.get(id); err != nil {
			t.Errorf("after a full refresh, %s: %v", id, err)
		}
	}
}

// TestTrimAndDeleteHook: a long-silent machine loses its medians and rate
// but keeps its entry and latest values, and counts its events afresh when
// it comes back; a deleted one is reported to the hook.
func TestTrimAndDeleteHook(t *testing.T) {
	clk := &fakeClock{t: time.UnixMilli(1_000_000)}
	tw := open(t, filepath.Join(t.TempDir(), "registry.json"), clk)
	var deleted []string
	tw.OnDelete(func(id string) { deleted = append(deleted, id) })
	samples := []telemetry.Sample{{Machine: "m", Metric: "x", Time: 1_000_000, Value: 3}}
	tw.live.Observe(&telemetry.Batch{Received: 1_000_000}, samples)
	tw.live.ObserveReleased(samples, nil)
	if n := tw.live.Trim(clk.t.Add(time.Minute)); n != 0 {
		t.Errorf("Trim after a minute dropped %d, want 0", n)
	}
	if n := tw.live.Trim(clk.t.Add(2 * time.Hour)); n != 1 {
		t.Errorf("Trim after two silent hours dropped %d, want 1", n)
	}
	m, err := tw.get("m")
	if err != nil || m.Metrics["x"].Value != 3 || m.Metrics["x"].Median == nil {
		t.Errorf("after Trim: %+v, %v; want the latest value and last median kept", m, err)
	}
	tw.live.mu.RLock()
	if e := tw.live.machines["m"]; e.rate != nil || e.medians != nil {
		t.Errorf("after Trim: rate %v, medians %v; want both dropped", e.rate != nil, e.medians)
	}
	tw.live.mu.RUnlock()
	// Its median starts afresh: 9 alone, not the median of 3 and 9.
	if us := tw.live.ObserveReleased([]telemetry.Sample{{Machine: "m", Metric: "x", Time: 1_000_001, Value: 9}}, nil); len(us) != 1 || us[0].Median != 9 {
		t.Errorf("median updates after Trim = %+v, want one of 9", us)
	}
	// Back after the trim, m counts its events as a machine never seen.
	clk.t = clk.t.Add(3 * time.Hour)
	for i := range 5 {
		at := clk.t.UnixMilli() + int64(i)*700
		for _, id := range []string{"m", "fresh"} {
			tw.live.Observe(&telemetry.Batch{Received: at}, []telemetry.Sample{{Machine: id, Metric: "x", Time: at, Value: 1}})
		}
	}
	back, _ := tw.get("m")
	fresh, _ := tw.get("fresh")
	if back.Rate1m != fresh.Rate1m || back.Rate5m != fresh.Rate5m || back.Rate1m == 0 {
		t.Errorf("rates of m back after Trim = %v, %v; of a fresh machine %v, %v", back.Rate1m, back.Rate5m, fresh.Rate1m, fresh.Rate5m)
	}
	if err := tw.Delete("m"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(deleted, []string{"m"}); diff != "" {
		t.Errorf("deleted (-got +want):\n%s", diff)
	}
}
