package ingest

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/twinline/twinline/internal/jsonenc"
	"github.com/twinline/twinline/internal/telemetry"
)

// EventError is an event AppendEvent refuses because DecodeJSON would
// refuse it (or would read it back as another event).
type EventError struct {
	// Machine is the event's machine id, as it was.
	Machine string
	// Field and Reason say what is wrong, as a Reject does: "machineId",
	// "timestamp", "id", "tags.<key>", "metrics.<name>", or "" for the
	// whole event.
	Field, Reason string
}

func (e *EventError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("invalid event of machine %q: %s", e.Machine, e.Reason)
	}
	return fmt.Sprintf("invalid event of machine %q: %s: %s", e.Machine, e.Field, e.Reason)
}

// AppendEvent appends ev to dst as one compact JSON object, the wire form
// of an event that Kafka records, the simulator and the bench share, and
// that DecodeJSON (and DecodeNDJSON, one per line) reads back to ev:
//
//	{"machineId":"press-07","timestamp":1764482400000,"id":"a1","seq":7,"tags":{"line":"l1"},"temp":71.3,"rpm":1480}
//
// The timestamp is epoch milliseconds; id appears when not empty, seq when
// HasSeq, tags when there are any, in key order. Metrics follow as
// top-level fields, in ev's order; when one of them is named like a
// reserved field (machineId, timestamp, id, seq, tags, metrics, states),
// all of them go in a "metrics" object instead. States, if any, go last in
// a "states" object, in ev's order. Strings are written by
// jsonenc.AppendString and numbers by jsonenc.AppendFloat, as encoding/json
// writes them.
//
// It refuses, with an *EventError and dst as it was, an event that every
// decoder configuration refuses: a machine id that is empty or breaks the
// machine-id rules, no metrics and no states, an invalid or repeated metric
// or state name, a non-finite value, an invalid state value, an id longer than MaxEventIDLen, a tag with an empty
// key or a value longer than MaxTagValueLen, text that is not valid UTF-8
// or holds control characters, and a timestamp no JSON number carries
// exactly (beyond ±2^53 ms, unless a float64 holds it). It does not apply
// the configurable Limits (lengths, metrics per event) nor the accepted
// time range: the reader checks those against its own Options.
//
// It allocates only to grow dst, and for an event with more than 16 tags
// or 32 metrics.
func AppendEvent(dst []byte, ev *telemetry.Event) ([]byte, error) {
	nested, field, reason := eventProblem(ev)
	if reason != "" {
		return dst, &EventError{Machine: ev.Machine, Field: field, Reason: reason}
	}
	b := append(dst, `{"machineId":`...)
	b = jsonenc.AppendString(b, ev.Machine)
	b = append(b, `,"timestamp":`...)
	b = strconv.AppendInt(b, ev.Time, 10)
	if ev.ID != "" {
		b = append(b, `,"id":`...)
		b = jsonenc.AppendString(b, ev.ID)
	}
	if ev.HasSeq {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, ev.Seq, 10)
	}
	if len(ev.Tags) > 0 {
		if b, field, reason = appendTags(b, ev.Tags); reason != "" {
			return dst, &EventError{Machine: ev.Machine, Field: field, Reason: reason}
		}
	}
	if len(ev.Metrics) > 0 {
		if nested {
			b = append(b, `,"metrics":{`...)
		} else {
			b = append(b, ',')
		}
		for i, m := range ev.Metrics {
			if i > 0 {
				b = append(b, ',')
			}
			// A valid metric name needs no escaping.
			b = append(b, '"')
			b = append(b, m.Name...)
			b = append(b, '"', ':')
			b = jsonenc.AppendFloat(b, m.Value)
		}
		if nested {
			b = append(b, '}')
		}
	}
	if len(ev.States) > 0 {
		b = append(b, `,"states":{`...)
		for i, st := range ev.States {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = append(b, st.Name...)
			b = append(b, '"', ':')
			b = jsonenc.AppendString(b, st.Value)
		}
		b = append(b, '}')
	}
	return append(b, '}'), nil
}

// maxSmallTags is how many tags appendTags sorts without allocating.
const maxSmallTags = 16

// tag is one tag of an event being encoded.
type tag struct{ k, v string }

// appendTags appends `,"tags":{…}` with the tags in key order, or says why
// a tag cannot be encoded (field, reason).
func appendTags(b []byte, tags map[string]string) (_ []byte, field, reason string) {
	var small [maxSmallTags]tag
	sorted := small[:0]
	for k, v := range tags {
		if p := encodedTagProblem(k, v); p != "" {
			return b, "tags." + k, p
		}
		sorted = append(sorted, tag{k, v})
	}
	slices.SortFunc(sorted, func(a, b tag) int { return strings.Compare(a.k, b.k) })
	b = append(b, `,"tags":{`...)
	for i, t := range sorted {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonenc.AppendString(b, t.k)
		b = append(b, ':')
		b = jsonenc.AppendString(b, t.v)
	}
	return append(b, '}'), "", ""
}

// maxLinearDup is the number of metrics up to which eventProblem looks for a
// repeated name by comparing each with those before it.
const maxLinearDup = 32

// eventProblem returns why AppendEvent must refuse ev (reason != ""), and
// otherwise whether its metrics go in a "metrics" object. appendTags checks
// the tags, as it meets them.
func eventProblem(ev *telemetry.Event) (nested bool, field, reason string) {
	if p := machineIDProblem(bytesOf(ev.Machine), math.MaxInt); p != "" {
		return false, "machineId", p
	}
	if p := timeProblem(ev.Time); p != "" {
		return false, "timestamp", p
	}
	if ev.ID != "" {
		if len(ev.ID) > MaxEventIDLen {
			return false, "id", fmt.Sprintf("is longer than %d bytes", MaxEventIDLen)
		}
		if p := textProblem(bytesOf(ev.ID)); p != "" {
			return false, "id", p
		}
	}
	if len(ev.Metrics) == 0 && len(ev.States) == 0 {
		return false, "", "no metrics"
	}
	if len(ev.States) > 0 {
		if field, reason := statesProblem(ev); reason != "" {
			return false, field, reason
		}
	}
	var seen map[string]struct{}
	if len(ev.Metrics) > maxLinearDup {
		seen = make(map[string]struct{}, len(ev.Metrics))
	}
	for i, m := range ev.Metrics {
		if p := metricNameProblem(bytesOf(m.Name), math.MaxInt); p != "" {
			return false, "metrics." + m.Name, p
		}
		if math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
			return false, "metrics." + m.Name, fmt.Sprintf("must be a finite number, got %v", m.Value)
		}
		if seen != nil {
			if _, dup := seen[m.Name]; dup {
				return false, "metrics." + m.Name, "given twice"
			}
			seen[m.Name] = struct{}{}
		} else {
			for _, prev := range ev.Metrics[:i] {
				if prev.Name == m.Name {
					return false, "metrics." + m.Name, "given twice"
				}
			}
		}
		if !nested && reservedField(m.Name) {
			nested = true
		}
	}
	return nested, "", ""
}

// statesProblem says why the states of ev cannot be encoded (field,
// reason), or "".
func statesProblem(ev *telemetry.Event) (field, reason string) {
	for i, st := range ev.States {
		field := "states." + st.Name
		if p := metricNameProblem(bytesOf(st.Name), math.MaxInt); p != "" {
			return field, "state " + strings.TrimPrefix(p, "metric ")
		}
		if p := stateValueProblem(bytesOf(st.Value)); p != "" {
			return field, p
		}
		for _, prev := range ev.States[:i] {
			if prev.Name == st.Name {
				return field, "given twice"
			}
		}
		for _, m := range ev.Metrics {
			if m.Name == st.Name {
				return field, "given twice"
			}
		}
	}
	return "", ""
}

// reservedField reports whether name is a top-level field of an event
// object that is not a metric.
func reservedField(name string) bool {
	switch name {
	case "machineId", "timestamp", "id", "seq", "tags", "metrics", "states":
		return true
	}
	return false
}

// timeProblem says why ms cannot be written as a timestamp number that
// DecodeJSON reads back exactly (it reads numbers as float64), or "".
func timeProblem(ms int64) string {
	const exact = 1 << 53 // every integer up to here is a float64
	if ms >= -exact && ms <= exact {
		return ""
	}
	if f := float64(ms); f < 0x1p63 && int64(f) == ms {
		return ""
	}
	return fmt.Sprintf("%d ms is beyond ±2^53 and not a float64, so no JSON number carries it exactly", ms)
}

// encodedTagProblem says why the tag k=v cannot be encoded, or "".
func encodedTagProblem(k, v string) string {
	switch {
	case k == "":
		return "tag name must not be empty"
	case len(v) > MaxTagValueLen:
		return fmt.Sprintf("is longer than %d bytes", MaxTagValueLen)
	}
	if p := textProblem(bytesOf(k)); p != "" {
		return "tag name " + p
	}
	return textProblem(bytesOf(v))
}

// bytesOf returns the bytes of s without copying them, for the validation
// functions, which take []byte and only read it.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
