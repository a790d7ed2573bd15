package bench

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestScanMessage(t *testing.T) {
	tests := []struct {
		name    string
		msg     string
		want    streamMsg
		wantErr bool
	}{
		{
			name: "samples",
			msg:  `{"seq":42,"type":"samples","machine":"press-07","ingestTs":1764482400123,"samples":[{"metric":"temp","ts":1764482400000,"value":71.3},{"metric":"rpm","ts":1764482400001,"value":null}]}`,
			want: streamMsg{typ: "samples", seq: 42, ts: []int64{1764482400000, 1764482400001}},
		},
		{
			name: "a machine id holding an escaped quote and ts",
			msg:  `{"seq":7,"type":"samples","machine":"odd\"ts\":5","ingestTs":9,"samples":[{"metric":"m","ts":100,"value":1}]}`,
			want: streamMsg{typ: "samples", seq: 7, ts: []int64{100}},
		},
		{
			name: "hello",
			msg:  `{"type":"hello","seq":41,"heartbeatMs":15000,"queue":256}`,
			want: streamMsg{typ: "hello", seq: 41, ts: []int64{}},
		},
		{
			name: "heartbeat's ts is not a sample",
			msg:  `{"type":"heartbeat","ts":1764482415000,"seq":57}`,
			want: streamMsg{typ: "heartbeat", seq: 57, ts: []int64{}},
		},
		{
			name: "reconnect carries its cursor",
			msg:  `{"type":"reconnect","reason":"slow_client","cursor":40,"retryMs":2345}`,
			want: streamMsg{typ: "reconnect", seq: 40, ts: []int64{}},
		},
		{
			name: "window",
			msg:  `{"seq":43,"type":"window","machine":"m","data":{"metric":"temp","start":1,"size":10000,"kind":"final","count":1,"sum":1,"min":1,"max":1,"avg":1}}`,
			want: streamMsg{typ: "window", seq: 43, ts: []int64{}},
		},
		{
			name: "fleet: its machines and every value's ts, not lastSeen",
			msg:  `{"type":"fleet","seq":90,"machines":[{"machine":"a","status":"online","alarm":false,"lastSeen":1764482400500,"metrics":{"rpm":{"value":2,"ts":1764482400002},"temp":{"value":1,"ts":1764482400001}}},{"machine":"b","metrics":{"temp":{"value":3,"ts":1764482400003}}}]}`,
			want: streamMsg{typ: "fleet", seq: 90, ts: []int64{1764482400002, 1764482400001, 1764482400003}, machines: 2},
		},
		{name: "fleet without machines", msg: `{"type":"fleet","seq":1}`, wantErr: true},
		{name: "no type", msg: `{"seq":1}`, wantErr: true},
		{name: "samples without samples", msg: `{"seq":1,"type":"samples"}`, wantErr: true},
		{name: "bad ts", msg: `{"seq":1,"type":"samples","samples":[{"ts":x}]}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := scanMessage([]byte(tt.msg), make([]int64, 0, 4))
			if (err != nil) != tt.wantErr {
				t.Fatalf("scanMessage error = %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if diff := cmp.Diff(got, tt.want, cmp.AllowUnexported(streamMsg{})); diff != "" {
				t.Errorf("scanMessage mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestReadLine(t *testing.T) {
	long := "data: " + strings.Repeat("x", 100)
	in := "id: 5\n" + long + "\n\ndata: short\n"
	r := bufio.NewReaderSize(strings.NewReader(in), 16) // smaller than the long line
	var scratch []byte
	var got []string
	for {
		line, err := readLine(r, &scratch)
		if err != nil {
			break
		}
		got = append(got, string(line))
	}
	want := []string{"id: 5", long, "", "data: short"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("lines mismatch (-got +want):\n%s", diff)
	}
}

func TestParseInt(t *testing.T) {
	tests := []struct {
		in    string
		want  int64
		wantN int
	}{
		{"123,", 123, 3}, {"-45}", -45, 3}, {"0", 0, 1}, {"x", 0, 0}, {"-", 0, 0}, {"", 0, 0},
	}
	for _, tt := range tests {
		v, n := parseInt([]byte(tt.in))
		if v != tt.want || n != tt.wantN {
			t.Errorf("parseInt(%q) = %d, %d, want %d, %d", tt.in, v, n, tt.want, tt.wantN)
		}
	}
}

func TestBodies(t *testing.T) {
	metrics := metricList(10)
	if got, want := metrics[7:], []string{"flow", "m8", "m9"}; !cmp.Equal(got, want) {
		t.Errorf("metricList(10)[7:] = %v, want %v", got, want)
	}
	ev := func(j int) (string, int64, int64) { return machineName("bench", j), 1764482400000 + int64(j), int64(j) }

	var events []map[string]any
	body, err := formatJSON.body(nil, 3, metrics[:2], ev)
	if err != nil {
		t.Fatalf("JSON body: %v", err)
	}
	if err := json.Unmarshal(body, &events); err != nil {
		t.Fatalf("JSON body %s: %v", body, err)
	}
	want := []map[string]any{
		{"machineId": "bench-00000", "timestamp": 1764482400000.0, "temp": 0.0, "rpm": 1.3},
		{"machineId": "bench-00001", "timestamp": 1764482400001.0, "temp": 0.7, "rpm": 2.0},
		{"machineId": "bench-00002", "timestamp": 1764482400002.0, "temp": 1.4, "rpm": 2.7},
	}
	if diff := cmp.Diff(events, want); diff != "" {
		t.Errorf("JSON body mismatch (-got +want):\n%s", diff)
	}

	lp, err := formatLP.body([]byte("old"), 2, metrics[:2], ev)
	if err != nil {
		t.Fatalf("line protocol body: %v", err)
	}
	got := string(lp)
	wantLP := "bench,machineId=bench-00000 temp=0,rpm=1.3 1764482400000\n" +
		"bench,machineId=bench-00001 temp=0.7,rpm=2 1764482400001\n"
	if got != wantLP {
		t.Errorf("line protocol body = %q, want %q", got, wantLP)
	}
}

func TestParseDropped(t *testing.T) {
	exposition := `# HELP twinline_stream_clients_dropped_total Stream clients dropped, by reason.
# TYPE twinline_stream_clients_dropped_total counter
twinline_stream_clients_dropped_total{reason="shutdown"} 0
twinline_stream_clients_dropped_total{reason="slow_client"} 3
twinline_stream_clients_dropped_total{reason="write_error"} 1
twinline_stream_clients{transport="ws"} 1050
`
	got, err := parseDropped([]byte(exposition))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"shutdown": 0, "slow_client": 3, "write_error": 1}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("parseDropped mismatch (-got +want):\n%s", diff)
	}
	if _, err := parseDropped([]byte(`twinline_stream_clients_dropped_total{reason="x"} many` + "\n")); err == nil {
		t.Error("parseDropped of a bad value = nil error, want one")
	}
}
