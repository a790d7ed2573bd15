package twin

import (
	"slices"
	"strconv"
	"time"

	"github.com/twinline/twinline/internal/jsonenc"
)

// View reads the live state of machines one by one at one instant of the
// server clock: the fleet list encodes thousands of twins without
// building a Machine (and its maps) for each.
type View struct {
	l   *Live
	now int64
}

// View returns a view of the live state at the server's current time.
func (l *Live) View() View { return View{l: l, now: l.opts.Now().UnixMilli()} }

// Status returns machine id's liveness: StatusOnline or StatusOffline.
func (v View) Status(id string) string {
	v.l.mu.RLock()
	defer v.l.mu.RUnlock()
	return v.statusLocked(v.l.machines[id])
}

func (v View) statusLocked(e *state) string {
	if e != nil && e.lastSeen > 0 && v.now-e.lastSeen <= v.l.opts.OfflineAfter.Milliseconds() {
		return StatusOnline
	}
	return StatusOffline
}

// AppendMachine appends to dst the JSON document of the twin of e, with
// Alarm set to alarm: the fields encoding/json writes for the Machine
// Live.Machine returns, in its order (the entry's, then status, alarm,
// lastSeen, metrics by name, states by name, rate1m, rate5m). The entry
// part is e.JSON as it is; the rest is written here with package jsonenc
// (no HTML escaping; a value that is not finite is null).
func (v View) AppendMachine(dst []byte, e *Entry, alarm bool) []byte {
	v.l.mu.RLock()
	defer v.l.mu.RUnlock()
	return v.appendMachineLocked(dst, e, alarm)
}

// lockRun is how many machines AppendMachines encodes under one read lock
// of the live state: one lock per machine cost a tenth of the fleet list,
// and a run this short holds off a writer for some tens of microseconds.
const lockRun = 64

// AppendMachines appends the documents of entries (AppendMachine of each,
// alarms[i] the alarm flag of entries[i]) separated by commas.
func (v View) AppendMachines(dst []byte, entries []*Entry, alarms []bool) []byte {
	for lo := 0; lo < len(entries); lo += lockRun {
		hi := min(lo+lockRun, len(entries))
		v.l.mu.RLock()
		for i := lo; i < hi; i++ {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = v.appendMachineLocked(dst, entries[i], alarms[i])
		}
		v.l.mu.RUnlock()
	}
	return dst
}

func (v View) appendMachineLocked(dst []byte, e *Entry, alarm bool) []byte {
	if n := len(e.JSON); n >= 2 && e.JSON[n-1] == '}' {
		dst = append(dst, e.JSON[:n-1]...)
		if n > 2 {
			dst = append(dst, ',')
		}
	} else {
		dst = append(dst, '{')
	}
	s := v.l.machines[e.ID]
	dst = append(dst, `"status":"`...)
	dst = append(dst, v.statusLocked(s)...)
	dst = append(dst, `","alarm":`...)
	dst = strconv.AppendBool(dst, alarm)
	if s == nil {
		return append(dst, `,"metrics":{},"rate1m":0,"rate5m":0}`...)
	}
	if s.lastSeen != 0 {
		dst = append(dst, `,"lastSeen":`...)
		dst = jsonenc.AppendInt(dst, s.lastSeen)
	}
	dst = append(dst, `,"metrics":{`...)
	// The metrics of one event share its time: its text is copied from
	// the previous metric's when it is the same.
	prevTS, prevAt, prevEnd := int64(0), 0, 0
	for i, name := range s.names {
		x := s.vals[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonenc.AppendString(dst, name)
		dst = append(dst, `:{"value":`...)
		dst = jsonenc.AppendFloat(dst, x.value)
		dst = append(dst, `,"ts":`...)
		if prevEnd > 0 && x.ts == prevTS {
			at := len(dst)
			dst = append(dst, dst[prevAt:prevEnd]...)
			prevAt, prevEnd = at, len(dst)
		} else {
			prevAt = len(dst)
			dst = jsonenc.AppendInt(dst, x.ts)
			prevTS, prevEnd = x.ts, len(dst)
		}
		if x.hasMedian {
			dst = append(dst, `,"median":`...)
			dst = jsonenc.AppendFloat(dst, x.median)
		}
		dst = append(dst, '}')
	}
	dst = append(dst, '}')
	if len(s.states) > 0 {
		var names [8]string
		keys := names[:0]
		for name := range s.states {
			keys = append(keys, name)
		}
		slices.Sort(keys)
		dst = append(dst, `,"states":{`...)
		for i, name := range keys {
			x := s.states[name]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = jsonenc.AppendString(dst, name)
			dst = append(dst, `:{"value":`...)
			dst = jsonenc.AppendString(dst, x.Value)
			dst = append(dst, `,"ts":`...)
			dst = jsonenc.AppendInt(dst, x.TS)
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	var r1, r5 float64
	if s.rate != nil {
		r1, r5 = s.rate.PerSecond(v.now, time.Minute), s.rate.PerSecond(v.now, 5*time.Minute)
	}
	dst = append(dst, `,"rate1m":`...)
	dst = jsonenc.AppendFloat(dst, r1)
	dst = append(dst, `,"rate5m":`...)
	dst = jsonenc.AppendFloat(dst, r5)
	return append(dst, '}')
}

// AlarmedSet returns the machines Alarmed reports, at once: the fleet
// list asks about every machine, one lock instead of one per machine.
func (a *Alarms) AlarmedSet() map[string]struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]struct{}, len(a.alarmedBy))
	for m, n := range a.alarmedBy {
		if n > 0 {
			out[m] = struct{}{}
		}
	}
	return out
}
