package hub

import (
	"encoding/json"
	"github.com/twinline/twinline/internal/jsonenc"
	"strconv"

	"github.com/twinline/twinline/internal/telemetry"
)

// The bodies of the messages the hub publishes, encoded by hand (no
// reflection on the publish path) and, for a message no client wants when
// it is published, only on demand (lazyBody).

// Window is a window aggregate on the live stream: a closed, corrected or
// late window of one machine's metric. Its JSON is an element of a
// WindowsMessage's windows (the machine is the message's).
type Window struct {
	Machine string  `json:"-"`
	Metric  string  `json:"metric"`
	Start   int64   `json:"start"` // Unix ms
	Size    int64   `json:"size"`  // ms
	Kind    string  `json:"kind"`  // final, correction, late
	Count   int64   `json:"count"`
	Sum     float64 `json:"sum"`
	Min     float64 `json:"min"`
	Max     float64 `json:"max"`
	Avg     float64 `json:"avg"`
}

// Median is a metric's sliding median on the live stream, with the event
// time of the newest sample it covers.
type Median struct {
	Machine string
	Metric  string
	Median  float64
	Time    int64 // Unix ms
}

// samplesBody is a samples message not encoded yet: its own copy of the
// machine's samples.
type samplesBody struct {
	machine     string
	received    int64
	traceparent string
	samples     []telemetry.Sample
}

func (s *samplesBody) estimate() int {
	n := len(s.machine) + 64 + len(s.traceparent)
	for i := range s.samples {
		n += sampleSize(&s.samples[i])
	}
	return n
}

func (s *samplesBody) appendBody(b []byte) []byte {
	b = samplesHeader(b, s.machine, s.received, s.traceparent)
	for i := range s.samples {
		b = appendSample(b, &s.samples[i], i == 0)
	}
	return samplesTrailer(b)
}

// windowsBody is one machine's windows of one publish:
// "type":"windows","machine":M,"windows":[{…},…].
type windowsBody []Window

func (ws windowsBody) estimate() int {
	return len(ws[0].Machine) + 48 + len(ws)*(len(ws[0].Metric)+200)
}

func (ws windowsBody) appendBody(b []byte) []byte {
	b = appendType(b, TypeWindows)
	b = append(b, `,"machine":`...)
	b = jsonenc.AppendString(b, ws[0].Machine)
	b = append(b, `,"windows":[`...)
	for i := range ws {
		w := &ws[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"metric":`...)
		b = jsonenc.AppendString(b, w.Metric)
		b = append(b, `,"start":`...)
		b = strconv.AppendInt(b, w.Start, 10)
		b = append(b, `,"size":`...)
		b = strconv.AppendInt(b, w.Size, 10)
		b = append(b, `,"kind":`...)
		b = jsonenc.AppendString(b, w.Kind)
		b = append(b, `,"count":`...)
		b = strconv.AppendInt(b, w.Count, 10)
		b = append(b, `,"sum":`...)
		b = jsonenc.AppendFloat(b, w.Sum)
		b = append(b, `,"min":`...)
		b = jsonenc.AppendFloat(b, w.Min)
		b = append(b, `,"max":`...)
		b = jsonenc.AppendFloat(b, w.Max)
		b = append(b, `,"avg":`...)
		b = jsonenc.AppendFloat(b, w.Avg)
		b = append(b, '}')
	}
	return append(b, "]}\n\n"...)
}

// mediansBody is one machine's medians of one publish:
// "type":"median","machine":M,"data":{"metrics":{"temp":{"median":71.2,"t":…}}}.
type mediansBody []Median

func (ms mediansBody) estimate() int { return len(ms[0].Machine) + 64 + len(ms)*(len(ms[0].Metric)+56) }

func (ms mediansBody) appendBody(b []byte) []byte {
	b = appendType(b, TypeMedian)
	b = append(b, `,"machine":`...)
	b = jsonenc.AppendString(b, ms[0].Machine)
	b = append(b, `,"data":{"metrics":{`...)
	for i := range ms {
		m := &ms[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonenc.AppendString(b, m.Metric)
		b = append(b, `:{"median":`...)
		b = jsonenc.AppendFloat(b, m.Median)
		b = append(b, `,"t":`...)
		b = strconv.AppendInt(b, m.Time, 10)
		b = append(b, '}')
	}
	return append(b, "}}}\n\n"...)
}

// statusBody is "type":"status","machine":M,"data":{"status":S,
// "alarm":A,"lastSeen":T} (no lastSeen when 0).
type statusBody struct {
	machine, status string
	alarm           bool
	lastSeen        int64
}

func (s *statusBody) estimate() int { return len(s.machine) + len(s.status) + 96 }

func (s *statusBody) appendBody(b []byte) []byte {
	b = appendType(b, TypeStatus)
	b = append(b, `,"machine":`...)
	b = jsonenc.AppendString(b, s.machine)
	b = append(b, `,"data":{"status":`...)
	b = jsonenc.AppendString(b, s.status)
	b = append(b, `,"alarm":`...)
	b = strconv.AppendBool(b, s.alarm)
	if s.lastSeen != 0 {
		b = append(b, `,"lastSeen":`...)
		b = strconv.AppendInt(b, s.lastSeen, 10)
	}
	return append(b, "}}\n\n"...)
}

// eventBody is a publishEvent message whose data is encoded with
// encoding/json, on demand: rare events (alarms, notes) only.
type eventBody struct {
	machine string
	typ     MessageType
	data    any
}

func (e *eventBody) estimate() int { return len(e.typ) + len(e.machine) + 256 }

func (e *eventBody) appendBody(b []byte) []byte {
	data, err := json.Marshal(e.data)
	if err != nil {
		data = []byte("null") // checked when published
	}
	return appendEventBody(b, e.machine, e.typ, data)
}

// appendEventBody appends the body of a publishEvent message; data is
// already JSON.
func appendEventBody(b []byte, machine string, typ MessageType, data []byte) []byte {
	b = appendType(b, typ)
	if machine != "" {
		b = append(b, `,"machine":`...)
		b = jsonenc.AppendString(b, machine)
	}
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, "}\n\n"...)
}

// eventDraft encodes the body of a publishEvent message; data is already
// JSON.
func eventDraft(machine string, typ MessageType, data []byte) draft {
	d := newDraft(machine, len(typ)+len(machine)+len(data)+48)
	d.buf = appendEventBody(d.buf, machine, typ, data)
	return d
}

// appendType appends the "type" member a body starts with. A message
// type is plain ASCII: it needs no escaping.
func appendType(b []byte, t MessageType) []byte {
	b = append(b, `"type":"`...)
	b = append(b, t...)
	return append(b, '"')
}
