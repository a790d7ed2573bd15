package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/valyala/fastjson"

	"github.com/twinline/twinline/internal/telemetry"
)

// DecodeJSON decodes a JSON object or an array of objects, each one event:
//
//	{"machineId":"press-07","timestamp":"2026-11-30T06:00:00Z","temp":71.3}
//
// machineId is required. timestamp is an RFC 3339 string or epoch
// milliseconds (integer or fraction, floored); without it the event gets a
// server stamp (see Stamper). id (a string) and seq (a non-negative integer) are optional, and
// so is tags, an object of strings. Every other top-level field is a metric
// when it is a number (booleans count as 1 and 0) and a state when it is a
// string ("state":"RUNNING"); a "metrics" object of numbers may carry more
// metrics, and a "states" object of strings more states. A state value is
// 1 to MaxStateValueLen bytes of UTF-8 without control characters; its
// name follows the metric-name rules, and metrics and states of one event
// share the names and the Limits.MaxMetricsPerEvent budget. null in id,
// seq, tags, metrics, states or timestamp means absent.
//
// Strings are decoded as JSON says; an escape that stands for no text
// (a lone UTF-16 surrogate such as \ud800, or an unknown one such as \x)
// rejects its item, naming the field.
//
// Each item is validated on its own: the valid ones are appended to dst and
// each invalid one gives exactly one Reject (the first problem found, Index
// its 0-based array index); a body that is JSON but neither an object nor
// an array is one such item. The error is a *SyntaxError, only when the body
// is not JSON at all (or is empty), or the error of opts.Sink's Flush.
//
// With opts.Sink set, an array is decoded one item at a time (no tree of
// the whole body is built) and its events go to the sink in chunks.
func DecodeJSON(body []byte, opts Options, dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
	trimmed := bytes.TrimPrefix(body, utf8BOM)
	d := getDecoder(opts, dst)
	if d.stream.sink != nil {
		if s := skipJSONSpace(trimmed); len(s) > 0 && s[0] == '[' {
			err := d.decodeJSONItems(body, len(body)-len(s))
			if err == nil {
				err = d.finishStream()
			}
			rejects := d.rejects
			d.release(len(body))
			return dst, rejects, err
		}
	}
	v, err := d.parser.ParseBytes(trimmed)
	if err != nil {
		d.release(len(body))
		return dst, nil, jsonSyntaxError(body, len(body)-len(trimmed), err)
	}
	if items, err := v.Array(); err == nil {
		n := 0
		for _, it := range items {
			if o, err := it.Object(); err == nil {
				n += max(o.Len()-2, 1) // most events carry machineId and timestamp
			}
		}
		d.slab.hint(n)
		bad := hasBadEscape(trimmed)
		for i, it := range items {
			var raw []byte
			if bad {
				// Nothing of the item is unescaped yet: its raw text.
				d.rawItem = it.MarshalTo(d.rawItem[:0])
				raw = d.rawItem
			}
			d.decodeItem(it, i, raw)
		}
	} else {
		var raw []byte
		if hasBadEscape(trimmed) {
			raw = trimmed
		}
		if o, err := v.Object(); err == nil {
			d.slab.hint(estimateMetrics(o))
		}
		d.decodeItem(v, 0, raw)
	}
	events, rejects := d.events, d.rejects
	err = d.finishStream()
	d.release(len(body))
	if opts.Sink != nil {
		return dst, rejects, err
	}
	return events, rejects, nil
}

// DecodeNDJSON decodes newline-delimited JSON: one event object per line,
// as DecodeJSON describes. Blank lines are skipped; a line that is not a
// valid event, or is longer than opts.MaxLineBytes, gives a Reject with its
// 1-based line number and the other lines are kept. The error is nil
// (every line is judged on its own) unless opts.Sink's Flush fails.
func DecodeNDJSON(body []byte, opts Options, dst []telemetry.Event) ([]telemetry.Event, []Reject, error) {
	d := getDecoder(opts, dst)
	size := len(body)
	body = bytes.TrimPrefix(body, utf8BOM)
	lines := bytes.Count(body, []byte{'\n'}) + 1
	d.expectEvents(lines)
	first := true
	for line := 1; len(body) > 0 && !d.stopped(); line++ {
		var ln []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			ln, body = body[:i], body[i+1:]
		} else {
			ln, body = body, nil
		}
		ln = bytes.TrimSuffix(ln, []byte{'\r'})
		if isBlank(ln) {
			continue
		}
		if d.opts.MaxLineBytes > 0 && len(ln) > d.opts.MaxLineBytes {
			d.reject(line, "", fmt.Sprintf("line exceeds %d bytes", d.opts.MaxLineBytes))
			continue
		}
		v, err := d.parser.ParseBytes(ln)
		if err != nil {
			d.reject(line, "", jsonSyntaxError(ln, 0, err).lineReason())
			continue
		}
		if first {
			first = false
			if o, err := v.Object(); err == nil {
				n := lines - line + 1
				if d.stream.sink != nil {
					n = min(n, d.stream.sink.Chunk)
				}
				d.slab.hint(min(estimateMetrics(o)*n, size/4))
			}
		}
		var raw []byte
		if hasBadEscape(ln) {
			raw = ln
		}
		d.decodeItem(v, line, raw)
	}
	events, rejects := d.events, d.rejects
	err := d.finishStream()
	d.release(size)
	if opts.Sink != nil {
		return dst, rejects, err
	}
	return events, rejects, nil
}

var utf8BOM = []byte("\xEF\xBB\xBF")

func isBlank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' {
			return false
		}
	}
	return true
}

// estimateMetrics guesses the number of metrics of an event object.
func estimateMetrics(o *fastjson.Object) int {
	n := o.Len()
	for _, k := range [...]string{"machineId", "timestamp", "id", "seq", "tags", "states"} {
		if o.Get(k) != nil {
			n--
		}
	}
	if m := o.Get("metrics"); m != nil {
		n--
		if mo, err := m.Object(); err == nil {
			n += mo.Len()
		}
	}
	return max(n, 1)
}

// jsonSyntaxError locates the syntax error fastjson found in body (which
// starts skip bytes into the original body). fastjson does not say where;
// encoding/json does, so it is asked again on this error path only.
func jsonSyntaxError(body []byte, skip int, parseErr error) *SyntaxError {
	rest := body[skip:]
	if isBlankJSON(rest) {
		return newSyntaxError(body, int64(len(body)), "empty body")
	}
	var raw json.RawMessage
	var se *json.SyntaxError
	if err := json.Unmarshal(rest, &raw); errors.As(err, &se) {
		// encoding/json counts the bytes read, including the offending one.
		off := se.Offset
		if off > 0 && off <= int64(len(rest)) && se.Error() != "unexpected end of JSON input" {
			off--
		}
		return newSyntaxError(body, int64(skip)+off, se.Error())
	}
	// Valid for encoding/json, not for fastjson (e.g. nesting deeper than
	// fastjson.MaxDepth): keep fastjson's message.
	return newSyntaxError(body, int64(skip), parseErr.Error())
}

func isBlankJSON(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// lineReason words e as the reason of a rejected NDJSON line.
func (e *SyntaxError) lineReason() string {
	return fmt.Sprintf("invalid JSON at column %d: %s", e.Column, e.Msg)
}

// jsonItem is the event being decoded from one JSON object.
type jsonItem struct {
	ev     telemetry.Event
	seen   uint16 // fields met, to find one given twice
	failed bool
	// numericTime says the timestamp was a number, for a hint when it is out
	// of range.
	numericTime bool
	rej         Reject
}

const (
	seenMachine uint16 = 1 << iota
	seenTime
	seenID
	seenSeq
	seenTags
	seenMetrics
	seenStates
	hasTime
	hasMachine
)

func (it *jsonItem) fail(field, reason string) {
	it.failed = true
	it.rej.Field, it.rej.Reason = field, reason
}

// once marks a reserved field seen, and fails the item if it was already.
func (it *jsonItem) once(flag uint16, field string) bool {
	if it.seen&flag != 0 {
		it.fail(field, "given twice")
		return false
	}
	it.seen |= flag
	return true
}

// decodeItem appends the event v encodes, or its Reject, to d. raw is the
// item's JSON text when it may hold an escape fastjson cannot decode
// faithfully (see escapeLen), nil when it does not; such an escape is the
// item's problem, wherever it is.
func (d *decoder) decodeItem(v *fastjson.Value, index int, raw []byte) {
	o, err := v.Object()
	if err != nil {
		d.reject(index, "", "must be a JSON object, got "+typeName(v))
		return
	}
	if raw != nil {
		if field, p := escapeProblem(raw); p != "" {
			d.reject(index, field, p)
			return
		}
	}
	d.item = jsonItem{rej: Reject{Index: index}}
	it := &d.item
	d.slab.begin()
	d.states.begin()
	o.Visit(d.visitTop)
	d.endEvent()
	if !it.failed {
		switch {
		case it.seen&hasMachine == 0:
			it.fail("machineId", "missing")
		case len(d.slab.current()) == 0 && d.states.n == 0:
			it.fail("", `no metrics: send numeric fields ("temp": 71.3), a "metrics" object or states ("state": "RUNNING")`)
		default:
			if it.seen&hasTime == 0 {
				var p string
				if it.ev.Time, p = d.stamp(it.ev.Machine); p != "" {
					it.fail("timestamp", p)
					break
				}
			}
			if p := checkTime(it.ev.Time, &d.opts); p != "" {
				it.fail("timestamp", p+unitHint(it.ev.Time, it.numericTime))
			}
		}
	}
	if it.failed {
		d.slab.abort()
		d.states.abort()
		d.addReject(it.rej)
		return
	}
	it.ev.Metrics = d.slab.commit()
	it.ev.States = d.states.commit()
	d.events = append(d.events, it.ev)
	d.emitted()
}

// unitHint explains a numeric timestamp that looks like seconds or
// nanoseconds rather than milliseconds.
func unitHint(ms int64, numeric bool) string {
	switch {
	case !numeric:
		return ""
	case ms > -1e11 && ms < 1e11:
		return "; timestamp numbers are epoch milliseconds and this looks like seconds"
	case ms > 1e14 || ms < -1e14:
		return "; timestamp numbers are epoch milliseconds and this looks like micro- or nanoseconds"
	}
	return ""
}

// topField handles one top-level field of the current item.
func (d *decoder) topField(k []byte, v *fastjson.Value) {
	it := &d.item
	if it.failed {
		return
	}
	switch string(k) {
	case "machineId":
		if !it.once(seenMachine, "machineId") {
			return
		}
		if v.Type() != fastjson.TypeString {
			it.fail("machineId", "must be a string, got "+typeName(v))
			return
		}
		b, _ := v.StringBytes()
		s, p := d.machine(b)
		if p != "" {
			it.fail("machineId", p)
			return
		}
		it.ev.Machine = s
		it.seen |= hasMachine
	case "timestamp":
		if it.once(seenTime, "timestamp") {
			d.timestamp(v)
		}
	case "id":
		if it.once(seenID, "id") {
			d.eventID(v)
		}
	case "seq":
		if it.once(seenSeq, "seq") {
			d.seq(v)
		}
	case "tags":
		if it.once(seenTags, "tags") {
			d.tags(v)
		}
	case "metrics":
		if !it.once(seenMetrics, "metrics") {
			return
		}
		switch v.Type() {
		case fastjson.TypeNull:
		case fastjson.TypeObject:
			o, _ := v.Object()
			o.Visit(d.visitNest)
		default:
			it.fail("metrics", "must be an object of numbers, got "+typeName(v))
		}
	case "states":
		if !it.once(seenStates, "states") {
			return
		}
		switch v.Type() {
		case fastjson.TypeNull:
		case fastjson.TypeObject:
			o, _ := v.Object()
			o.Visit(d.visitStates)
		default:
			it.fail("states", "must be an object of strings, got "+typeName(v))
		}
	default:
		d.metric(k, v, false)
	}
}

// nestedState handles one field of the current item's states object.
func (d *decoder) nestedState(k []byte, v *fastjson.Value) {
	if d.item.failed {
		return
	}
	if v.Type() != fastjson.TypeString {
		d.item.fail("states."+string(k), "must be a string, got "+typeName(v))
		return
	}
	d.state(k, v, "states."+string(k))
}

// state adds the string v as the state k of the current item; field names
// it in a reject.
func (d *decoder) state(k []byte, v *fastjson.Value, field string) {
	it := &d.item
	b, _ := v.StringBytes()
	if p := stateValueProblem(b); p != "" {
		it.fail(field, p)
		return
	}
	name, p := d.stateName(k)
	if p != "" {
		it.fail(field, p)
		return
	}
	if len(d.slab.current())+d.states.n >= d.opts.Limits.MaxMetricsPerEvent {
		it.fail("", fmt.Sprintf("has more than %d metrics and states", d.opts.Limits.MaxMetricsPerEvent))
		return
	}
	if d.states.has(name) || d.hasMetric(name) {
		it.fail(field, "given twice")
		return
	}
	d.states.add(telemetry.State{Name: name, Value: d.stateValue(b)})
}

// nestedMetric handles one field of the current item's metrics object.
func (d *decoder) nestedMetric(k []byte, v *fastjson.Value) {
	if !d.item.failed {
		d.metric(k, v, true)
	}
}

func (d *decoder) metric(k []byte, v *fastjson.Value, nested bool) {
	it := &d.item
	f, p := d.metricValue(v)
	if p != "" {
		if !nested && v.Type() == fastjson.TypeString {
			d.state(k, v, string(k))
			return
		}
		it.fail(metricField(k, nested), p)
		return
	}
	pos := len(d.slab.current())
	name, p := d.metricName(k, pos)
	if p != "" {
		it.fail(metricField(k, nested), p)
		return
	}
	if ns := d.states.n; pos+ns >= d.opts.Limits.MaxMetricsPerEvent {
		if ns > 0 {
			it.fail("", fmt.Sprintf("has more than %d metrics and states", d.opts.Limits.MaxMetricsPerEvent))
		} else {
			it.fail("", fmt.Sprintf("has more than %d metrics", d.opts.Limits.MaxMetricsPerEvent))
		}
		return
	}
	if d.duplicate(name) || (d.states.n > 0 && d.states.has(name)) {
		it.fail(metricField(k, it.seen&seenMetrics != 0), "given twice")
		return
	}
	d.slab.add(telemetry.Metric{Name: name, Value: f})
}

func metricField(k []byte, nested bool) string {
	if nested {
		return "metrics." + string(k)
	}
	return string(k)
}

// metricValue converts a JSON metric value, or says why it cannot.
func (d *decoder) metricValue(v *fastjson.Value) (float64, string) {
	switch v.Type() {
	case fastjson.TypeNumber:
		f, err := d.float(v)
		if err != nil {
			return 0, d.badNumber(v)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, "must be a finite number"
		}
		return f, ""
	case fastjson.TypeTrue:
		return 1, ""
	case fastjson.TypeFalse:
		return 0, ""
	case fastjson.TypeString:
		return 0, "must be a number, got string; put states in a \"states\" object, string labels in tags"
	default:
		return 0, "must be a number, got " + typeName(v)
	}
}

// badNumber words the reason for a number fastjson let through but cannot
// convert (it is lenient: "1-2" parses as a number token).
func (d *decoder) badNumber(v *fastjson.Value) string {
	return "must be a number, got malformed number " + quoteTrunc([]byte(d.rawNumber(v)))
}

// rawNumber returns the text of a number token.
func (d *decoder) rawNumber(v *fastjson.Value) string {
	d.numScratch = v.MarshalTo(d.numScratch[:0])
	return string(d.numScratch)
}

func (d *decoder) timestamp(v *fastjson.Value) {
	it := &d.item
	switch v.Type() {
	case fastjson.TypeNull:
		return
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		ms, ok := parseRFC3339(b)
		if !ok {
			it.fail("timestamp", `must be an RFC 3339 time like "2026-11-30T06:00:00Z" or epoch milliseconds, got `+quoteTrunc(b))
			return
		}
		it.ev.Time = ms
	case fastjson.TypeNumber:
		f, err := d.float(v)
		// Beyond ±2^63 ms the conversion to int64 is undefined.
		if err != nil || math.IsNaN(f) || f < -0x1p63 || f >= 0x1p63 {
			it.fail("timestamp", "must be epoch milliseconds within the int64 range, got "+quoteTrunc([]byte(d.rawNumber(v))))
			return
		}
		it.ev.Time = int64(math.Floor(f))
		it.numericTime = true
	default:
		it.fail("timestamp", "must be an RFC 3339 string or epoch milliseconds, got "+typeName(v))
		return
	}
	it.seen |= hasTime
}

func (d *decoder) eventID(v *fastjson.Value) {
	it := &d.item
	switch v.Type() {
	case fastjson.TypeNull:
	case fastjson.TypeString:
		b, _ := v.StringBytes()
		switch {
		case len(b) == 0:
			it.fail("id", "must not be empty (leave it out instead)")
		case len(b) > MaxEventIDLen:
			it.fail("id", fmt.Sprintf("is longer than %d bytes", MaxEventIDLen))
		default:
			if p := textProblem(b); p != "" {
				it.fail("id", p)
				return
			}
			it.ev.ID = d.keep(b)
		}
	default:
		it.fail("id", "must be a string, got "+typeName(v))
	}
}

func (d *decoder) seq(v *fastjson.Value) {
	it := &d.item
	switch v.Type() {
	case fastjson.TypeNull:
	case fastjson.TypeNumber:
		u, err := v.Uint64()
		if err != nil {
			it.fail("seq", "must be a non-negative integer, got "+quoteTrunc([]byte(d.rawNumber(v))))
			return
		}
		it.ev.Seq, it.ev.HasSeq = u, true
	default:
		it.fail("seq", "must be a non-negative integer, got "+typeName(v))
	}
}

func (d *decoder) tags(v *fastjson.Value) {
	it := &d.item
	switch v.Type() {
	case fastjson.TypeNull:
	case fastjson.TypeObject:
		o, _ := v.Object()
		n := o.Len()
		if n == 0 {
			return
		}
		if n > d.opts.Limits.MaxMetricsPerEvent {
			it.fail("tags", fmt.Sprintf("has more than %d tags", d.opts.Limits.MaxMetricsPerEvent))
			return
		}
		it.ev.Tags = make(map[string]string, n)
		o.Visit(d.visitTags)
	default:
		it.fail("tags", "must be an object of strings, got "+typeName(v))
	}
}

// tag handles one entry of the current item's tags object.
func (d *decoder) tag(k []byte, v *fastjson.Value) {
	it := &d.item
	if it.failed {
		return
	}
	if v.Type() != fastjson.TypeString {
		it.fail("tags."+string(k), "must be a string, got "+typeName(v))
		return
	}
	val, _ := v.StringBytes()
	if p := d.tagProblem(k, val); p != "" {
		it.fail("tags."+string(k), p)
		return
	}
	key := d.tagString(k)
	if _, dup := it.ev.Tags[key]; dup {
		it.fail("tags."+key, "given twice")
		return
	}
	it.ev.Tags[key] = d.tagString(val)
}

// tagProblem says why a tag cannot be kept, or "" when it can.
func (d *decoder) tagProblem(k, v []byte) string {
	switch {
	case len(k) == 0:
		return "tag name must not be empty"
	case len(k) > d.opts.Limits.MaxMetricNameLen:
		return fmt.Sprintf("tag name is longer than %d bytes", d.opts.Limits.MaxMetricNameLen)
	case len(v) > MaxTagValueLen:
		return fmt.Sprintf("is longer than %d bytes", MaxTagValueLen)
	}
	if p := textProblem(k); p != "" {
		return "tag name " + p
	}
	return textProblem(v)
}

func typeName(v *fastjson.Value) string {
	switch v.Type() {
	case fastjson.TypeTrue, fastjson.TypeFalse:
		return "boolean"
	default:
		return v.Type().String()
	}
}
