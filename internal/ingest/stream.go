package ingest

import (
	"bytes"
	"errors"
	"slices"

	"github.com/valyala/fastjson"

	"github.com/twinline/twinline/internal/telemetry"
)

// DefaultChunkEvents is the chunk size a Sink with Chunk 0 gets.
const DefaultChunkEvents = 8192

// Sink streams the events of a large body out of a decoder in chunks, so
// that decoding costs memory in proportion to a chunk, not to the body.
//
// With Options.Sink set, a decoder hands the valid events to Flush, Chunk
// at a time and the rest at the end, and returns none itself. Each chunk
// is a fresh slice the decoder never touches again. The chunks come in
// body order, and nothing is flushed from a body that then turns out to be
// not JSON at all: a JSON array is checked whole before its first chunk
// goes out (when the check fails, its events are held to the end, so the
// syntax error is still reported with nothing flushed). An error from
// Flush stops the decoder, which returns it.
//
// A Sink serves one decode call.
type Sink struct {
	// Chunk is the number of events per Flush; 0 means DefaultChunkEvents.
	Chunk int
	// Flush receives the chunks.
	Flush func(events []telemetry.Event) error
	// MaxRejects bounds the rejects a decoder returns (the first ones, by
	// index); 0 means no bound. Rejected counts them all.
	MaxRejects int

	// Flushed and Rejected are set by the decoder: the number of events
	// handed to Flush, and of rejects, including those not returned.
	Flushed, Rejected int
}

// streamState is the decoder's side of a Sink.
type streamState struct {
	sink *Sink
	// hold keeps events back until the end of the body.
	hold bool
	// check, if set, is asked once before the first chunk goes out
	// whether it may: a JSON array is validated only if it has more
	// than one chunk. A false answer sets hold.
	check func() bool
	// expect estimates the events of the body, to size the chunks.
	expect int
	// skip drops the next events decoded: the line-protocol slow path
	// decodes again what the fast path already flushed.
	skip int
	err  error
}

func (d *decoder) startStream(s *Sink) {
	d.stream = streamState{sink: s}
	if s != nil {
		if s.Chunk <= 0 {
			s.Chunk = DefaultChunkEvents
		}
		s.Flushed, s.Rejected = 0, 0
		d.events = nil
	}
}

// expectEvents sizes the next chunk for a body of about n events.
func (d *decoder) expectEvents(n int) {
	st := &d.stream
	if st.sink == nil {
		return
	}
	st.expect = n
	if cap(d.events) == 0 {
		d.events = make([]telemetry.Event, 0, min(st.sink.Chunk, max(n, 1)))
	}
}

// emitted is called after each event appended to d.events.
func (d *decoder) emitted() {
	st := &d.stream
	if st.skip > 0 {
		d.events = d.events[:len(d.events)-1]
		st.skip--
		return
	}
	if st.sink != nil && !st.hold && len(d.events) >= st.sink.Chunk {
		if st.check != nil {
			st.hold = !st.check()
			st.check = nil
			if st.hold {
				return
			}
		}
		d.flush()
	}
}

// flush hands the events decoded so far to the sink.
func (d *decoder) flush() {
	st := &d.stream
	if st.sink == nil || st.err != nil || len(d.events) == 0 {
		return
	}
	// Held events go out in chunks too.
	for ev := range slices.Chunk(d.events, st.sink.Chunk) {
		st.sink.Flushed += len(ev)
		if st.err = st.sink.Flush(ev); st.err != nil {
			break
		}
	}
	d.events = nil
	if left := st.expect - st.sink.Flushed; left > 0 {
		d.events = make([]telemetry.Event, 0, min(st.sink.Chunk, left))
	}
}

// stopped reports whether the sink refused a chunk.
func (d *decoder) stopped() bool { return d.stream.err != nil }

// finishStream flushes the rest and returns the sink's error.
func (d *decoder) finishStream() error {
	st := &d.stream
	if st.sink == nil {
		return nil
	}
	d.flush()
	st.sink.Rejected = d.rejected
	return st.err
}

// decodeJSONItems decodes the array body (starting with '['), one item at
// a time: each item is found by matching quotes and brackets and parsed on
// its own, so no tree of the whole body is built. Unless the whole body is
// valid JSON, the events are held until the end. The error is a
// *SyntaxError, as DecodeJSON's.
func (d *decoder) decodeJSONItems(body []byte, skip int) error {
	trimmed := body[skip:]
	d.stream.check = func() bool { return fastjson.ValidateBytes(trimmed) == nil }
	fail := func(err error) error {
		d.events = d.events[:0]
		return jsonSyntaxError(body, skip, err)
	}
	rest := skipJSONSpace(trimmed[1:])
	if len(rest) > 0 && rest[0] == ']' {
		if len(skipJSONSpace(rest[1:])) != 0 {
			return fail(errors.New("unexpected data after the array"))
		}
		return nil
	}
	first := true
	for index := 0; ; index++ {
		if d.stopped() {
			return nil
		}
		n, ok := jsonItemLen(rest)
		if !ok {
			return fail(errors.New("unterminated array"))
		}
		item := rest[:n]
		if len(item) == 1 && (item[0] == '-' || item[0] == '+') {
			// fastjson accepts a lone sign at the end of its input, not
			// before the ',' or ']' that ends it in the whole body.
			return fail(errors.New("lone sign"))
		}
		v, err := d.parser.ParseBytes(item)
		if err != nil {
			return fail(err)
		}
		if first {
			first = false
			items := len(trimmed)/max(n, 1) + 1
			d.expectEvents(items)
			if o, err := v.Object(); err == nil {
				d.slab.hint(estimateMetrics(o) * min(d.stream.sink.Chunk, items))
			}
		}
		var raw []byte
		if hasBadEscape(item) {
			raw = item
		}
		d.decodeItem(v, index, raw)
		rest = skipJSONSpace(rest[n:])
		switch {
		case len(rest) > 0 && rest[0] == ',':
			rest = skipJSONSpace(rest[1:])
		case len(rest) > 0 && rest[0] == ']':
			if len(skipJSONSpace(rest[1:])) != 0 {
				return fail(errors.New("unexpected data after the array"))
			}
			return nil
		default:
			return fail(errors.New("missing , or ] after an array item"))
		}
	}
}

// jsonItemLen returns the length of the array item b starts with: up to
// the ',' or ']' that ends it at depth 0, or just past its closing bracket.
// It matches quotes and brackets only; the parser judges the rest. ok is
// false when the item does not end.
func jsonItemLen(b []byte) (int, bool) {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			n, ok := jsonStringLen(b[i:])
			if !ok {
				return 0, false
			}
			i += n - 1
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i, true
			}
			depth--
			if depth == 0 {
				return i + 1, true
			}
		case ',':
			if depth == 0 {
				return i, true
			}
		}
	}
	return 0, false
}

// jsonStringLen returns the length of the JSON string b starts with,
// quotes included.
func jsonStringLen(b []byte) (int, bool) {
	for i := 1; ; {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return 0, false
		}
		i += j
		bs := 0
		for k := i - 1; k > 0 && b[k] == '\\'; k-- {
			bs++
		}
		if bs%2 == 0 {
			return i + 1, true
		}
		i++
	}
}

func skipJSONSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t' || b[0] == '\n' || b[0] == '\r') {
		b = b[1:]
	}
	return b
}
