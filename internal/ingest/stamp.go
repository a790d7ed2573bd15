package ingest

import (
	"fmt"
	"sync"
)

// Stamper gives events that carry no timestamp their server time, so that
// distinct events of one machine never share one.
//
// The rule: the stamp of a machine's event is the server clock in Unix
// milliseconds, or one millisecond after that machine's previous stamp when
// the clock has not moved past it. Server stamps are therefore strictly
// increasing per machine, in the order the events arrive, and N events
// without a timestamp — in one request or in requests that arrive within the
// same millisecond — become N samples, none taken for a duplicate of another
// by the store's (machine, metric, time) key. A retried copy of an event
// with an id or a seq gets a new stamp too, and stays a duplicate: those are
// deduplicated by their id or seq, not their time.
//
// A machine that sends more than a thousand events a second without a
// timestamp runs ahead of the clock by the excess; a stamp that would lie
// beyond the accepted future (Options.MaxTime) is refused, and the event is
// rejected asking for timestamps.
//
// The rule holds per Stamper: one per server process, shared by every
// ingest path (HTTP JSON, NDJSON, line protocol, MQTT). Events of one machine
// sent without timestamps through two replicas within the same millisecond
// may still meet; such a sender should send timestamps.
//
// A Stamper remembers only the machines whose last stamp is not behind the
// clock (for the others the clock alone decides), so its memory is bounded
// by the machines stamped in the last milliseconds, whatever the fleet. It is
// safe for concurrent use.
type Stamper struct {
	mu   sync.Mutex
	last map[string]int64
	// sweepAt is the map size at which entries behind the clock are
	// forgotten next.
	sweepAt int
}

// minSweep is the smallest map size at which a Stamper sweeps.
const minSweep = 1024

// NewStamper returns an empty Stamper.
func NewStamper() *Stamper {
	return &Stamper{last: make(map[string]int64), sweepAt: minSweep}
}

// Stamp returns the server time of the next event of machine without a
// timestamp: max(now, previous stamp of machine + 1). limit, if not 0, is
// the latest acceptable stamp: a stamp beyond it is not taken, and ok is
// false.
func (s *Stamper) Stamp(machine string, now, limit int64) (stamp int64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	stamp = now
	if prev, seen := s.last[machine]; seen && prev >= now {
		stamp = prev + 1
	}
	if limit != 0 && stamp > limit {
		return stamp, false
	}
	if len(s.last) >= s.sweepAt {
		s.sweep(now)
	}
	s.last[machine] = stamp
	return stamp, true
}

// sweep forgets the machines whose last stamp is behind now: their next
// stamp is now whatever they had. Sweeping again waits until the map has
// doubled, so the work is amortised O(1) per stamp.
func (s *Stamper) sweep(now int64) {
	for m, t := range s.last {
		if t < now {
			delete(s.last, m)
		}
	}
	s.sweepAt = max(2*len(s.last), minSweep)
}

// reset forgets every machine, for a Stamper reused by a pooled decoder.
func (s *Stamper) reset() {
	clear(s.last)
	s.sweepAt = minSweep
}

// stampReason explains a stamp refused for running too far ahead.
func stampReason(stamp, limit int64) string {
	return fmt.Sprintf("missing, and the server time given to this machine's events without a timestamp (%s) would pass the latest accepted %s: send more than 1000 events a second per machine with a timestamp each",
		fmtMilli(stamp), fmtMilli(limit))
}

// stamp gives the event of machine without a timestamp its time, from
// opts.Stamper, or from the call's own stamper when none is shared; reason
// is non-empty when the stamp is refused for running ahead of the clock.
func (d *decoder) stamp(machine string) (int64, string) {
	st := d.opts.Stamper
	if st == nil {
		if d.local == nil {
			d.local = NewStamper()
		}
		st = d.local
	}
	t, ok := st.Stamp(machine, d.opts.Now, d.opts.MaxTime)
	if !ok && t > d.opts.Now {
		return t, stampReason(t, d.opts.MaxTime)
	}
	return t, "" // a clock beyond MaxTime is left to checkTime
}
