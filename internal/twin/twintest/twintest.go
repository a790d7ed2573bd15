// Package twintest is the conformance suite of the stores behind the twin
// package: the machine registry (twin.RegistryStore), the alarm journal
// (twin.AlarmStore) and the operator notes (twin.NoteStore). The file
// stores of package twin and the PostgreSQL stores of
// internal/store/postgres both run it.
//
// A backend's test calls, for example,
//
//	twintest.RunRegistry(t, func(t *testing.T) func() twin.RegistryStore {
//		path := filepath.Join(t.TempDir(), "registry.json")
//		return func() twin.RegistryStore { return twin.NewRegistryFile(path) }
//	})
//
// The function passed creates new, empty storage of its own for t (a file,
// a schema) and returns an opener: each call opens a new handle on that same
// storage, as a restarted server would. The suite closes the alarm and note
// handles it opens. Times are whole milliseconds in UTC: the stores may keep
// no more than microseconds.
package twintest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// base is the time the suite works around.
var base = time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }

func fp(v float64) *float64 { return &v }

func tp(t time.Time) *time.Time { return &t }

// emptyIsNil treats nil and empty maps and slices alike.
var emptyIsNil = cmpopts.EquateEmpty()

// RunRegistry runs the registry conformance tests.
func RunRegistry(t *testing.T, newStorage func(t *testing.T) func() twin.RegistryStore) {
	t.Run("Empty", func(t *testing.T) { testRegistryEmpty(t, newStorage(t)) })
	t.Run("RoundTrip", func(t *testing.T) { testRegistryRoundTrip(t, newStorage(t)) })
	t.Run("ResaveIsIdempotent", func(t *testing.T) { testRegistryResave(t, newStorage(t)) })
	t.Run("UpdateDeleteReAdd", func(t *testing.T) { testRegistryUpdateDelete(t, newStorage(t)) })
	t.Run("FreshHandleReplaces", func(t *testing.T) { testRegistryFreshHandle(t, newStorage(t)) })
	t.Run("Many", func(t *testing.T) { testRegistryMany(t, newStorage(t)) })
	t.Run("LoadOrder", func(t *testing.T) { testRegistryOrder(t, newStorage(t)) })
	t.Run("Registry", func(t *testing.T) { testRegistryTwins(t, newStorage(t)) })
}

func machine(id string, sec int) twin.Info {
	return twin.Info{ID: id, Name: "Machine " + id, Site: "lyon", Line: "A", CreatedAt: at(sec), UpdatedAt: at(sec)}
}

func load(t *testing.T, s twin.RegistryStore) []twin.Info {
	t.Helper()
	got, err := s.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return got
}

func save(t *testing.T, s twin.RegistryStore, all ...twin.Info) {
	t.Helper()
	if err := s.Save(context.Background(), all); err != nil {
		t.Fatalf("Save: %v", err)
	}
}

func wantRegistry(t *testing.T, open func() twin.RegistryStore, want ...twin.Info) {
	t.Helper()
	if diff := cmp.Diff(load(t, open()), want, emptyIsNil); diff != "" {
		t.Errorf("Load of a new handle (-got +want):\n%s", diff)
	}
}

func testRegistryEmpty(t *testing.T, open func() twin.RegistryStore) {
	if got := load(t, open()); len(got) != 0 {
		t.Errorf("Load of an empty registry = %v, want none", got)
	}
}

func testRegistryRoundTrip(t *testing.T, open func() twin.RegistryStore) {
	full := twin.Info{
		ID: "press-07", Name: "Presse n°7 \"Schuler\"", Site: "lyon", Line: "A",
		Thresholds: map[string]twin.Threshold{
			"temp": {High: fp(90), Low: fp(-10.5), Deadband: 2, For: "10s"},
			"rpm":  {High: fp(3000)},
		},
		Attributes: map[string]any{
			"vendor": "Schuler", "bay": float64(3), "tags": []any{"hot", "line-a"},
			"service": map[string]any{"due": "2026-01-01", "ok": true}, "note": nil,
		},
		DesiredSchema: &twin.Schema{Type: "object", Properties: map[string]*twin.Schema{
			"tempSetpoint": {Type: "number", Minimum: fp(20), Maximum: fp(250)},
			"mode":         {Type: "string", Enum: []any{"auto", "manual"}},
		}},
		Commands: map[string]twin.CommandSpec{
			"stop":  {Description: "stops the press"},
			"reset": {Params: &twin.Schema{Type: "object", Required: []string{"counter"}}},
		},
		OEE: &twin.OEESpec{StateMetric: "state", RunningStates: []string{"RUNNING"}, PlannedStopStates: []string{"PLANNED"},
			TotalCount: "parts_total", GoodCount: "parts_good", IdealCycleSeconds: 2.5},
		CreatedAt: at(1), UpdatedAt: at(2),
	}
	bare := twin.Info{ID: "auto-1", CreatedAt: at(3), UpdatedAt: at(3)}
	s := open()
	save(t, s, bare, full)
	if diff := cmp.Diff(load(t, s), []twin.Info{bare, full}, emptyIsNil); diff != "" {
		t.Errorf("Load of the same handle (-got +want):\n%s", diff)
	}
	wantRegistry(t, open, bare, full)
}

func testRegistryResave(t *testing.T, open func() twin.RegistryStore) {
	a, b := machine("a", 1), machine("b", 2)
	s := open()
	save(t, s, a, b)
	save(t, s, a, b)
	wantRegistry(t, open, a, b)
	// A handle that loaded the registry saves it back unchanged.
	s2 := open()
	save(t, s2, load(t, s2)...)
	wantRegistry(t, open, a, b)
}

func testRegistryUpdateDelete(t *testing.T, open func() twin.RegistryStore) {
	a, b, c := machine("a", 1), machine("b", 2), machine("c", 3)
	s := open()
	save(t, s, a, b, c)
	a2 := a
	a2.Name, a2.UpdatedAt = "renamed", at(10)
	a2.Thresholds = map[string]twin.Threshold{"temp": {High: fp(80)}}
	save(t, s, a2, c)
	wantRegistry(t, open, a2, c)
	c2 := c
	c2.Attributes, c2.UpdatedAt = map[string]any{"vendor": "acme"}, at(11)
	save(t, s, a2, c2)
	wantRegistry(t, open, a2, c2)
	save(t, s)
	wantRegistry(t, open)
	b2 := b
	b2.CreatedAt, b2.UpdatedAt = at(20), at(20)
	save(t, s, b2)
	wantRegistry(t, open, b2)
}

func testRegistryFreshHandle(t *testing.T, open func() twin.RegistryStore) {
	save(t, open(), machine("a", 1), machine("b", 2))
	// A handle that never loaded still replaces the whole registry.
	save(t, open(), machine("c", 3))
	wantRegistry(t, open, machine("c", 3))
	// A handle that loaded, then saves a changed registry.
	s := open()
	all := load(t, s)
	all = append(all, machine("d", 4))
	save(t, s, all...)
	wantRegistry(t, open, machine("c", 3), machine("d", 4))
}

func testRegistryMany(t *testing.T, open func() twin.RegistryStore) {
	var all []twin.Info
	for i := range 500 {
		all = append(all, machine(fmt.Sprintf("m-%04d", i), i))
	}
	s := open()
	save(t, s, all...)
	var next []twin.Info
	for i, in := range all {
		switch {
		case i%50 == 7:
			continue // deleted
		case i%50 == 3:
			in.Line, in.UpdatedAt = "B", at(1000+i)
		}
		next = append(next, in)
	}
	save(t, s, next...)
	wantRegistry(t, open, next...)
}

// testRegistryOrder: Load returns entries in Go's (bytewise) id order,
// whatever the database's collation.
func testRegistryOrder(t *testing.T, open func() twin.RegistryStore) {
	ids := []string{"B", "a", "a-1", "a1", "a_1", "z", "Ä", "é", "機械"}
	if !slices.IsSorted(ids) {
		t.Fatalf("test ids not sorted: %q", ids)
	}
	var all []twin.Info
	for i, id := range ids {
		all = append(all, machine(id, i))
	}
	save(t, open(), all...)
	wantRegistry(t, open, all...)
}

// testRegistryTwins runs a Registry over the store, with the live state
// registering the machines it sees: registry writes and auto-registered
// machines come back after a restart.
func testRegistryTwins(t *testing.T, open func() twin.RegistryStore) {
	now := at(100)
	clock := func() time.Time { return now }
	logger := slog.New(slog.DiscardHandler)
	reg, err := twin.OpenRegistry(context.Background(), open(), clock, logger)
	if err != nil {
		t.Fatalf("OpenRegistry: %v", err)
	}
	live := twin.NewLive(twin.LiveOptions{OfflineAfter: time.Minute, MedianWindow: 10, Now: clock, Register: reg.AutoRegister})
	if _, _, err := reg.Put("press-07", twin.Info{Name: "Press 7", Thresholds: map[string]twin.Threshold{"temp": {High: fp(90)}}}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, _, err := reg.Put("gone", twin.Info{Name: "Gone"}); err != nil {
		t.Fatalf("Put: %v", err)
	}
	now = at(101)
	if _, err := reg.Patch("press-07", []byte(`{"attributes":{"vendor":"acme"}}`)); err != nil {
		t.Fatalf("Patch: %v", err)
	}
	if err := reg.Delete("gone"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	live.Observe(&telemetry.Batch{Received: at(102).UnixMilli()}, []telemetry.Sample{{Machine: "auto-1", Metric: "x", Time: at(102).UnixMilli(), Value: 1}})
	if err := reg.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	want := reg.List()
	again, err := twin.OpenRegistry(context.Background(), open(), clock, logger)
	if err != nil {
		t.Fatalf("OpenRegistry again: %v", err)
	}
	got := again.List()
	if diff := cmp.Diff(got, want, emptyIsNil); diff != "" {
		t.Errorf("registry after a restart (-got +want):\n%s", diff)
	}
	if len(got) != 2 || got[0].ID != "auto-1" || got[1].ID != "press-07" || got[1].Attributes["vendor"] != "acme" {
		t.Errorf("registry after a restart = %+v; want auto-1 and the patched press-07", got)
	}
}

// RunAlarmStore runs the alarm journal conformance tests.
func RunAlarmStore(t *testing.T, newStorage func(t *testing.T) func() twin.AlarmStore) {
	t.Run("Empty", func(t *testing.T) { testAlarmEmpty(t, newStorage(t)) })
	t.Run("AppendSyncReplay", func(t *testing.T) { testAlarmRoundTrip(t, newStorage(t)) })
	t.Run("OrderAcrossSyncs", func(t *testing.T) { testAlarmOrder(t, newStorage(t)) })
	t.Run("CloseMakesDurable", func(t *testing.T) { testAlarmClose(t, newStorage(t)) })
	t.Run("ReplayStopsOnError", func(t *testing.T) { testAlarmReplayError(t, newStorage(t)) })
	t.Run("AlarmsRestart", func(t *testing.T) { testAlarmsRestart(t, newStorage(t)) })
	t.Run("EraseBy", func(t *testing.T) { testAlarmEraseBy(t, newStorage(t)) })
}

// replayAll opens a new handle, replays it and closes it.
func replayAll(t *testing.T, open func() twin.AlarmStore) []twin.AlarmEntry {
	t.Helper()
	s := open()
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	var got []twin.AlarmEntry
	if err := s.Replay(context.Background(), func(e twin.AlarmEntry) error {
		got = append(got, e)
		return nil
	}); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	return got
}

func appendAll(t *testing.T, s twin.AlarmStore, es ...twin.AlarmEntry) {
	t.Helper()
	for _, e := range es {
		if err := s.Append(context.Background(), e); err != nil {
			t.Fatalf("Append %s %s: %v", e.Op, e.Alarm.ID, err)
		}
	}
}

// lifecycle returns the entries of alarm id of machine: raised at sec,
// acknowledged, then cleared.
func lifecycle(id, machine string, sec int) []twin.AlarmEntry {
	raised := twin.Alarm{ID: id, Machine: machine, Metric: "temp", Kind: twin.AlarmHigh, Limit: fp(90), Value: fp(95.5),
		State: twin.AlarmActive, RaisedAt: at(sec)}
	acked := raised
	acked.Acked, acked.AckedAt, acked.AckedBy, acked.AckNote = true, tp(at(sec+1)), "ana", "checking the cooler — ünïcode"
	cleared := acked
	cleared.State, cleared.ClearedAt = twin.AlarmCleared, tp(at(sec+2))
	return []twin.AlarmEntry{
		{Op: twin.OpRaise, At: at(sec), Alarm: raised},
		{Op: twin.OpAck, At: at(sec + 1), By: "ana", Alarm: acked},
		{Op: twin.OpClear, At: at(sec + 2), Alarm: cleared},
	}
}

func testAlarmEmpty(t *testing.T, open func() twin.AlarmStore) {
	if got := replayAll(t, open); len(got) != 0 {
		t.Errorf("Replay of an empty journal = %v, want none", got)
	}
}

func testAlarmRoundTrip(t *testing.T, open func() twin.AlarmStore) {
	s := open()
	if err := s.Replay(context.Background(), func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	offline := twin.Alarm{ID: "3", Machine: "oven-01", Kind: twin.AlarmOffline, State: twin.AlarmActive, RaisedAt: at(5)}
	var want []twin.AlarmEntry
	want = append(want, lifecycle("1", "press-07", 0)...)
	want = append(want, twin.AlarmEntry{Op: twin.OpRaise, At: at(5), Alarm: offline})
	want = append(want, lifecycle("2", "press-07", 6)...)
	appendAll(t, s, want...)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if diff := cmp.Diff(replayAll(t, open), want); diff != "" {
		t.Errorf("Replay (-got +want):\n%s", diff)
	}
}

func testAlarmOrder(t *testing.T, open func() twin.AlarmStore) {
	s := open()
	if err := s.Replay(context.Background(), func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	var want []twin.AlarmEntry
	for i := range 100 {
		es := lifecycle(strconv.Itoa(i+1), fmt.Sprintf("m-%d", i%7), i*3)
		want = append(want, es...)
		appendAll(t, s, es...)
		if i%9 == 0 {
			if err := s.Sync(context.Background()); err != nil {
				t.Fatalf("Sync: %v", err)
			}
		}
	}
	if err := s.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if err := s.Sync(context.Background()); err != nil {
		t.Fatalf("Sync with nothing pending: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if diff := cmp.Diff(replayAll(t, open), want); diff != "" {
		t.Errorf("Replay (-got +want):\n%s", diff)
	}
	// A second session appends after the first one's entries.
	s = open()
	n := 0
	if err := s.Replay(context.Background(), func(twin.AlarmEntry) error { n++; return nil }); err != nil || n != len(want) {
		t.Fatalf("Replay = %d entries, %v; want %d", n, err, len(want))
	}
	more := lifecycle("101", "m-x", 1000)
	appendAll(t, s, more...)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if diff := cmp.Diff(replayAll(t, open), append(want, more...)); diff != "" {
		t.Errorf("Replay after a second session (-got +want):\n%s", diff)
	}
}

func testAlarmClose(t *testing.T, open func() twin.AlarmStore) {
	s := open()
	if err := s.Replay(context.Background(), func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	want := lifecycle("1", "m", 0)
	appendAll(t, s, want...)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if diff := cmp.Diff(replayAll(t, open), want); diff != "" {
		t.Errorf("Replay after Close without Sync (-got +want):\n%s", diff)
	}
}

func testAlarmReplayError(t *testing.T, open func() twin.AlarmStore) {
	s := open()
	if err := s.Replay(context.Background(), func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	appendAll(t, s, lifecycle("1", "m", 0)...)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	boom := errors.New("boom")
	s = open()
	defer s.Close()
	n := 0
	err := s.Replay(context.Background(), func(twin.AlarmEntry) error {
		n++
		if n == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || n != 2 {
		t.Errorf("Replay with fn failing on the 2nd entry = %v after %d calls; want boom after 2", err, n)
	}
}

// testAlarmsRestart runs Alarms over the store: an alarm raised and
// acknowledged before a restart is active and acknowledged after it, and
// alarm ids carry on.
func testAlarmsRestart(t *testing.T, open func() twin.AlarmStore) {
	ctx := context.Background()
	th := map[string]twin.Threshold{"temp": {High: fp(90)}}
	thresholds := func(string) map[string]twin.Threshold { return th }
	sample := func(sec int, v float64) []telemetry.Sample {
		return []telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: at(sec).UnixMilli(), Value: v}}
	}
	a, err := twin.NewAlarms(ctx, open(), time.Minute, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("NewAlarms: %v", err)
	}
	if ch, err := a.Observe(sample(0, 95), thresholds); err != nil || len(ch) != 1 {
		t.Fatalf("Observe = %v, %v; want one alarm raised", ch, err)
	}
	if _, err := a.Ack("1", "ana", "on it", at(1)); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if ch, err := a.Observe(sample(2, 50), thresholds); err != nil || len(ch) != 1 {
		t.Fatalf("Observe = %v, %v; want the alarm cleared", ch, err)
	}
	if ch, err := a.Observe(sample(3, 99), thresholds); err != nil || len(ch) != 1 {
		t.Fatalf("Observe = %v, %v; want a second alarm raised", ch, err)
	}
	want := a.List(true, "")
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	a, err = twin.NewAlarms(ctx, open(), time.Minute, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("NewAlarms again: %v", err)
	}
	defer a.Close()
	if diff := cmp.Diff(a.List(true, ""), want); diff != "" {
		t.Errorf("alarms after a restart (-got +want):\n%s", diff)
	}
	if !a.Active("press-07") {
		t.Error("the active alarm is not active after a restart")
	}
	if ch, err := a.Observe(sample(4, 10), thresholds); err != nil || len(ch) != 1 || ch[0].ID != want[0].ID || ch[0].State != twin.AlarmCleared {
		t.Errorf("Observe after a restart = %+v, %v; want alarm %s cleared", ch, err, want[0].ID)
	}
	// A new alarm gets an id above every earlier one.
	ch, err := a.Observe(sample(5, 91), thresholds)
	if err != nil || len(ch) != 1 || ch[0].State != twin.AlarmActive {
		t.Fatalf("Observe after a restart = %+v, %v; want an alarm raised", ch, err)
	}
	id, _ := strconv.ParseUint(ch[0].ID, 10, 64)
	for _, old := range want {
		if oid, _ := strconv.ParseUint(old.ID, 10, 64); id <= oid {
			t.Errorf("new alarm id %s not above the earlier %s", ch[0].ID, old.ID)
		}
	}
}

// RunNoteStore runs the notes conformance tests.
func RunNoteStore(t *testing.T, newStorage func(t *testing.T) func() twin.NoteStore) {
	t.Run("Empty", func(t *testing.T) { testNotesEmpty(t, newStorage(t)) })
	t.Run("AddList", func(t *testing.T) { testNotesAddList(t, newStorage(t)) })
	t.Run("Reopen", func(t *testing.T) { testNotesReopen(t, newStorage(t)) })
	t.Run("Notes", func(t *testing.T) { testNotesOverStore(t, newStorage(t)) })
	t.Run("EraseAuthor", func(t *testing.T) { testNotesEraseAuthor(t, newStorage(t)) })
}

func openNotes(t *testing.T, open func() twin.NoteStore) twin.NoteStore {
	t.Helper()
	s := open()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func list(t *testing.T, s twin.NoteStore, machine string, limit int) []twin.Note {
	t.Helper()
	got, err := s.List(context.Background(), machine, limit)
	if err != nil {
		t.Fatalf("List(%q, %d): %v", machine, limit, err)
	}
	return got
}

func add(t *testing.T, s twin.NoteStore, n twin.Note) twin.Note {
	t.Helper()
	got, err := s.Add(context.Background(), n)
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	id, err := strconv.ParseUint(got.ID, 10, 64)
	if err != nil || id == 0 {
		t.Fatalf("Add returned id %q, want a decimal number > 0", got.ID)
	}
	n.ID = got.ID
	if diff := cmp.Diff(got, n); diff != "" {
		t.Errorf("Add returned (-got +want):\n%s", diff)
	}
	return got
}

func testNotesEmpty(t *testing.T, open func() twin.NoteStore) {
	if got := list(t, openNotes(t, open), "press-07", 10); len(got) != 0 {
		t.Errorf("List of no notes = %v, want none", got)
	}
}

// addNotes adds the notes the tests read back: five of press-07 and two of
// oven-01, interleaved, a minute apart.
func addNotes(t *testing.T, s twin.NoteStore) (press, oven []twin.Note) {
	t.Helper()
	texts := []string{"bearing noise", "door seal\nworn", "oil changed", "Öl gewechselt — 油", "watch temp", "belt"}
	var last uint64
	for i, text := range texts {
		m := "press-07"
		if i == 1 || i == 4 {
			m = "oven-01"
		}
		author := "ana"
		if i == 2 {
			author = ""
		}
		n := add(t, s, twin.Note{Machine: m, Text: text, Author: author, Time: at(60 * i)})
		id, _ := strconv.ParseUint(n.ID, 10, 64)
		if id <= last {
			t.Errorf("note %d got id %d, not above the previous %d", i, id, last)
		}
		last = id
		if m == "oven-01" {
			oven = append(oven, n)
		} else {
			press = append(press, n)
		}
	}
	return press, oven
}

func testNotesAddList(t *testing.T, open func() twin.NoteStore) {
	s := openNotes(t, open)
	press, oven := addNotes(t, s)
	for _, tt := range []struct {
		machine string
		limit   int
		want    []twin.Note
	}{
		{"press-07", 100, press},
		{"press-07", 2, press[2:]},
		{"press-07", 1, press[3:]},
		{"oven-01", 10, oven},
		{"unknown", 10, nil},
	} {
		t.Run(fmt.Sprintf("%s/%d", tt.machine, tt.limit), func(t *testing.T) {
			if diff := cmp.Diff(list(t, s, tt.machine, tt.limit), tt.want, emptyIsNil); diff != "" {
				t.Errorf("List (-got +want):\n%s", diff)
			}
		})
	}
}

func testNotesReopen(t *testing.T, open func() twin.NoteStore) {
	s := open()
	press, oven := addNotes(t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = openNotes(t, open)
	if diff := cmp.Diff(list(t, s, "press-07", 100), press); diff != "" {
		t.Errorf("press-07 after reopen (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(list(t, s, "oven-01", 100), oven); diff != "" {
		t.Errorf("oven-01 after reopen (-got +want):\n%s", diff)
	}
	n := add(t, s, twin.Note{Machine: "oven-01", Text: "after restart", Time: at(1000)})
	maxID := uint64(0)
	for _, x := range append(press, oven...) {
		id, _ := strconv.ParseUint(x.ID, 10, 64)
		maxID = max(maxID, id)
	}
	if id, _ := strconv.ParseUint(n.ID, 10, 64); id <= maxID {
		t.Errorf("note added after reopen got id %d, want above %d", id, maxID)
	}
	if diff := cmp.Diff(list(t, s, "oven-01", 100), append(oven, n)); diff != "" {
		t.Errorf("oven-01 after adding (-got +want):\n%s", diff)
	}
}

// testNotesOverStore runs Notes over the store.
func testNotesOverStore(t *testing.T, open func() twin.NoteStore) {
	now := at(0)
	n := twin.NewNotes(open(), func() time.Time { return now })
	defer n.Close()
	var want []twin.Note
	for i := range 3 {
		now = at(i)
		note, err := n.Add("press-07", fmt.Sprintf("note %d", i), "bo")
		if err != nil {
			t.Fatalf("Add: %v", err)
		}
		want = append(want, note)
	}
	for _, tt := range []struct{ text, author string }{
		{"", "bo"},
		{"a\x00b", "bo"},
		{"ok", "b\x00o"},
		{"a\xffb", "bo"},
	} {
		if _, err := n.Add("press-07", tt.text, tt.author); !errors.Is(err, twin.ErrInvalid) {
			t.Errorf("Add(%q, %q) = %v, want ErrInvalid", tt.text, tt.author, err)
		}
	}
	if diff := cmp.Diff(n.List("press-07", 0), want); diff != "" {
		t.Errorf("List (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(n.List("press-07", 2), want[1:]); diff != "" {
		t.Errorf("List limit 2 (-got +want):\n%s", diff)
	}
}

// testAlarmEraseBy: a store that is a twin.AlarmEraser replaces a name in
// the entries stored and in those not yet synced.
func testAlarmEraseBy(t *testing.T, open func() twin.AlarmStore) {
	ctx := context.Background()
	if _, ok := open().(twin.AlarmEraser); !ok {
		t.Skip("not a twin.AlarmEraser")
	}
	s := open()
	if err := s.Replay(ctx, func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	first := lifecycle("1", "press-07", 0) // ana in the ack and the clear
	appendAll(t, s, first...)
	if err := s.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	bo := lifecycle("2", "oven-01", 10)
	for i := range bo {
		if bo[i].By != "" {
			bo[i].By = "bo"
		}
		if bo[i].Alarm.AckedBy != "" {
			bo[i].Alarm.AckedBy = "bo"
		}
	}
	appendAll(t, s, bo...)
	if err := s.Sync(ctx); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	if n, err := s.(twin.AlarmEraser).EraseBy(ctx, "ana", "user-1"); err != nil || n != 2 {
		t.Fatalf("EraseBy = %d, %v; want 2 entries", n, err)
	}
	// Appended, not yet synced, then erased.
	pending := lifecycle("3", "press-07", 20)
	appendAll(t, s, pending...)
	if n, err := s.(twin.AlarmEraser).EraseBy(ctx, "ana", "user-1"); err != nil || n != 2 {
		t.Fatalf("EraseBy with entries pending = %d, %v; want 2 entries", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Through a handle that never replayed.
	other := open()
	if n, err := other.(twin.AlarmEraser).EraseBy(ctx, "nobody", "user-2"); err != nil || n != 0 {
		t.Errorf("EraseBy of an unknown name = %d, %v; want 0", n, err)
	}
	if err := other.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	var want []twin.AlarmEntry
	for _, e := range append(append(first, bo...), pending...) {
		e.Erase("ana", "user-1")
		want = append(want, e)
	}
	if diff := cmp.Diff(replayAll(t, open), want); diff != "" {
		t.Errorf("Replay after EraseBy (-got +want):\n%s", diff)
	}
	// The journal takes entries after an erasure.
	s = open()
	if err := s.Replay(ctx, func(twin.AlarmEntry) error { return nil }); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if _, err := s.(twin.AlarmEraser).EraseBy(ctx, "bo", "user-3"); err != nil {
		t.Fatalf("EraseBy: %v", err)
	}
	more := lifecycle("4", "m", 30)
	appendAll(t, s, more...)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i := range want {
		want[i].Erase("bo", "user-3")
	}
	if diff := cmp.Diff(replayAll(t, open), append(want, more...)); diff != "" {
		t.Errorf("Replay after EraseBy and Append (-got +want):\n%s", diff)
	}
}

// testNotesEraseAuthor: a store that is a twin.NoteEraser replaces an
// author's name in every note, and goes on adding notes after.
func testNotesEraseAuthor(t *testing.T, open func() twin.NoteStore) {
	ctx := context.Background()
	s := openNotes(t, open)
	eraser, ok := s.(twin.NoteEraser)
	if !ok {
		t.Skip("not a twin.NoteEraser")
	}
	press, oven := addNotes(t, s) // ana wrote all but one
	bo := add(t, s, twin.Note{Machine: "press-07", Text: "ana says hi", Author: "bo", Time: at(1000)})
	n, err := eraser.EraseAuthor(ctx, "ana", "user-1")
	if err != nil || n != 5 {
		t.Fatalf("EraseAuthor = %d, %v; want 5 notes", n, err)
	}
	erase := func(ns []twin.Note) []twin.Note {
		out := slices.Clone(ns)
		for i := range out {
			if out[i].Author == "ana" {
				out[i].Author = "user-1"
			}
		}
		return out
	}
	wantPress, wantOven := append(erase(press), bo), erase(oven)
	after := add(t, s, twin.Note{Machine: "oven-01", Text: "after erasure", Author: "cy", Time: at(2000)})
	wantOven = append(wantOven, after)
	for _, h := range []struct {
		name string
		s    twin.NoteStore
	}{{"same handle", s}, {"new handle", openNotes(t, open)}} {
		if diff := cmp.Diff(list(t, h.s, "press-07", 100), wantPress); diff != "" {
			t.Errorf("press-07, %s (-got +want):\n%s", h.name, diff)
		}
		if diff := cmp.Diff(list(t, h.s, "oven-01", 100), wantOven); diff != "" {
			t.Errorf("oven-01, %s (-got +want):\n%s", h.name, diff)
		}
	}
	if n, err := eraser.EraseAuthor(ctx, "ana", "user-1"); err != nil || n != 0 {
		t.Errorf("EraseAuthor again = %d, %v; want 0", n, err)
	}
}
