// Package stream is the event-time engine between the event log and the
// sinks: pure and deterministic (deduplication, reordering behind a
// per-machine watermark, tumbling windows with corrections, and the sliding
// median and rates its sinks keep). It knows nothing of logs or stores:
// internal/pipeline runs it, one engine per lane of the log, and commits
// what it makes.
package stream

import (
	"strings"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// EngineConfig configures the event-time engine.
type EngineConfig struct {
	// Lateness is how far behind a machine's newest event time the
	// watermark trails (--lateness).
	Lateness time.Duration
	// Window is the tumbling window size (--window).
	Window time.Duration
	// WindowGrace is how long after its end an emitted window still takes
	// corrections (--window-grace).
	WindowGrace time.Duration
	// DedupHorizon is how far back in event time deduplication keys are
	// remembered; beyond it the store's (series, time) key decides.
	DedupHorizon time.Duration
	// DedupMaxKeys caps the remembered keys.
	DedupMaxKeys int
	// MaxBuffered caps the samples a machine may hold in the reorder buffer.
	MaxBuffered int
	// StoreDedups says the store reports which samples it already held (see
	// store.FreshAppender): the engine then keeps only the keys of events
	// with an id or seq, and leaves each sample's (machine, metric, time)
	// key to the store, at any age and across restarts. The caller drops
	// the samples the store held with KeepFresh before Release.
	StoreDedups bool
	// EvictAfter is how long (server time) a machine must send nothing,
	// with nothing buffered and no window held, before Tick drops its
	// state, keeping only its watermarks (see Engine.Tick); 0 keeps every
	// machine for the life of the engine.
	EvictAfter time.Duration
}

// DefaultEngineConfig returns the engine defaults.
func DefaultEngineConfig() EngineConfig {
	return EngineConfig{
		Lateness:     5 * time.Second,
		Window:       10 * time.Second,
		WindowGrace:  time.Minute,
		DedupHorizon: 10 * time.Minute,
		DedupMaxKeys: 2 << 20,
		MaxBuffered:  10_000,
		EvictAfter:   time.Hour,
	}
}

// Engine is the event-time engine. It is pure (no clock, no I/O) and not
// safe for concurrent use: one goroutine (a processor, one per log
// partition) owns it.
type Engine struct {
	cfg     EngineConfig
	dedup   *Dedup
	reorder *Reorder
	windows *Windows

	// Scratch for Release, kept to avoid allocations.
	out     *Output
	emitRel func(telemetry.Sample)
	emitWin func(Window)
	late    map[lateKey]int // index in out.Windows of a window's late aggregate

	// pending are the keys (hashed as the dedup hashes them) of the keyed
	// events of the groups processed and not yet durable (with
	// StoreDedups): each group's are remembered by its Release, or dropped
	// by Forget or ForgetGroup. A processor may process group N+1 while
	// group N commits: both are pending then.
	pending dedupSet

	// machines holds each machine's state in every stage, so that an
	// event costs one look-up by name for all of them (last: the previous
	// one's, as an event's samples come together); touched are the
	// machines whose windows got samples in the current call.
	machines map[string]*engMachine
	last     *engMachine
	touched  []*engMachine

	// now is the server time of the last Release or Tick (Unix ms), which
	// stamps a machine's entry when it is used (engMachine.seen); clocked
	// says there was one. idle[ihead:] lists the entries made or last
	// checked since, oldest first, for Tick to drop those of machines the
	// reorder does not hold (only keyed events without samples, only
	// duplicates, keys from Remember) once idle for EvictAfter.
	now     int64
	clocked bool
	idle    []idleMachine
	ihead   int
}

// idleMachine is an entry of Engine.idle: em, used last at since.
type idleMachine struct {
	em    *engMachine
	since int64
}

// engMachine is one machine's state in the engine: its index in the dedup
// and its state in the reorder and the windows, each made when first
// needed (and made again if the stage dropped it: gone).
type engMachine struct {
	name    string
	dedup   int32 // index in Dedup.ms, -1 none
	r       *reorderMachine
	w       *winMachine
	touched bool  // in Engine.touched
	seen    int64 // server time of its last use (Engine.now)
}

// machine returns the engine's state of machine, creating it if needed.
func (e *Engine) machine(machine string) *engMachine {
	if em := e.last; em != nil && em.name == machine {
		em.seen = e.now
		return em
	}
	em := e.machines[machine]
	if em == nil {
		em = &engMachine{name: strings.Clone(machine), dedup: -1}
		e.machines[em.name] = em
		if e.cfg.EvictAfter > 0 {
			e.idle = append(e.idle, idleMachine{em: em, since: e.now})
		}
	}
	em.seen = e.now
	e.last = em
	return em
}

// setNow sets the server time (Unix ms). The first time, the entries made
// before (by Remember, or a Process before any Release) take it as their
// last use.
func (e *Engine) setNow(now int64) {
	e.now = now
	if e.clocked {
		return
	}
	e.clocked = true
	for _, em := range e.machines {
		em.seen = now
	}
	for i := e.ihead; i < len(e.idle); i++ {
		e.idle[i].since = now
	}
}

// evictIdle drops the entries (and duplicate keys) of machines unused
// since before idleBefore that the reorder does not hold: O(entries made
// or found in use since the last call), each looked at about once per
// EvictAfter. The reorder's own evictions drop the others (evicted).
func (e *Engine) evictIdle(idleBefore int64) {
	for e.ihead < len(e.idle) && e.idle[e.ihead].since < idleBefore {
		em := e.idle[e.ihead].em
		e.idle[e.ihead] = idleMachine{}
		e.ihead++
		switch {
		case e.machines[em.name] != em:
			// Dropped already.
		case em.r != nil && !em.r.gone:
			// The reorder holds it: dropped when the reorder evicts it.
		case em.seen >= idleBefore:
			e.idle = append(e.idle, idleMachine{em: em, since: em.seen}) // look again later
		default:
			e.windows.Evict(em.name)
			e.dedup.Forget(em.name)
			e.drop(em.name)
		}
	}
	if e.ihead > 1024 && 2*e.ihead > len(e.idle) {
		n := copy(e.idle, e.idle[e.ihead:])
		clear(e.idle[n:])
		e.idle, e.ihead = e.idle[:n], 0
	}
}

// dedupIdx returns em's index in the dedup.
func (e *Engine) dedupIdx(em *engMachine) int32 {
	if em.dedup < 0 {
		em.dedup = e.dedup.machine(em.name)
	}
	return em.dedup
}

// reorderOf returns em's reorder state.
func (e *Engine) reorderOf(em *engMachine) *reorderMachine {
	if em.r == nil || em.r.gone {
		em.r = e.reorder.machine(em.name)
		em.r.owner = em
	}
	return em.r
}

// addWindow adds s to em's windows at watermark wm, and lists em as
// touched.
func (e *Engine) addWindow(em *engMachine, s telemetry.Sample, wm int64) {
	if em.w == nil || em.w.gone {
		em.w = e.windows.machine(em.name)
	}
	e.windows.addTo(em.w, s, wm, e.emitWin)
	if !em.touched {
		em.touched = true
		e.touched = append(e.touched, em)
	}
}

// untouch empties the list of touched machines.
func (e *Engine) untouch() {
	for i, em := range e.touched {
		em.touched = false
		e.touched[i] = nil
	}
	e.touched = e.touched[:0]
}

// drop forgets em: a machine the stages evicted or forgot.
func (e *Engine) drop(machine string) {
	if em := e.machines[machine]; em != nil {
		em.dedup, em.r, em.w = -1, nil, nil
		delete(e.machines, machine)
	}
	if e.last != nil && e.last.name == machine {
		e.last = nil
	}
}

type lateKey struct {
	machine, metric string
	start           int64
}

// Output is what the engine hands on. Process appends to Samples; Release
// appends to Released and Windows. The caller resets it between groups.
type Output struct {
	// Samples are the new (deduplicated) samples, in arrival order: they go
	// to the store and to the live stream at once.
	Samples []telemetry.Sample
	// Released are the samples the watermark has passed, per machine in
	// event-time order: they feed the median and the alarms.
	Released []telemetry.Sample
	// Windows are final, corrected and late window aggregates.
	Windows []Window
	// Keys are the keys of the new events that have an id or a seq, for a
	// journal that lets a restarted engine recognise their duplicates.
	Keys []Key
	// Origin is, with StoreDedups, the index of each sample's event in the
	// events of its Process call, parallel to Samples.
	Origin []int32
}

// Key is the deduplication key of an event with an id or a seq, and its
// event time (Unix ms), which places it in the dedup horizon.
type Key struct {
	Machine string
	ID      string
	Seq     uint64
	HasSeq  bool
	Time    int64
}

// Reset empties o, keeping its buffers.
func (o *Output) Reset() {
	o.Samples, o.Released, o.Windows, o.Keys, o.Origin = o.Samples[:0], o.Released[:0], o.Windows[:0], o.Keys[:0], o.Origin[:0]
}

// NewEngine returns an engine.
func NewEngine(cfg EngineConfig) *Engine {
	e := &Engine{
		cfg:      cfg,
		dedup:    NewDedup(cfg.DedupHorizon, cfg.DedupMaxKeys),
		reorder:  NewReorder(cfg.Lateness, cfg.MaxBuffered),
		windows:  NewWindows(cfg.Window, cfg.WindowGrace),
		late:     map[lateKey]int{},
		machines: map[string]*engMachine{},
	}
	e.emitWin = func(w Window) {
		// A replay of old data makes one late aggregate per sample:
		// merge those of one window within a call into one.
		if w.Kind == WindowLate {
			k := lateKey{w.Machine, w.Metric, w.Start}
			if i, ok := e.late[k]; ok && i < len(e.out.Windows) {
				e.out.Windows[i].Agg.Merge(w.Agg)
				return
			}
			e.late[k] = len(e.out.Windows)
		}
		e.out.Windows = append(e.out.Windows, w)
	}
	e.emitRel = func(s telemetry.Sample) {
		e.out.Released = append(e.out.Released, s)
		em := e.reorder.releasing.owner
		if em == nil || em.r != e.reorder.releasing {
			em = e.machine(s.Machine)
		}
		// Released samples come in event-time order: up to this one, the
		// machine's windows have all they will get in order, so the
		// sample's own time is the watermark to add it at (the machine's
		// full watermark would close its window before it is added).
		e.addWindow(em, s, s.Time)
	}
	return e
}

// Process takes the events of one batch: it drops duplicates (an event
// with an id or seq seen before, and each sample whose machine, metric and
// time were seen before) and appends the new samples to out.Samples. It
// returns the number of duplicate events (an event whose every sample was a
// duplicate counts as one). Call Release once the group's samples are
// durable, or Forget if they could not be stored.
//
// With StoreDedups, samples are not checked here: the store reports which
// it held already, KeepFresh drops those and counts the events they make
// duplicates.
func (e *Engine) Process(events []telemetry.Event, out *Output) (duplicates int) {
	for i := range events {
		ev := &events[i]
		var em *engMachine // with StoreDedups, Process needs no machine state
		if !e.cfg.StoreDedups {
			em = e.machine(ev.Machine)
		}
		if ev.ID != "" || ev.HasSeq {
			k := Key{Machine: ev.Machine, ID: ev.ID, Seq: ev.Seq, HasSeq: ev.HasSeq}
			h, _ := e.dedup.idKey(ev.Machine, ev.ID, ev.Seq, ev.HasSeq)
			if e.cfg.StoreDedups {
				// Remembered once durable (Release), so that a failed
				// group's keys are dropped alone (Forget).
				if e.pending.has(h) || e.dedup.hasKey(h) {
					duplicates++
					continue
				}
				e.pending.add(h)
			} else if !e.dedup.seeAt(e.dedupIdx(em), h, ev.Time) {
				duplicates++
				continue
			}
			k.Time = ev.Time
			out.Keys = append(out.Keys, k)
		}
		if e.cfg.StoreDedups {
			for _, m := range ev.Metrics {
				out.Samples = append(out.Samples, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
				out.Origin = append(out.Origin, int32(i))
			}
			continue
		}
		added := 0
		mi := e.dedupIdx(em)
		for _, m := range ev.Metrics {
			// The store keys samples by (machine, metric, time), first
			// write wins: so does the engine, for keyed events too, so that
			// its windows count exactly what the store keeps.
			if !e.dedup.seeAt(mi, e.dedup.sampleKey(ev.Machine, m.Name, ev.Time), ev.Time) {
				continue
			}
			out.Samples = append(out.Samples, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
			added++
		}
		if added == 0 && len(ev.Metrics) > 0 {
			duplicates++
		}
	}
	return duplicates
}

// Remember makes the engine recognise later copies of the events with
// these keys (journaled by an earlier run) as duplicates, as if it had
// processed them; keys already beyond the dedup horizon are not kept.
func (e *Engine) Remember(keys []Key) {
	for _, k := range keys {
		if h, ok := e.dedup.idKey(k.Machine, k.ID, k.Seq, k.HasSeq); ok {
			e.dedup.seeAt(e.dedupIdx(e.machine(k.Machine)), h, k.Time)
		}
	}
}

// KeepFresh moves to the front of samples (and origin, parallel to it) the
// samples whose fresh flag is set — the others the store held already —
// and returns how many it kept, and how many events lost every sample that
// way (duplicates). samples are those of one Process call (or a run of
// whole events of it), with StoreDedups.
func KeepFresh(samples []telemetry.Sample, origin []int32, fresh []bool) (n, duplicates int) {
	for i := 0; i < len(samples); {
		// An event's samples are consecutive.
		j, kept := i, false
		for ; j < len(samples) && origin[j] == origin[i]; j++ {
			if fresh[j] {
				kept = true
				if n != j { // nothing dropped yet: no copy (nor write barriers)
					samples[n], origin[n] = samples[j], origin[j]
				}
				n++
			}
		}
		if !kept {
			duplicates++
		}
		i = j
	}
	return n, duplicates
}

// Forget drops what the engine remembers of duplicates from the groups
// that could not be stored: their keys must not make the client's retry
// look like a duplicate. With StoreDedups the keys of every group
// processed and not yet released go (a failed commit dooms the groups
// processed after it too: their source reads them again); otherwise every
// remembered key does (the store's own key still keeps a retried sample
// from being stored twice).
func (e *Engine) Forget() {
	if e.cfg.StoreDedups {
		e.pending = dedupSet{}
		return
	}
	e.dedup = NewDedup(e.cfg.DedupHorizon, e.cfg.DedupMaxKeys)
	for _, em := range e.machines {
		em.dedup = -1
	}
}

// ForgetGroup drops the pending keys of one group that will not be
// released (keys: its Output.Keys), and leaves those of the groups
// processed after it; without StoreDedups it is Forget.
func (e *Engine) ForgetGroup(keys []Key) {
	if !e.cfg.StoreDedups {
		e.Forget()
		return
	}
	e.dropPending(keys)
}

// dropPending deletes keys (with their event times) from pending.
func (e *Engine) dropPending(keys []Key) {
	for _, k := range keys {
		if h, ok := e.dedup.idKey(k.Machine, k.ID, k.Seq, k.HasSeq); ok {
			e.pending.remove(h)
		}
	}
}

// Release takes the new samples of a durable group (out.Samples, processed
// at server time now, Unix ms): it buffers them for release in event-time
// order (a sample behind its machine's watermark goes straight to its
// window, as a correction or a late aggregate), then emits into out the
// samples the watermarks have passed, per machine in event-time order, and
// the windows that closed or changed.
func (e *Engine) Release(out *Output, now int64) {
	e.setNow(now)
	if e.cfg.StoreDedups {
		// Remembered, and no longer pending (the groups processed since
		// stay pending): one hash per key for both.
		for _, k := range out.Keys {
			if h, ok := e.dedup.idKey(k.Machine, k.ID, k.Seq, k.HasSeq); ok {
				e.dedup.seeAt(e.dedupIdx(e.machine(k.Machine)), h, k.Time)
				e.pending.remove(h)
			}
		}
	}
	e.use(out)
	e.reorder.SetNow(now)
	var em *engMachine
	var rm *reorderMachine
	for _, s := range out.Samples {
		if em == nil || s.Machine != em.name {
			em = e.machine(s.Machine)
			rm = e.reorderOf(em)
		}
		if !e.reorder.add(rm, s) {
			continue
		}
		// Late for the reorder buffer: release what is due of its machine
		// first, so its windows get those samples before this one.
		e.reorder.release(rm, e.emitRel)
		e.addWindow(em, s, rm.watermark)
	}
	e.reorder.ReleaseReady(e.emitRel)
	for i, em := range e.touched {
		em.touched = false
		e.touched[i] = nil
		if em.w != nil && !em.w.gone && em.r != nil {
			e.windows.advance(em.w, em.r.watermark, e.emitWin)
		}
	}
	e.touched = e.touched[:0]
}

// Tick lets the watermarks of machines that sent nothing for the lateness
// (now: server time, Unix ms) follow the server clock: their buffered
// samples are all released (the reorder watermark goes up to their newest
// event time, so data that keeps coming in order is never made late by the
// clock), and their windows close up to now − lateness. Call it
// periodically (about once a second), not per batch. It costs O(active
// machines) — those with samples buffered, windows held or a watermark to
// move — not O(machines seen).
//
// With EvictAfter, Tick also drops the state of the machines that sent
// nothing for that long and hold nothing: their remembered keys go, and
// only their watermarks (two integers) stay, so that a machine that comes
// back has its samples placed by event time as if it had stayed (a sample
// at or before its watermark is late, its window's aggregate a correction
// or a late one). What it loses is its duplicate keys: a copy of one of
// its events that arrives after the eviction is told by the store's
// (machine, metric, time) key, as after a restart. The same goes for a
// machine the reorder never held (it sent only keyed events without
// samples, or only duplicates, or its keys came from Remember): its entry
// and keys are dropped once it is unused for EvictAfter.
func (e *Engine) Tick(now int64, out *Output) {
	e.setNow(now)
	e.use(out)
	wm := satSubMilli(now, e.cfg.Lateness.Milliseconds())
	e.reorder.SetNow(now)
	e.reorder.AdvanceTo(wm, wm, e.emitRel)
	e.windows.AdvanceAll(wm, e.emitWin)
	e.untouch()
	if e.cfg.EvictAfter > 0 {
		idleBefore := satSubMilli(now, e.cfg.EvictAfter.Milliseconds())
		e.reorder.Evict(idleBefore, e.windows.Holds, e.evicted)
		e.evictIdle(idleBefore)
	}
}

// evicted drops what the windows and the dedup keep of a machine the
// reorder evicted.
func (e *Engine) evicted(machine string, _ int64) {
	e.windows.Evict(machine)
	e.dedup.Forget(machine)
	e.drop(machine)
}

// ForgetMachine drops everything the engine keeps of machine (buffered
// samples, windows, watermarks, duplicate keys): for a machine deleted
// from the registry. A sample of it that comes later starts it afresh.
// With StoreDedups, the keys of a group in flight are kept until its
// Release or Forget.
func (e *Engine) ForgetMachine(machine string) {
	e.reorder.Forget(machine)
	e.windows.Forget(machine)
	e.dedup.Forget(machine)
	e.drop(machine)
}

// EngineStats counts the machines an Engine keeps state for.
type EngineStats struct {
	// Machines are held in full; Active of them are visited by Tick.
	Machines, Active int
	// Windowed hold windows or may; Keyed have duplicate keys.
	Windowed, Keyed int
}

// Stats counts the machines e keeps state for.
func (e *Engine) Stats() EngineStats {
	var st EngineStats
	st.Machines, st.Active = e.reorder.Len()
	_, st.Windowed = e.windows.Len()
	st.Keyed = e.dedup.Machines()
	return st
}

// Flush releases everything buffered and closes every open window, for a
// clean shutdown.
func (e *Engine) Flush(out *Output) {
	e.use(out)
	e.reorder.Flush(e.emitRel)
	e.windows.Flush(e.emitWin)
	e.untouch()
}

// use directs emissions to out; late aggregates merge within one call.
func (e *Engine) use(out *Output) {
	e.out = out
	e.late = resetSet(e.late)
}

// resetSet empties m for the next call. A map that held many keys (a
// burst, or the first tick after a restart) is replaced rather than
// cleared: ranging over a cleared map still costs its peak size.
func resetSet[K comparable, V any](m map[K]V) map[K]V {
	if len(m) > 1024 {
		return make(map[K]V)
	}
	clear(m)
	return m
}
