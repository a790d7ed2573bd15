package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// unlimited are options under which only the rules every configuration
// applies reject an event: the ones AppendEvent checks.
func unlimited() Options {
	o := testOptions()
	o.Limits = telemetry.Limits{MaxMetricsPerEvent: 1 << 20, MaxMachineIDLen: 1 << 20, MaxMetricNameLen: 1 << 20}
	o.MaxLineBytes = 0
	return o
}

// roundTrip encodes ev and decodes it back, as JSON and as an NDJSON line.
func roundTrip(t testing.TB, ev *telemetry.Event) []byte {
	t.Helper()
	b, err := AppendEvent(nil, ev)
	if err != nil {
		t.Fatalf("AppendEvent(%+v): %v", *ev, err)
	}
	if !json.Valid(b) {
		t.Fatalf("AppendEvent(%+v) = %s, not valid JSON", *ev, b)
	}
	if bytes.ContainsAny(b, "\n\r") {
		t.Fatalf("AppendEvent(%+v) = %q holds a line break, which would split an NDJSON line", *ev, b)
	}
	for _, dec := range []struct {
		name   string
		decode func([]byte, Options, []telemetry.Event) ([]telemetry.Event, []Reject, error)
		body   []byte
	}{
		{"DecodeJSON", DecodeJSON, b},
		{"DecodeNDJSON", DecodeNDJSON, append(append([]byte(nil), b...), '\n')},
	} {
		got, rejects, err := dec.decode(dec.body, unlimited(), nil)
		if err != nil || len(rejects) > 0 || len(got) != 1 {
			t.Fatalf("%s(%s): %d events, rejects %v, err %v", dec.name, dec.body, len(got), rejects, err)
		}
		if diff := cmp.Diff(got[0], *ev, cmpEvents); diff != "" {
			t.Fatalf("%s(AppendEvent) of %s (-got +want):\n%s", dec.name, b, diff)
		}
	}
	return b
}

func TestAppendEventRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		ev   telemetry.Event
	}{
		{"plain", ev("press-07", testNow, "temp", 71.3)},
		{"id seq tags", telemetry.Event{Machine: "m1", ID: "evt-1", Seq: 1<<64 - 1, HasSeq: true, Time: testNow,
			Tags:    map[string]string{"site": "lyon", "line": "l2", "note": `say "hi" \ bye`},
			Metrics: []telemetry.Metric{{Name: "a", Value: 1}, {Name: "b", Value: -2.5}}}},
		{"seq zero", telemetry.Event{Machine: "m1", Seq: 0, HasSeq: true, Time: 0, Metrics: []telemetry.Metric{{Name: "a", Value: 0}}}},
		{"reserved metric names", ev("m1", testNow, "id", 1, "seq", 2, "timestamp", 3, "tags", 4, "machineId", 5, "metrics", 6)},
		{"one reserved name among others", ev("m1", testNow, "temp", 1, "seq", 2, "rpm", 3)},
		{"extreme values", ev("m1", -1, "max", math.MaxFloat64, "tiny", math.SmallestNonzeroFloat64,
			"third", 1.0/3, "big", 1e21, "neg", -1e-7, "million", 1e6, "negzero", math.Copysign(0, -1))},
		{"extreme times", ev("m1", 1<<53, "a", 1)},
		{"min time", ev("m1", math.MinInt64, "a", 1)},
		{"large float time", ev("m1", 1<<62, "a", 1)},
		{"unicode", telemetry.Event{Machine: "presse-é-東京", ID: "ü\u2028", Time: testNow,
			Tags: map[string]string{"ort": "Köln ☃", "js": "a\u2029b", "<&>": "</script>"}, Metrics: []telemetry.Metric{{Name: "t", Value: 1}}}},
		{"many metrics", manyMetrics(100)},
		{"many tags", manyTags(40)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roundTrip(t, &tt.ev)
		})
	}
}

func manyMetrics(n int) telemetry.Event {
	e := telemetry.Event{Machine: "m", Time: testNow}
	for i := range n {
		e.Metrics = append(e.Metrics, telemetry.Metric{Name: "m" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Value: float64(i)})
	}
	return e
}

func manyTags(n int) telemetry.Event {
	e := ev("m", testNow, "x", 1)
	e.Tags = map[string]string{}
	for i := range n {
		e.Tags[strings.Repeat("k", i+1)] = strings.Repeat("v", n-i)
	}
	return e
}

func TestAppendEventFormat(t *testing.T) {
	tests := []struct {
		name string
		ev   telemetry.Event
		want string
	}{
		{"metrics at top level", telemetry.Event{Machine: "press-07", ID: "a1", Seq: 7, HasSeq: true, Time: 1764482400000,
			Tags: map[string]string{"line": "l1", "hall": "h2"}, Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}, {Name: "rpm", Value: 1480}}},
			`{"machineId":"press-07","timestamp":1764482400000,"id":"a1","seq":7,"tags":{"hall":"h2","line":"l1"},"temp":71.3,"rpm":1480}`},
		{"a reserved name nests all metrics", ev("m", 1, "temp", 1, "id", 2),
			`{"machineId":"m","timestamp":1,"metrics":{"temp":1,"id":2}}`},
		{"numbers as encoding/json writes them", ev("m", -5, "a", 1e6, "b", 1e-7, "c", 1e21, "d", 0.000001),
			`{"machineId":"m","timestamp":-5,"a":1000000,"b":1e-7,"c":1e+21,"d":0.000001}`},
		{"escapes", telemetry.Event{Machine: `m"\`, ID: "<i>\u2028", Time: 1, Tags: map[string]string{"k": "a\"b\\c\u2029é"}, Metrics: []telemetry.Metric{{Name: "v", Value: 1}}},
			`{"machineId":"m\"\\","timestamp":1,"id":"<i>\u2028","tags":{"k":"a\"b\\c\u2029é"},"v":1}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(roundTrip(t, &tt.ev)); got != tt.want {
				t.Errorf("AppendEvent =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestAppendEventRefuses(t *testing.T) {
	withTags := func(tags map[string]string) telemetry.Event {
		e := ev("m", testNow, "x", 1)
		e.Tags = tags
		return e
	}
	withID := func(id string) telemetry.Event {
		e := ev("m", testNow, "x", 1)
		e.ID = id
		return e
	}
	tests := []struct {
		name      string
		ev        telemetry.Event
		wantField string
	}{
		{"no machine", ev("", testNow, "x", 1), "machineId"},
		{"machine with a space", ev("press 07", testNow, "x", 1), "machineId"},
		{"machine with a slash", ev("a/b", testNow, "x", 1), "machineId"},
		{"machine not UTF-8", ev("m\xff", testNow, "x", 1), "machineId"},
		{"machine with U+2028", ev("m\u2028", testNow, "x", 1), "machineId"},
		{"no metrics", ev("m", testNow), ""},
		{"NaN", ev("m", testNow, "x", math.NaN()), "metrics.x"},
		{"+Inf", ev("m", testNow, "x", math.Inf(1)), "metrics.x"},
		{"-Inf", ev("m", testNow, "x", math.Inf(-1)), "metrics.x"},
		{"empty metric name", ev("m", testNow, "", 1), "metrics."},
		{"metric name with a quote", ev("m", testNow, `a"b`, 1), `metrics.a"b`},
		{"metric name not ASCII", ev("m", testNow, "température", 1), "metrics.température"},
		{"metric twice", ev("m", testNow, "x", 1, "y", 2, "x", 3), "metrics.x"},
		{"metric twice among many", func() telemetry.Event {
			e := manyMetrics(60)
			e.Metrics = append(e.Metrics, e.Metrics[59])
			return e
		}(), "metrics." + manyMetrics(60).Metrics[59].Name},
		{"time beyond 2^53", ev("m", 1<<53+1, "x", 1), "timestamp"},
		{"max int64 time", ev("m", math.MaxInt64, "x", 1), "timestamp"},
		{"id too long", withID(strings.Repeat("i", MaxEventIDLen+1)), "id"},
		{"id with a control character", withID("a\x01"), "id"},
		{"id not UTF-8", withID("\xc3"), "id"},
		{"empty tag name", withTags(map[string]string{"": "v"}), "tags."},
		{"tag value too long", withTags(map[string]string{"k": strings.Repeat("v", MaxTagValueLen+1)}), "tags.k"},
		{"tag value with a newline", withTags(map[string]string{"k": "a\nb"}), "tags.k"},
		{"tag name not UTF-8", withTags(map[string]string{"k\xff": "v"}), "tags.k\xff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("kept")
			got, err := AppendEvent(dst, &tt.ev)
			var ee *EventError
			if !errors.As(err, &ee) {
				t.Fatalf("AppendEvent error = %v, want an *EventError", err)
			}
			if ee.Field != tt.wantField || ee.Reason == "" || ee.Machine != tt.ev.Machine {
				t.Errorf("EventError = %+v, want field %q, a reason and machine %q", *ee, tt.wantField, tt.ev.Machine)
			}
			if string(got) != "kept" {
				t.Errorf("AppendEvent returned %q, want dst unchanged", got)
			}
			if !strings.Contains(err.Error(), ee.Reason) {
				t.Errorf("error %q does not say why (%q)", err, ee.Reason)
			}
		})
	}
}

func TestAppendEventAllocs(t *testing.T) {
	e := telemetry.Event{Machine: "press-07", ID: "press-07-12345", Seq: 12345, HasSeq: true, Time: testNow,
		Tags:    map[string]string{"line": "l1", "hall": "h2", "site": "lyon"},
		Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}, {Name: "rpm", Value: 1480}, {Name: "vibration", Value: 0.0231}}}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() {
		var err error
		if buf, err = AppendEvent(buf[:0], &e); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("AppendEvent into a large enough buffer: %v allocations, want 0", n)
	}
}

// FuzzEventRoundTrip checks the wire codec both ways. An event built from
// the fuzz input is either encoded and decoded back to itself, as JSON and
// as NDJSON, or refused for a reason the decoder has too. And every event
// DecodeJSON accepts from body encodes, and decodes back to itself.
func FuzzEventRoundTrip(f *testing.F) {
	f.Add([]byte(jsonSeeds[0]), "press-01", "press-01-1", uint64(1), true, int64(1740830400005), "temp", 48.2, "rpm", 1480.0, "kind", "press")
	f.Add([]byte(jsonSeeds[1]), `a"\`, "", uint64(0), false, int64(-1), "seq", math.Copysign(0, -1), "x", 1e-7, "", "\xff")
	f.Add([]byte(`{"machineId":"m","metrics":{"id":1,"seq":2e300},"ok":true,"tags":{"a":"\u2028"}}`), "m", "\u2028", uint64(1<<63), true, int64(1<<53+2), "a", 1e21, "a", 2.0, "k", "v\x00")
	f.Add([]byte(`[{"machineId":"a","v":-0.000001},{"machineId":"b","v":1e-320,"timestamp":-9223372036854775808}]`), "東京", "ü", uint64(7), true, int64(math.MinInt64), "b", 5e-324, "c", math.MaxFloat64, "ort", "Köln")
	for _, s := range jsonSeeds[2:] {
		f.Add([]byte(s), "m", "", uint64(0), false, int64(0), "a", 1.0, "b", 2.0, "", "")
	}
	f.Fuzz(func(t *testing.T, body []byte, machine, id string, seq uint64, hasSeq bool, ts int64, name1 string, v1 float64, name2 string, v2 float64, tagK, tagV string) {
		// An event built from the input.
		e := telemetry.Event{Machine: machine, ID: id, Time: ts, Metrics: []telemetry.Metric{{Name: name1, Value: v1}, {Name: name2, Value: v2}}}
		if hasSeq {
			e.Seq, e.HasSeq = seq, true
		}
		if tagK != "" || tagV != "" {
			e.Tags = map[string]string{tagK: tagV}
		}
		if seq&1 == 1 {
			// The tag read as a state too, or instead of the metrics.
			e.States = []telemetry.State{{Name: tagK, Value: tagV}}
			if seq&2 == 2 {
				e.Metrics = nil
			}
		}
		if b, err := AppendEvent([]byte("x"), &e); err == nil {
			roundTrip(t, &e)
			if b[0] != 'x' {
				t.Fatalf("AppendEvent overwrote dst: %q", b)
			}
		} else {
			// The decoder refuses it too (checkEvent is the test's own
			// account of what a decoder may produce).
			var ee *EventError
			if !errors.As(err, &ee) || ee.Reason == "" {
				t.Fatalf("AppendEvent error = %v, want an *EventError with a reason", err)
			}
			tagTooLong := len(tagV) > MaxTagValueLen || len(e.States) > 0 && len(tagV) > MaxStateValueLen
			if checkEvent(e, unlimited()) == "" && timeProblem(ts) == "" && !tagTooLong {
				t.Fatalf("AppendEvent refused %+v (%v), which a decoder may produce", e, err)
			}
		}

		// Every event the decoder accepts.
		opts := fuzzOptions()
		events, _, err := DecodeJSON(body, opts, nil)
		if err != nil || len(events) == 0 {
			return
		}
		var lines []byte
		for i := range events {
			var err error
			if lines, err = AppendEvent(lines, &events[i]); err != nil {
				t.Fatalf("AppendEvent(%+v) of an event DecodeJSON accepted: %v", events[i], err)
			}
			lines = append(lines, '\n')
		}
		got, rejects, err := DecodeNDJSON(lines, opts, nil)
		if err != nil || len(rejects) > 0 {
			t.Fatalf("DecodeNDJSON(%s): rejects %v, err %v", lines, rejects, err)
		}
		if diff := cmp.Diff(got, events, cmpEvents); diff != "" {
			t.Fatalf("decode(encode(decode(%q))) (-got +want):\n%s", body, diff)
		}
	})
}

// BenchmarkAppendEvent encodes the event a Kafka record of a gateway
// typically carries.
func BenchmarkAppendEvent(b *testing.B) {
	e := telemetry.Event{Machine: "press-07", Seq: 12345, HasSeq: true, Time: testNow,
		Tags:    map[string]string{"line": "l1"},
		Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}, {Name: "rpm", Value: 1480}, {Name: "vibration", Value: 0.0231}}}
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		buf, _ = AppendEvent(buf[:0], &e)
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
