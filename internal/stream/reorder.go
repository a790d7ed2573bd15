package stream

import (
	"math"
	"slices"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// Reorder puts the samples of each machine back into event-time order.
//
// Each machine has a watermark: the highest event time seen for it minus the
// lateness. [Reorder.Add] buffers a sample newer than its machine's
// watermark and reports a sample at or before it as late, without buffering
// it (it missed the live stream; the caller still stores it and corrects
// windows with it). [Reorder.Release] and [Reorder.ReleaseReady] emit the
// buffered samples at or before the watermark in event-time order, ties in
// arrival order. So the samples released for one machine are in event-time
// order across calls, and a sample displaced by less than the lateness (it
// arrives while the machine's highest time is less than its own time plus
// the lateness) is never late.
//
// A watermark never goes back. It moves forward with the newest sample, and
// also when a release finds a machine holding more than maxBuffered samples:
// then the watermark is raised to the oldest buffered sample's time, and the
// samples at that time are released early, until at most maxBuffered remain.
// Samples arriving later at or before the raised watermark are late, so the
// released order still holds. A machine thus buffers at most maxBuffered
// samples plus those added since its last release; the caller releases after
// each batch.
//
// A machine costs about 100 bytes while remembered. Its watermark must not
// go back, so [Reorder.Evict] (of a machine long quiet) keeps just the
// watermark, and a machine that returns resumes from it; [Reorder.Forget]
// (of a deleted machine) keeps nothing. [Reorder.AdvanceTo] visits only
// the active machines: those with buffered samples or a watermark below
// their newest event time.
//
// A buffered sample costs 40 bytes (metric name, time, value and arrival
// number; the machine id is kept once per machine). A machine's samples
// are held in two buffers: the run, a FIFO of the samples that arrived in
// event-time order (each at or after the newest one buffered), and a
// binary min-heap of the others. Add appends to the run in O(1), or pushes
// to the heap in O(log k) for k samples out of order; Release takes the
// smaller head of the two, in O(1) from the run. Data that arrives in
// order, as live sensors send it, thus never touches the heap. Both
// backing arrays are reused, so Add and Release do not allocate once each
// machine's buffers have reached their working size. A buffer that drains
// below a quarter of its capacity (above reorderMinCap) is copied into one
// of twice its length, so a burst's memory goes back once it is released;
// the copy is paid for by the pops that drained it (amortised O(1)), and a
// buffer that shrank must double before it grows again, so it does not
// thrash. Emit functions must not call back into the Reorder. A Reorder is
// not safe for concurrent use.
type Reorder struct {
	lateness    int64 // ms
	maxBuffered int
	now         int64  // server time of the samples being added (SetNow)
	arrivals    uint64 // arrival counter, for ties
	buffered    int

	index    map[string]*reorderMachine
	last     *reorderMachine   // of the previous Add: an event's samples come together
	machines []*reorderMachine // in order of first sample, for Flush; may hold gone ones
	gone     int               // gone machines in machines
	ready    []*reorderMachine // machines with a sample at or before their watermark
	active   []*reorderMachine // machines AdvanceTo may have to move (see reorderMachine.active); may hold gone ones
	nactive  int               // machines in active that are not gone
	// quiet are machines that left active, in the order they did, with the
	// server time they did: the candidates for Evict.
	quiet []quietMachine
	qhead int
	// evicted holds the watermarks of evicted machines.
	evicted map[string]int64
	// releasing is the machine whose samples release is emitting.
	releasing *reorderMachine
}

// quietMachine is an entry of Reorder.quiet.
type quietMachine struct {
	m     *reorderMachine
	since int64 // server time it was queued
}

// reorderMachine is the per-machine state of a Reorder.
type reorderMachine struct {
	machine   string
	maxTime   int64
	watermark int64
	arrived   int64 // server time of the latest Add (see SetNow)
	// run[rh:] are the samples buffered in arrival order that are also in
	// (time, arrival) order; heap the others, a min-heap by (time,
	// arrival). n counts both.
	run     []reorderItem
	rh      int
	heap    []reorderItem
	n       int
	inReady bool // in Reorder.ready
	// active: in Reorder.active, as it has buffered samples or a watermark
	// below maxTime; queued: in Reorder.quiet; gone: evicted or forgotten.
	active, queued, gone bool
	// owner is the engine's state of the machine, when an Engine runs the
	// Reorder: its emitRel finds it without a look-up (see releasing).
	owner *engMachine
}

// reorderItem is one buffered sample: 40 bytes.
type reorderItem struct {
	metric  string
	time    int64
	value   float64
	arrival uint64
}

func (a *reorderItem) before(b *reorderItem) bool {
	return a.time < b.time || (a.time == b.time && a.arrival < b.arrival)
}

// NewReorder returns a Reorder that holds samples back for lateness behind
// the newest event time of their machine, buffering at most maxBuffered
// samples per machine between releases (values below 1 are taken as 1).
func NewReorder(lateness time.Duration, maxBuffered int) *Reorder {
	return &Reorder{
		lateness:    max(lateness.Milliseconds(), 0),
		maxBuffered: max(maxBuffered, 1),
		index:       make(map[string]*reorderMachine),
		evicted:     make(map[string]int64),
	}
}

// Add buffers s and reports false, or reports true if s is late: its time is
// at or before its machine's watermark. A late sample is not buffered. The
// first sample of a machine is never late.
func (r *Reorder) Add(s telemetry.Sample) (late bool) {
	m := r.last
	if m == nil || m.machine != s.Machine {
		m = r.machine(s.Machine)
	}
	r.last = m
	return r.add(m, s)
}

// machine returns the state of machine, creating it if needed: a machine
// back after eviction resumes from the watermark it left with.
func (r *Reorder) machine(machine string) *reorderMachine {
	if m := r.index[machine]; m != nil {
		return m
	}
	m := &reorderMachine{machine: machine, maxTime: math.MinInt64, watermark: math.MinInt64}
	if wm, ok := r.evicted[machine]; ok {
		delete(r.evicted, machine)
		m.maxTime, m.watermark = wm, wm
	}
	r.index[machine] = m
	r.machines = append(r.machines, m)
	return m
}

// add is Add of s to its machine's state m, which must not be gone.
func (r *Reorder) add(m *reorderMachine, s telemetry.Sample) (late bool) {
	m.arrived = r.now
	if s.Time <= m.watermark {
		if !m.active {
			r.queue(m) // a machine back after eviction, late at once
		}
		return true
	}
	r.arrivals++
	m.add(reorderItem{metric: s.Metric, time: s.Time, value: s.Value, arrival: r.arrivals})
	r.buffered++
	m.maxTime = max(m.maxTime, s.Time)
	m.watermark = max(m.watermark, satSubMilli(m.maxTime, r.lateness))
	if !m.active {
		m.active = true
		r.active = append(r.active, m)
		r.nactive++
	}
	if !m.inReady && (m.first().time <= m.watermark || m.n > r.maxBuffered) {
		m.inReady = true
		r.ready = append(r.ready, m)
	}
	return false
}

// Watermark returns the watermark of machine, and false if no sample of it
// has been added yet.
func (r *Reorder) Watermark(machine string) (int64, bool) {
	m := r.index[machine]
	if m == nil {
		return 0, false
	}
	return m.watermark, true
}

// Buffered returns the number of samples buffered over all machines.
func (r *Reorder) Buffered() int { return r.buffered }

// Release emits, in event-time order (ties in arrival order), every buffered
// sample of machine at or before its watermark, then the oldest ones early if
// more than maxBuffered remain.
func (r *Reorder) Release(machine string, emit func(telemetry.Sample)) {
	if m := r.index[machine]; m != nil {
		r.release(m, emit)
	}
}

// ReleaseReady does what Release does for every machine that has a buffered
// sample at or before its watermark or more than maxBuffered samples, in the
// order they became so. It costs nothing for machines with nothing to
// release.
func (r *Reorder) ReleaseReady(emit func(telemetry.Sample)) {
	for i, m := range r.ready {
		m.inReady = false
		r.release(m, emit)
		r.ready[i] = nil
	}
	r.ready = r.ready[:0]
}

// Flush emits every buffered sample, machine by machine in the order their
// first samples were added, each in event-time order; it is for shutdown.
// Each machine's watermark is raised to its highest time seen, so samples
// added afterwards stay in order after those flushed (or are late).
func (r *Reorder) Flush(emit func(telemetry.Sample)) {
	for _, m := range r.machines {
		if m.gone {
			continue
		}
		m.watermark = max(m.watermark, m.maxTime)
		r.release(m, emit)
	}
	for i, m := range r.ready {
		m.inReady = false
		r.ready[i] = nil
	}
	r.ready = r.ready[:0]
}

// release emits m's samples at or before its watermark. If more than
// maxBuffered remain, it raises the watermark to the oldest one's time and
// emits again, until at most maxBuffered remain.
func (r *Reorder) release(m *reorderMachine, emit func(telemetry.Sample)) {
	r.releasing = m
	for {
		for m.n > 0 {
			var it reorderItem
			if m.heapFirst() {
				if m.heap[0].time > m.watermark {
					break
				}
				it = m.pop()
			} else {
				if m.run[m.rh].time > m.watermark {
					break
				}
				it = m.shift()
			}
			r.buffered--
			emit(telemetry.Sample{Machine: m.machine, Metric: it.metric, Time: it.time, Value: it.value})
		}
		if m.n <= r.maxBuffered {
			return
		}
		m.watermark = m.first().time // over the cap: release the oldest early
	}
}

// add buffers it: at the end of the run if it comes at or after the
// run's newest sample (O(1)), else in the heap.
func (m *reorderMachine) add(it reorderItem) {
	m.n++
	if l := len(m.run); l == m.rh || !it.before(&m.run[l-1]) {
		if l == cap(m.run) && m.rh > 0 && m.rh >= l/2 {
			// Full, and at least half consumed: move the rest to the
			// front rather than grow (amortised O(1)).
			k := copy(m.run, m.run[m.rh:])
			clear(m.run[k:])
			m.run, m.rh = m.run[:k], 0
		}
		m.run = append(m.run, it)
		return
	}
	m.push(it)
}

// heapFirst reports whether the next sample in (time, arrival) order is
// the heap's rather than the run's; m must buffer a sample.
func (m *reorderMachine) heapFirst() bool {
	return m.rh == len(m.run) || len(m.heap) > 0 && m.heap[0].before(&m.run[m.rh])
}

// first returns the next sample in (time, arrival) order; m must buffer
// one.
func (m *reorderMachine) first() *reorderItem {
	if m.heapFirst() {
		return &m.heap[0]
	}
	return &m.run[m.rh]
}

// shift removes and returns the run's first sample: O(1).
func (m *reorderMachine) shift() reorderItem {
	it := m.run[m.rh]
	m.run[m.rh] = reorderItem{} // drop the metric name reference
	m.rh++
	m.n--
	switch n := len(m.run) - m.rh; {
	case n == 0:
		m.run, m.rh = m.run[:0], 0
	case cap(m.run) > reorderMinCap && n < cap(m.run)/4:
		m.run, m.rh = append(make([]reorderItem, 0, max(2*n, reorderMinCap)), m.run[m.rh:]...), 0
	}
	return it
}

// push adds it to the heap: O(log k), no allocation once the backing array
// has grown to the machine's working size.
func (m *reorderMachine) push(it reorderItem) {
	h := append(m.heap, it)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].before(&h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	m.heap = h
}

// pop removes and returns the heap's minimum: O(log k).
func (m *reorderMachine) pop() reorderItem {
	h := m.heap
	top := h[0]
	m.n--
	n := len(h) - 1
	h[0] = h[n]
	h[n] = reorderItem{} // drop the metric name reference
	h = h[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		c := l
		if r := l + 1; r < n && h[r].before(&h[l]) {
			c = r
		}
		if !h[c].before(&h[i]) {
			break
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
	if cap(h) > reorderMinCap && n < cap(h)/4 {
		h = append(make([]reorderItem, 0, max(2*n, reorderMinCap)), h...)
	}
	m.heap = h
	return top
}

// reorderMinCap is the capacity below which a buffer is not shrunk: 16
// samples (640 bytes), a machine's usual working size.
const reorderMinCap = 16

// heapCap returns the capacity of machine's buffers (run and heap), for
// tests.
func (r *Reorder) heapCap(machine string) int {
	if m := r.index[machine]; m != nil {
		return cap(m.run) + cap(m.heap)
	}
	return 0
}

// SetNow sets the server time (Unix ms) the next Adds arrive at.
func (r *Reorder) SetNow(now int64) { r.now = now }

// AdvanceTo raises to at least wm, but not beyond its newest event time,
// the watermark of every machine whose latest sample arrived (server time,
// see SetNow) before idleBefore, and releases what that makes due: a
// machine that went quiet has its last samples released, while a machine
// still sending (even old data) keeps its own watermark. It visits only
// the active machines (buffered samples, or a watermark below the newest
// event time): call it periodically, not per batch. A machine it leaves
// with nothing to do becomes a candidate for Evict.
func (r *Reorder) AdvanceTo(wm, idleBefore int64, emit func(telemetry.Sample)) {
	keep := r.active[:0]
	for _, m := range r.active {
		if m.gone {
			m.active = false
			continue
		}
		if m.arrived < idleBefore && m.watermark < min(wm, m.maxTime) {
			m.watermark = min(wm, m.maxTime)
		}
		if m.n > 0 && m.first().time <= m.watermark {
			r.release(m, emit)
		}
		if m.n > 0 || m.watermark < m.maxTime {
			keep = append(keep, m)
			continue
		}
		m.active = false
		r.nactive--
		r.queue(m)
	}
	clear(r.active[len(keep):])
	r.active = keep
}

// queue makes m a candidate for Evict, at server time r.now.
func (r *Reorder) queue(m *reorderMachine) {
	if m.queued {
		return
	}
	m.queued = true
	if r.qhead > len(r.quiet)/2 { // reuse the consumed half
		n := copy(r.quiet, r.quiet[r.qhead:])
		clear(r.quiet[n:])
		r.quiet, r.qhead = r.quiet[:n], 0
	}
	r.quiet = append(r.quiet, quietMachine{m: m, since: r.now})
}

// Evict forgets the machines with nothing buffered whose latest sample
// arrived (server time) before idleBefore and that keep (if not nil)
// does not hold back, calling evicted with each and its watermark. An
// evicted machine costs only its watermark: a sample of it that comes
// later is late when at or before it, as if the machine had stayed. A
// machine is evicted at the first call after it has been quiet from
// idleBefore on, and at the latest once it has been quiet twice as long;
// the cost is O(machines evicted or checked), not O(machines).
func (r *Reorder) Evict(idleBefore int64, keep func(machine string) bool, evicted func(machine string, watermark int64)) {
	for n := len(r.quiet) - r.qhead; n > 0 && r.quiet[r.qhead].since < idleBefore; n-- {
		q := r.quiet[r.qhead]
		r.quiet[r.qhead] = quietMachine{}
		r.qhead++
		m := q.m
		m.queued = false
		switch {
		case m.gone || m.active:
			// Forgotten, or busy again: queued anew when it quiets.
		case m.arrived >= idleBefore || (keep != nil && keep(m.machine)):
			r.queue(m) // not quiet long enough yet: look again later
		default:
			r.evicted[m.machine] = m.watermark
			r.remove(m)
			if evicted != nil {
				evicted(m.machine, m.watermark)
			}
		}
	}
}

// Forget drops machine and its buffered samples, keeping nothing of it: a
// sample of it that comes later starts it afresh.
func (r *Reorder) Forget(machine string) {
	delete(r.evicted, machine)
	if m := r.index[machine]; m != nil {
		r.buffered -= m.n
		m.run, m.rh, m.heap, m.n = nil, 0, nil, 0
		r.remove(m)
	}
}

// Len returns the number of machines remembered (not evicted) and of
// those the active ones.
func (r *Reorder) Len() (machines, active int) { return len(r.index), r.nactive }

// remove drops m from the index; the lists holding it skip it from now on.
func (r *Reorder) remove(m *reorderMachine) {
	m.gone = true
	if m.active {
		r.nactive--
	}
	delete(r.index, m.machine)
	if r.last == m {
		r.last = nil
	}
	if r.gone++; r.gone > len(r.machines)/2 {
		r.machines = slices.DeleteFunc(r.machines, func(m *reorderMachine) bool { return m.gone })
		r.gone = 0
	}
}
