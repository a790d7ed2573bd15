package hub

import (
	"encoding/json"
	"math"

	"github.com/valyala/fastjson"

	"github.com/twinline/twinline/internal/telemetry"
)

// decodeRemote reads the message of draft d, which arrived from the
// channel: it parses its JSON envelope for its type, which says whether
// conflated streams take it as it is (d.absorbed). For a message another
// replica published (remote), it decodes, once, what this replica needs
// of it: samples and status for the fleet state of conflated streams
// (appended to us, while one is connected), samples, medians and alarms
// for the OnRemote* callbacks. A message that does not parse is delivered as it
// is, counted and logged.
func (h *Hub) decodeRemote(d *draft, remote bool, us []fleetUpdate) []fleetUpdate {
	if len(d.buf) < headroom+2 {
		return us
	}
	// The body is the JSON after `{"seq":N,`: put the `{` in the headroom,
	// which finish overwrites later.
	d.buf[headroom-1] = '{'
	msg := d.buf[headroom-1 : len(d.buf)-2]
	v, err := h.bus.parser.ParseBytes(msg)
	if err != nil || v.Type() != fastjson.TypeObject {
		h.metrics.busErrors.Inc()
		h.logger.Warn("fan-out message is not a JSON object; delivered as it is", "machine", d.machine, "err", err)
		return us
	}
	typ := MessageType(v.GetStringBytes("type"))
	d.absorbed = typ.absorbed()
	if typ == TypeSamples {
		d.ingest = v.GetInt64("ingestTs") // for the delivery metrics
		if tp := v.GetStringBytes("traceparent"); tp != nil {
			d.trace = traceID(string(tp)) // its exemplar
		}
	}
	if !remote {
		return us
	}
	conflating := h.conflating.Load()
	switch typ {
	case TypeSamples:
		if h.opts.OnRemoteSamples == nil && !conflating {
			return us
		}
		ingestTs, samples := decodeSamples(d.machine, v)
		if conflating {
			for i := range samples {
				s := &samples[i]
				us = append(us, fleetUpdate{Machine: d.machine, Metric: s.Metric, Value: s.Value, TS: s.Time, Seen: ingestTs})
			}
		}
		if h.opts.OnRemoteSamples != nil && len(samples) > 0 {
			h.opts.OnRemoteSamples(d.machine, ingestTs, samples)
		}
	case TypeStatus:
		if !conflating {
			return us
		}
		data := v.Get("data")
		if st := string(data.GetStringBytes("status")); st != "" {
			us = append(us, fleetUpdate{Machine: d.machine, Status: st, Alarm: data.GetBool("alarm"), Seen: data.GetInt64("lastSeen")})
		}
	case TypeMedian:
		if h.opts.OnRemoteMedians == nil {
			return us
		}
		var ms []Median
		v.Get("data", "metrics").GetObject().Visit(func(metric []byte, x *fastjson.Value) {
			if m := x.Get("median"); m != nil && m.Type() == fastjson.TypeNumber {
				ms = append(ms, Median{Machine: d.machine, Metric: string(metric), Median: m.GetFloat64(), Time: x.GetInt64("t")})
			}
		})
		if len(ms) > 0 {
			h.opts.OnRemoteMedians(ms)
		}
	case TypeState:
		if h.opts.OnRemoteState == nil {
			return us
		}
		data := v.Get("data")
		name, value := data.GetStringBytes("name"), data.GetStringBytes("value")
		if len(name) == 0 || len(value) == 0 {
			h.metrics.busErrors.Inc()
			h.logger.Warn("fan-out state message does not decode", "machine", d.machine)
			return us
		}
		h.opts.OnRemoteState(d.machine, StateData{Name: string(name), Value: string(value), TS: data.GetInt64("ts")})
	case TypeAlarm:
		if h.opts.OnRemoteAlarm == nil {
			return us
		}
		var m AlarmMessage
		if err := json.Unmarshal(msg, &m); err != nil || m.Data.ID == "" {
			h.metrics.busErrors.Inc()
			h.logger.Warn("fan-out alarm message does not decode", "machine", d.machine, "err", err)
			return us
		}
		h.opts.OnRemoteAlarm(m.Data)
	}
	return us
}

// decodeSamples decodes the samples of a samples message v of machine
// (SamplesMessage): its ingest time and its samples, a null value as NaN.
// A sample without a metric is skipped. A message's metric names are
// made into strings once each (a message has few distinct ones).
func decodeSamples(machine string, v *fastjson.Value) (int64, []telemetry.Sample) {
	arr := v.GetArray("samples")
	samples := make([]telemetry.Sample, 0, len(arr))
	var names []string
	for _, s := range arr {
		metric := s.GetStringBytes("metric")
		if len(metric) == 0 {
			continue
		}
		value := math.NaN()
		if x := s.Get("value"); x != nil && x.Type() == fastjson.TypeNumber {
			value = x.GetFloat64()
		}
		samples = append(samples, telemetry.Sample{Machine: machine, Metric: intern(&names, metric), Time: s.GetInt64("ts"), Value: value})
	}
	return v.GetInt64("ingestTs"), samples
}

// intern returns b as one of names, adding it if it is new; it looks at
// the last 16 names only.
func intern(names *[]string, b []byte) string {
	ns := *names
	for i := len(ns) - 1; i >= 0 && i >= len(ns)-16; i-- {
		if ns[i] == string(b) {
			return ns[i]
		}
	}
	s := string(b)
	*names = append(ns, s)
	return s
}
