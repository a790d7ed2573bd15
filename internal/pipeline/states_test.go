package pipeline

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/storetest"
	"github.com/twinline/twinline/internal/telemetry"
)

// stateEvent returns an event of machine at base+t carrying the state
// "state" and, with id, that idempotency key.
func stateEvent(machine string, t int64, value, id string) telemetry.Event {
	return telemetry.Event{Machine: machine, ID: id, Time: base + t, States: []telemetry.State{{Name: "state", Value: value}}}
}

// TestStates: only changes are stored, in event-time order; a keyed
// duplicate (whatever it carries) changes nothing; an event older than
// the newest change is placed by what was in force at its time; a
// restarted processor picks the series up from the store; the sink gets
// what was stored; a failing state store fails the commit, and the retry
// stores the change once.
func TestStates(t *testing.T) {
	runSuite(t, func(t *testing.T, e *env) {
		st := &storetest.MemoryStates{}
		var mu sync.Mutex
		var sunk []store.StateChange
		opts := procOpts{states: st, stateSink: func(cs []store.StateChange) {
			mu.Lock()
			defer mu.Unlock()
			sunk = append(sunk, cs...)
		}}
		e.start(opts)
		withMetric := stateEvent("a", 1000, "RUNNING", "")
		withMetric.Metrics = []telemetry.Metric{{Name: "x", Value: 1}}
		for _, ev := range []telemetry.Event{
			withMetric,
			stateEvent("a", 2000, "RUNNING", ""),
			stateEvent("a", 3000, "DOWN", ""),
			stateEvent("a", 4000, "IDLE", "k1"),
			stateEvent("a", 4000, "BOGUS", "k1"), // a duplicate of k1
			stateEvent("a", 2500, "RUNNING", ""), // late, same as in force
			stateEvent("a", 1500, "DOWN", ""),    // late, another value
			stateEvent("b", 1000, "RUNNING", ""),
		} {
			if _, err := e.deliver(ev); err != nil {
				t.Fatal(err)
			}
		}
		e.start(opts)
		for _, ev := range []telemetry.Event{stateEvent("a", 5000, "IDLE", ""), stateEvent("a", 6000, "DOWN", "")} {
			if _, err := e.deliver(ev); err != nil {
				t.Fatal(err)
			}
		}
		if e.acks {
			st.Fail(errors.New("disk full"))
			if _, err := e.send(stateEvent("a", 7000, "RUNNING", "")); err == nil {
				t.Error("the state store failed, yet the batch was acknowledged")
			}
			st.Fail(nil)
			if _, err := e.deliver(stateEvent("a", 7000, "RUNNING", "")); err != nil {
				t.Fatal(err)
			}
		}
		e.stop()
		ch := func(m string, t int64, v string) store.StateChange {
			return store.StateChange{Machine: m, Name: "state", Time: base + t, Value: v}
		}
		want := []store.StateChange{ch("a", 1000, "RUNNING"), ch("a", 1500, "DOWN"), ch("a", 3000, "DOWN"), ch("a", 4000, "IDLE"), ch("a", 6000, "DOWN"), ch("b", 1000, "RUNNING")}
		if e.acks {
			want = slices.Insert(want, 5, ch("a", 7000, "RUNNING"))
		}
		byTime := func(cs []store.StateChange) []store.StateChange {
			cs = slices.Clone(cs)
			slices.SortFunc(cs, func(x, y store.StateChange) int {
				if x.Machine != y.Machine {
					return cmpString(x.Machine, y.Machine)
				}
				return int(x.Time - y.Time)
			})
			return cs
		}
		if diff := cmp.Diff(byTime(st.All()), want); diff != "" {
			t.Errorf("stored changes (-got +want):\n%s", diff)
		}
		mu.Lock()
		defer mu.Unlock()
		if diff := cmp.Diff(byTime(sunk), want); diff != "" {
			t.Errorf("changes the sink got (-got +want):\n%s", diff)
		}
	})
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestTrackerRules: the change rules one by one, on a store that has a
// series already.
func TestTrackerRules(t *testing.T) {
	ch := func(ts int64, v string) store.StateChange {
		return store.StateChange{Machine: "m", Name: "state", Time: ts, Value: v}
	}
	tests := []struct {
		name   string
		stored []store.StateChange
		obs    []store.StateChange // observations, in arrival order
		want   []store.StateChange
	}{
		{name: "in order: changes only",
			obs:  []store.StateChange{ch(10, "A"), ch(20, "A"), ch(30, "B"), ch(40, "B"), ch(50, "A")},
			want: []store.StateChange{ch(10, "A"), ch(30, "B"), ch(50, "A")}},
		{name: "loaded from the store: same value is no change",
			stored: []store.StateChange{ch(5, "A")},
			obs:    []store.StateChange{ch(10, "A"), ch(20, "B")},
			want:   []store.StateChange{ch(20, "B")}},
		{name: "same instant, other value: first write wins",
			obs:  []store.StateChange{ch(10, "A"), ch(10, "B")},
			want: []store.StateChange{ch(10, "A")}},
		{name: "late inside the newest run: change, and back at the newest observation",
			obs:  []store.StateChange{ch(10, "A"), ch(30, "A"), ch(20, "B")},
			want: []store.StateChange{ch(10, "A"), ch(20, "B"), ch(30, "A")}},
		{name: "late before the newest change, in the group",
			obs:  []store.StateChange{ch(10, "A"), ch(30, "B"), ch(20, "A"), ch(25, "C")},
			want: []store.StateChange{ch(10, "A"), ch(30, "B"), ch(25, "C")}},
		{name: "late before the newest change, in the store",
			stored: []store.StateChange{ch(10, "A"), ch(30, "B")},
			obs:    []store.StateChange{ch(20, "A"), ch(5, "C"), ch(15, "B")},
			want:   []store.StateChange{ch(5, "C"), ch(15, "B")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &storetest.MemoryStates{}
			if err := st.AppendStates(t.Context(), tt.stored); err != nil {
				t.Fatal(err)
			}
			tr := &tracker{ctx: t.Context(), st: st, mem: stateMemory{}}
			for _, o := range tt.obs {
				ev := telemetry.Event{Machine: o.Machine, Time: o.Time}
				if err := tr.observe(&ev, telemetry.State{Name: o.Name, Value: o.Value}); err != nil {
					t.Fatal(err)
				}
			}
			if diff := cmp.Diff(tr.changes, tt.want); diff != "" {
				t.Errorf("changes (-got +want):\n%s", diff)
			}
		})
	}
}

// TestTrackerMaxValues: a series takes MaxStateValues distinct values; a
// change to another is dropped and counted, one to a known value is kept.
func TestTrackerMaxValues(t *testing.T) {
	tr := &tracker{ctx: t.Context(), st: &storetest.MemoryStates{}, mem: stateMemory{}}
	obs := func(ts int64, v string) {
		ev := telemetry.Event{Machine: "m", Time: ts}
		if err := tr.observe(&ev, telemetry.State{Name: "part", Value: v}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range MaxStateValues {
		obs(int64(i), fmt.Sprintf("v%d", i))
	}
	obs(5000, "one too many")
	obs(5001, "v0")
	if got := len(tr.changes); got != MaxStateValues+1 {
		t.Errorf("%d changes, want %d", got, MaxStateValues+1)
	}
	if tr.dropped != 1 {
		t.Errorf("dropped %d, want 1", tr.dropped)
	}
	if last := tr.changes[len(tr.changes)-1]; last.Value != "v0" || last.Time != 5001 {
		t.Errorf("last change %+v, want v0 at 5001", last)
	}
}
