package mqtt

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/influxdata/line-protocol/v2/lineprotocol"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

func TestParseTopic(t *testing.T) {
	tests := []struct {
		name    string
		topic   string
		want    Topic
		wantErr string
	}{
		{"ok", "twinline/plant-1/line-a/press-07/telemetry", Topic{"plant-1", "line-a", "press-07"}, ""},
		{"unicode", "twinline/Köln/L1/m1/telemetry", Topic{"Köln", "L1", "m1"}, ""},
		{"too few levels", "twinline/plant-1/press-07/telemetry", Topic{}, "has 4 levels"},
		{"too many levels", "twinline/a/b/c/d/telemetry", Topic{}, "has 6 levels"},
		{"empty site", "twinline//line/m/telemetry", Topic{}, "site must not be empty"},
		{"space in machine", "twinline/s/l/m 1/telemetry", Topic{}, "machine id must not contain whitespace"},
		{"other root", "factory/s/l/m/telemetry", Topic{}, "is not twinline/"},
		{"other leaf", "twinline/s/l/m/status", Topic{}, "is not twinline/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTopic(tt.topic, 128)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseTopic(%q) error = %v, want one containing %q", tt.topic, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTopic(%q): %v", tt.topic, err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("ParseTopic(%q) (-got +want):\n%s", tt.topic, diff)
			}
			if got := TelemetryTopic(tt.want.Site, tt.want.Line, tt.want.Machine); got != tt.topic {
				t.Errorf("TelemetryTopic = %q, want %q", got, tt.topic)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	const ts = 1_795_996_800_000 // 2026-11-30T00:00:00Z
	ev := func(temp float64) telemetry.Event {
		return telemetry.Event{Machine: "press-07", Time: ts, Metrics: []telemetry.Metric{{Name: "temp", Value: temp}}}
	}
	lpEv := func(name string, v float64) telemetry.Event {
		return telemetry.Event{Machine: "press-07", Time: ts, Metrics: []telemetry.Metric{{Name: name, Value: v}}}
	}
	tests := []struct {
		name        string
		payload     string
		prec        lineprotocol.Precision
		want        []telemetry.Event
		wantRejects int
		wantErr     bool
	}{
		{"json fills in the machine", `{"timestamp":1795996800000,"temp":71.5}`, 0, []telemetry.Event{ev(71.5)}, 0, false},
		{"json topic wins", `{"machineId":"other","timestamp":1795996800000,"temp":71.5}`, 0, []telemetry.Event{ev(71.5)}, 0, false},
		{"json invalid machine in payload is replaced", `{"machineId":42,"timestamp":1795996800000,"temp":71.5}`, 0, []telemetry.Event{ev(71.5)}, 0, false},
		{"json leading space and BOM", "\xef\xbb\xbf \n {\"timestamp\":1795996800000,\"temp\":1}", 0, []telemetry.Event{ev(1)}, 0, false},
		{"json array keeps good items", `[{"timestamp":1795996800000,"temp":1},{"temp":["hot"]},7,{"timestamp":1795996800000,"temp":2}]`, 0,
			[]telemetry.Event{ev(1), ev(2)}, 2, false},
		{"json syntax error", `{"temp":`, 0, nil, 0, true},
		{"lp fills in the machine", "m temp=3 1795996800000\n", lineprotocol.Millisecond, []telemetry.Event{lpEv("m_temp", 3)}, 0, false},
		{"lp topic wins over a tag", "m,host=other temp=3 1795996800", lineprotocol.Second, []telemetry.Event{lpEv("m_temp", 3)}, 0, false},
		// The measurement is parsed whole (and then refused for its space).
		{"lp escaped measurement", `my\ m\,x,a=b temp=4 1795996800000000000`, lineprotocol.Nanosecond, nil, 1, false},
		{"lp escaped backslash", `m\\,a=b temp=4 1795996800000000000`, lineprotocol.Nanosecond, nil, 1, false},
		{"lp comments and blank lines", "# c\n\nm temp=3 1795996800000\n  \n", lineprotocol.Millisecond, []telemetry.Event{lpEv("m_temp", 3)}, 0, false},
		{"lp bad line kept apart", "m temp=3 1795996800000\nm temp= 1\n", lineprotocol.Millisecond, []telemetry.Event{lpEv("m_temp", 3)}, 1, false},
		{"empty", "  \n", 0, nil, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rejects, err := decode([]byte(tt.payload), "press-07", tt.prec, ingest.Options{Now: ts})
			if tt.wantErr {
				if err == nil {
					t.Fatalf("decode: got no error, rejects %v", rejects)
				}
				return
			}
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			for i := range got {
				got[i].Machine = "press-07" // as prepare does
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("events (-got +want):\n%s", diff)
			}
			if len(rejects) != tt.wantRejects {
				t.Errorf("rejects = %v, want %d", rejects, tt.wantRejects)
			}
		})
	}
}

func TestPrepare(t *testing.T) {
	now := time.UnixMilli(1_795_996_800_000)
	h, err := newHandler(IngestOptions{
		Decode: ingest.Options{AdmitMachine: func(id string) string {
			if id == "refused" {
				return "fleet limit reached"
			}
			return ""
		}},
		Retention: time.Hour,
		MaxFuture: time.Minute,
	}, Deps{Submit: func(context.Context, *telemetry.Batch) (int, int, error) { return 0, 0, nil }, Clock: func() time.Time { return now }}, "test")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, topic, payload string
		wantReason           string
		wantCode             byte
	}{
		{"ok", "twinline/s/l/m/telemetry", `{"temp":1}`, "", 0},
		{"bad topic", "twinline/s/m/telemetry", `{"temp":1}`, reasonTopic, codeTopicInvalid},
		{"refused machine", "twinline/s/l/refused/telemetry", `{"temp":1}`, reasonMachine, codeQuotaExceeded},
		{"not json", "twinline/s/l/m/telemetry", `{temp`, reasonPayload, codePayloadFormat},
		{"no metric", "twinline/s/l/m/telemetry", `{"x":["y"]}`, reasonPayload, codePayloadFormat},
		{"too old", "twinline/s/l/m/telemetry", `{"timestamp":1,"temp":1}`, reasonPayload, codePayloadFormat},
		{"in the future", "twinline/s/l/m/telemetry", `{"timestamp":1795996900000,"temp":1}`, reasonPayload, codePayloadFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, out := h.prepare(tt.topic, []byte(tt.payload), nil)
			if out.reason != tt.wantReason || out.code != tt.wantCode {
				t.Fatalf("prepare: reason %q code %#x (%s), want %q %#x", out.reason, out.code, out.detail, tt.wantReason, tt.wantCode)
			}
			if tt.wantReason == "" {
				if p == nil || len(p.batch.Events) != 1 || p.batch.Events[0].Time != now.UnixMilli() || p.batch.Protocol != "mqtt" {
					t.Fatalf("prepare: batch %+v", p)
				}
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("ab€", 3); got != "ab" {
		t.Errorf("truncate = %q, want %q", got, "ab")
	}
	if got := truncate("abc", 5); got != "abc" {
		t.Errorf("truncate = %q, want %q", got, "abc")
	}
}

func FuzzWithMachineLP(f *testing.F) {
	f.Add([]byte("m,host=a temp=1 1\n# c\n\nx\\ y temp=2\n"))
	f.Add([]byte("\\"))
	f.Add([]byte(",a=b c=1\r\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		var buf bytes.Buffer
		withMachineLP(&buf, body)
		if got, want := bytes.Count(buf.Bytes(), []byte{'\n'}), bytes.Count(body, []byte{'\n'}); got != want {
			t.Fatalf("%d lines, want %d", got, want)
		}
		// Decoding must not panic, whatever the body.
		_, _, _ = decode(body, "m", lineprotocol.Nanosecond, ingest.Options{})
	})
}

// TestRegisterOnChange shows Register called for a machine's first durable
// message and again only when its site or line changes.
func TestRegisterOnChange(t *testing.T) {
	var calls [][3]string
	h, err := newHandler(IngestOptions{}, Deps{
		Submit:   func(_ context.Context, b *telemetry.Batch) (int, int, error) { return len(b.Events), 0, nil },
		Register: func(m, s, l string) { calls = append(calls, [3]string{m, s, l}) },
	}, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{
		"twinline/s1/l1/m1/telemetry",
		"twinline/s1/l1/m1/telemetry",
		"twinline/s1/l1/m2/telemetry",
		"twinline/s1/l2/m1/telemetry",
		"twinline/s1/l2/m1/telemetry",
	} {
		p, out := h.prepare(topic, []byte(`{"temp":1}`), nil)
		if p == nil {
			t.Fatalf("prepare(%s): %+v", topic, out)
		}
		h.finish(context.Background(), topic, "c", p, h.submitOnce(context.Background(), p))
	}
	want := [][3]string{{"m1", "s1", "l1"}, {"m2", "s1", "l1"}, {"m1", "s1", "l2"}}
	if diff := cmp.Diff(calls, want); diff != "" {
		t.Errorf("Register calls (-got +want):\n%s", diff)
	}
}

// TestPrepareStamps: messages without a timestamp that arrive in the same
// millisecond, as JSON or line protocol, get one time each, in arrival
// order, continuing the stamps of the Stamper shared with the HTTP API.
func TestPrepareStamps(t *testing.T) {
	now := time.UnixMilli(1_795_996_800_000)
	stamper := ingest.NewStamper()
	stamper.Stamp("m", now.UnixMilli(), 0) // an HTTP event of m, this millisecond
	h, err := newHandler(IngestOptions{Decode: ingest.Options{Stamper: stamper}, MaxFuture: time.Minute},
		Deps{Submit: func(context.Context, *telemetry.Batch) (int, int, error) { return 0, 0, nil }, Clock: func() time.Time { return now }}, "test")
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, payload := range []string{`{"temp":1}`, `[{"temp":2},{"temp":3}]`, "m temp=4"} {
		p, out := h.prepare("twinline/s/l/m/telemetry", []byte(payload), nil)
		if p == nil {
			t.Fatalf("prepare(%s): %+v", payload, out)
		}
		for _, e := range p.batch.Events {
			got = append(got, e.Time-now.UnixMilli())
		}
	}
	if diff := cmp.Diff(got, []int64{1, 2, 3, 4}); diff != "" {
		t.Errorf("event times after now (-got +want):\n%s", diff)
	}
}
