package ingest

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

func TestDecodeNDJSON(t *testing.T) {
	long := `{"machineId":"m1","x":1,"pad":"` + strings.Repeat("p", 100) + `"}`
	tests := []struct {
		name        string
		body        string
		maxLine     int
		wantEvents  []telemetry.Event
		wantRejects []Reject
	}{
		{
			name:       "lines",
			body:       "{\"machineId\":\"m1\",\"x\":1}\n{\"machineId\":\"m2\",\"x\":2}\n",
			wantEvents: []telemetry.Event{ev("m1", testNow, "x", 1), ev("m2", testNow, "x", 2)},
		},
		{
			name:       "no final newline, CRLF, blank lines",
			body:       "\r\n{\"machineId\":\"m1\",\"x\":1}\r\n \t\r\n\n{\"machineId\":\"m2\",\"x\":2}",
			wantEvents: []telemetry.Event{ev("m1", testNow, "x", 1), ev("m2", testNow, "x", 2)},
		},
		{
			name:       "byte order mark",
			body:       "\xEF\xBB\xBF{\"machineId\":\"m1\",\"x\":1}\n",
			wantEvents: []telemetry.Event{ev("m1", testNow, "x", 1)},
		},
		{name: "empty", body: ""},
		{name: "blank", body: "\n\r\n  \n"},
		{
			name: "bad lines keep the rest",
			body: strings.Join([]string{
				`{"machineId":"m1","x":1}`,
				`{"machineId":"m1","x":}`,
				``,
				`[{"machineId":"m1","x":1}]`,
				`{"machineId":"m1","x":"one"}`,
				`{"machineId":"m2","x":2}`,
				`{"machineId":"m1","x":1} trailing`,
				`{"x":3}`,
			}, "\n"),
			wantEvents: []telemetry.Event{ev("m1", testNow, "x", 1), withStates(ev("m1", testNow+1), "x", "one"), ev("m2", testNow, "x", 2)},
			wantRejects: []Reject{
				{Index: 2, Reason: "invalid JSON at column 23: invalid character '}' looking for beginning of value"},
				{Index: 4, Reason: "must be a JSON object, got array"},
				{Index: 7, Reason: "invalid JSON at column 26: invalid character 't' after top-level value"},
				{Index: 8, Field: "machineId", Reason: "missing"},
			},
		},
		{
			name:        "line too long",
			body:        "{\"machineId\":\"m1\",\"x\":1}\n" + long + "\r\n{\"machineId\":\"m2\",\"x\":2}",
			maxLine:     100,
			wantEvents:  []telemetry.Event{ev("m1", testNow, "x", 1), ev("m2", testNow, "x", 2)},
			wantRejects: []Reject{{Index: 2, Reason: "line exceeds 100 bytes"}},
		},
		{
			name:        "lone surrogate rejects its line only",
			body:        "{\"machineId\":\"m1\",\"x\":1}\n{\"machineId\":\"m1\",\"tags\":{\"k\":\"\\udc00\"},\"x\":1}\n{\"machineId\":\"m2\",\"x\":2}",
			wantEvents:  []telemetry.Event{ev("m1", testNow, "x", 1), ev("m2", testNow, "x", 2)},
			wantRejects: []Reject{{Index: 2, Field: "tags.k", Reason: `has the escape \udc00 of a lone UTF-16 surrogate, which is not a character`}},
		},
		{
			name:       "line at the limit, CR not counted",
			body:       `{"machineId":"m1","x":1}` + "\r\n",
			maxLine:    len(`{"machineId":"m1","x":1}`),
			wantEvents: []telemetry.Event{ev("m1", testNow, "x", 1)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions()
			opts.MaxLineBytes = tt.maxLine
			events, rejects, err := DecodeNDJSON([]byte(tt.body), opts, nil)
			if err != nil {
				t.Fatalf("DecodeNDJSON: %v", err)
			}
			if diff := cmp.Diff(events, tt.wantEvents, cmpEvents); diff != "" {
				t.Errorf("events mismatch (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(rejects, tt.wantRejects, cmpEvents); diff != "" {
				t.Errorf("rejects mismatch (-got +want):\n%s", diff)
			}
		})
	}
}
