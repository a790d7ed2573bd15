package hub

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/jsonenc"
	"github.com/twinline/twinline/internal/telemetry"
)

// A conflated fleet stream (all=1&conflate=D) gets, at most once every D,
// one "fleet" message with each machine that changed since its last one:
// its latest value of each metric that changed, its status, alarm flag and
// last seen time. The hub keeps one fleet state for all such clients,
// updated by every publish while one is connected: a merge costs a map
// update per sample, whatever the number of clients; a flush walks the
// machines once, whatever the event rate.

// Bounds of the conflate parameter.
const (
	minConflate = 50 * time.Millisecond
	maxConflate = 10 * time.Second
)

// fleetUpdate is one change to a machine's state on a conflated stream: a
// value (Metric set), a status change (Status set, with Alarm), and when
// the machine was last seen (Seen, Unix ms, 0 if unknown).
type fleetUpdate struct {
	Machine string
	Metric  string
	Value   float64
	TS      int64 // event time of Value, Unix ms
	Status  string
	Alarm   bool // with Status: an active alarm other than offline
	Seen    int64
}

// fleetState is the latest known state of every machine, each part tagged
// with the version (one per update merged) of its last change.
type fleetState struct {
	machines map[string]*fleetMachine
	v        uint64
}

type fleetMachine struct {
	status   string
	alarm    bool
	lastSeen int64
	metrics  map[string]fleetValue
	v        uint64 // last change of anything
	statusV  uint64 // last change of status
}

type fleetValue struct {
	value float64
	ts    int64
	v     uint64
}

func newFleetState() *fleetState {
	return &fleetState{machines: make(map[string]*fleetMachine)}
}

// merge folds us into s, in order. It is the whole of conflation: merging
// a sequence of updates at once or in any split of it leaves s in the same
// state (FuzzConflate).
func (s *fleetState) merge(us []fleetUpdate) {
	for _, u := range us {
		s.apply(u)
	}
}

// apply merges one update: a metric keeps the value of the newest event
// time (on a tie, the later update); the status and alarm flag are the
// latest given; the last seen time only moves forward.
func (s *fleetState) apply(u fleetUpdate) {
	m := s.machines[u.Machine]
	if m == nil {
		m = &fleetMachine{}
		s.machines[u.Machine] = m
	}
	s.v++
	changed := false
	if u.Metric != "" {
		if m.metrics == nil {
			m.metrics = make(map[string]fleetValue)
		}
		old, ok := m.metrics[u.Metric]
		if !ok || u.TS >= old.ts {
			if !ok || u.TS != old.ts || !sameFloat(u.Value, old.value) {
				m.metrics[u.Metric] = fleetValue{value: u.Value, ts: u.TS, v: s.v}
				changed = true
			}
		}
	}
	if u.Status != "" && (u.Status != m.status || u.Alarm != m.alarm) {
		m.status, m.alarm, m.statusV, changed = u.Status, u.Alarm, s.v, true
	}
	if u.Seen > m.lastSeen {
		m.lastSeen, changed = u.Seen, true
	}
	if changed {
		m.v = s.v
	}
}

// sameFloat compares as the stream shows values (NaN equals NaN).
func sameFloat(a, b float64) bool { return a == b || a != a && b != b }

// mergeSamples merges published samples; received is their ingest time.
func (s *fleetState) mergeSamples(samples []telemetry.Sample, received int64) {
	for i := range samples {
		x := &samples[i]
		s.apply(fleetUpdate{Machine: x.Machine, Metric: x.Metric, Value: x.Value, TS: x.Time, Seen: received})
	}
}

// appendChanges appends the "machines" array of a fleet message: every
// machine filter accepts (all if nil) that changed after version since, by
// name, with the metrics that changed after it. n is the number of
// machines; scratch is reused for the names and returned.
func (s *fleetState) appendChanges(b []byte, since uint64, filter func(string) bool, scratch []string) (_ []byte, n int, _ []string) {
	names := scratch[:0]
	for name, m := range s.machines {
		if m.v > since && (filter == nil || filter(name)) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	b = append(b, '[')
	for i, name := range names {
		m := s.machines[name]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"machine":`...)
		b = jsonenc.AppendString(b, name)
		if m.status != "" {
			b = append(b, `,"status":`...)
			b = jsonenc.AppendString(b, m.status)
			b = append(b, `,"alarm":`...)
			b = strconv.AppendBool(b, m.alarm)
		}
		if m.lastSeen != 0 {
			b = append(b, `,"lastSeen":`...)
			b = strconv.AppendInt(b, m.lastSeen, 10)
		}
		b = append(b, `,"metrics":{`...)
		first := true
		for _, metric := range sortedKeys(m.metrics) {
			x := m.metrics[metric]
			if x.v <= since {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = jsonenc.AppendString(b, metric)
			b = append(b, `:{"value":`...)
			b = jsonenc.AppendFloat(b, x.value)
			b = append(b, `,"ts":`...)
			b = strconv.AppendInt(b, x.ts, 10)
			b = append(b, '}')
		}
		b = append(b, "}}"...)
	}
	b = append(b, ']')
	clear(names)
	return b, len(names), names[:0]
}

func sortedKeys(m map[string]fleetValue) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// fleetGroup is the unfiltered conflated clients of one interval: one
// timer, one message per flush, encoded once and queued for each.
type fleetGroup struct {
	interval time.Duration
	clients  map[*client]struct{}
	flushed  uint64 // the fleet state's version at the last flush
	timer    *time.Timer
}

// flush sends a filtered conflated client the machines it may see that
// changed since its last flush.
func (h *Hub) flush(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.reason != "" || h.fleet == nil {
		return
	}
	c.flusher.Reset(c.conflate)
	if h.fleet.v == c.flushed {
		return
	}
	m := h.fleetMessageLocked(c.flushed, c.filter)
	c.flushed = h.fleet.v
	if m != nil {
		h.offerFleetLocked(c, m)
	}
}

// flushGroup sends the group's clients the machines that changed since
// the group's last flush: one message for all of them.
func (h *Hub) flushGroup(g *fleetGroup) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.groups[g.interval] != g || h.fleet == nil {
		return // gone
	}
	g.timer.Reset(g.interval)
	if h.fleet.v == g.flushed {
		return
	}
	m := h.fleetMessageLocked(g.flushed, nil)
	g.flushed = h.fleet.v
	if m == nil {
		return
	}
	for c := range g.clients {
		if c.reason == "" {
			h.offerFleetLocked(c, m)
		}
	}
}

// fleetMessageLocked encodes a fleet message of the changes after version
// since that filter accepts (all if nil), or returns nil if there are none.
func (h *Hub) fleetMessageLocked(since uint64, filter func(string) bool) *message {
	b := make([]byte, 0, 256)
	b = append(b, '{')
	b = appendType(b, TypeFleet)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, h.seq, 10)
	b = append(b, `,"machines":`...)
	var n int
	b, n, h.names = h.fleet.appendChanges(b, since, filter, h.names)
	if n == 0 {
		return nil // changes the client may not see
	}
	b = append(b, '}')
	return controlMessage(h.seq, false, b)
}

// offerFleetLocked queues m for c, cutting c off if it is too far behind.
func (h *Hub) offerFleetLocked(c *client, m *message) {
	if why := c.queue.push(h.now(), nil, m); why != pushed {
		c.why = why
		h.cutLocked(c, reasonSlowClient)
		return
	}
	c.queue.signal()
}

// parseConflate parses the conflate parameter: a duration between
// minConflate and maxConflate.
func parseConflate(v string) (time.Duration, string) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < minConflate || d > maxConflate {
		return 0, "must be a duration from " + minConflate.String() + " to " + maxConflate.String() + ", e.g. 250ms"
	}
	return d, ""
}
