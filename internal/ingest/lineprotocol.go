package ingest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math"
	"slices"
	"unsafe"

	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/telemetry"
)

// Precisions of InfluxDB 1.x /write beyond the four package lineprotocol
// knows. Only this package understands them: do not call their Duration or
// String methods, which panic.
const (
	PrecisionMinute = lineprotocol.Second + 1 + iota
	PrecisionHour
)

// ErrUnknownPrecision is returned for a precision that is not one of those
// ParsePrecision accepts.
var ErrUnknownPrecision = errors.New("unknown precision (want ns, us, ms, s, m or h)")

// ParsePrecision parses the precision parameter of the InfluxDB write APIs:
// "ns" or "n" (also ""), "us", "u", "µ" or "µs", "ms", "s", and, as InfluxDB
// 1.x /write accepts them, "m" (PrecisionMinute) and "h" (PrecisionHour).
func ParsePrecision(s string) (lineprotocol.Precision, error) {
	switch s {
	case "", "ns", "n":
		return lineprotocol.Nanosecond, nil
	case "us", "u", "µ", "µs", "μ", "μs": // micro sign and Greek mu
		return lineprotocol.Microsecond, nil
	case "ms":
		return lineprotocol.Millisecond, nil
	case "s":
		return lineprotocol.Second, nil
	case "m":
		return PrecisionMinute, nil
	case "h":
		return PrecisionHour, nil
	}
	return 0, fmt.Errorf("parsing precision %q: %w", s, ErrUnknownPrecision)
}

// Stats counts what a line-protocol decode skipped without rejecting.
type Stats struct {
	// IgnoredStringFields counts the string fields that cannot be states
	// (an empty value, one longer than MaxStateValueLen or holding control
	// characters, an invalid name): they are skipped, and a line keeps its
	// other fields.
	IgnoredStringFields int
	// DroppedLines counts the lines without a machine id tag dropped
	// under MissingDrop.
	DroppedLines int
	// Tags are the tags of the machines whose tags differ from what
	// Options.Tags remembers for them (nil without Options.Tags): one
	// TagSet per machine, from its last accepted line in the body. The
	// caller applies them, then tells Options.Tags (Remember).
	Tags []TagSet
}

// DecodeLineProtocol decodes InfluxDB line protocol (v1 and v2 write APIs),
// one event per line. See DecodeLineProtocolStats.
func DecodeLineProtocol(body []byte, precision lineprotocol.Precision, opts Options, dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
	events, rejects, _, err := DecodeLineProtocolStats(body, precision, opts, dst)
	return events, rejects, err
}

// DecodeLineProtocolStats decodes InfluxDB line protocol, one event per
// line, and also reports what it skipped.
//
// The machine id is the value of the first of opts.MachineTags the line
// carries (in the order of opts.MachineTags, not of the line); other tags
// are dropped, as they are not part of a series' identity. Each numeric
// field becomes the metric <measurement>_<field>: floats, integers and
// unsigned integers as their value, booleans as 1 and 0. Each string field
// becomes the state <measurement>_<field> (see DecodeJSON for the rules of
// a state); one that cannot be a state is skipped and counted in Stats
// rather than rejecting its line, which keeps the lines that send free
// text next to their numbers. The timestamp is read in the given
// precision and floored to milliseconds; without one the event gets a
// server stamp (see Stamper).
//
// A line that cannot be accepted — a syntax error, no machine tag, no
// numeric field, an invalid name, a timestamp out of range, longer than
// opts.MaxLineBytes — gives a Reject with its 1-based line number and the
// other lines are kept. Blank lines and # comments are skipped; CRLF line
// endings are accepted. A string field value may span lines (its entry
// takes the number of its first line); an unterminated one swallows the
// rest of the body. After a lone CR the lineprotocol decoder finds a second
// entry on the same line, so a line may have two rejects. The error is
// non-nil only for an unknown precision, or from opts.Sink's Flush.
func DecodeLineProtocolStats(body []byte, precision lineprotocol.Precision, opts Options, dst []telemetry.Event) ([]telemetry.Event, []Reject, Stats, error) {
	return decodeLineProtocol(body, precision, opts, dst, false)
}

// decodeLineProtocol implements DecodeLineProtocolStats; slow forces the
// slow path, for tests that compare the two.
func decodeLineProtocol(body []byte, precision lineprotocol.Precision, opts Options, dst []telemetry.Event, slow bool) ([]telemetry.Event, []Reject, Stats, error) {
	if precision > PrecisionHour {
		return dst, nil, Stats{}, fmt.Errorf("decoding line protocol: precision %d: %w", precision, ErrUnknownPrecision)
	}
	d := getDecoder(opts, dst)
	lines := bytes.Count(body, []byte{'\n'}) + 1
	base := len(dst)
	d.expectEvents(lines)
	if opts.Sink != nil {
		lines, base = min(lines, d.stream.sink.Chunk), 0
	}
	d.slab.hint(2 * lines)
	if slow || !d.decodeLinesFast(body, precision) {
		// Start again; what the fast path flushed is decoded again, and
		// dropped.
		d.events, d.rejects, d.rejected, d.stats = d.events[:base], d.rejects[:0], 0, Stats{}
		clear(d.tagPending)
		if d.local != nil {
			// The call's own stamps start again too (a shared Stamper
			// cannot take back those it gave: they only move ahead).
			d.local.reset()
		}
		if s := d.stream.sink; s != nil {
			d.stream.skip = s.Flushed
		}
		d.decodeLinesReader(body, precision)
	}
	events, rejects, stats := d.events, d.rejects, d.stats
	err := d.finishStream()
	d.release(len(body))
	if opts.Sink != nil {
		return dst, rejects, stats, err
	}
	return events, rejects, stats, nil
}

// decodeLinesFast decodes body with a lineprotocol decoder over the body
// itself, and numbers an entry's line by where its measurement lies in the
// body. It reports false, having decoded only part of the body, when it
// cannot: a measurement was unescaped into a copy, or a line is too long.
func (d *decoder) decodeLinesFast(body []byte, precision lineprotocol.Precision) bool {
	if d.opts.MaxLineBytes > 0 && hasLongLine(body, d.opts.MaxLineBytes) {
		return false
	}
	dec := lineprotocol.NewDecoderWithBytes(body)
	line, lineStart := 1, 0 // the line number of body[lineStart]
	for !d.stopped() && dec.Next() {
		m, err := dec.Measurement()
		if err != nil {
			// Measurement errors lie on the entry's first line.
			var de *lineprotocol.DecodeError
			if !errors.As(err, &de) {
				return false
			}
			d.syntaxReject(int(de.Line), err)
			continue
		}
		off, ok := offsetIn(body, m)
		if !ok || off < lineStart {
			return false
		}
		line += bytes.Count(body[lineStart:off], []byte{'\n'})
		lineStart = off
		d.decodeEntry(dec, m, line, precision)
	}
	return true
}

// offsetIn returns where b lies in body, if it does.
func offsetIn(body, b []byte) (int, bool) {
	if len(body) == 0 || len(b) == 0 {
		return 0, false
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(body)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	if p < start || p-start+uintptr(len(b)) > uintptr(len(body)) {
		return 0, false
	}
	return int(p - start), true
}

// hasLongLine reports whether a line of body, without its line ending, is
// longer than limit bytes.
func hasLongLine(body []byte, limit int) bool {
	for len(body) > limit {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			return len(bytes.TrimSuffix(body, []byte{'\r'})) > limit
		}
		if len(bytes.TrimSuffix(body[:i], []byte{'\r'})) > limit {
			return true
		}
		body = body[i+1:]
	}
	return false
}

// decodeLinesReader decodes body through a lineReader, which numbers the
// lines and rejects the long ones.
func (d *decoder) decodeLinesReader(body []byte, precision lineprotocol.Precision) {
	r := &lineReader{d: d, body: body}
	dec := lineprotocol.NewDecoder(r)
	for !d.stopped() && dec.Next() {
		line := r.line
		m, err := dec.Measurement()
		if err != nil {
			d.syntaxReject(line, err)
			continue
		}
		d.decodeEntry(dec, m, line, precision)
	}
	// A line that is too long is rejected when it is read, which may be
	// while an earlier entry with a multi-line string is decoded.
	if !slices.IsSortedFunc(d.rejects, cmpRejectIndex) {
		slices.SortStableFunc(d.rejects, cmpRejectIndex)
	}
}

func cmpRejectIndex(a, b Reject) int { return a.Index - b.Index }

// lineReader is the slow path of DecodeLineProtocolStats. It feeds the body to the lineprotocol decoder one physical line
// at a time, at most lineChunk bytes per Read. The decoder reads only when
// it needs more input, so when Next reports an entry, the entry starts on
// the line read last: this is how entries get their line numbers (a string
// field may span lines, so entries are not simply lines). Lines longer
// than the limit are rejected here and replaced by an empty line, which
// keeps the decoder's own line count (in its errors) right.
type lineReader struct {
	d       *decoder
	body    []byte
	pos     int
	lineEnd int  // end of the line being delivered, after its '\n'
	inLine  bool // some of the line at pos was delivered
	line    int  // 1-based number of the line being delivered
}

// lineChunk is the most one Read delivers. The decoder moves an unread
// remainder of at most 256 bytes to the start of its buffer at each entry,
// so small reads keep its buffer from growing with the body.
const lineChunk = 256

func (r *lineReader) Read(p []byte) (int, error) {
	for !r.inLine {
		if r.pos >= len(r.body) {
			return 0, io.EOF
		}
		r.line++
		next := len(r.body)
		content := r.body[r.pos:]
		if i := bytes.IndexByte(content, '\n'); i >= 0 {
			next = r.pos + i + 1
			content = content[:i]
		}
		content = bytes.TrimSuffix(content, []byte{'\r'})
		if limit := r.d.opts.MaxLineBytes; limit > 0 && len(content) > limit {
			r.d.reject(r.line, "", fmt.Sprintf("line exceeds %d bytes", limit))
			hadNewline := r.body[next-1] == '\n'
			r.pos = next
			if hadNewline && len(p) > 0 {
				p[0] = '\n'
				return 1, nil
			}
			continue
		}
		r.lineEnd, r.inLine = next, true
	}
	n := copy(p, r.body[r.pos:min(r.lineEnd, r.pos+lineChunk)])
	r.pos += n
	if r.pos == r.lineEnd {
		r.inLine = false
	}
	return n, nil
}

// decodeEntry decodes the rest of the entry dec is at, which starts on line
// with measurement m, into an event or a reject. A syntax error anywhere in
// the entry comes first; then the problems in the order of the entry:
// machine tag, fields, timestamp.
func (d *decoder) decodeEntry(dec *lineprotocol.Decoder, m []byte, line int, precision lineprotocol.Precision) {
	d.measurement = append(d.measurement[:0], m...)

	tags := d.opts.MachineTags
	best := len(tags)
	track := d.opts.Tags != nil
	if track {
		d.tagBuf, d.tagSpans = d.tagBuf[:0], d.tagSpans[:0]
	}
	chosen := -1 // the index of the machine id tag among the line's tags
	for n := 0; ; n++ {
		k, v, err := dec.NextTag()
		if err != nil {
			d.syntaxReject(line, err)
			return
		}
		if k == nil {
			break
		}
		if track {
			// The decoder's slices do not outlive the entry: copy.
			// Each tag is preceded by its key's and value's lengths, so
			// that the hash of the buffer tells a=b,aa=ac from a=ba,aa=c.
			d.tagBuf = binary.AppendUvarint(binary.AppendUvarint(d.tagBuf, uint64(len(k))), uint64(len(v)))
			d.tagSpans = append(d.tagSpans, tagSpan{start: len(d.tagBuf), k: len(k), v: len(v)})
			d.tagBuf = append(append(d.tagBuf, k...), v...)
		}
		for i := range best {
			if tags[i] == string(k) {
				best, chosen = i, n
				d.machineBuf = append(d.machineBuf[:0], v...)
				break
			}
		}
	}
	machineField := ""
	if best < len(tags) {
		machineField = tags[best]
	} else if d.opts.MissingMachine == MissingMeasurement {
		machineField = "measurement"
		d.machineBuf = append(d.machineBuf[:0], d.measurement...)
	}

	names := d.namesFor(m)
	d.lastNames = names.names
	defer func() { names.names = d.lastNames }()
	d.slab.begin()
	d.states.begin()
	d.nameBuf = append(append(d.nameBuf[:0], d.measurement...), '_')
	prefix := len(d.nameBuf)
	var fieldRej Reject // the first problem with a numeric field
	for {
		k, v, err := dec.NextField()
		if err != nil {
			d.slab.abort()
			d.states.abort()
			d.endEvent()
			d.syntaxReject(line, err)
			return
		}
		if k == nil {
			break
		}
		var f float64
		switch v.Kind() {
		case lineprotocol.Float:
			f = v.FloatV()
		case lineprotocol.Int:
			f = float64(v.IntV())
		case lineprotocol.Uint:
			f = float64(v.UintV())
		case lineprotocol.Bool:
			if v.BoolV() {
				f = 1
			}
		default:
			if fieldRej.Reason == "" {
				fieldRej = d.lineState(k, v.BytesV(), prefix)
			}
			continue
		}
		if fieldRej.Reason != "" {
			continue
		}
		d.nameBuf = append(d.nameBuf[:prefix], k...)
		pos := len(d.slab.current())
		name, p := d.metricName(d.nameBuf, pos)
		switch {
		case p != "":
			fieldRej = Reject{Field: string(k), Reason: fmt.Sprintf("%s: %s", p, quoteTrunc(d.nameBuf))}
		case pos+d.states.n >= d.opts.Limits.MaxMetricsPerEvent:
			fieldRej = Reject{Reason: d.tooManyFields()}
		case d.duplicate(name) || (d.states.n > 0 && d.states.has(name)):
			fieldRej = Reject{Field: string(k), Reason: "given twice"}
		default:
			d.slab.add(telemetry.Metric{Name: name, Value: f})
		}
	}
	d.endEvent()
	tb, err := dec.TimeBytes()
	if err != nil {
		d.slab.abort()
		d.states.abort()
		d.syntaxReject(line, err)
		return
	}

	var ev telemetry.Event
	field, reason := "", ""
	switch {
	case machineField == "" && d.opts.MissingMachine == MissingDrop:
		d.slab.abort()
		d.states.abort()
		d.stats.DroppedLines++
		return
	case machineField == "":
		if d.noTagReason == "" {
			d.noTagReason = "no machine id tag (one of " + joinTags(tags) + ")"
		}
		field, reason = "tags", d.noTagReason
	case fieldRej.Reason != "":
		field, reason = fieldRej.Field, fieldRej.Reason
	case len(d.slab.current()) == 0 && d.states.n == 0:
		reason = "no numeric or string field"
	default:
		var p string
		if ev.Machine, p = d.machine(d.machineBuf); p != "" {
			field, reason = machineField, "machine id "+p
			break
		}
		if tb != nil {
			ms, ok := timeMillis(tb, precision)
			if !ok {
				field, reason = "timestamp", "invalid or out of range: "+quoteTrunc(tb)
				break
			}
			ev.Time = ms
		} else if ev.Time, p = d.stamp(ev.Machine); p != "" {
			field, reason = "timestamp", p
			break
		}
		if p := checkTime(ev.Time, &d.opts); p != "" {
			field, reason = "timestamp", p
			if tb != nil {
				reason += d.precisionHint(tb, precision)
			}
		}
	}
	if reason != "" {
		d.slab.abort()
		d.states.abort()
		d.reject(line, field, reason)
		return
	}
	ev.Metrics = d.slab.commit()
	ev.States = d.states.commit()
	d.events = append(d.events, ev)
	if track && len(d.tagSpans) > 0 && (chosen < 0 || len(d.tagSpans) > 1) {
		d.noteTags(ev.Machine, chosen)
	}
	d.emitted()
}

// measurementNames are the metric names of a measurement's last line, by
// position (decoder.lastNames).
type measurementNames struct {
	m     string
	names []string
}

// namesFor returns the names slot of measurement m, taking the oldest for
// a measurement not among the recent ones.
func (d *decoder) namesFor(m []byte) *measurementNames {
	for i := range d.lpNames {
		if d.lpNames[i].m == string(m) {
			return &d.lpNames[i]
		}
	}
	s := &d.lpNames[d.lpNext]
	d.lpNext = (d.lpNext + 1) % len(d.lpNames)
	s.m, s.names = string(m), s.names[:0]
	return s
}

// tagSpan locates one tag of the line being decoded in decoder.tagBuf:
// its key at start, k bytes long, then its value, v bytes long (after the
// two lengths as uvarints, which make the buffer's hash unambiguous).
type tagSpan struct{ start, k, v int }

// noteTags reports the tags of machine's accepted line, but for the
// chosen-th (its machine id; -1: none), in Stats.Tags unless Options.Tags
// knows them. The hash covers every tag of the line, the machine's own
// included, as sent: lines that repeat a machine's tags (the common case)
// cost one hash and one lookup.
func (d *decoder) noteTags(machine string, chosen int) {
	c := d.opts.Tags
	h := maphash.Bytes(c.seed, d.tagBuf)
	if c.known(machine, h) {
		return
	}
	i, pending := d.tagPending[machine]
	if pending && d.stats.Tags[i].Hash == h {
		return
	}
	set := TagSet{Machine: machine, Hash: h, Tags: make(map[string]string, len(d.tagSpans))}
	for j, sp := range d.tagSpans {
		k := d.tagBuf[sp.start : sp.start+sp.k]
		v := d.tagBuf[sp.start+sp.k : sp.start+sp.k+sp.v]
		if j == chosen || d.tagProblem(k, v) != "" {
			// A tag that could not be an attribute is left out; the
			// line itself is fine.
			continue
		}
		set.Tags[d.tagString(k)] = d.tagString(v)
	}
	if len(set.Tags) == 0 {
		return
	}
	if pending {
		d.stats.Tags[i] = set // latest wins
		return
	}
	if d.tagPending == nil {
		d.tagPending = map[string]int{}
	}
	d.tagPending[machine] = len(d.stats.Tags)
	d.stats.Tags = append(d.stats.Tags, set)
}

// lineState adds the string field k=v of the entry being decoded as a
// state, skips it (counted) when it cannot be one, or returns the reject of
// its line: too many fields, a name given twice.
func (d *decoder) lineState(k, v []byte, prefix int) Reject {
	d.nameBuf = append(d.nameBuf[:prefix], k...)
	if stateValueProblem(v) != "" {
		d.stats.IgnoredStringFields++
		return Reject{}
	}
	name, p := d.stateName(d.nameBuf)
	switch {
	case p != "":
		d.stats.IgnoredStringFields++
	case len(d.slab.current())+d.states.n >= d.opts.Limits.MaxMetricsPerEvent:
		return Reject{Reason: d.tooManyFields()}
	case d.states.has(name) || d.hasMetric(name):
		return Reject{Field: string(k), Reason: "given twice"}
	default:
		d.states.add(telemetry.State{Name: name, Value: d.stateValue(v)})
	}
	return Reject{}
}

// tooManyFields is the reason of a line with more fields than
// MaxMetricsPerEvent.
func (d *decoder) tooManyFields() string {
	if d.states.n == 0 {
		return fmt.Sprintf("has more than %d numeric fields", d.opts.Limits.MaxMetricsPerEvent)
	}
	return fmt.Sprintf("has more than %d numeric and string fields", d.opts.Limits.MaxMetricsPerEvent)
}

// precisionHint suggests the precision under which an out-of-range
// timestamp would be in range: a writer configured with another precision
// than it uses is a common mistake.
func (d *decoder) precisionHint(tb []byte, precision lineprotocol.Precision) string {
	for p := lineprotocol.Nanosecond; p <= PrecisionHour; p++ {
		if ms, ok := timeMillis(tb, p); ok && p != precision && checkTime(ms, &d.opts) == "" {
			return fmt.Sprintf("; the timestamp fits precision=%s, not %s", precisionName(p), precisionName(precision))
		}
	}
	return ""
}

func precisionName(p lineprotocol.Precision) string {
	switch p {
	case PrecisionMinute:
		return "m"
	case PrecisionHour:
		return "h"
	case lineprotocol.Microsecond:
		return "us"
	}
	return p.String()
}

// syntaxReject rejects the entry on line for a decoder error.
func (d *decoder) syntaxReject(line int, err error) {
	var de *lineprotocol.DecodeError
	if !errors.As(err, &de) {
		d.reject(line, "", err.Error())
		return
	}
	if int(de.Line) != line {
		d.reject(line, "", fmt.Sprintf("syntax error at line %d, column %d: %v", de.Line, de.Column, de.Err))
		return
	}
	d.reject(line, "", fmt.Sprintf("syntax error at column %d: %v", de.Column, de.Err))
}

// timeMillis converts a line-protocol timestamp in precision p to Unix
// milliseconds, flooring finer precisions.
func timeMillis(b []byte, p lineprotocol.Precision) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if u > math.MaxInt64 {
		return 0, false
	}
	ts := int64(u)
	if neg {
		ts = -ts
	}
	switch p {
	case lineprotocol.Nanosecond:
		return floorDiv(ts, 1e6), true
	case lineprotocol.Microsecond:
		return floorDiv(ts, 1e3), true
	case lineprotocol.Millisecond:
		return ts, true
	case lineprotocol.Second:
		return mulMillis(ts, 1e3)
	case PrecisionMinute:
		return mulMillis(ts, 60e3)
	default:
		return mulMillis(ts, 3600e3)
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b < 0 {
		q--
	}
	return q
}

func mulMillis(ts, unit int64) (int64, bool) {
	if ts > math.MaxInt64/unit || ts < math.MinInt64/unit {
		return 0, false
	}
	return ts * unit, true
}
