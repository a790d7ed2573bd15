package ingest

import (
	"strings"
	"sync"
	"unsafe"

	"github.com/valyala/fastjson"

	"github.com/twinline/twinline/internal/telemetry"
)

// decoder is the working state of one decode call. It is pooled: the JSON
// parser, the scratch buffers and the intern maps are reused across calls;
// the metric slab and the id arena, which the returned events reference,
// are fresh for every call.
type decoder struct {
	opts Options

	events  []telemetry.Event
	rejects []Reject
	// rejected counts the rejects, including those over Sink.MaxRejects.
	rejected int
	stream   streamState
	// local stamps events without a timestamp when Options.Stamper is nil;
	// it is reset per call.
	local *Stamper

	slab metricSlab
	// states holds the states of the call's events, as slab the metrics.
	states stateSlab
	arena  []byte // backing bytes of event ids, append-only

	// Intern maps hold validated machine ids and metric names, and tag keys
	// and values, so repeated strings share one allocation. Their entries
	// are immutable strings, so they may outlive a call; they are bounded by
	// maxInterned.
	machines    map[string]string
	metricNames map[string]string
	tagStrings  map[string]string
	// recentMachines caches machine ids by recentHash, to skip the map for
	// the machines of a fleet that send in turns. Only valid ids, admitted
	// in this call, enter it: it is cleared per call, because AdmitMachine
	// answers for one request's identity.
	recentMachines [1 << recentBits]string
	// admitted holds the machine ids AdmitMachine admitted in this call.
	admitted map[string]struct{}
	// lastNames[i] is the name of the i-th metric of the previous event:
	// consecutive events usually carry the same metrics in the same order.
	lastNames []string
	// seen holds the metric names of the current event once it has too many
	// for a linear duplicate scan.
	seen map[string]struct{}

	// JSON state.
	parser    fastjson.Parser
	item      jsonItem
	visitTop  func(key []byte, v *fastjson.Value)
	visitNest func(key []byte, v *fastjson.Value)
	visitTags func(key []byte, v *fastjson.Value)
	// visitStates handles an entry of a "states" object.
	visitStates func(key []byte, v *fastjson.Value)
	numScratch  []byte
	// rawItem holds an array item's JSON text while its escapes are checked.
	rawItem []byte

	// Line-protocol state.
	measurement []byte
	nameBuf     []byte
	machineBuf  []byte
	stats       Stats
	noTagReason string
	// tagBuf and tagSpans hold the tags of the line being decoded, when
	// Options.Tags is set; tagPending indexes Stats.Tags by machine.
	tagBuf     []byte
	tagSpans   []tagSpan
	tagPending map[string]int
	// lpNames are the lastNames of the recent measurements, so that lines
	// of measurements in turn (TSBS iot: readings, diagnostics) find
	// their metric names without a map lookup; lpNext is the slot the
	// next new measurement takes.
	lpNames [4]measurementNames
	lpNext  int
}

const (
	// recentBits sizes recentMachines.
	recentBits = 6
	// maxInterned bounds each intern map; a full map is cleared.
	maxInterned = 4096
	// maxInternedTagLen bounds the tag keys and values that are interned.
	maxInternedTagLen = 64
	// maxPooledBody is the largest body whose decoder goes back to the
	// pool: the JSON parser keeps a copy of the last body it parsed.
	maxPooledBody = 1 << 20
	// linearDupScan is the number of metrics up to which duplicates are
	// found by a linear scan rather than the seen map.
	linearDupScan = 32
)

var decoderPool = sync.Pool{New: func() any {
	d := &decoder{
		machines:    make(map[string]string),
		metricNames: make(map[string]string),
		tagStrings:  make(map[string]string),
		seen:        make(map[string]struct{}),
		admitted:    make(map[string]struct{}),
	}
	d.visitTop = d.topField
	d.visitNest = d.nestedMetric
	d.visitTags = d.tag
	d.visitStates = d.nestedState
	return d
}}

func getDecoder(opts Options, dst []telemetry.Event) *decoder {
	d := decoderPool.Get().(*decoder)
	d.opts = opts.normalize()
	d.events = dst
	d.rejects = nil
	d.rejected = 0
	d.startStream(opts.Sink)
	d.stats = Stats{}
	d.noTagReason = ""
	clear(d.tagPending)
	if d.local != nil {
		d.local.reset()
	}
	if d.opts.AdmitMachine != nil {
		clear(d.recentMachines[:])
		clear(d.admitted)
	}
	return d
}

// release hands d back to the pool. The slab and arena stay with the events
// returned by the call.
func (d *decoder) release(bodyLen int) {
	d.events, d.rejects = nil, nil
	d.stream = streamState{}
	d.opts.Sink = nil
	d.slab = metricSlab{}
	d.states = stateSlab{}
	d.arena = nil
	d.item = jsonItem{}
	d.opts.MachineTags = nil
	d.opts.AdmitMachine = nil
	d.opts.Stamper = nil
	d.opts.Tags = nil
	if bodyLen > maxPooledBody {
		return
	}
	decoderPool.Put(d)
}

func (d *decoder) reject(index int, field, reason string) {
	d.addReject(Reject{Index: index, Field: field, Reason: reason})
}

func (d *decoder) addReject(r Reject) {
	d.rejected++
	if s := d.stream.sink; s != nil && s.MaxRejects > 0 && len(d.rejects) >= s.MaxRejects {
		return
	}
	d.rejects = append(d.rejects, r)
}

// machine returns the interned machine id b, or why it is not valid.
func (d *decoder) machine(b []byte) (string, string) {
	if len(b) == 0 || len(b) > d.opts.Limits.MaxMachineIDLen {
		return "", machineIDProblem(b, d.opts.Limits.MaxMachineIDLen)
	}
	slot := &d.recentMachines[recentHash(b)]
	if string(b) == *slot {
		return *slot, ""
	}
	s, ok := d.machines[string(b)]
	if !ok {
		if p := machineIDProblem(b, d.opts.Limits.MaxMachineIDLen); p != "" {
			return "", p
		}
		s = string(b)
		intern(d.machines, s)
	}
	if d.opts.AdmitMachine != nil {
		if _, ok := d.admitted[s]; !ok {
			if p := d.opts.AdmitMachine(s); p != "" {
				return "", p
			}
			if len(d.admitted) >= maxInterned {
				clear(d.admitted)
			}
			d.admitted[s] = struct{}{}
		}
	}
	*slot = s
	return s, ""
}

// recentHash picks the recentMachines slot of a machine id from its length
// and last bytes, where the ids of one fleet differ.
func recentHash(b []byte) int {
	h := uint64(len(b))
	for _, c := range b[max(len(b)-8, 0):] {
		h = (h ^ uint64(c)) * 0x9E3779B97F4A7C15
	}
	return int(h >> (64 - recentBits))
}

// metricName returns the interned metric name b, the pos-th metric of its
// event, or why it is not valid.
func (d *decoder) metricName(b []byte, pos int) (string, string) {
	if len(b) == 0 || len(b) > d.opts.Limits.MaxMetricNameLen {
		return "", metricNameProblem(b, d.opts.Limits.MaxMetricNameLen)
	}
	if pos < len(d.lastNames) && d.lastNames[pos] == string(b) {
		return d.lastNames[pos], ""
	}
	s, ok := d.metricNames[string(b)]
	if !ok {
		if p := metricNameProblem(b, d.opts.Limits.MaxMetricNameLen); p != "" {
			return "", p
		}
		s = string(b)
		intern(d.metricNames, s)
	}
	if pos < len(d.lastNames) {
		d.lastNames[pos] = s
	} else if pos == len(d.lastNames) && pos < linearDupScan {
		d.lastNames = append(d.lastNames, s)
	}
	return s, ""
}

// tagString returns b as a string, interned if it is short; the caller
// validates it.
func (d *decoder) tagString(b []byte) string {
	if len(b) > maxInternedTagLen {
		return string(b)
	}
	if s, ok := d.tagStrings[string(b)]; ok {
		return s
	}
	s := string(b)
	intern(d.tagStrings, s)
	return s
}

func intern(m map[string]string, s string) {
	if len(m) >= maxInterned {
		clear(m)
	}
	m[s] = s
}

// keep copies b into the call's arena and returns it as a string. Bytes
// already handed out are never written again, so the strings stay valid.
func (d *decoder) keep(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if cap(d.arena)-len(d.arena) < len(b) {
		d.arena = make([]byte, 0, max(4096, len(b)))
	}
	start := len(d.arena)
	d.arena = append(d.arena, b...)
	return unsafe.String(&d.arena[start], len(b))
}

// duplicate reports whether the current event already has a metric name.
func (d *decoder) duplicate(name string) bool {
	cur := d.slab.current()
	if len(cur) < linearDupScan {
		for i := range cur {
			if cur[i].Name == name {
				return true
			}
		}
		return false
	}
	if len(d.seen) == 0 {
		for i := range cur {
			d.seen[cur[i].Name] = struct{}{}
		}
	}
	if _, ok := d.seen[name]; ok {
		return true
	}
	d.seen[name] = struct{}{}
	return false
}

// endEvent forgets the per-event duplicate set.
func (d *decoder) endEvent() {
	if len(d.seen) > 0 {
		clear(d.seen)
	}
}

// metricSlab hands out the metrics of one call's events from a few large
// chunks instead of one allocation per event. Each event's metrics are a
// full slice expression of a chunk, so appending to one never overwrites
// the next.
type metricSlab struct {
	buf   []telemetry.Metric
	start int // first metric of the event being built
	next  int // size of the next chunk
}

// hint sizes the first chunk for about n metrics.
func (s *metricSlab) hint(n int) {
	if s.buf == nil {
		s.next = max(n, 16)
	}
}

func (s *metricSlab) begin() { s.start = len(s.buf) }

func (s *metricSlab) add(m telemetry.Metric) {
	if len(s.buf) == cap(s.buf) {
		s.grow()
	}
	s.buf = append(s.buf, m)
}

func (s *metricSlab) grow() {
	partial := s.buf[s.start:]
	n := max(s.next, 2*len(partial), 16)
	s.next = min(2*n, 1<<16)
	buf := make([]telemetry.Metric, len(partial), n)
	copy(buf, partial)
	s.buf, s.start = buf, 0
}

// current returns the metrics of the event being built.
func (s *metricSlab) current() []telemetry.Metric { return s.buf[s.start:] }

// commit ends the event being built and returns its metrics.
func (s *metricSlab) commit() []telemetry.Metric {
	if len(s.buf) == s.start {
		return nil // an event of states only
	}
	m := s.buf[s.start:len(s.buf):len(s.buf)]
	s.start = len(s.buf)
	return m
}

// abort drops the event being built; its slots are reused.
func (s *metricSlab) abort() {
	clear(s.buf[s.start:])
	s.buf = s.buf[:s.start]
}

// stateSlab is metricSlab for the states of one call's events. It
// allocates only once an event carries a state.
type stateSlab struct {
	buf   []telemetry.State
	start int
	// n is the number of states of the event being built: what the hot
	// paths of numeric fields ask, without slicing.
	n int
}

func (s *stateSlab) begin() { s.start, s.n = len(s.buf), 0 }

func (s *stateSlab) add(st telemetry.State) {
	if len(s.buf) == cap(s.buf) {
		partial := s.buf[s.start:]
		buf := make([]telemetry.State, len(partial), max(2*cap(s.buf), 2*len(partial), 8))
		copy(buf, partial)
		s.buf, s.start = buf, 0
	}
	s.buf = append(s.buf, st)
	s.n++
}

// has reports whether the event being built has a state named name.
func (s *stateSlab) has(name string) bool {
	for _, st := range s.buf[s.start:] {
		if st.Name == name {
			return true
		}
	}
	return false
}

// commit ends the event being built and returns its states, nil for none.
func (s *stateSlab) commit() []telemetry.State {
	if s.n == 0 {
		return nil
	}
	st := s.buf[s.start:len(s.buf):len(s.buf)]
	s.start, s.n = len(s.buf), 0
	return st
}

func (s *stateSlab) abort() {
	if s.n == 0 {
		return
	}
	clear(s.buf[s.start:])
	s.buf = s.buf[:s.start]
	s.n = 0
}

// stateName returns the interned state name b, or why it is not valid:
// state names follow the metric-name rules.
func (d *decoder) stateName(b []byte) (string, string) {
	if s, ok := d.metricNames[string(b)]; ok {
		return s, ""
	}
	if p := metricNameProblem(b, d.opts.Limits.MaxMetricNameLen); p != "" {
		return "", "state " + strings.TrimPrefix(p, "metric ")
	}
	s := string(b)
	intern(d.metricNames, s)
	return s, ""
}

// stateValue returns the state value b as a string, interned if short (a
// machine's states repeat a few values); the caller validated it.
func (d *decoder) stateValue(b []byte) string { return d.tagString(b) }

// hasMetric reports whether the event being built has a metric named name.
func (d *decoder) hasMetric(name string) bool {
	for _, m := range d.slab.current() {
		if m.Name == name {
			return true
		}
	}
	return false
}
