package stats

import (
	"math"
	"testing"
	"time"
	"unsafe"

	"pgregory.net/rapid"
)

// rateOracle is the brute-force model of Rate: every hit kept in a list with
// the second it is counted in, and the count a scan of the list. Only the
// documented rules are modelled: a hit earlier than the latest second by
// less than 5 minutes is counted in that second; earlier by 5 minutes or
// more, the count starts again. (A forward gap needs no rule: hits 5 minutes
// older than the latest second are outside every window anyway.)
type rateOracle struct {
	hits    []rateOracleHit
	last    int64 // latest second
	started bool
}

type rateOracleHit struct {
	ms  int64 // the time passed to Hit
	sec int64 // the second counted in
	n   uint64
}

// rateOracleSecond is ⌊ms/1000⌋, written differently from rateSecond.
func rateOracleSecond(ms int64) int64 {
	return (ms - (ms%1000+1000)%1000) / 1000
}

func (o *rateOracle) hit(ms int64, n int) {
	if n <= 0 {
		return
	}
	s := rateOracleSecond(ms)
	switch {
	case !o.started:
		o.last, o.started = s, true
	case o.last-s >= 300:
		o.hits = nil
		o.last = s
	case s > o.last:
		o.last = s
	}
	o.hits = append(o.hits, rateOracleHit{ms: ms, sec: o.last, n: uint64(n)})
}

// total counts the hits of the seconds (q−w, q], where q is the second of
// nowMs, or the latest second if later.
func (o *rateOracle) total(nowMs int64, window time.Duration) uint64 {
	w := int64(window / time.Second)
	q := max(rateOracleSecond(nowMs), o.last)
	var sum uint64
	for _, h := range o.hits {
		if q-w < h.sec && h.sec <= q {
			sum += h.n
		}
	}
	return sum
}

type rateHitAt struct {
	ms int64
	n  int
}

func TestRateTable(t *testing.T) {
	const s = 1000 // one second in ms
	tests := []struct {
		name   string
		hits   []rateHitAt
		nowMs  int64
		window time.Duration
		want   uint64
	}{
		{name: "zero value", nowMs: 1e12, window: 5 * time.Minute, want: 0},
		{name: "one hit", hits: []rateHitAt{{1000 * s, 1}}, nowMs: 1000 * s, window: time.Minute, want: 1},
		{name: "batch", hits: []rateHitAt{{1000 * s, 250}}, nowMs: 1000 * s, window: time.Minute, want: 250},
		{name: "current partial second counts", hits: []rateHitAt{{1000*s + 500, 1}}, nowMs: 1000*s + 999, window: time.Minute, want: 1},
		{name: "oldest second of 1m still in", hits: []rateHitAt{{1000 * s, 1}}, nowMs: 1059*s + 999, window: time.Minute, want: 1},
		{name: "oldest second of 1m out", hits: []rateHitAt{{1000*s + 999, 1}}, nowMs: 1060 * s, window: time.Minute, want: 0},
		{name: "5m holds both ends", hits: []rateHitAt{{1000 * s, 1}, {1299 * s, 1}}, nowMs: 1299 * s, window: 5 * time.Minute, want: 2},
		{name: "5m drops the oldest", hits: []rateHitAt{{1000 * s, 1}, {1299 * s, 1}}, nowMs: 1300 * s, window: 5 * time.Minute, want: 1},
		{name: "1m of a 5m history", hits: []rateHitAt{{1000 * s, 1}, {1200 * s, 2}, {1250 * s, 4}}, nowMs: 1250 * s, window: time.Minute, want: 6},
		{name: "gap of 299 s keeps", hits: []rateHitAt{{1000 * s, 5}, {1299 * s, 1}}, nowMs: 1299 * s, window: 5 * time.Minute, want: 6},
		{name: "gap of 300 s clears", hits: []rateHitAt{{1000 * s, 5}, {1300 * s, 1}}, nowMs: 1300 * s, window: 5 * time.Minute, want: 1},
		{name: "gap of hours clears", hits: []rateHitAt{{1000 * s, 5}, {9000 * s, 1}}, nowMs: 9000 * s, window: 5 * time.Minute, want: 1},
		{name: "slightly back is clamped", hits: []rateHitAt{{1010 * s, 1}, {1008*s + 500, 1}}, nowMs: 1069*s + 999, window: time.Minute, want: 2},
		{name: "clamped hit leaves with its second", hits: []rateHitAt{{1010 * s, 1}, {1008*s + 500, 1}}, nowMs: 1070 * s, window: time.Minute, want: 0},
		{name: "299 s back is clamped", hits: []rateHitAt{{2000 * s, 1}, {1701 * s, 1}}, nowMs: 2000 * s, window: 5 * time.Minute, want: 2},
		{name: "300 s back starts again", hits: []rateHitAt{{2000 * s, 3}, {1700 * s, 1}}, nowMs: 1700 * s, window: 5 * time.Minute, want: 1},
		{name: "after a restart the later hits are gone", hits: []rateHitAt{{2000 * s, 3}, {1700 * s, 1}}, nowMs: 2000 * s, window: 5 * time.Minute, want: 0},
		{name: "query before the latest second", hits: []rateHitAt{{1010 * s, 1}}, nowMs: 1005 * s, window: time.Second, want: 1},
		{name: "query far later", hits: []rateHitAt{{1010 * s, 1}}, nowMs: 1e12, window: 5 * time.Minute, want: 0},
		{name: "n ≤ 0 counts nothing", hits: []rateHitAt{{1000 * s, 0}, {1000 * s, -5}}, nowMs: 1000 * s, window: time.Minute, want: 0},
		{name: "n ≤ 0 does not move time", hits: []rateHitAt{{1000 * s, 1}, {5000 * s, 0}}, nowMs: 1000 * s, window: time.Minute, want: 1},
		{name: "bucket saturates", hits: []rateHitAt{{1000 * s, 1 << 40}, {1000 * s, 1}}, nowMs: 1000 * s, window: time.Minute, want: math.MaxUint32},
		{name: "sum exceeds a bucket", hits: []rateHitAt{{1000 * s, math.MaxUint32}, {1001 * s, math.MaxUint32}}, nowMs: 1001 * s, window: time.Minute, want: 2 * math.MaxUint32},
		{name: "before 1970", hits: []rateHitAt{{-1001, 1}, {-1000, 1}, {-1, 1}}, nowMs: -1, window: time.Second, want: 2},
		{name: "whole-second window", hits: []rateHitAt{{1000 * s, 1}, {1005 * s, 1}, {1009 * s, 1}}, nowMs: 1009 * s, window: 5 * time.Second, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Rate
			for _, h := range tt.hits {
				r.Hit(h.ms, h.n)
			}
			if got := r.Total(tt.nowMs, tt.window); got != tt.want {
				t.Errorf("Total(%d, %v) = %d, want %d", tt.nowMs, tt.window, got, tt.want)
			}
			if got, want := r.PerSecond(tt.nowMs, tt.window), float64(tt.want)/tt.window.Seconds(); got != want {
				t.Errorf("PerSecond(%d, %v) = %v, want %v", tt.nowMs, tt.window, got, want)
			}
		})
	}
}

func TestRateSteadyPerSecond(t *testing.T) {
	var r Rate
	start := int64(1_700_000_000_000)
	// Ten minutes of 4 hits a second, spread over each second.
	for ms := start; ms < start+600_000; ms += 250 {
		r.Hit(ms, 1)
	}
	now := start + 600_000 - 1
	for _, tt := range []struct {
		window time.Duration
		want   float64
	}{
		{time.Minute, 4},
		{5 * time.Minute, 4},
	} {
		if got := r.PerSecond(now, tt.window); got != tt.want {
			t.Errorf("PerSecond(now, %v) = %v, want %v", tt.window, got, tt.want)
		}
	}
}

func TestRatePanicsOnBadWindow(t *testing.T) {
	for _, w := range []time.Duration{0, -time.Second, 500 * time.Millisecond, 1500 * time.Millisecond, MaxRateWindow + time.Second, time.Hour} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("PerSecond(_, %v) did not panic", w)
				}
			}()
			var r Rate
			r.PerSecond(0, w)
		}()
	}
}

// TestRateSize pins the memory per Rate. unsafe.Sizeof(Rate{}) is 1216 bytes
// on 64-bit platforms: 300 uint32 buckets (1200), the latest second (8) and
// the started flag (1, padded to 8). The budget is 2.5 KB per machine.
func TestRateSize(t *testing.T) {
	size := unsafe.Sizeof(Rate{})
	t.Logf("unsafe.Sizeof(Rate{}) = %d", size)
	if size > 2560 {
		t.Errorf("unsafe.Sizeof(Rate{}) = %d, want ≤ 2560", size)
	}
}

func TestRateHitDoesNotAllocate(t *testing.T) {
	var r Rate
	ms := int64(1_700_000_000_000)
	allocs := testing.AllocsPerRun(1000, func() {
		r.Hit(ms, 1)
		ms += 7
	})
	if allocs != 0 {
		t.Errorf("Hit allocates %v times per call, want 0", allocs)
	}
}

// rateStep draws the time between hits: many in one second, small steps
// back, gaps around and beyond 5 minutes, and the clock set far back.
func rateStep() *rapid.Generator[int64] {
	return rapid.OneOf(
		rapid.Int64Range(0, 1500),
		rapid.Int64Range(-3000, 0),
		rapid.Int64Range(1000, 400_000),
		rapid.SampledFrom([]int64{59_000, 60_000, 299_000, 299_999, 300_000, 301_000, -299_000, -300_000, -301_000}),
		rapid.Int64Range(-1e9, -300_000),
	)
}

// rateWindow draws 1m, 5m or any whole number of seconds up to 5m.
func rateWindow() *rapid.Generator[time.Duration] {
	return rapid.OneOf(
		rapid.SampledFrom([]time.Duration{time.Minute, 5 * time.Minute}),
		rapid.Map(rapid.Int64Range(1, 300), func(s int64) time.Duration { return time.Duration(s) * time.Second }),
	)
}

// TestRateMatchesBruteCount checks Total and PerSecond, after every hit,
// against a scan of every hit counted at one-second granularity (see Rate):
// the count must be exact.
func TestRateMatchesBruteCount(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var r Rate
		var o rateOracle
		ms := rapid.Int64Range(-1e7, 2e12).Draw(t, "start")
		steps := rapid.IntRange(0, 300).Draw(t, "steps")
		for i := range steps {
			if i > 0 {
				ms += rateStep().Draw(t, "step")
			}
			n := rapid.OneOf(rapid.IntRange(1, 3), rapid.IntRange(-1, 1000)).Draw(t, "n")
			r.Hit(ms, n)
			o.hit(ms, n)
			now := ms + rapid.OneOf(rapid.Just(int64(0)), rapid.Int64Range(-5000, 5000), rapid.Int64Range(0, 400_000)).Draw(t, "query offset")
			w := rateWindow().Draw(t, "window")
			got, want := r.Total(now, w), o.total(now, w)
			if got != want {
				t.Fatalf("hit %d: Total(%d, %v) = %d, want %d", i, now, w, got, want)
			}
			if got, want := r.PerSecond(now, w), float64(want)/w.Seconds(); got != want {
				t.Fatalf("hit %d: PerSecond(%d, %v) = %v, want %v", i, now, w, got, want)
			}
		}
	})
}

// TestRateWithinExactBound checks the documented error against the exact
// count of hits with times in (now−window, now], for hits in time order and
// queries no earlier than the last hit:
//
//	0 ≤ exact − Total ≤ hits in second ⌊now/1000⌋ − window/1s.
func TestRateWithinExactBound(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var r Rate
		var hits []rateHitAt
		ms := rapid.Int64Range(0, 2e12).Draw(t, "start")
		steps := rapid.IntRange(1, 300).Draw(t, "steps")
		for i := range steps {
			if i > 0 {
				ms += rapid.OneOf(rapid.Int64Range(0, 1500), rapid.Int64Range(1000, 400_000)).Draw(t, "step")
			}
			n := rapid.IntRange(1, 3).Draw(t, "n")
			r.Hit(ms, n)
			hits = append(hits, rateHitAt{ms, n})

			now := ms + rapid.OneOf(rapid.Just(int64(0)), rapid.Int64Range(0, 400_000)).Draw(t, "query offset")
			w := rateWindow().Draw(t, "window")
			wms := w.Milliseconds()
			edge := rateOracleSecond(now) - wms/1000
			var exact, atEdge uint64
			for _, h := range hits {
				if now-wms < h.ms && h.ms <= now {
					exact += uint64(h.n)
				}
				if rateOracleSecond(h.ms) == edge {
					atEdge += uint64(h.n)
				}
			}
			got := r.Total(now, w)
			if got > exact || exact-got > atEdge {
				t.Fatalf("hit %d: Total(%d, %v) = %d; exact count %d, hits in the edge second %d", i, now, w, got, exact, atEdge)
			}
		}
	})
}

// BenchmarkRateHit measures Hit at 1000 hits a second, one per millisecond,
// so a new bucket is opened every 1000 hits.
func BenchmarkRateHit(b *testing.B) {
	var r Rate
	ms := int64(1_700_000_000_000)
	b.ReportAllocs()
	for b.Loop() {
		r.Hit(ms, 1)
		ms++
	}
}

// BenchmarkRatePerSecond5m measures the read of the widest window, which sums
// all 300 buckets: the cost per machine of a fleet-wide rate on /metrics.
func BenchmarkRatePerSecond5m(b *testing.B) {
	var r Rate
	ms := int64(1_700_000_000_000)
	for range 600 {
		r.Hit(ms, 3)
		ms += 1000
	}
	b.ReportAllocs()
	var sum float64
	for b.Loop() {
		sum += r.PerSecond(ms, 5*time.Minute)
	}
	if sum == 0 {
		b.Fatal("no hits counted")
	}
}
