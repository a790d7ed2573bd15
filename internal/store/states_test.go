package store

import (
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStateIntervals(t *testing.T) {
	ch := func(ts int64, v string) StateChange {
		return StateChange{Machine: "m", Name: "state", Time: ts, Value: v}
	}
	tests := []struct {
		name     string
		changes  []StateChange
		from, to int64
		want     []StateInterval
	}{
		{name: "none", from: 0, to: 100},
		{name: "empty range", changes: []StateChange{ch(0, "A")}, from: 100, to: 100},
		{name: "in force at from clipped", changes: []StateChange{ch(10, "A"), ch(150, "B")}, from: 100, to: 200,
			want: []StateInterval{{"A", 100, 150}, {"B", 150, 200}}},
		{name: "unknown before first change", changes: []StateChange{ch(120, "A")}, from: 100, to: 200,
			want: []StateInterval{{"A", 120, 200}}},
		{name: "same value merges", changes: []StateChange{ch(100, "A"), ch(120, "A"), ch(150, "B")}, from: 100, to: 200,
			want: []StateInterval{{"A", 100, 150}, {"B", 150, 200}}},
		{name: "change at to ignored", changes: []StateChange{ch(100, "A"), ch(200, "B")}, from: 100, to: 200,
			want: []StateInterval{{"A", 100, 200}}},
		{name: "several before from: latest wins", changes: []StateChange{ch(10, "A"), ch(20, "B")}, from: 100, to: 200,
			want: []StateInterval{{"B", 100, 200}}},
		{name: "same instant then back", changes: []StateChange{ch(100, "A"), ch(150, "B"), ch(150, "A")}, from: 100, to: 200,
			want: []StateInterval{{"A", 100, 200}}},
		{name: "out of order ignored", changes: []StateChange{ch(100, "A"), ch(150, "B"), ch(120, "C"), ch(180, "A")}, from: 100, to: 200,
			want: []StateInterval{{"A", 100, 150}, {"B", 150, 180}, {"A", 180, 200}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := StateIntervals(tt.changes, tt.from, tt.to)
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("StateIntervals (-got +want):\n%s", diff)
			}
		})
	}
}

// TestStateIntervalsOracle compares with a per-millisecond recomputation
// on random series.
func TestStateIntervalsOracle(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	values := []string{"A", "B", "C"}
	for i := range 500 {
		var changes []StateChange
		ts := int64(r.IntN(20))
		for range r.IntN(8) {
			changes = append(changes, StateChange{Time: ts, Value: values[r.IntN(len(values))]})
			ts += int64(r.IntN(15))
		}
		from, to := int64(r.IntN(40)), int64(r.IntN(80))
		got := StateIntervals(changes, from, to)
		// oracle: the value at each ms of [from, to).
		want := map[int64]string{}
		for ms := from; ms < to; ms++ {
			for _, c := range changes {
				if c.Time <= ms {
					want[ms] = c.Value
				}
			}
		}
		have := map[int64]string{}
		for j, iv := range got {
			if iv.To <= iv.From {
				t.Fatalf("case %d: empty interval %+v", i, iv)
			}
			if j > 0 && (got[j-1].To != iv.From || got[j-1].Value == iv.Value) {
				t.Fatalf("case %d: intervals %+v not contiguous or not merged", i, got)
			}
			for ms := iv.From; ms < iv.To; ms++ {
				have[ms] = iv.Value
			}
		}
		if diff := cmp.Diff(have, want); diff != "" {
			t.Fatalf("case %d: changes %+v [%d,%d): (-got +want):\n%s", i, changes, from, to, diff)
		}
	}
}

func TestStateTotals(t *testing.T) {
	got := StateTotals([]StateInterval{{"A", 0, 10}, {"B", 10, 15}, {"A", 15, 20}})
	want := map[string]int64{"A": 15, "B": 5}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("StateTotals (-got +want):\n%s", diff)
	}
}
