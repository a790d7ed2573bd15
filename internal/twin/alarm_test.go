package twin

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type obs struct {
	t int64
	v float64
}

func TestRuleHysteresisAndHold(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		in   []obs
		want []Transition
	}{
		{
			name: "high, no hold: raise at once, clear only past the deadband",
			rule: Rule{Kind: AlarmHigh, Limit: 90, Deadband: 2},
			in:   []obs{{0, 89}, {1, 91}, {2, 89}, {3, 88.5}, {4, 87.9}, {5, 90.5}},
			want: []Transition{NoChange, Raised, NoChange, NoChange, Cleared, Raised},
		},
		{
			name: "high, exactly at the limit is not beyond",
			rule: Rule{Kind: AlarmHigh, Limit: 90},
			in:   []obs{{0, 90}, {1, 90.0001}},
			want: []Transition{NoChange, Raised},
		},
		{
			name: "hold: raised once beyond for 10s of event time",
			rule: Rule{Kind: AlarmHigh, Limit: 90, For: 10 * time.Second},
			in:   []obs{{0, 95}, {5000, 96}, {9999, 97}, {10000, 95}, {11000, 99}},
			want: []Transition{NoChange, NoChange, NoChange, Raised, NoChange},
		},
		{
			name: "hold: a sample back within the limit restarts the count",
			rule: Rule{Kind: AlarmHigh, Limit: 90, For: 10 * time.Second},
			in:   []obs{{0, 95}, {6000, 89}, {7000, 95}, {16000, 95}, {17000, 95}},
			want: []Transition{NoChange, NoChange, NoChange, NoChange, Raised},
		},
		{
			name: "low with deadband",
			rule: Rule{Kind: AlarmLow, Limit: 10, Deadband: 1},
			in:   []obs{{0, 12}, {1, 9}, {2, 10.5}, {3, 11.5}, {4, 9.99}},
			want: []Transition{NoChange, Raised, NoChange, Cleared, Raised},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.rule
			var got []Transition
			for _, o := range tt.in {
				got = append(got, r.Observe(o.t, o.v))
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("transitions (-got +want):\n%s", diff)
			}
		})
	}
}

func TestRulesFromThreshold(t *testing.T) {
	got, err := Rules(Threshold{High: f(90), Low: f(10), Deadband: 2, For: "10s"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Rule{
		{Kind: AlarmHigh, Limit: 90, Deadband: 2, For: 10 * time.Second},
		{Kind: AlarmLow, Limit: 10, Deadband: 2, For: 10 * time.Second},
	}
	if diff := cmp.Diff(got, want, cmp.AllowUnexported(Rule{})); diff != "" {
		t.Errorf("Rules (-got +want):\n%s", diff)
	}
	if _, err := Rules(Threshold{High: f(1), For: "soon"}); err == nil {
		t.Error("Rules with a bad for: got nil error")
	}
}

func TestOffline(t *testing.T) {
	o := Offline{After: 30 * time.Second}
	steps := []struct {
		seen bool
		now  int64
		want Transition
	}{
		{false, 100_000, NoChange}, // never seen: unknown, not offline
		{true, 100_000, NoChange},
		{false, 130_000, NoChange}, // exactly After: still online
		{false, 130_001, Raised},
		{false, 200_000, NoChange}, // raised once
		{true, 200_500, Cleared},
		{false, 210_000, NoChange},
	}
	for i, s := range steps {
		var got Transition
		if s.seen {
			got = o.Seen(s.now)
		} else {
			got = o.Tick(s.now)
		}
		if got != s.want {
			t.Errorf("step %d (seen %v at %d): got %v, want %v", i, s.seen, s.now, got, s.want)
		}
	}
}
