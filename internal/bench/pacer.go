package bench

import (
	"math"
	"time"
)

// Pacer is the schedule of an open-loop sender: event i is due at
// start + i/rate whatever happened to the events before it, so a server
// that stalls does not slow the sender down (no coordinated omission). The
// caller stamps each event with its intended time, [Pacer.Intended], so a
// delay anywhere — in the sender, the network or the server — shows up in
// the measured latency.
type Pacer struct {
	start time.Time
	rate  float64
	next  int64 // index of the next event not yet taken
	limit int64 // most events taken at once by Take
}

// NewPacer returns a pacer of rate events per second from start. limit
// bounds how many events one Take returns (0: no bound).
func NewPacer(start time.Time, rate float64, limit int) *Pacer {
	return &Pacer{start: start, rate: rate, limit: int64(limit)}
}

// Due returns how many events are due at now in total since start
// (including those already taken).
func (p *Pacer) Due(now time.Time) int64 {
	el := now.Sub(p.start)
	if el < 0 {
		return 0
	}
	// Event i is due at i/rate: about events 0..floor(el·rate); then made
	// exact against Intended, whose rounding decides.
	n := int64(math.Floor(el.Seconds()*p.rate)) + 1
	for !p.Intended(n).After(now) {
		n++
	}
	for n > 0 && p.Intended(n-1).After(now) {
		n--
	}
	return n
}

// Take returns the indexes [from, to) of the events due at now and not yet
// taken, at most limit of them; from == to when none is due.
func (p *Pacer) Take(now time.Time) (from, to int64) {
	from, to = p.next, p.Due(now)
	if to < from {
		to = from
	}
	if p.limit > 0 && to-from > p.limit {
		to = from + p.limit
	}
	p.next = to
	return from, to
}

// Intended returns the time event i is due.
func (p *Pacer) Intended(i int64) time.Time {
	return p.start.Add(time.Duration(float64(i) / p.rate * float64(time.Second)))
}

// Next returns the time the next event not yet taken is due: the time to
// wake up at.
func (p *Pacer) Next() time.Time { return p.Intended(p.next) }

// Behind returns how many due events are not taken yet at now: the
// sender's backlog.
func (p *Pacer) Behind(now time.Time) int64 { return max(p.Due(now)-p.next, 0) }

// NextBatch returns when the next batch of at most batch events should go:
// once batch events are due, or once the oldest event not yet taken has
// waited maxWait, whichever comes first.
func (p *Pacer) NextBatch(batch int, maxWait time.Duration) time.Time {
	full := p.Intended(p.next + int64(max(batch, 1)) - 1)
	oldest := p.Intended(p.next).Add(maxWait)
	if oldest.Before(full) {
		return oldest
	}
	return full
}
