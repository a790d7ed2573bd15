package stream

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// Kinds of deduplication key. The kind is hashed with the key, so an ID "7"
// and a sequence number 7 of the same machine are different keys.
const (
	dedupKindID     = 1
	dedupKindSeq    = 2
	dedupKindSample = 3
)

// dedupNil marks the end of a slot list.
const dedupNil = -1

// Dedup tells first copies of events and samples from their duplicates. It
// remembers the key of every first copy for a bounded horizon of event time.
//
// The key of an event is its ID when it has one, else its sequence number
// when HasSeq is set; both are scoped to the event's machine. Events with
// neither are deduplicated per sample, by (machine, metric, time), with
// [Dedup.Sample]:
//
//	if ev.ID != "" || ev.HasSeq {
//		if !d.Event(ev) { /* duplicate event: drop all its samples */ }
//	} else {
//		for _, m := range ev.Metrics {
//			if !d.Sample(ev.Machine, m.Name, ev.Time) { /* duplicate sample */ }
//		}
//	}
//
// # Horizon
//
// Each machine has a cutoff: the highest event time seen for it minus the
// horizon. A key whose time is at or after its machine's cutoff is never
// forgotten by expiry (only by the cap below). A key older than the cutoff may
// be forgotten: keys expire in the order they were remembered, so a key stays
// until every key of its machine remembered before it has expired too. An
// event or sample that arrives already older than its machine's cutoff is
// reported new unless its key is still remembered, and it is not remembered:
// beyond the horizon the store's own (series, time) key decides whether it is
// a duplicate.
//
// # Cap
//
// At most maxKeys keys are remembered over all machines. Remembering one more
// forgets the key remembered longest ago, whatever its machine or time.
//
// # Memory and collisions
//
// Keys are not stored: each is hashed to 64 bits with [hash/maphash] and a
// seed drawn in [NewDedup], and only the hash is kept. A remembered key costs
// a 32-byte slot plus one map[uint64]struct{} entry (8 bytes and a control
// byte at a load factor up to 7/8, so about 10–20 bytes): roughly 45–55 bytes
// in all, whatever the length of the IDs and names.
//
// Two different keys with the same hash make the second look like a
// duplicate, and its samples are dropped. With n keys remembered, a new key
// collides with probability n/2^64: 5.4e-14 at n = 1 M, one false duplicate
// in about 1.8e13 events. That is one event every 43 days at a sustained
// 5 M events/s with a million keys always remembered, one every 5.8 years at
// 100 k events/s, and proportionally rarer with fewer keys. The chance that
// any two of 1 M keys held at once collide is n²/2^65 ≈ 2.7e-8. This is far
// below the loss rates of the sensors, networks and gateways upstream, and it
// buys a fixed, small size per key. The seed is random per Dedup, so a sender
// cannot craft colliding keys.
//
// The work per call is amortised O(1): a map lookup and insert, and each
// expiry or eviction pops the head of a list, no scans. A Dedup is not safe
// for concurrent use.
type Dedup struct {
	horizon int64 // ms
	maxKeys int

	h   maphash.Hash // seeded in NewDedup; Reset before each key
	buf [8]byte      // scratch for integer encodings

	// keys holds the hash of every remembered key.
	keys dedupSet

	// slots holds one entry per remembered key, linked into its machine's
	// list (remembering order) and into the global list (remembering order).
	// Free slots are linked through gnext from free.
	slots          []dedupSlot
	free           int32
	oldest, newest int32

	machines map[string]int32 // machine id → index into ms
	lastName string           // machine of the previous call: an event's samples come together
	lastIdx  int32            // -1: none
	ms       []dedupMachine
	freeMs   []int32 // indexes of ms that Forget freed
}

// dedupSlot is one remembered key: 32 bytes.
type dedupSlot struct {
	hash         uint64
	time         int64
	machine      int32 // index into Dedup.ms
	mnext        int32 // next key of the same machine
	gprev, gnext int32 // global remembering order
}

// dedupMachine is the per-machine state of a Dedup.
type dedupMachine struct {
	maxTime    int64 // highest event time seen
	head, tail int32 // the machine's remembered keys, oldest first
}

// NewDedup returns a Dedup that remembers keys for horizon of event time
// behind the newest event of each machine, and at most maxKeys keys in all
// (values below 1 are taken as 1).
func NewDedup(horizon time.Duration, maxKeys int) *Dedup {
	d := &Dedup{
		horizon:  max(horizon.Milliseconds(), 0),
		maxKeys:  max(maxKeys, 1),
		free:     dedupNil,
		oldest:   dedupNil,
		newest:   dedupNil,
		machines: make(map[string]int32),
		lastIdx:  -1,
	}
	d.h.SetSeed(maphash.MakeSeed())
	return d
}

// Event reports whether ev is the first copy of its key, and remembers the
// key. It applies to events with an ID or a sequence number; an event with
// neither is reported new and nothing is remembered: deduplicate its samples
// with [Dedup.Sample].
func (d *Dedup) Event(ev *telemetry.Event) bool {
	key, ok := d.eventKey(ev)
	if !ok {
		return true
	}
	return d.see(ev.Machine, key, ev.Time)
}

// eventKey hashes the key of an event with an ID or a sequence number;
// ok is false for an event with neither.
func (d *Dedup) eventKey(ev *telemetry.Event) (key uint64, ok bool) {
	return d.idKey(ev.Machine, ev.ID, ev.Seq, ev.HasSeq)
}

// idKey hashes the key of an event of machine with id, or else seq if
// hasSeq; ok is false for an event with neither.
func (d *Dedup) idKey(machine, id string, seq uint64, hasSeq bool) (key uint64, ok bool) {
	switch {
	case id != "":
		d.start(dedupKindID, machine)
		d.h.WriteString(id)
	case hasSeq:
		d.start(dedupKindSeq, machine)
		d.writeUint64(seq)
	default:
		return 0, false
	}
	return max(d.h.Sum64(), 1), true // 0 marks a free place in the set
}

// hasKey reports whether the hashed key (from idKey) is remembered.
func (d *Dedup) hasKey(key uint64) bool { return d.keys.has(key) }

// Has reports whether the key of ev (an ID or a sequence number) is
// remembered, without remembering it.
func (d *Dedup) Has(ev *telemetry.Event) bool {
	key, ok := d.eventKey(ev)
	return ok && d.keys.has(key)
}

// Sample reports whether the sample of metric of machine at event time t
// (Unix ms) is the first copy of its key, and remembers the key. It is the
// deduplication of events that have neither an ID nor a sequence number.
func (d *Dedup) Sample(machine, metric string, t int64) bool {
	return d.see(machine, d.sampleKey(machine, metric, t), t)
}

// sampleKey hashes the key of the sample of metric of machine at t.
func (d *Dedup) sampleKey(machine, metric string, t int64) uint64 {
	d.start(dedupKindSample, machine)
	d.writeUint64(uint64(len(metric)))
	d.h.WriteString(metric)
	d.writeUint64(uint64(t))
	return d.h.Sum64()
}

// Len returns the number of keys remembered.
func (d *Dedup) Len() int { return d.keys.n }

// Forget forgets machine and every key of it: O(its keys). Later copies
// of its events are new to the Dedup (the store's key still tells a
// sample it holds).
func (d *Dedup) Forget(machine string) {
	mi, ok := d.machines[machine]
	if !ok {
		return
	}
	for d.ms[mi].head != dedupNil {
		d.forget(d.ms[mi].head)
	}
	delete(d.machines, machine)
	d.freeMs = append(d.freeMs, mi)
	if d.lastName == machine {
		d.lastIdx = -1
	}
}

// Machines returns the number of machines the Dedup holds state for.
func (d *Dedup) Machines() int { return len(d.machines) }

// start begins hashing a key of kind for machine. The machine id is
// length-prefixed so that the encoding of a key is unambiguous.
func (d *Dedup) start(kind byte, machine string) {
	d.h.Reset()
	d.h.WriteByte(kind)
	d.writeUint64(uint64(len(machine)))
	d.h.WriteString(machine)
}

func (d *Dedup) writeUint64(v uint64) {
	binary.LittleEndian.PutUint64(d.buf[:], v)
	d.h.Write(d.buf[:])
}

// see is the common part of Event and Sample: it advances the machine's
// cutoff, expires what fell behind it, and looks key up.
func (d *Dedup) see(machine string, key uint64, t int64) bool {
	mi := d.lastIdx
	if d.lastIdx < 0 || machine != d.lastName {
		mi = d.machine(machine)
		d.lastName, d.lastIdx = machine, mi
	}
	return d.seeAt(mi, key, t)
}

// machine returns the index in ms of machine's state, creating it if
// needed. The index stays valid until Forget of the machine.
func (d *Dedup) machine(machine string) int32 {
	mi, ok := d.machines[machine]
	if !ok {
		m := dedupMachine{maxTime: math.MinInt64, head: dedupNil, tail: dedupNil}
		if n := len(d.freeMs); n > 0 {
			mi, d.freeMs = d.freeMs[n-1], d.freeMs[:n-1]
			d.ms[mi] = m
		} else {
			mi = int32(len(d.ms))
			d.ms = append(d.ms, m)
		}
		d.machines[machine] = mi
	}
	return mi
}

// seeAt is see for the machine at index mi (from machine).
func (d *Dedup) seeAt(mi int32, key uint64, t int64) bool {
	m := &d.ms[mi]
	m.maxTime = max(m.maxTime, t)
	cutoff := satSubMilli(m.maxTime, d.horizon)
	for m.head != dedupNil && d.slots[m.head].time < cutoff {
		d.forget(m.head)
	}
	key = max(key, 1) // 0 marks a free place in the set
	if d.keys.has(key) {
		return false
	}
	if t < cutoff {
		return true // beyond the horizon: the store's key decides
	}
	if d.keys.n >= d.maxKeys {
		d.forget(d.oldest)
	}
	d.remember(mi, key, t)
	return true
}

// remember stores key at the tail of machine mi's list and of the global list.
func (d *Dedup) remember(mi int32, key uint64, t int64) {
	i := d.free
	if i != dedupNil {
		d.free = d.slots[i].gnext
	} else {
		i = int32(len(d.slots))
		d.slots = append(d.slots, dedupSlot{})
	}
	d.slots[i] = dedupSlot{hash: key, time: t, machine: mi, mnext: dedupNil, gprev: d.newest, gnext: dedupNil}
	if d.newest != dedupNil {
		d.slots[d.newest].gnext = i
	} else {
		d.oldest = i
	}
	d.newest = i
	m := &d.ms[mi]
	if m.tail != dedupNil {
		d.slots[m.tail].mnext = i
	} else {
		m.head = i
	}
	m.tail = i
	d.keys.add(key)
}

// forget removes the key in slot i, which must be the head of its machine's
// list. Both callers respect that: expiry pops heads, and the globally oldest
// key is the oldest of its machine, since both lists keep remembering order
// and a machine's list only ever loses its head.
func (d *Dedup) forget(i int32) {
	s := &d.slots[i]
	d.keys.remove(s.hash)
	m := &d.ms[s.machine]
	m.head = s.mnext
	if m.head == dedupNil {
		m.tail = dedupNil
	}
	if s.gprev != dedupNil {
		d.slots[s.gprev].gnext = s.gnext
	} else {
		d.oldest = s.gnext
	}
	if s.gnext != dedupNil {
		d.slots[s.gnext].gprev = s.gprev
	} else {
		d.newest = s.gprev
	}
	*s = dedupSlot{gnext: d.free}
	d.free = i
}

// satSubMilli returns t-d, saturating at the smallest int64 (d ≥ 0).
func satSubMilli(t, d int64) int64 {
	if t < math.MinInt64+d {
		return math.MinInt64
	}
	return t - d
}

// dedupSet is a set of nonzero 64-bit hashes: open addressing with linear
// probing, 0 marking a free place. Deletion shifts the following run back
// instead of leaving tombstones, so lookups of absent keys (most lookups)
// stay short however long keys churn; Go's built-in map slows down under
// that churn until it next grows. The hashes are uniformly distributed, so
// their low bits serve as the home position.
type dedupSet struct {
	places []uint64
	n      int
}

func (s *dedupSet) has(k uint64) bool {
	if len(s.places) == 0 {
		return false
	}
	mask := uint64(len(s.places) - 1)
	for i := k & mask; ; i = (i + 1) & mask {
		switch s.places[i] {
		case k:
			return true
		case 0:
			return false
		}
	}
}

// add inserts k, which must not be in the set.
func (s *dedupSet) add(k uint64) {
	if (s.n+1)*4 > len(s.places)*3 {
		s.grow()
	}
	mask := uint64(len(s.places) - 1)
	i := k & mask
	for s.places[i] != 0 {
		i = (i + 1) & mask
	}
	s.places[i] = k
	s.n++
}

// remove deletes k if present.
func (s *dedupSet) remove(k uint64) {
	if len(s.places) == 0 {
		return
	}
	mask := uint64(len(s.places) - 1)
	i := k & mask
	for s.places[i] != k {
		if s.places[i] == 0 {
			return
		}
		i = (i + 1) & mask
	}
	// Move back every later key of the run whose home is not in (i, j].
	for j := (i + 1) & mask; s.places[j] != 0; j = (j + 1) & mask {
		home := s.places[j] & mask
		if (j-home)&mask >= (j-i)&mask {
			s.places[i] = s.places[j]
			i = j
		}
	}
	s.places[i] = 0
	s.n--
}

func (s *dedupSet) grow() {
	old := s.places
	s.places = make([]uint64, max(2*len(old), 16))
	s.n = 0
	for _, k := range old {
		if k != 0 {
			s.add(k)
		}
	}
}
