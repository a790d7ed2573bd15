package hub

import (
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/twinline/twinline/internal/telemetry"
)

// message is one encoded stream message, shared read-only by every client
// it goes to and by the replay ring. frame holds the whole SSE event
// ("id: N\ndata: JSON\n\n", or "data: JSON\n\n" without an id); the JSON a
// WebSocket frame carries is a sub-slice of it, so both transports write it
// without copying or re-encoding.
type message struct {
	// seq is the message's seq; for a message without an SSE id it is the
	// hub's latest seq when the message was made (the cursor it stands for),
	// or 0 when it stands for none.
	seq uint64
	// id says the SSE frame carries "id: seq" and the message, once written,
	// moves the client's cursor to seq.
	id bool
	// machine routes the message; "" reaches all-machines subscribers only.
	machine string
	frame   []byte
	jsonOff int
}

// json returns the message as JSON, without the SSE framing.
func (m *message) json() []byte { return m.frame[m.jsonOff : len(m.frame)-2] }

// headroom is the space reserved in front of a published message's body for
// "id: <seq>\ndata: {\"seq\":<seq>," (at most 59 bytes), written once the
// seq is known, under the hub lock, without copying the body.
const headroom = 64

// draft is a published message whose seq is not assigned yet: headroom
// bytes, then the JSON body after its opening `{"seq":N,`, then "\n\n".
type draft struct {
	machine string
	buf     []byte
}

func newDraft(machine string, size int) draft {
	b := make([]byte, headroom, headroom+size)
	return draft{machine: machine, buf: b}
}

// finish writes the seq prefix into the headroom and makes m the message.
func (d draft) finish(seq uint64, m *message) *message {
	var digits [20]byte
	s := strconv.AppendUint(digits[:0], seq, 10)
	n := len("id: ") + len(s) + len("\ndata: ")
	start := headroom - n - len(`{"seq":`) - len(s) - len(",")
	p := d.buf[start:headroom]
	i := copy(p, "id: ")
	i += copy(p[i:], s)
	i += copy(p[i:], "\ndata: ")
	i += copy(p[i:], `{"seq":`)
	i += copy(p[i:], s)
	p[i] = ','
	*m = message{seq: seq, id: true, machine: d.machine, frame: d.buf[start:], jsonOff: n}
	return m
}

// controlMessage frames a JSON object built by the caller as an SSE event;
// id says whether the event carries "id: seq".
func controlMessage(seq uint64, id bool, body []byte) *message {
	b := make([]byte, 0, len(body)+40)
	if id {
		b = append(b, "id: "...)
		b = strconv.AppendUint(b, seq, 10)
		b = append(b, '\n')
	}
	b = append(b, "data: "...)
	off := len(b)
	b = append(b, body...)
	b = append(b, "\n\n"...)
	return &message{seq: seq, id: id, frame: b, jsonOff: off}
}

func helloMessage(seq uint64, heartbeatMs int64, queue int) *message {
	b := make([]byte, 0, 96)
	b = append(b, `{"type":"hello","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"heartbeatMs":`...)
	b = strconv.AppendInt(b, heartbeatMs, 10)
	b = append(b, `,"queue":`...)
	b = strconv.AppendInt(b, int64(queue), 10)
	b = append(b, '}')
	return controlMessage(seq, false, b)
}

func heartbeatMessage(seq uint64, ts int64) *message {
	b := make([]byte, 0, 80)
	b = append(b, `{"type":"heartbeat","ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '}')
	return controlMessage(seq, true, b)
}

func resetMessage(seq uint64, reason string) *message {
	b := make([]byte, 0, 80)
	b = append(b, `{"type":"reset","reason":`...)
	b = appendString(b, reason)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '}')
	return controlMessage(seq, true, b)
}

func reconnectMessage(cursor uint64, reason string, retryMs int64) *message {
	b := make([]byte, 0, 96)
	b = append(b, `{"type":"reconnect","reason":`...)
	b = appendString(b, reason)
	b = append(b, `,"cursor":`...)
	b = strconv.AppendUint(b, cursor, 10)
	b = append(b, `,"retryMs":`...)
	b = strconv.AppendInt(b, retryMs, 10)
	b = append(b, '}')
	return controlMessage(cursor, false, b)
}

// eventDraft encodes the body of a PublishEvent message; data is already
// JSON.
func eventDraft(machine, typ string, data []byte) draft {
	d := newDraft(machine, len(typ)+len(machine)+len(data)+48)
	b := d.buf
	b = append(b, `"type":`...)
	b = appendString(b, typ)
	if machine != "" {
		b = append(b, `,"machine":`...)
		b = appendString(b, machine)
	}
	b = append(b, `,"data":`...)
	b = append(b, data...)
	b = append(b, "}\n\n"...)
	d.buf = b
	return d
}

// sampleSize estimates the encoded size of one sample.
func sampleSize(s *telemetry.Sample) int { return len(s.Metric) + 64 }

// samplesHeader starts the body of a samples message.
func samplesHeader(b []byte, machine string, ingestTs int64) []byte {
	b = append(b, `"type":"samples","machine":`...)
	b = appendString(b, machine)
	b = append(b, `,"ingestTs":`...)
	b = strconv.AppendInt(b, ingestTs, 10)
	return append(b, `,"samples":[`...)
}

// appendSample encodes one sample; first says it is the message's first.
func appendSample(b []byte, s *telemetry.Sample, first bool) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, `{"metric":`...)
	b = appendString(b, s.Metric)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, s.Time, 10)
	b = append(b, `,"value":`...)
	b = appendFloat(b, s.Value)
	return append(b, '}')
}

// samplesTrailer ends the body of a samples message.
func samplesTrailer(b []byte) []byte { return append(b, "]}\n\n"...) }

// appendFloat encodes v the way encoding/json does, and a value JSON cannot
// carry (NaN, ±Inf) as null.
func appendFloat(b []byte, v float64) []byte {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return append(b, "null"...)
	}
	abs := math.Abs(v)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, v, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Like encoding/json it escapes
// control characters, U+2028 and U+2029, and replaces invalid UTF-8 with
// U+FFFD; unlike it, it leaves <, > and & alone (the stream is not HTML).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
