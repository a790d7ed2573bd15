package bench

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

func TestPacerSchedule(t *testing.T) {
	// 1000 events/s: event i is due at i ms; batches of at most 300.
	p := NewPacer(t0, 1000, 300)
	type take struct{ From, To int64 }
	steps := []struct {
		at   time.Duration
		want take
	}{
		{-time.Millisecond, take{0, 0}}, // before the start: nothing due
		{0, take{0, 1}},                 // event 0 is due at the start
		{500 * time.Microsecond, take{1, 1}},
		{10 * time.Millisecond, take{1, 11}},
		{10 * time.Millisecond, take{11, 11}}, // taken already
		// The sender stalls for a second: the schedule does not move,
		// everything due is handed out, in batches of at most 300.
		{time.Second + 10*time.Millisecond, take{11, 311}},
		{time.Second + 10*time.Millisecond, take{311, 611}},
		{time.Second + 10*time.Millisecond, take{611, 911}},
		{time.Second + 10*time.Millisecond, take{911, 1011}},
		{time.Second + 10*time.Millisecond, take{1011, 1011}},
	}
	for i, s := range steps {
		from, to := p.Take(t0.Add(s.at))
		if diff := cmp.Diff(take{from, to}, s.want); diff != "" {
			t.Errorf("step %d: Take(+%v) mismatch (-got +want):\n%s", i, s.at, diff)
		}
	}
}

func TestPacerIntendedTimes(t *testing.T) {
	tests := []struct {
		rate float64
		i    int64
		want time.Duration
	}{
		{1000, 0, 0},
		{1000, 1, time.Millisecond},
		{50_000, 50_000, time.Second},
		{50_000, 1, 20 * time.Microsecond},
		{3, 1, 333333333 * time.Nanosecond},
	}
	for _, tt := range tests {
		p := NewPacer(t0, tt.rate, 0)
		if got := p.Intended(tt.i).Sub(t0); got != tt.want {
			t.Errorf("rate %g: Intended(%d) = +%v, want +%v", tt.rate, tt.i, got, tt.want)
		}
		// An event is due exactly at its intended time, not before.
		if tt.i > 0 {
			at := p.Intended(tt.i)
			if got := p.Due(at); got < tt.i+1 {
				t.Errorf("rate %g: Due(Intended(%d)) = %d, want ≥ %d", tt.rate, tt.i, got, tt.i+1)
			}
			if got := p.Due(at.Add(-time.Microsecond)); got > tt.i {
				t.Errorf("rate %g: Due(Intended(%d) − 1µs) = %d, want ≤ %d", tt.rate, tt.i, got, tt.i)
			}
		}
	}
}

func TestPacerDueOverRunIsRateTimesDuration(t *testing.T) {
	// Open loop: however Take is called, what is due after d is rate·d.
	p := NewPacer(t0, 50_000, 500)
	for at := time.Duration(0); at <= 10*time.Second; at += 7 * time.Millisecond {
		p.Take(t0.Add(at))
	}
	if got, want := p.Due(t0.Add(10*time.Second)), int64(500_001); got != want {
		t.Errorf("Due(+10s) = %d, want %d", got, want)
	}
}

func TestPacerNextBatchAndBehind(t *testing.T) {
	tests := []struct {
		name      string
		rate      float64
		batch     int
		wait      time.Duration
		taken     time.Duration // Take called at this offset first
		wantNext  time.Duration
		behindAt  time.Duration
		wantBehin int64
	}{
		// 50 k/s, batch 500: full after 10 ms, linger 10 ms: both at 9.98 ms
		// (event 499 is due at 9.98 ms).
		{"fills first", 50_000, 500, 20 * time.Millisecond, -1, 9980 * time.Microsecond, 0, 1},
		// 1 k/s, batch 500: would take 499 ms to fill; the oldest waits 10 ms.
		{"linger first", 1000, 500, 10 * time.Millisecond, -1, 10 * time.Millisecond, 5 * time.Millisecond, 6},
		// After taking everything due at 100 ms (events 0..100), the next
		// batch starts at event 101.
		{"after a take", 1000, 500, 10 * time.Millisecond, 100 * time.Millisecond, 111 * time.Millisecond, 150 * time.Millisecond, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPacer(t0, tt.rate, 0)
			if tt.taken >= 0 {
				p.Take(t0.Add(tt.taken))
			}
			if got := p.NextBatch(tt.batch, tt.wait).Sub(t0); got != tt.wantNext {
				t.Errorf("NextBatch = +%v, want +%v", got, tt.wantNext)
			}
			if got := p.Behind(t0.Add(tt.behindAt)); got != tt.wantBehin {
				t.Errorf("Behind(+%v) = %d, want %d", tt.behindAt, got, tt.wantBehin)
			}
		})
	}
}
