package ingest

import (
	"testing"
	"time"
)

func TestTimeBounds(t *testing.T) {
	now := time.UnixMilli(1_795_996_800_000)
	day := 24 * time.Hour
	tests := []struct {
		name              string
		retention, future time.Duration
		wantMin, wantMax  int64
	}{
		{"retention and future", 30 * day, 10 * time.Minute, now.Add(-30*day + 10*time.Minute).UnixMilli(), now.Add(10 * time.Minute).UnixMilli()},
		{"no future", 30 * day, 0, now.Add(-30 * day).UnixMilli(), 0},
		{"unbounded past", 0, time.Minute, 0, now.Add(time.Minute).UnixMilli()},
		{"unbounded", 0, 0, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gotMin, gotMax := TimeBounds(now, tt.retention, tt.future)
			if gotMin != tt.wantMin || gotMax != tt.wantMax {
				t.Errorf("TimeBounds = [%d, %d], want [%d, %d]", gotMin, gotMax, tt.wantMin, tt.wantMax)
			}
		})
	}
	// An event 20 days old is taken, one a day beyond the retention named.
	lo, hi := TimeBounds(now, 30*day, 10*time.Minute)
	opts := Options{MinTime: lo, MaxTime: hi}
	if r := checkTime(now.Add(-20*day).UnixMilli(), &opts); r != "" {
		t.Errorf("20 days old: %s, want accepted", r)
	}
	if r := checkTime(now.Add(-31*day).UnixMilli(), &opts); r == "" {
		t.Error("31 days old accepted, want rejected")
	}
}
