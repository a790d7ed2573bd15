package stats

import (
	"math"
	"time"
)

// rateBuckets is the number of one-second buckets a Rate keeps: the longest
// window it answers, 5 minutes.
const rateBuckets = 300

// MaxRateWindow is the longest window Rate.PerSecond and Rate.Total answer.
const MaxRateWindow = rateBuckets * time.Second

// Rate counts hits (events) over the last 5 minutes of ingest time and
// answers events per second over any whole number of seconds up to that, in
// particular 1 and 5 minutes. Times are Unix milliseconds of the server
// clock, passed in by the caller.
//
// It is a ring of 300 one-second buckets of uint32 counts plus the latest
// second hit and running totals of the ring and of its last minute: 1232
// bytes per Rate, whatever the hit rate. Hit runs in amortised O(1) and does
// not allocate; PerSecond and Total sum at most 150 buckets, and none for
// the 1- and 5-minute windows asked within a second of the last hit (a
// window over half the ring, or of one minute, is a running total less the
// seconds before it).
//
// # Granularity and error bound
//
// Hits are counted per whole second s = ⌊t/1000⌋. A window of W seconds
// asked at now counts the hits of seconds ⌊now/1000⌋−W+1 … ⌊now/1000⌋: the
// current (partial) second and the W−1 before it, exactly. Against the exact
// count of hits with times in (now−W·1000 ms, now], this drops only the hits
// of the oldest second's sliver (now−W·1000, (⌊now/1000⌋−W+1)·1000), shorter
// than one second, so
//
//	0 ≤ exact − Total ≤ hits in second ⌊now/1000⌋−W,
//
// at most 1/W of the window at a steady rate (1.7 % for 1m, 0.33 % for 5m).
// Five-second buckets for the 5-minute window would have made that error
// five times larger for no need: 300 uint32 counts fit the budget of
// 2.5 KB per machine.
//
// # Irregular time
//
//   - A gap longer than the ring (no hit for 5 minutes or more) clears it.
//   - A hit earlier than the latest second hit by less than 5 minutes (a
//     clock stepping back slightly, or racing ingest goroutines) is counted
//     in that latest second: the count is kept, its time clamped forward.
//   - A hit earlier by 5 minutes or more means the clock was set back: the
//     Rate starts again from that hit.
//   - A query time earlier than the latest second hit is taken as that
//     second.
//
// A bucket saturates at 2³²−1 hits per second. The zero Rate is empty and
// ready to use. A Rate is not safe for concurrent use.
type Rate struct {
	counts  [rateBuckets]uint32 // counts[s mod 300] = hits in second s, for s in (last−300, last]
	total   uint64              // the sum of counts: the 5-minute window without summing it
	total1m uint64              // the hits of seconds (last−60, last]: the 1-minute window
	last    int64               // the latest second hit
	started bool                // whether last is set
}

// Hit counts n events at nowMs. n ≤ 0 counts nothing.
func (r *Rate) Hit(nowMs int64, n int) {
	if n <= 0 {
		return
	}
	s := rateSecond(nowMs)
	switch {
	case !r.started || s-r.last >= rateBuckets || r.last-s >= rateBuckets:
		// First hit, a gap longer than the ring, or the clock set back.
		clear(r.counts[:])
		r.total, r.total1m = 0, 0
		r.last, r.started = s, true
	case s > r.last:
		for t := r.last + 1; t <= s; t++ {
			// Second t−60 leaves the minute (a second after the old
			// last is still 0), second t−300 the ring.
			r.total1m -= uint64(r.counts[rateIndex(t-60)])
			i := rateIndex(t)
			r.total -= uint64(r.counts[i])
			r.counts[i] = 0
		}
		r.last = s
	default:
		// s ≤ r.last: counted in the latest second.
	}
	c := &r.counts[rateIndex(r.last)]
	old := *c
	if uint64(n) >= uint64(math.MaxUint32-*c) {
		*c = math.MaxUint32
	} else {
		*c += uint32(n)
	}
	r.total += uint64(*c - old)
	r.total1m += uint64(*c - old)
}

// Total returns the number of hits counted in the last window/1s seconds up
// to and including the second of nowMs (see Rate for the exact bound). It panics if
// window is not a whole number of seconds in [1s, MaxRateWindow]: the windows
// are constants of the caller, so another is a programming error.
func (r *Rate) Total(nowMs int64, window time.Duration) uint64 {
	w := rateWindowSeconds(window)
	if !r.started {
		return 0
	}
	q := max(rateSecond(nowMs), r.last)
	// Seconds (q−w, q] that the ring still holds, (last−300, last].
	from := max(q-w, r.last-rateBuckets) + 1
	if from > r.last {
		return 0
	}
	// The 1-minute window and any holding most of the ring are a running
	// total less the seconds before the window: asked in the second last
	// hit (or a few seconds later) they sum nothing.
	if w == 60 {
		return r.total1m - r.sumSeconds(r.last-59, from-1)
	}
	if n := r.last - from + 1; n > rateBuckets/2 {
		return r.total - r.sumSeconds(r.last-rateBuckets+1, from-1)
	}
	return r.sumSeconds(from, r.last)
}

// sumSeconds returns the hits of seconds from…to, which the ring holds
// (last−300 < from, to ≤ last); 0 when from > to.
func (r *Rate) sumSeconds(from, to int64) uint64 {
	if from > to {
		return 0
	}
	// The seconds from…to are one run of the ring, or two when it wraps.
	i, j := rateIndex(from), rateIndex(to)
	if i <= j {
		return rateSum(r.counts[i : j+1])
	}
	return rateSum(r.counts[i:]) + rateSum(r.counts[:j+1])
}

// rateSum returns the sum of counts.
func rateSum(counts []uint32) uint64 {
	// Four sums at once: the fleet list reads two windows of every
	// machine's rate.
	var s0, s1, s2, s3 uint64
	for len(counts) >= 4 {
		s0 += uint64(counts[0])
		s1 += uint64(counts[1])
		s2 += uint64(counts[2])
		s3 += uint64(counts[3])
		counts = counts[4:]
	}
	for _, c := range counts {
		s0 += uint64(c)
	}
	return s0 + s1 + s2 + s3
}

// PerSecond returns the hits per second over window ending at nowMs:
// Total(nowMs, window) divided by the window's seconds. It panics on the
// windows Total panics on.
func (r *Rate) PerSecond(nowMs int64, window time.Duration) float64 {
	return float64(r.Total(nowMs, window)) / window.Seconds()
}

// rateWindowSeconds returns window in whole seconds, or panics if it is not a
// whole number of seconds in [1s, MaxRateWindow].
func rateWindowSeconds(window time.Duration) int64 {
	if window < time.Second || window > MaxRateWindow || window%time.Second != 0 {
		panic("stream: Rate: window must be a whole number of seconds in [1s, 5m], got " + window.String())
	}
	return int64(window / time.Second)
}

// rateIndex returns the bucket of second t.
func rateIndex(t int64) int {
	i := t % rateBuckets
	if i < 0 {
		i += rateBuckets
	}
	return int(i)
}

// rateSecond returns the Unix second of Unix millisecond ms, ⌊ms/1000⌋,
// rounding towards −∞ for times before 1970 too.
func rateSecond(ms int64) int64 {
	s := ms / 1000
	if ms%1000 < 0 {
		s--
	}
	return s
}
