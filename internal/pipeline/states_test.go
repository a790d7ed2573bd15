package pipeline

import (
	"errors"
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
