package hub

import (
	"encoding/json"
	"testing"
	"time"
)

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
