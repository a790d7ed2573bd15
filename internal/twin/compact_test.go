package twin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/telemetry"
)

// writeAlarmHistory writes a journal of n alarm changes: 1000 machines,
// each raising and clearing alarms in turn, every alarm acknowledged.
func writeAlarmHistory(tb testing.TB, path string, n int) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	id := 0
	for i := 0; i < n; {
		id++
		v, limit := 95.0, 90.0
		al := Alarm{ID: fmt.Sprint(id), Machine: fmt.Sprintf("m%04d", id%1000), Metric: "temp", Kind: AlarmHigh,
			Limit: &limit, Value: &v, State: AlarmActive, RaisedAt: at}
		for _, op := range []string{OpRaise, OpAck, OpClear} {
			at = at.Add(time.Second)
			switch op {
			case OpAck:
				acked := at
				al.Acked, al.AckedAt, al.AckedBy = true, &acked, "ops"
			case OpClear:
				cleared := at
				al.State, al.ClearedAt = AlarmCleared, &cleared
			}
			if err := enc.Encode(AlarmEntry{Op: op, At: at, Alarm: al}); err != nil {
				tb.Fatal(err)
			}
			i++
		}
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkOpenAlarms opens a journal that recorded 200 k alarm changes.
func BenchmarkOpenAlarms(b *testing.B) {
	path := filepath.Join(b.TempDir(), "alarms.jsonl")
	writeAlarmHistory(b, path, 200_000)
	open := func() {
		a, err := OpenAlarms(path, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		if err := a.Close(); err != nil {
			b.Fatal(err)
		}
	}
	open() // a journal written before compaction existed is compacted here
	b.ReportAllocs()
	for b.Loop() {
		open()
	}
}

// alarmState is what a restart must restore of an Alarms.
type alarmState struct {
	Alarms []Alarm
	Seq    uint64
}

func stateOf(a *Alarms) alarmState {
	list := a.List(true, "")
	a.mu.Lock()
	defer a.mu.Unlock()
	return alarmState{Alarms: list, Seq: a.seq}
}

// TestAlarmJournalCompactionProperty: random raises, clears and
// acknowledgements with the journal compacted often; killed at any point
// (the file cut anywhere after the last complete change, mid-line
// included), the journal restores the state as of that change.
func TestAlarmJournalCompactionProperty(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "alarms.jsonl")
		open := func(path string, compactMin int) *Alarms {
			f := NewAlarmFile(path)
			f.compactMin = compactMin
			a, err := NewAlarms(context.Background(), f, 30*time.Second, slog.New(slog.DiscardHandler))
			if err != nil {
				rt.Fatalf("opening alarms: %v", err)
			}
			return a
		}
		compactMin := rapid.IntRange(1, 16).Draw(rt, "compact_min")
		a := open(path, compactMin)
		th := map[string]Threshold{"temp": {High: f(90), Deadband: 2}}
		thresholds := func(string) map[string]Threshold { return th }
		var (
			contents [][]byte
			states   []alarmState
		)
		record := func() {
			b, err := os.ReadFile(path)
			if err != nil {
				rt.Fatal(err)
			}
			contents = append(contents, b)
			states = append(states, stateOf(a))
		}
		record()
		now := int64(1_000_000)
		for range rapid.IntRange(1, 60).Draw(rt, "ops") {
			now += int64(rapid.IntRange(1, 40).Draw(rt, "step_s")) * 1000
			switch rapid.IntRange(0, 2).Draw(rt, "op") {
			case 0:
				m := fmt.Sprintf("m%d", rapid.IntRange(0, 3).Draw(rt, "machine"))
				ss := []telemetry.Sample{{Machine: m, Metric: "temp", Time: now, Value: float64(rapid.IntRange(80, 100).Draw(rt, "v"))}}
				if _, err := a.Seen(ss, now); err != nil {
					rt.Fatal(err)
				}
				if _, err := a.Observe(ss, thresholds); err != nil {
					rt.Fatal(err)
				}
			case 1:
				if _, err := a.Tick(time.UnixMilli(now)); err != nil {
					rt.Fatal(err)
				}
			case 2:
				list := a.List(true, "")
				if len(list) == 0 {
					continue
				}
				al := list[rapid.IntRange(0, len(list)-1).Draw(rt, "ack")]
				if _, err := a.Ack(al.ID, "ops", "seen", time.UnixMilli(now)); err != nil && !errors.Is(err, ErrConflict) {
					rt.Fatal(err)
				}
			}
			record()
		}
		if err := a.Close(); err != nil {
			rt.Fatal(err)
		}
		// Kill after change k: the file as it was then, plus a torn part
		// of the next change's first line if that change only appended.
		// (A change of several lines killed between two of them restores
		// the lines written: an alarm change is durable once synced.)
		k := rapid.IntRange(0, len(contents)-1).Draw(rt, "kill")
		file := contents[k]
		if k+1 < len(contents) && bytes.HasPrefix(contents[k+1], file) && len(contents[k+1]) > len(file) {
			next := contents[k+1][len(file):]
			torn := rapid.IntRange(0, bytes.IndexByte(next, '\n')).Draw(rt, "torn")
			file = contents[k+1][:len(file)+torn]
		}
		killed := filepath.Join(dir, "killed.jsonl")
		if err := os.WriteFile(killed, file, 0o600); err != nil {
			rt.Fatal(err)
		}
		b := open(killed, compactMin)
		defer b.Close()
		if diff := cmp.Diff(stateOf(b), states[k]); diff != "" {
			rt.Fatalf("state restored after change %d of %d (-got +want):\n%s", k, len(states)-1, diff)
		}
	})
}

// TestAlarmJournalStaysSmall: a long history leaves a journal of a few
// times the live alarms.
func TestAlarmJournalStaysSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alarms.jsonl")
	writeAlarmHistory(t, path, 30_000)
	a, err := OpenAlarms(path, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v := 95.0
	for i := range 20_000 { // raise and clear one alarm over and over
		ss := []telemetry.Sample{{Machine: "x", Metric: "temp", Time: int64(i) * 1000, Value: v}}
		v = 185 - v
		if _, err := a.Observe(ss, func(string) map[string]Threshold { return map[string]Threshold{"temp": {High: f(90)}} }); err != nil {
			t.Fatal(err)
		}
	}
	want := stateOf(a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	lines := 0
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines = bytes.Count(b, []byte("\n"))
	if limit := alarmCompactFactor * (maxClearedInMemory + 2); lines > limit {
		t.Errorf("journal of %d lines after 50 k changes, want ≤ %d", lines, limit)
	}
	a, err = OpenAlarms(path, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if diff := cmp.Diff(stateOf(a), want); diff != "" {
		t.Errorf("state after reopening (-got +want):\n%s", diff)
	}
}
