package hub

import (
	"strconv"
	"time"

	"github.com/twinline/twinline/internal/jsonenc"
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
	// size is what the message counts for in the queues and the replay
	// ring: the length of its frame, or for a message not encoded yet the
	// estimate its buffer will be made with.
	size int
	// absorbed says a conflated client does not take the message: its
	// content reaches it through the fleet state (samples, status,
	// windows, medians).
	absorbed bool
	// lazy, while frame is nil, encodes the body on demand (ensure).
	lazy lazyBody
	// at is when the hub took the message (Hub.now); ingest, for a samples
	// message, its ingestTs (Unix ms): what the delivery metrics measure
	// from.
	at, ingest int64
	// trace is the trace id (hex) of a traced samples message, for the
	// delivery histogram's exemplar; "" otherwise.
	trace string
}

// lazyBody is the content of a message no client wanted when it was
// published: it is encoded only if one does later (a resume from the
// ring).
type lazyBody interface {
	// appendBody appends the JSON body after its opening `{"seq":N,`, and
	// "\n\n".
	appendBody(b []byte) []byte
	// estimate is the size of the body, give or take.
	estimate() int
}

// ensure encodes m if it is not yet. It is called under the hub's lock,
// before m is handed to any client, so that writers only read frame.
func (m *message) ensure() {
	if m.frame != nil || m.lazy == nil {
		return
	}
	d := newDraft(m.machine, m.lazy.estimate())
	d.buf = m.lazy.appendBody(d.buf)
	m.frame, m.jsonOff = d.frameWith(m.seq)
	m.lazy = nil
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
	// lazy, when buf is nil, is the body to encode on demand.
	lazy     lazyBody
	absorbed bool
	// ingest is a samples message's ingestTs (Unix ms), 0 for others.
	ingest int64
	trace  string // the trace id of a traced samples draft (message.trace)
}

// encode encodes a lazy draft now (to publish it through Redis).
func (d *draft) encode() {
	if d.buf == nil && d.lazy != nil {
		d.buf = d.lazy.appendBody(newDraft(d.machine, d.lazy.estimate()).buf)
		d.lazy = nil
	}
}

func newDraft(machine string, size int) draft {
	b := make([]byte, headroom, headroom+size)
	return draft{machine: machine, buf: b}
}

// finish writes the seq prefix into the headroom and makes m the message;
// a lazy draft stays unencoded.
func (d draft) finish(seq uint64, m *message) *message {
	if d.buf == nil {
		*m = message{seq: seq, id: true, machine: d.machine, lazy: d.lazy, size: headroom + d.lazy.estimate(), absorbed: d.absorbed, ingest: d.ingest, trace: d.trace}
		return m
	}
	frame, off := d.frameWith(seq)
	*m = message{seq: seq, id: true, machine: d.machine, frame: frame, jsonOff: off, size: len(frame), absorbed: d.absorbed, ingest: d.ingest, trace: d.trace}
	return m
}

// frameWith writes the seq prefix into the headroom and returns the frame
// and the offset of its JSON.
func (d draft) frameWith(seq uint64) ([]byte, int) {
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
	return d.buf[start:], n
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
	return &message{seq: seq, id: id, frame: b, jsonOff: off, size: len(b)}
}

// helloMessage opens every stream: the hub's latest seq, the heartbeat
// interval and the bounds of the client's queue; conflateMs for a
// conflated stream.
func helloMessage(seq uint64, o Options, conflate time.Duration) *message {
	b := make([]byte, 0, 160)
	b = append(b, '{')
	b = appendType(b, TypeHello)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"heartbeatMs":`...)
	b = strconv.AppendInt(b, o.Heartbeat.Milliseconds(), 10)
	b = append(b, `,"queue":`...)
	b = strconv.AppendInt(b, int64(o.QueueSize), 10)
	b = append(b, `,"queueBytes":`...)
	b = strconv.AppendInt(b, int64(o.MaxQueueBytes), 10)
	b = append(b, `,"maxLagMs":`...)
	b = strconv.AppendInt(b, o.MaxLag.Milliseconds(), 10)
	if conflate > 0 {
		b = append(b, `,"conflateMs":`...)
		b = strconv.AppendInt(b, conflate.Milliseconds(), 10)
	}
	b = append(b, '}')
	return controlMessage(seq, false, b)
}

func heartbeatMessage(seq uint64, ts int64) *message {
	b := make([]byte, 0, 80)
	b = append(b, '{')
	b = appendType(b, TypeHeartbeat)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '}')
	return controlMessage(seq, true, b)
}

func resetMessage(seq uint64, reason string) *message {
	b := make([]byte, 0, 80)
	b = append(b, '{')
	b = appendType(b, TypeReset)
	b = append(b, `,"reason":`...)
	b = jsonenc.AppendString(b, reason)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, '}')
	return controlMessage(seq, true, b)
}

func reconnectMessage(cursor uint64, reason string, retryMs int64) *message {
	b := make([]byte, 0, 96)
	b = append(b, '{')
	b = appendType(b, TypeReconnect)
	b = append(b, `,"reason":`...)
	b = jsonenc.AppendString(b, reason)
	b = append(b, `,"cursor":`...)
	b = strconv.AppendUint(b, cursor, 10)
	b = append(b, `,"retryMs":`...)
	b = strconv.AppendInt(b, retryMs, 10)
	b = append(b, '}')
	return controlMessage(cursor, false, b)
}

// sampleSize estimates the encoded size of one sample.
func sampleSize(s *telemetry.Sample) int { return len(s.Metric) + 64 }

// samplesHeader starts the body of a samples message; traceparent ""
// leaves the member out.
func samplesHeader(b []byte, machine string, ingestTs int64, traceparent string) []byte {
	b = appendType(b, TypeSamples)
	b = append(b, `,"machine":`...)
	b = jsonenc.AppendString(b, machine)
	b = append(b, `,"ingestTs":`...)
	b = strconv.AppendInt(b, ingestTs, 10)
	if traceparent != "" {
		b = append(b, `,"traceparent":`...)
		b = jsonenc.AppendString(b, traceparent)
	}
	return append(b, `,"samples":[`...)
}

// appendSample encodes one sample; first says it is the message's first.
func appendSample(b []byte, s *telemetry.Sample, first bool) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, `{"metric":`...)
	b = jsonenc.AppendString(b, s.Metric)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, s.Time, 10)
	b = append(b, `,"value":`...)
	b = jsonenc.AppendFloat(b, s.Value)
	return append(b, '}')
}

// samplesTrailer ends the body of a samples message.
func samplesTrailer(b []byte) []byte { return append(b, "]}\n\n"...) }

// traceID returns the trace id of a W3C traceparent (version-traceid-
// parentid-flags), a substring of it, or "" when it is not one.
func traceID(traceparent string) string {
	if len(traceparent) < 55 || traceparent[2] != '-' || traceparent[35] != '-' {
		return ""
	}
	return traceparent[3:35]
}
