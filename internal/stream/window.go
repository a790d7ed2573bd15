package stream

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// Agg is the aggregate of a set of sample values. The zero Agg is empty.
//
// Count, Min and Max do not depend on the order in which values are added or
// merged. Sum does only through floating-point rounding: integral values
// (below 2^53 in total) sum exactly in any order. Values are expected to be
// finite, as ingest guarantees; a NaN would make Min and Max order-dependent.
type Agg struct {
	Count    int64
	Sum      float64
	Min, Max float64
}

// Add adds one value to a.
func (a *Agg) Add(v float64) {
	if a.Count == 0 {
		*a = Agg{Count: 1, Sum: v, Min: v, Max: v}
		return
	}
	a.Count++
	a.Sum += v
	if v < a.Min {
		a.Min = v
	}
	if v > a.Max {
		a.Max = v
	}
}

// Merge adds the values aggregated in b to a.
func (a *Agg) Merge(b Agg) {
	switch {
	case b.Count == 0:
		return
	case a.Count == 0:
		*a = b
		return
	}
	a.Count += b.Count
	a.Sum += b.Sum
	if b.Min < a.Min {
		a.Min = b.Min
	}
	if b.Max > a.Max {
		a.Max = b.Max
	}
}

// Avg returns the mean of the aggregated values, or 0 for an empty Agg.
func (a Agg) Avg() float64 {
	if a.Count == 0 {
		return 0
	}
	return a.Sum / float64(a.Count)
}

// WindowKind says what a Window emitted by Windows means to its receiver.
type WindowKind uint8

// The kinds of Window. Per window (machine, metric, start), emissions follow
// the pattern Final Correction* Late*, or Late+ alone for a window whose
// samples all came after its grace. Replacing the stored aggregate with each
// Final or Correction and merging each Late into it leaves exactly the
// aggregate of every sample added for that window, whatever their arrival
// order.
const (
	// WindowFinal is the first emission of a window: its full aggregate, once
	// the watermark passed the window's end (or at Flush). The receiver
	// stores it.
	WindowFinal WindowKind = iota + 1
	// WindowCorrection carries the full new aggregate of an already emitted
	// window that a late sample within the grace period changed. The
	// receiver replaces what it stored.
	WindowCorrection
	// WindowLate carries the aggregate of just one sample that came after its
	// window's grace period, when Windows no longer holds the window. The
	// receiver merges it into the stored aggregate (creating it if absent);
	// making that merge idempotent across restarts is the receiver's
	// business.
	WindowLate
	// WindowPartial marks a window still open, as listed by Windows.Open for
	// queries. Windows never emits it.
	WindowPartial
)

// String returns the kind's lower-case name, as used on the wire.
func (k WindowKind) String() string {
	switch k {
	case WindowFinal:
		return "final"
	case WindowCorrection:
		return "correction"
	case WindowLate:
		return "late"
	case WindowPartial:
		return "partial"
	}
	return fmt.Sprintf("WindowKind(%d)", uint8(k))
}

// Window is the aggregate of one metric of one machine over one tumbling
// window [Start, Start+Size) of event time.
type Window struct {
	Machine string
	Metric  string
	// Start is the window's first instant, in Unix milliseconds: a multiple of
	// Size (counted from the Unix epoch, so negative for times before it).
	Start int64
	// Size is the window's length in milliseconds.
	Size int64
	Agg  Agg
	Kind WindowKind
}

// End returns the first instant after the window, in Unix milliseconds.
func (w Window) End() int64 { return w.Start + w.Size }

// Windows aggregates samples into tumbling event-time windows per machine and
// metric, and emits each window when its machine's watermark passes its end,
// then corrections and late updates as described at WindowKind.
//
// A window is open until emitted; once emitted, it is kept for corrections
// until its end plus the grace period is at or below the watermark, then
// dropped. Windows is pure and deterministic: no clock, no I/O, no goroutines.
// It is not safe for concurrent use.
//
// # Memory
//
// Per machine and metric, Windows holds at most ⌈grace/size⌉ emitted windows
// (their ends lie in (watermark−grace, watermark]) plus the open ones. When
// the caller derives the watermark as the highest event time seen minus a
// lateness L, as the engine does, open windows lie between the watermark and
// the newest sample, so there are at most ⌈L/size⌉+1 of them. In all, at
// most ⌈grace/size⌉ + ⌈L/size⌉ + 1 windows of 48 bytes each: 8 with the
// defaults (size 10 s, grace 1 m, lateness 5 s), which is also the initial
// capacity of a series' windows (⌈grace/size⌉+2, at most 16), so a series
// rarely grows it.
//
// A series costs about 100 bytes besides its windows, and a machine a few
// dozen; both stay allocated after their last window is dropped, so a machine
// that pauses costs no allocation when it returns. [Windows.Evict] drops a
// machine that holds no window, keeping only its watermark (so that its
// windows stay right by event time if it returns), and [Windows.Forget]
// drops a machine entirely. Metric names are interned once per Windows.
//
// [Windows.AdvanceAll] raises every machine's watermark, visiting only the
// machines that hold windows; the others take the raise lazily, when next
// used.
type Windows struct {
	size  int64 // ms, ≥ 1
	grace int64 // ms, ≥ 0

	capHint int // initial capacity of a series' windows

	machines map[string]*winMachine
	order    []*winMachine     // first-seen order, for deterministic Flush; may hold gone ones
	gone     int               // gone machines in order
	names    map[string]string // interned metric names: shared by all machines, they stay in cache
	active   []*winMachine     // machines that may hold windows, for AdvanceAll; may hold gone ones
	nactive  int               // machines in active that are not gone
	evicted  map[string]int64  // watermarks of evicted machines

	// floor is the watermark of the latest AdvanceAll, epoch counts them:
	// a machine whose epoch is older takes floor as a watermark when used.
	floor int64
	epoch uint64

	// The series of the previous Add, and its names: an event's samples
	// share the machine, and a cache hit compares two hot strings.
	last                    *winSeries
	lastMachine, lastMetric string
	lastIdx                 int // of last in its machine's series
}

// winMachine is the state of one machine.
type winMachine struct {
	name string
	wm   int64 // highest watermark given for the machine
	// epoch is the AdvanceAll epoch wm includes; active: in Windows.active;
	// gone: evicted or forgotten.
	epoch        uint64
	active, gone bool
	// metrics and series are parallel, in first-seen order. A linear scan
	// of metrics touches contiguous headers of interned names. Pointers into
	// series are held only in Windows.last, which series updates whenever it
	// appends.
	metrics []string
	series  []winSeries
	// byMetric indexes series once a machine has more than
	// winLinearMetrics of them; below that a linear scan is faster.
	byMetric map[string]int
}

// winLinearMetrics is how many metrics a machine may have before its series
// are indexed by a map.
const winLinearMetrics = 8

// winSeries holds the windows of one metric of one machine.
type winSeries struct {
	m      *winMachine
	metric string
	wins   []winState // sorted by start, distinct starts
	// nextDue is the smallest end of an open window, math.MaxInt64 if none:
	// it makes checking whether a watermark is due O(1).
	nextDue int64
	// dropAt is the end plus grace of the oldest window, math.MaxInt64 if
	// none: when the watermark reaches it, the window is dropped.
	dropAt int64
	open   int // number of open windows
}

// winState is one held window.
type winState struct {
	start   int64
	agg     Agg
	emitted bool
}

// NewWindows returns Windows of the given size (truncated to whole
// milliseconds) that accept corrections for grace after a window's end. It
// panics if size is under a millisecond, as that is a configuration error;
// a negative grace counts as zero.
func NewWindows(size, grace time.Duration) *Windows {
	if size < time.Millisecond {
		panic(fmt.Sprintf("stream: NewWindows: window size %s under 1ms", size))
	}
	w := &Windows{
		size:     size.Milliseconds(),
		grace:    max(grace.Milliseconds(), 0),
		machines: make(map[string]*winMachine),
		names:    make(map[string]string),
		evicted:  make(map[string]int64),
		floor:    math.MinInt64,
	}
	// Enough for the windows held in grace, an open one and a late one,
	// within reason: a series rarely needs to grow.
	w.capHint = int(min((w.grace+w.size-1)/w.size+2, 16))
	return w
}

// windowStart returns the start of the size-aligned window holding t: the
// largest multiple of size at or below t (floor, also for negative t).
func windowStart(t, size int64) int64 {
	r := t % size
	if r < 0 {
		r += size
	}
	return t - r
}

// addSat returns a+b for b ≥ 0, saturating at math.MaxInt64 instead of
// wrapping, so that absurd event times near the int64 limit still compare
// sensibly.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// Add adds one deduplicated sample, given its machine's current watermark
// (event time minus lateness, computed by the caller; Windows keeps the
// highest watermark given per machine, so a lower one is harmless).
//
// Windows of the sample's metric that the watermark has passed are emitted
// first, as Advance would. Then, for the sample's window:
//   - open (not yet emitted): the sample is accumulated;
//   - emitted, still held (end + grace > watermark): it is updated and emitted
//     as a WindowCorrection with its full new aggregate;
//   - not held, and end + grace ≤ watermark: a WindowLate with the
//     aggregate of just this sample is emitted;
//   - not held otherwise: the window is created; if its end is already at or
//     below the watermark it is emitted at once as a WindowFinal (its first
//     emission), else it stays open.
//
// emit must not retain anything but the Window value. In steady state Add
// does not allocate.
func (w *Windows) Add(s telemetry.Sample, watermark int64, emit func(Window)) {
	sr := w.last
	if sr == nil || s.Metric != w.lastMetric || s.Machine != w.lastMachine {
		sr = w.series(s.Machine, s.Metric)
	}
	w.add(sr, s, watermark, emit)
}

// addTo is Add for a machine whose state m the caller holds (from
// machine, not gone since): no look-up of the machine.
func (w *Windows) addTo(m *winMachine, s telemetry.Sample, watermark int64, emit func(Window)) {
	sr := w.last
	if sr == nil || sr.m != m || s.Metric != w.lastMetric {
		sr = w.seriesOf(m, s.Metric)
	}
	w.add(sr, s, watermark, emit)
}

// add is Add of s to its series sr.
func (w *Windows) add(sr *winSeries, s telemetry.Sample, watermark int64, emit func(Window)) {
	m := sr.m
	w.catchUp(m)
	if watermark > m.wm {
		m.wm = watermark
	}
	wm := m.wm
	if sr.nextDue <= wm || sr.dropAt <= wm {
		w.settle(sr, wm, emit)
	}

	start := windowStart(s.Time, w.size)
	i := len(sr.wins) // most samples go to the newest window: search backwards
	for i > 0 && sr.wins[i-1].start > start {
		i--
	}
	if i > 0 && sr.wins[i-1].start == start {
		ws := &sr.wins[i-1]
		ws.agg.Add(s.Value)
		if ws.emitted {
			emit(w.window(sr, ws, WindowCorrection))
		}
		return
	}
	if w.expired(start, wm) {
		emit(Window{
			Machine: m.name, Metric: sr.metric, Start: start, Size: w.size,
			Agg:  Agg{Count: 1, Sum: s.Value, Min: s.Value, Max: s.Value},
			Kind: WindowLate,
		})
		return
	}
	ws := winState{start: start, agg: Agg{Count: 1, Sum: s.Value, Min: s.Value, Max: s.Value}}
	if end := addSat(start, w.size); end <= wm {
		ws.emitted = true
	} else {
		sr.open++
		sr.nextDue = min(sr.nextDue, end)
	}
	sr.wins = slices.Insert(sr.wins, i, ws)
	if !m.active {
		m.active = true
		w.active = append(w.active, m)
		w.nactive++
	}
	if i == 0 {
		sr.dropAt = w.dropAt(start)
	}
	if ws.emitted {
		emit(w.window(sr, &sr.wins[i], WindowFinal))
	}
}

// Advance raises machine's watermark and emits a WindowFinal for every open
// window of the machine whose end is at or below it, in start order (ties in
// the order the metrics were first seen); then it drops the emitted windows
// whose end plus grace is at or below the watermark. A machine Windows has
// not seen is ignored.
func (w *Windows) Advance(machine string, watermark int64, emit func(Window)) {
	var m *winMachine
	if w.last != nil && machine == w.lastMachine {
		m = w.last.m
	} else if m = w.machines[machine]; m == nil {
		return
	}
	w.advance(m, watermark, emit)
}

// advance is Advance of m.
func (w *Windows) advance(m *winMachine, watermark int64, emit func(Window)) {
	w.catchUp(m)
	if watermark > m.wm {
		m.wm = watermark
	}
	w.finalize(m, m.wm, emit)
	for i := range m.series {
		w.drop(&m.series[i], m.wm)
	}
}

// catchUp gives m the watermark of the AdvanceAll calls since it was last
// used.
func (w *Windows) catchUp(m *winMachine) {
	if m.epoch != w.epoch {
		m.epoch = w.epoch
		m.wm = max(m.wm, w.floor)
	}
}

// AdvanceAll does what Advance does for every machine seen so far, at
// the same watermark. It visits only the machines that hold windows: it
// costs O(those machines), whatever the number of machines seen.
func (w *Windows) AdvanceAll(watermark int64, emit func(Window)) {
	if watermark > w.floor {
		w.floor = watermark
	}
	w.epoch++
	keep := w.active[:0]
	for _, m := range w.active {
		if m.gone {
			m.active = false
			continue
		}
		w.advance(m, watermark, emit)
		if m.holds() {
			keep = append(keep, m)
		} else {
			m.active = false
			w.nactive--
		}
	}
	clear(w.active[len(keep):])
	w.active = keep
}

// holds reports whether m holds a window.
func (m *winMachine) holds() bool {
	for i := range m.series {
		if len(m.series[i].wins) > 0 {
			return true
		}
	}
	return false
}

// Holds reports whether machine holds a window (open, or emitted and
// within its grace).
func (w *Windows) Holds(machine string) bool {
	m := w.machines[machine]
	return m != nil && m.holds()
}

// Evict drops machine if it holds no window, keeping only its watermark:
// if it returns, its samples are placed by event time as if it had stayed
// (a window past its grace gets a WindowLate, never a second WindowFinal).
// It reports whether the machine was dropped (or was not there).
func (w *Windows) Evict(machine string) bool {
	m := w.machines[machine]
	if m == nil {
		return true
	}
	if m.holds() {
		return false
	}
	w.catchUp(m)
	w.evicted[m.name] = m.wm
	w.remove(m)
	return true
}

// Forget drops machine and its windows, keeping nothing of it.
func (w *Windows) Forget(machine string) {
	delete(w.evicted, machine)
	if m := w.machines[machine]; m != nil {
		w.remove(m)
	}
}

// Len returns the number of machines held (not evicted) and of those the
// ones that may hold windows.
func (w *Windows) Len() (machines, active int) { return len(w.machines), w.nactive }

// remove drops m; the lists holding it skip it from now on.
func (w *Windows) remove(m *winMachine) {
	m.gone = true
	if m.active {
		w.nactive--
	}
	delete(w.machines, m.name)
	if w.last != nil && w.last.m == m {
		w.last, w.lastMachine, w.lastMetric = nil, "", ""
	}
	if w.gone++; w.gone > len(w.order)/2 {
		w.order = slices.DeleteFunc(w.order, func(m *winMachine) bool { return m.gone })
		w.gone = 0
	}
}

// Flush emits every open window as a WindowFinal, machines in the order
// first seen, each machine's windows as Advance orders them. It is meant for
// shutdown; the emitted windows are kept as Advance keeps them, so a sample
// added after Flush still yields a correct Correction or Late.
func (w *Windows) Flush(emit func(Window)) {
	for _, m := range w.order {
		if !m.gone {
			w.finalize(m, math.MaxInt64, emit)
		}
	}
}

// Open returns the open windows of machine's metric, in start order, with
// Kind WindowPartial: what queries show as the current, incomplete windows.
// It returns nil if there are none.
func (w *Windows) Open(machine, metric string) []Window {
	m := w.machines[machine]
	if m == nil {
		return nil
	}
	i := m.lookup(metric)
	if i < 0 {
		return nil
	}
	sr := &m.series[i]
	var out []Window
	for i := range sr.wins {
		if ws := &sr.wins[i]; !ws.emitted {
			out = append(out, w.window(sr, ws, WindowPartial))
		}
	}
	return out
}

// window returns ws of sr as a Window of the given kind.
func (w *Windows) window(sr *winSeries, ws *winState, kind WindowKind) Window {
	return Window{Machine: sr.m.name, Metric: sr.metric, Start: ws.start, Size: w.size, Agg: ws.agg, Kind: kind}
}

// expired reports whether the window starting at start is past its grace
// at watermark wm.
func (w *Windows) expired(start, wm int64) bool { return w.dropAt(start) <= wm }

// dropAt returns the watermark at which the window starting at start is past
// its grace: its end plus grace.
func (w *Windows) dropAt(start int64) int64 { return addSat(addSat(start, w.size), w.grace) }

// series returns the series of (machine, metric), creating it if needed,
// and caches it as the last one. Names are cloned so that the state does not
// pin a decoder's buffer; metric names are interned.
func (w *Windows) series(machine, metric string) *winSeries {
	var m *winMachine
	if w.last != nil && machine == w.lastMachine {
		m = w.last.m
	} else {
		m = w.machine(machine)
	}
	return w.seriesOf(m, metric)
}

// machine returns the state of machine, creating it if needed: a machine
// back after eviction resumes from the watermark it left with.
func (w *Windows) machine(machine string) *winMachine {
	m := w.machines[machine]
	if m == nil {
		m = &winMachine{name: strings.Clone(machine), wm: math.MinInt64, epoch: w.epoch}
		if wm, ok := w.evicted[machine]; ok {
			delete(w.evicted, machine)
			m.wm = wm
		}
		w.machines[m.name] = m
		w.order = append(w.order, m)
	}
	return m
}

// seriesOf returns the series of m's metric, creating it if needed, and
// caches it as the last one.
func (w *Windows) seriesOf(m *winMachine, metric string) *winSeries {
	i := -1
	if w.last != nil && w.last.m == m {
		// A machine's events name their metrics in the same order each
		// time: try the series after the last one before a look-up.
		j := w.lastIdx + 1
		if j == len(m.metrics) {
			j = 0
		}
		if m.metrics[j] == metric {
			i = j
		}
	}
	if i < 0 {
		i = m.lookup(metric)
	}
	if i < 0 {
		name, ok := w.names[metric]
		if !ok {
			name = strings.Clone(metric)
			w.names[name] = name
		}
		i = len(m.series)
		m.metrics = append(m.metrics, name)
		m.series = append(m.series, winSeries{
			m: m, metric: name, wins: make([]winState, 0, w.capHint),
			nextDue: math.MaxInt64, dropAt: math.MaxInt64,
		})
		switch {
		case m.byMetric != nil:
			m.byMetric[name] = i
		case len(m.series) > winLinearMetrics:
			m.byMetric = make(map[string]int, 2*len(m.series))
			for k, name := range m.metrics {
				m.byMetric[name] = k
			}
		}
	}
	w.last, w.lastIdx, w.lastMachine, w.lastMetric = &m.series[i], i, m.name, m.metrics[i]
	return w.last
}

// lookup returns the index of m's series of metric, or -1.
func (m *winMachine) lookup(metric string) int {
	if m.byMetric != nil {
		if i, ok := m.byMetric[metric]; ok {
			return i
		}
		return -1
	}
	for i, name := range m.metrics {
		if name == metric {
			return i
		}
	}
	return -1
}

// settle brings one series up to watermark wm: it emits its due windows in
// start order and drops the expired ones.
func (w *Windows) settle(sr *winSeries, wm int64, emit func(Window)) {
	for sr.open > 0 && sr.nextDue <= wm {
		w.emitNext(sr, emit)
	}
	w.drop(sr, wm)
}

// finalize emits every open window of m whose end is at or below limit as a
// WindowFinal, in start order across m's series.
func (w *Windows) finalize(m *winMachine, limit int64, emit func(Window)) {
	for {
		var best *winSeries
		for i := range m.series {
			if sr := &m.series[i]; sr.open > 0 && sr.nextDue <= limit && (best == nil || sr.nextDue < best.nextDue) {
				best = sr
			}
		}
		if best == nil {
			return
		}
		w.emitNext(best, emit)
	}
}

// emitNext emits the open window of sr with the smallest start, which ends at
// sr.nextDue, and updates sr.nextDue.
func (w *Windows) emitNext(sr *winSeries, emit func(Window)) {
	i := 0
	for sr.wins[i].emitted {
		i++
	}
	ws := &sr.wins[i]
	ws.emitted = true
	sr.open--
	sr.nextDue = math.MaxInt64
	for j := i + 1; j < len(sr.wins); j++ {
		if !sr.wins[j].emitted {
			sr.nextDue = addSat(sr.wins[j].start, w.size)
			break
		}
	}
	emit(w.window(sr, ws, WindowFinal))
}

// drop removes the windows of sr past their grace at watermark wm. They are
// all emitted: settle or finalize ran first at the same watermark. The
// backing array is kept, so windows created later do not allocate.
func (w *Windows) drop(sr *winSeries, wm int64) {
	if sr.dropAt > wm {
		return
	}
	k := 0
	for k < len(sr.wins) && w.expired(sr.wins[k].start, wm) {
		k++
	}
	if k > 0 {
		n := copy(sr.wins, sr.wins[k:])
		sr.wins = sr.wins[:n]
	}
	sr.dropAt = math.MaxInt64
	if len(sr.wins) > 0 {
		sr.dropAt = w.dropAt(sr.wins[0].start)
	}
}
