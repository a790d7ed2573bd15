package hub

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestAppendString(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"press-07", `"press-07"`},
		{"", `""`},
		{`a"b\c`, `"a\"b\\c"`},
		{"line\nbreak\r\ttab", `"line\nbreak\r\ttab"`},
		{"\x00\x1f", `"\u0000\u001f"`},
		{"<&>", `"<&>"`},
		{"température °C", `"température °C"`},
		{"bad\xffutf8", `"bad\ufffdutf8"`},
		{"js\u2028\u2029", `"js\u2028\u2029"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := string(appendString(nil, tt.in)); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// FuzzAppendString checks that appendString decodes to what encoding/json
// decodes its own encoding to.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a", "\"\\\n", "\xff\xfe", "\u2028", "é", "\x7f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := appendString(nil, s)
		var got string
		if err := json.Unmarshal(enc, &got); err != nil {
			t.Fatalf("decoding %s: %v", enc, err)
		}
		ref, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("appendString(%q) decodes to %q, want %q", s, got, want)
		}
		if strings.ContainsAny(string(enc), "\n\r") {
			t.Errorf("appendString(%q) = %q holds a line break, which would split an SSE event", s, enc)
		}
	})
}

func TestAppendFloat(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0"},
		{71.3, "71.3"},
		{-0.5, "-0.5"},
		{12000, "12000"},
		{1e20, "100000000000000000000"},
		{1e21, "1e+21"},
		{2e-7, "2e-7"},
		{1e-6, "0.000001"},
		{math.MaxFloat64, "1.7976931348623157e+308"},
		{math.NaN(), "null"},
		{math.Inf(1), "null"},
		{math.Inf(-1), "null"},
	}
	for _, tt := range tests {
		if got := string(appendFloat(nil, tt.in)); got != tt.want {
			t.Errorf("appendFloat(%v): got %s, want %s", tt.in, got, tt.want)
		}
	}
}

// FuzzAppendFloat checks that appendFloat writes what encoding/json does.
func FuzzAppendFloat(f *testing.F) {
	for _, v := range []float64{0, 1, -1, 71.3, 1e-7, 1e21, 123456789.125, math.SmallestNonzeroFloat64} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v float64) {
		got := string(appendFloat(nil, v))
		if math.IsNaN(v) || math.IsInf(v, 0) {
			if got != "null" {
				t.Errorf("appendFloat(%v): got %s, want null", v, got)
			}
			return
		}
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if got != string(want) {
			t.Errorf("appendFloat(%v): got %s, want %s", v, got, want)
		}
	})
}

// bodyDraft encodes a body now, as a publish for a machine a client wants
// does.
func bodyDraft(machine string, b lazyBody) draft {
	d := draft{machine: machine, lazy: b}
	d.encode()
	return d
}

func statusDraft(machine, status string, alarm bool, lastSeen int64) draft {
	return bodyDraft(machine, &statusBody{machine: machine, status: status, alarm: alarm, lastSeen: lastSeen})
}

func TestControlMessages(t *testing.T) {
	tests := []struct {
		name string
		m    *message
		want string
	}{
		{"hello", helloMessage(41, Options{}.withDefaults(), 0), "data: {\"type\":\"hello\",\"seq\":41,\"heartbeatMs\":15000,\"queue\":65536,\"queueBytes\":8388608,\"maxLagMs\":30000}\n\n"},
		{"hello conflated", helloMessage(41, Options{}.withDefaults(), 250*time.Millisecond), "data: {\"type\":\"hello\",\"seq\":41,\"heartbeatMs\":15000,\"queue\":65536,\"queueBytes\":8388608,\"maxLagMs\":30000,\"conflateMs\":250}\n\n"},
		{"status", statusDraft("press-07", "offline", true, 1764482400123).finish(44, new(message)), "id: 44\ndata: {\"seq\":44,\"type\":\"status\",\"machine\":\"press-07\",\"data\":{\"status\":\"offline\",\"alarm\":true,\"lastSeen\":1764482400123}}\n\n"},
		{"windows", bodyDraft("m", windowsBody{{Machine: "m", Metric: "temp", Start: 10000, Size: 10000, Kind: "final", Count: 3, Sum: 6, Min: 1, Max: 3, Avg: 2}, {Machine: "m", Metric: "vib", Start: 10000, Size: 10000, Kind: "late", Count: 1, Sum: 0.5, Min: 0.5, Max: 0.5, Avg: 0.5}}).finish(45, new(message)),
			"id: 45\ndata: {\"seq\":45,\"type\":\"windows\",\"machine\":\"m\",\"windows\":[{\"metric\":\"temp\",\"start\":10000,\"size\":10000,\"kind\":\"final\",\"count\":3,\"sum\":6,\"min\":1,\"max\":3,\"avg\":2},{\"metric\":\"vib\",\"start\":10000,\"size\":10000,\"kind\":\"late\",\"count\":1,\"sum\":0.5,\"min\":0.5,\"max\":0.5,\"avg\":0.5}]}\n\n"},
		{"median", bodyDraft("m", mediansBody{{Machine: "m", Metric: "temp", Median: 71.2, Time: 5}, {Machine: "m", Metric: "vib", Median: 0.1, Time: 6}}).finish(46, new(message)),
			"id: 46\ndata: {\"seq\":46,\"type\":\"median\",\"machine\":\"m\",\"data\":{\"metrics\":{\"temp\":{\"median\":71.2,\"t\":5},\"vib\":{\"median\":0.1,\"t\":6}}}}\n\n"},
		{"heartbeat", heartbeatMessage(57, 1764482415000), "id: 57\ndata: {\"type\":\"heartbeat\",\"ts\":1764482415000,\"seq\":57}\n\n"},
		{"reset", resetMessage(41, "cursor_expired"), "id: 41\ndata: {\"type\":\"reset\",\"reason\":\"cursor_expired\",\"seq\":41}\n\n"},
		{"reconnect", reconnectMessage(40, "slow_client", 2345), "data: {\"type\":\"reconnect\",\"reason\":\"slow_client\",\"cursor\":40,\"retryMs\":2345}\n\n"},
		{"event", eventDraft("press-07", "alarm", []byte(`{"x":1}`)).finish(43, new(message)), "id: 43\ndata: {\"seq\":43,\"type\":\"alarm\",\"machine\":\"press-07\",\"data\":{\"x\":1}}\n\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.m.frame); got != tt.want {
				t.Errorf("frame:\ngot  %q\nwant %q", got, tt.want)
			}
			if !json.Valid(tt.m.json()) {
				t.Errorf("invalid JSON %s", tt.m.json())
			}
		})
	}
}
