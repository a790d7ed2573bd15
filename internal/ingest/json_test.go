package ingest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

func TestDecodeJSON(t *testing.T) {
	t0 := msOf(t, "2026-11-30T06:00:00Z")
	withTags := ev("m1", testNow, "temp", 1)
	withTags.ID, withTags.Seq, withTags.HasSeq = "evt-1", 42, true
	withTags.Tags = map[string]string{"site": "plant-1", "line": "A"}
	maxSeq := ev("m1", testNow, "x", 1)
	maxSeq.Seq, maxSeq.HasSeq = 18446744073709551615, true
	zeroSeq := ev("m1", testNow, "x", 1)
	zeroSeq.HasSeq = true

	tests := []struct {
		name string
		body string
		want []telemetry.Event
	}{
		{"object", `{"machineId":"press-07","timestamp":"2026-11-30T06:00:00Z","temp":71.3}`,
			[]telemetry.Event{ev("press-07", t0, "temp", 71.3)}},
		{"array", `[{"machineId":"a","temp":1},{"machineId":"b","temp":2,"rpm":1200}]`,
			[]telemetry.Event{ev("a", testNow, "temp", 1), ev("b", testNow, "temp", 2, "rpm", 1200)}},
		{"empty array", `[]`, nil},
		{"metrics object", `{"machineId":"m1","metrics":{"temp":70,"rpm":1200}}`,
			[]telemetry.Event{ev("m1", testNow, "temp", 70, "rpm", 1200)}},
		{"metrics merged in document order", `{"machineId":"m1","temp":1,"metrics":{"rpm":2},"vib":3}`,
			[]telemetry.Event{ev("m1", testNow, "temp", 1, "rpm", 2, "vib", 3)}},
		{"epoch ms integer", `{"machineId":"m1","timestamp":1796018400123,"x":1}`,
			[]telemetry.Event{ev("m1", t0+123, "x", 1)}},
		{"epoch ms fraction is floored", `{"machineId":"m1","timestamp":1796018400123.9,"x":1}`,
			[]telemetry.Event{ev("m1", t0+123, "x", 1)}},
		{"epoch ms negative fraction is floored", `{"machineId":"m1","timestamp":-1.5,"x":1}`,
			[]telemetry.Event{ev("m1", -2, "x", 1)}},
		{"epoch ms exponent", `{"machineId":"m1","timestamp":1.7960184e12,"x":1}`,
			[]telemetry.Event{ev("m1", 1796018400000, "x", 1)}},
		{"RFC 3339 with offset", `{"machineId":"m1","timestamp":"2026-11-30T07:30:00+01:30","x":1}`,
			[]telemetry.Event{ev("m1", t0, "x", 1)}},
		{"RFC 3339 with negative offset", `{"machineId":"m1","timestamp":"2026-11-30T01:00:00-05:00","x":1}`,
			[]telemetry.Event{ev("m1", t0, "x", 1)}},
		{"RFC 3339 nanoseconds truncated", `{"machineId":"m1","timestamp":"2026-11-30T06:00:00.123999999Z","x":1}`,
			[]telemetry.Event{ev("m1", t0+123, "x", 1)}},
		{"RFC 3339 one fraction digit", `{"machineId":"m1","timestamp":"2026-11-30T06:00:00.5Z","x":1}`,
			[]telemetry.Event{ev("m1", t0+500, "x", 1)}},
		{"RFC 3339 lower case and space", `[{"machineId":"m1","timestamp":"2026-11-30t06:00:00z","x":1},{"machineId":"m1","timestamp":"2026-11-30 06:00:00Z","x":2}]`,
			[]telemetry.Event{ev("m1", t0, "x", 1), ev("m1", t0, "x", 2)}},
		{"RFC 3339 leap day", `{"machineId":"m1","timestamp":"2028-02-29T00:00:00Z","x":1}`,
			[]telemetry.Event{ev("m1", msOf(t, "2028-02-29T00:00:00Z"), "x", 1)}},
		{"id seq tags", `{"machineId":"m1","id":"evt-1","seq":42,"tags":{"site":"plant-1","line":"A"},"temp":1}`,
			[]telemetry.Event{withTags}},
		{"seq zero", `{"machineId":"m1","seq":0,"x":1}`, []telemetry.Event{zeroSeq}},
		{"seq max uint64", `{"machineId":"m1","seq":18446744073709551615,"x":1}`, []telemetry.Event{maxSeq}},
		{"booleans", `{"machineId":"m1","running":true,"fault":false,"metrics":{"door":true}}`,
			[]telemetry.Event{ev("m1", testNow, "running", 1, "fault", 0, "door", 1)}},
		{"null optional fields are absent", `{"machineId":"m1","id":null,"seq":null,"tags":null,"timestamp":null,"metrics":null,"x":1}`,
			[]telemetry.Event{ev("m1", testNow, "x", 1)}},
		{"empty tags", `{"machineId":"m1","tags":{},"x":1}`, []telemetry.Event{ev("m1", testNow, "x", 1)}},
		{"byte order mark and white space", "\xEF\xBB\xBF \n\t{\"machineId\":\"m1\",\"x\":1}\r\n",
			[]telemetry.Event{ev("m1", testNow, "x", 1)}},
		{"unicode machine id", `{"machineId":"Presse-Ü1","x":1}`, []telemetry.Event{ev("Presse-Ü1", testNow, "x", 1)}},
		{"escaped key and value", `{"machineId":"m\u0031","te\u006dp":1}`, []telemetry.Event{ev("m1", testNow, "temp", 1)}},
		{"every valid escape", `{"machineId":"m\ud83d\ude00","id":"\"\\\/\u00e9\ud800\udc00","tags":{"k\\ud800":"\\x"},"x":1}`,
			[]telemetry.Event{{Machine: "m\U0001F600", ID: "\"\\/é\U00010000", Time: testNow, Tags: map[string]string{`k\ud800`: `\x`},
				Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}},
		{"metric name characters", `{"machineId":"m1","spindle.rpm:max-1_A":1}`,
			[]telemetry.Event{ev("m1", testNow, "spindle.rpm:max-1_A", 1)}},
		{"large and negative values", `{"machineId":"m1","a":1e300,"b":-0.5,"c":-12}`,
			[]telemetry.Event{ev("m1", testNow, "a", 1e300, "b", -0.5, "c", -12)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rejects, err := DecodeJSON([]byte(tt.body), testOptions(), nil)
			if err != nil {
				t.Fatalf("DecodeJSON: %v", err)
			}
			if len(rejects) != 0 {
				t.Errorf("rejects = %v, want none", rejects)
			}
			if diff := cmp.Diff(got, tt.want, cmpEvents); diff != "" {
				t.Errorf("events mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestDecodeJSONRejects(t *testing.T) {
	long := strings.Repeat("x", 129)
	tests := []struct {
		name  string
		body  string
		opts  func(*Options)
		field string
		// reason is the expected reason, or its prefix when it ends in "…".
		reason string
	}{
		{"machineId missing", `{"temp":1}`, nil, "machineId", "missing"},
		{"machineId not a string", `{"machineId":7,"temp":1}`, nil, "machineId", "must be a string, got number"},
		{"machineId null", `{"machineId":null,"temp":1}`, nil, "machineId", "must be a string, got null"},
		{"machineId empty", `{"machineId":"","temp":1}`, nil, "machineId", "must not be empty"},
		{"machineId too long", `{"machineId":"` + long + `","temp":1}`, nil, "machineId", "is longer than 128 bytes"},
		{"machineId longer than the configured limit", `{"machineId":"abcdef","temp":1}`,
			func(o *Options) { o.Limits.MaxMachineIDLen = 5 }, "machineId", "is longer than 5 bytes"},
		{"machineId with space", `{"machineId":"press 7","temp":1}`, nil, "machineId", "must not contain whitespace or control characters"},
		{"machineId with tab", `{"machineId":"press\t7","temp":1}`, nil, "machineId", "must not contain whitespace or control characters"},
		{"machineId with no-break space", `{"machineId":"press\u00a07","temp":1}`, nil, "machineId", "must not contain whitespace or control characters"},
		{"machineId with slash", `{"machineId":"site/press","temp":1}`, nil, "machineId", `must not contain '/' (it is used in URLs and MQTT topics)`},
		{"machineId with plus", `{"machineId":"a+b","temp":1}`, nil, "machineId", `must not contain '+' (it is used in URLs and MQTT topics)`},
		{"machineId with hash", `{"machineId":"a#b","temp":1}`, nil, "machineId", `must not contain '#' (it is used in URLs and MQTT topics)`},
		{"machineId with question mark", `{"machineId":"a?b","temp":1}`, nil, "machineId", `must not contain '?' (it is used in URLs and MQTT topics)`},
		{"machineId invalid UTF-8", "{\"machineId\":\"a\xffb\",\"temp\":1}", nil, "machineId", "is not valid UTF-8"},
		{"machineId given twice", `{"machineId":"a","machineId":"b","temp":1}`, nil, "machineId", "given twice"},
		{"machineId with zero-width space", `{"machineId":"press\u200b7","temp":1}`, nil, "machineId", "must not contain invisible format characters (found U+200B)"},
		{"machineId with right-to-left override", "{\"machineId\":\"press\u202e7\",\"temp\":1}", nil, "machineId", "must not contain invisible format characters (found U+202E)"},
		{"machineId with byte order mark", `{"machineId":"\ufeffpress","temp":1}`, nil, "machineId", "must not contain invisible format characters (found U+FEFF)"},
		{"machineId lone high surrogate", `{"machineId":"a\ud800","temp":1}`, nil, "machineId", `has the escape \ud800 of a lone UTF-16 surrogate, which is not a character`},
		{"machineId high surrogate then letter", `{"machineId":"a\uD800\u0041","temp":1}`, nil, "machineId", `has the escape \uD800 of a lone UTF-16 surrogate, which is not a character`},
		{"machineId lone low surrogate", `{"machineId":"\udc00a","temp":1}`, nil, "machineId", `has the escape \udc00 of a lone UTF-16 surrogate, which is not a character`},
		{"machineId unknown escape", `{"machineId":"a\xb","temp":1}`, nil, "machineId", `has the invalid escape \x`},
		{"machineId short unicode escape", `{"machineId":"a\u12","temp":1}`, nil, "machineId", `has the invalid escape \u`},
		{"bad escape wins over an earlier problem", `{"temp":"x","machineId":"\ud800"}`, nil, "machineId", `has the escape …`},
		{"id lone surrogate", `{"machineId":"m1","id":"\ud800","temp":1}`, nil, "id", `has the escape …`},
		{"tag value lone surrogate", `{"machineId":"m1","tags":{"line":"\ud800"},"temp":1}`, nil, "tags.line", `has the escape …`},
		{"tag name lone surrogate", `{"machineId":"m1","tags":{"a\udfff":"x"},"temp":1}`, nil, `tags.a\udfff`, `has the escape \udfff …`},
		{"tags array lone surrogate", `{"machineId":"m1","tags":["\ud800"],"temp":1}`, nil, "tags", `has the escape …`},
		{"metric name lone surrogate", `{"machineId":"m1","t\ud800":1}`, nil, `t\ud800`, `has the escape …`},
		{"nested metric name lone surrogate", `{"machineId":"m1","metrics":{"t\ud800":1}}`, nil, `metrics.t\ud800`, `has the escape …`},
		{"metric name with zero-width joiner", `{"machineId":"m1","te\u200dmp":1}`, nil, "te\u200dmp", `metric name may contain only A-Z a-z 0-9 _ . : - (found '\u200d')`},

		{"timestamp not RFC 3339", `{"machineId":"m1","timestamp":"yesterday","temp":1}`, nil, "timestamp",
			`must be an RFC 3339 time like "2026-11-30T06:00:00Z" or epoch milliseconds, got "yesterday"`},
		{"timestamp without zone", `{"machineId":"m1","timestamp":"2026-11-30T06:00:00","temp":1}`, nil, "timestamp", "must be an RFC 3339 time like …"},
		{"timestamp invalid date", `{"machineId":"m1","timestamp":"2026-02-29T06:00:00Z","temp":1}`, nil, "timestamp", "must be an RFC 3339 time like …"},
		{"timestamp boolean", `{"machineId":"m1","timestamp":true,"temp":1}`, nil, "timestamp", "must be an RFC 3339 string or epoch milliseconds, got boolean"},
		{"timestamp object", `{"machineId":"m1","timestamp":{},"temp":1}`, nil, "timestamp", "must be an RFC 3339 string or epoch milliseconds, got object"},
		{"timestamp out of int64", `{"machineId":"m1","timestamp":1e30,"temp":1}`, nil, "timestamp", `must be epoch milliseconds within the int64 range, got "1e30"`},
		{"timestamp NaN", `{"machineId":"m1","timestamp":NaN,"temp":1}`, nil, "timestamp", `must be epoch milliseconds within the int64 range, got "NaN"`},
		{"timestamp given twice", `{"machineId":"m1","timestamp":1,"timestamp":2,"temp":1}`, nil, "timestamp", "given twice"},
		{"timestamp too old", `{"machineId":"m1","timestamp":"2026-11-29T06:00:00Z","temp":1}`,
			func(o *Options) { o.MinTime = testNow - 3600_000 }, "timestamp",
			"2026-11-29T06:00:00.000Z is older than the accepted range (earliest 2026-11-30T05:00:00.000Z)"},
		{"timestamp in the future", `{"machineId":"m1","timestamp":"2026-11-30T07:00:00Z","temp":1}`,
			func(o *Options) { o.MaxTime = testNow + 600_000 }, "timestamp",
			"2026-11-30T07:00:00.000Z is in the future (latest accepted 2026-11-30T06:10:00.000Z)"},
		{"timestamp in seconds", `{"machineId":"m1","timestamp":1796018400,"temp":1}`,
			func(o *Options) { o.MinTime = testNow - 3600_000 }, "timestamp",
			"1970-01-21T18:53:38.400Z is older than the accepted range (earliest 2026-11-30T05:00:00.000Z); timestamp numbers are epoch milliseconds and this looks like seconds"},
		{"timestamp in nanoseconds", `{"machineId":"m1","timestamp":1796018400000000000,"temp":1}`,
			func(o *Options) { o.MaxTime = testNow + 600_000 }, "timestamp",
			"…; timestamp numbers are epoch milliseconds and this looks like micro- or nanoseconds"},
		{"server time outside the range", `{"machineId":"m1","temp":1}`,
			func(o *Options) { o.MaxTime = testNow - 1 }, "timestamp", "2026-11-30T06:00:00.000Z is in the future …"},

		{"id not a string", `{"machineId":"m1","id":12,"temp":1}`, nil, "id", "must be a string, got number"},
		{"id empty", `{"machineId":"m1","id":"","temp":1}`, nil, "id", "must not be empty (leave it out instead)"},
		{"id too long", `{"machineId":"m1","id":"` + strings.Repeat("i", 257) + `","temp":1}`, nil, "id", "is longer than 256 bytes"},
		{"id control character", `{"machineId":"m1","id":"a\u0000b","temp":1}`, nil, "id", "must not contain control characters"},
		{"id given twice", `{"machineId":"m1","id":"a","id":"b","temp":1}`, nil, "id", "given twice"},

		{"seq negative", `{"machineId":"m1","seq":-1,"temp":1}`, nil, "seq", `must be a non-negative integer, got "-1"`},
		{"seq fraction", `{"machineId":"m1","seq":1.5,"temp":1}`, nil, "seq", `must be a non-negative integer, got "1.5"`},
		{"seq too large", `{"machineId":"m1","seq":18446744073709551616,"temp":1}`, nil, "seq", `must be a non-negative integer, got "18446744073709551616"`},
		{"seq string", `{"machineId":"m1","seq":"7","temp":1}`, nil, "seq", "must be a non-negative integer, got string"},

		{"tags not an object", `{"machineId":"m1","tags":["a"],"temp":1}`, nil, "tags", "must be an object of strings, got array"},
		{"tag not a string", `{"machineId":"m1","tags":{"line":3},"temp":1}`, nil, "tags.line", "must be a string, got number"},
		{"tag name empty", `{"machineId":"m1","tags":{"":"x"},"temp":1}`, nil, "tags.", "tag name must not be empty"},
		{"tag value too long", `{"machineId":"m1","tags":{"note":"` + strings.Repeat("n", 1025) + `"},"temp":1}`, nil, "tags.note", "is longer than 1024 bytes"},
		{"tag value control character", `{"machineId":"m1","tags":{"note":"a\nb"},"temp":1}`, nil, "tags.note", "must not contain control characters"},
		{"tag given twice", `{"machineId":"m1","tags":{"a":"1","a":"2"},"temp":1}`, nil, "tags.a", "given twice"},
		{"too many tags", `{"machineId":"m1","tags":{"a":"1","b":"2","c":"3"},"temp":1}`,
			func(o *Options) { o.Limits.MaxMetricsPerEvent = 2 }, "tags", "has more than 2 tags"},

		{"metrics not an object", `{"machineId":"m1","metrics":[1,2]}`, nil, "metrics", "must be an object of numbers, got array"},
		{"metrics value string", `{"machineId":"m1","metrics":{"x":"1"}}`, nil, "metrics.x", `must be a number, got string; put states in a "states" object, string labels in tags`},
		{"metrics value null", `{"machineId":"m1","metrics":{"x":null}}`, nil, "metrics.x", "must be a number, got null"},
		{"metrics given twice", `{"machineId":"m1","metrics":{"x":1},"metrics":{"y":1}}`, nil, "metrics", "given twice"},
		{"empty state", `{"machineId":"m1","status":"","temp":1}`, nil, "status", "state value must not be empty"},
		{"state too long", `{"machineId":"m1","status":"` + strings.Repeat("x", 257) + `"}`, nil, "status", "state value is longer than 256 bytes"},
		{"state control char", `{"machineId":"m1","states":{"s":"a\u0007"}}`, nil, "states.s", "state value must not contain control characters"},
		{"state bad name", `{"machineId":"m1","states":{"a b":"x"}}`, nil, "states.a b", "state name may contain only A-Z a-z 0-9 _ . : - (found ' ')"},
		{"states not object", `{"machineId":"m1","states":["x"]}`, nil, "states", "must be an object of strings, got array"},
		{"states entry not string", `{"machineId":"m1","states":{"s":1}}`, nil, "states.s", "must be a string, got number"},
		{"state and metric same name", `{"machineId":"m1","s":1,"states":{"s":"x"}}`, nil, "states.s", "given twice"},
		{"metric after state same name", `{"machineId":"m1","states":{"s":"x"},"metrics":{"s":1}}`, nil, "metrics.s", "given twice"},
		{"state twice", `{"machineId":"m1","s":"y","states":{"s":"x"}}`, nil, "states.s", "given twice"},
		{"states twice", `{"machineId":"m1","states":{},"states":{"s":"x"}}`, nil, "states", "given twice"},
		{"top-level null", `{"machineId":"m1","temp":null}`, nil, "temp", "must be a number, got null"},
		{"top-level array", `{"machineId":"m1","temp":[1]}`, nil, "temp", "must be a number, got array"},
		{"top-level object", `{"machineId":"m1","extra":{"a":1}}`, nil, "extra", "must be a number, got object"},
		{"name in field and metrics", `{"machineId":"m1","temp":1,"metrics":{"temp":2}}`, nil, "metrics.temp", "given twice"},
		{"name in metrics and field", `{"machineId":"m1","metrics":{"temp":2},"temp":1}`, nil, "metrics.temp", "given twice"},
		{"field given twice", `{"machineId":"m1","temp":1,"temp":2}`, nil, "temp", "given twice"},
		{"NaN", `{"machineId":"m1","temp":NaN}`, nil, "temp", "must be a finite number"},
		{"infinity", `{"machineId":"m1","temp":-inf}`, nil, "temp", "must be a finite number"},
		{"overflow", `{"machineId":"m1","temp":1e400}`, nil, "temp", "must be a finite number"},
		{"malformed number", `{"machineId":"m1","temp":1-2}`, nil, "temp", `must be a number, got malformed number "1-2"`},
		{"metric name with space", `{"machineId":"m1","temp C":1}`, nil, "temp C", `metric name may contain only A-Z a-z 0-9 _ . : - (found ' ')`},
		{"metric name with non-ASCII", `{"machineId":"m1","temp°":1}`, nil, "temp°", `metric name may contain only A-Z a-z 0-9 _ . : - (found '°')`},
		{"metric name empty", `{"machineId":"m1","":1}`, nil, "", "metric name must not be empty"},
		{"metric name too long", `{"machineId":"m1","` + long + `":1}`, nil, long, "metric name is longer than 128 bytes"},
		{"too many metrics", `{"machineId":"m1","a":1,"b":2,"c":3}`,
			func(o *Options) { o.Limits.MaxMetricsPerEvent = 2 }, "", "has more than 2 metrics"},
		{"no metrics", `{"machineId":"m1","timestamp":1}`, nil, "", `no metrics: send numeric fields ("temp": 71.3), a "metrics" object or states ("state": "RUNNING")`},
		{"empty metrics object", `{"machineId":"m1","metrics":{}}`, nil, "", "no metrics: …"},
		{"not an object", `42`, nil, "", "must be a JSON object, got number"},
		{"string body", `"hello"`, nil, "", "must be a JSON object, got string"},
		{"first problem wins", `{"status":"","machineId":""}`, nil, "status", "state value must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			events, rejects, err := DecodeJSON([]byte(tt.body), opts, nil)
			if err != nil {
				t.Fatalf("DecodeJSON: %v", err)
			}
			if len(events) != 0 {
				t.Errorf("events = %v, want none", events)
			}
			if len(rejects) != 1 {
				t.Fatalf("rejects = %v, want one", rejects)
			}
			checkReject(t, rejects[0], 0, tt.field, tt.reason)
		})
	}
}

// checkReject compares a reject with the wanted one; a wanted reason ending
// in "…" is a prefix, one starting with "…" a suffix.
func checkReject(t *testing.T, got Reject, index int, field, reason string) {
	t.Helper()
	ok := got.Index == index && got.Field == field
	switch {
	case strings.HasSuffix(reason, "…"):
		ok = ok && strings.HasPrefix(got.Reason, strings.TrimSuffix(reason, "…"))
	case strings.HasPrefix(reason, "…"):
		ok = ok && strings.HasSuffix(got.Reason, strings.TrimPrefix(reason, "…"))
	default:
		ok = ok && got.Reason == reason
	}
	if !ok {
		t.Errorf("reject = %+v, want {Index:%d Field:%s Reason:%s}", got, index, field, reason)
	}
}

func TestDecodeJSONMixedBatchKeepsValidRest(t *testing.T) {
	body := `[
		{"machineId":"m1","temp":1},
		{"machineId":"m1","temp":[1]},
		"not an object",
		{"machineId":"m2","temp":2},
		{"temp":3},
		{"machineId":"m3","temp":3,"metrics":{"temp":4}},
		{"machineId":"m\ud800","temp":5},
		{"machineId":"m4","tags":{"note":"a\\ud800"},"temp":6}
	]`
	events, rejects, err := DecodeJSON([]byte(body), testOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	m4 := ev("m4", testNow, "temp", 6)
	m4.Tags = map[string]string{"note": `a\ud800`}
	wantEvents := []telemetry.Event{ev("m1", testNow, "temp", 1), ev("m2", testNow, "temp", 2), m4}
	if diff := cmp.Diff(events, wantEvents, cmpEvents); diff != "" {
		t.Errorf("events mismatch (-got +want):\n%s", diff)
	}
	wantRejects := []Reject{
		{Index: 1, Field: "temp", Reason: "must be a number, got array"},
		{Index: 2, Field: "", Reason: "must be a JSON object, got string"},
		{Index: 4, Field: "machineId", Reason: "missing"},
		{Index: 5, Field: "metrics.temp", Reason: "given twice"},
		{Index: 6, Field: "machineId", Reason: `has the escape \ud800 of a lone UTF-16 surrogate, which is not a character`},
	}
	if diff := cmp.Diff(rejects, wantRejects); diff != "" {
		t.Errorf("rejects mismatch (-got +want):\n%s", diff)
	}
}

func TestDecodeJSONAppendsToDst(t *testing.T) {
	dst := []telemetry.Event{ev("old", 1, "x", 1)}
	events, _, err := DecodeJSON([]byte(`{"machineId":"m1","x":2}`), testOptions(), dst)
	if err != nil {
		t.Fatal(err)
	}
	want := []telemetry.Event{ev("old", 1, "x", 1), ev("m1", testNow, "x", 2)}
	if diff := cmp.Diff(events, want, cmpEvents); diff != "" {
		t.Errorf("events mismatch (-got +want):\n%s", diff)
	}
}

func TestDecodeJSONSyntaxError(t *testing.T) {
	tests := []struct {
		name string
		body string
		want SyntaxError
	}{
		{"empty", "", SyntaxError{Offset: 0, Line: 1, Column: 1, Msg: "empty body"}},
		{"blank", " \n ", SyntaxError{Offset: 3, Line: 2, Column: 2, Msg: "empty body"}},
		{"trailing comma", `{"a":1,}`, SyntaxError{Offset: 7, Line: 1, Column: 8, Msg: "invalid character '}' looking for beginning of object key string"}},
		{"second line", "[{\"machineId\":\"m1\",\"x\":1},\n {\"machineId\" \"m2\"}]",
			SyntaxError{Offset: 41, Line: 2, Column: 15, Msg: "invalid character '\"' after object key"}},
		{"truncated", `[{"machineId":"m1"`, SyntaxError{Offset: 18, Line: 1, Column: 19, Msg: "unexpected end of JSON input"}},
		{"two documents", `{"x":1} {"x":2}`, SyntaxError{Offset: 8, Line: 1, Column: 9, Msg: "invalid character '{' after top-level value"}},
		{"NDJSON sent as JSON", "{\"x\":1}\n{\"x\":2}", SyntaxError{Offset: 8, Line: 2, Column: 1, Msg: "invalid character '{' after top-level value"}},
		{"after byte order mark", "\xEF\xBB\xBF{,}", SyntaxError{Offset: 4, Line: 1, Column: 5, Msg: "invalid character ',' looking for beginning of object key string"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []telemetry.Event{ev("old", 1, "x", 1)}
			events, rejects, err := DecodeJSON([]byte(tt.body), testOptions(), dst)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a *SyntaxError", err)
			}
			if diff := cmp.Diff(*se, tt.want); diff != "" {
				t.Errorf("error mismatch (-got +want):\n%s", diff)
			}
			if len(events) != 1 || len(rejects) != 0 {
				t.Errorf("got %d events and rejects %v, want dst unchanged and no rejects", len(events), rejects)
			}
		})
	}
}

func TestSyntaxErrorMessage(t *testing.T) {
	_, _, err := DecodeJSON([]byte("[\n  {\"a\":1,}\n]"), testOptions(), nil)
	got := fmt.Sprint(err)
	want := "invalid JSON at line 2, column 10 (byte 11): invalid character '}' looking for beginning of object key string"
	if got != want {
		t.Errorf("err = %q, want %q", got, want)
	}
}

func TestDecodeJSONInternsStrings(t *testing.T) {
	var b strings.Builder
	b.WriteString("[")
	for i := range 100 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"machineId":"press-%d","temp":%d,"rpm":1}`, i%2, i)
	}
	b.WriteString("]")
	events, _, err := DecodeJSON([]byte(b.String()), testOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 100 {
		t.Fatalf("got %d events, want 100", len(events))
	}
	for i := 2; i < len(events); i++ {
		if unsafeData(events[i].Machine) != unsafeData(events[i-2].Machine) {
			t.Fatalf("events %d and %d do not share one machine-id string", i-2, i)
		}
		if unsafeData(events[i].Metrics[0].Name) != unsafeData(events[0].Metrics[0].Name) {
			t.Fatalf("event %d does not share the metric-name string", i)
		}
		if cap(events[i].Metrics) != 2 {
			t.Fatalf("event %d metrics: cap %d, want 2", i, cap(events[i].Metrics))
		}
	}
}

// TestConcurrentDecoding runs decoders in parallel: they share only the
// pool of working state, so every call must get exactly its own output.
func TestConcurrentDecoding(t *testing.T) {
	body := func(i int) []byte {
		return fmt.Appendf(nil, `[{"machineId":"m%d","id":"e%d","tags":{"k":"v%d"},"x%d":%d},{"machineId":"m%d","bad":{}}]`, i, i, i, i, i, i)
	}
	done := make(chan error)
	for g := range 4 {
		go func() {
			for i := g * 1000; i < g*1000+300; i++ {
				events, rejects, err := DecodeJSON(body(i), testOptions(), nil)
				want := ev(fmt.Sprintf("m%d", i), testNow, fmt.Sprintf("x%d", i), i)
				want.ID, want.Tags = fmt.Sprintf("e%d", i), map[string]string{"k": fmt.Sprintf("v%d", i)}
				if err != nil || len(rejects) != 1 || len(events) != 1 || !cmp.Equal(events[0], want) {
					done <- fmt.Errorf("body %d: events %v, rejects %v, err %v", i, events, rejects, err)
					return
				}
				lp := fmt.Appendf(nil, "m,host=h%d x=%d\n", i, i)
				events, _, err = DecodeLineProtocol(lp, 0, testOptions(), events[:0])
				if err != nil || len(events) != 1 || events[0].Machine != fmt.Sprintf("h%d", i) || events[0].Metrics[0].Value != float64(i) {
					done <- fmt.Errorf("line protocol %d: events %v, err %v", i, events, err)
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

func TestZeroOptions(t *testing.T) {
	before := time.Now().UnixMilli()
	long := `{"machineId":"m1","x":1,"pad":` + strings.Repeat(" ", 100<<10) + `2}`
	events, rejects, err := DecodeNDJSON([]byte(long), Options{}, nil)
	after := time.Now().UnixMilli()
	if err != nil || len(rejects) != 0 || len(events) != 1 {
		t.Fatalf("DecodeNDJSON with zero Options: %v, rejects %v, err %v", events, rejects, err)
	}
	if got := events[0].Time; got < before || got > after {
		t.Errorf("time = %d, want the clock, in [%d, %d]", got, before, after)
	}
	events, rejects, _ = DecodeLineProtocol([]byte("m,machine=a x=1\nm,host=b x=1\n"), 0, Options{}, nil)
	if len(events) != 2 || len(rejects) != 0 || events[0].Machine != "a" || events[1].Machine != "b" {
		t.Errorf("line protocol with zero Options: %v, rejects %v", events, rejects)
	}
	_, rejects, _ = DecodeJSON([]byte(`{"machineId":"`+strings.Repeat("m", 128)+`","x":1}`), Options{}, nil)
	if len(rejects) != 0 {
		t.Errorf("a 128-byte machine id is rejected with the default limit: %v", rejects)
	}
}

func TestDefaultMachineTagsIsACopy(t *testing.T) {
	DefaultMachineTags()[0] = "changed"
	if got := DefaultMachineTags()[0]; got != "machineId" {
		t.Errorf("DefaultMachineTags()[0] = %q after a caller changed its copy", got)
	}
}
