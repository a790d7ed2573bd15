package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
)

// TestIngestFormats posts events in every format and checks each is
// queryable and arrives on open WebSocket and SSE streams.
func TestIngestFormats(t *testing.T) {
	s := start(t, "")
	c := ctx(t, 60*time.Second)
	now := time.Now().Truncate(time.Millisecond)
	ts := func(i int) time.Time { return now.Add(time.Duration(i-10) * time.Second) }

	tests := []struct {
		name        string
		machine     string
		path        string
		contentType string
		body        string
		gzip        bool
		status      int
		want        map[string][]float64 // metric → values in time order
	}{
		{
			name: "json object (seed format)", machine: "press-01", path: "/api/v1/events", contentType: "application/json",
			body:   fmt.Sprintf(`{"machineId":"press-01","timestamp":%q,"temp":71.3}`, ts(0).Format(time.RFC3339Nano)),
			status: 202, want: map[string][]float64{"temp": {71.3}},
		},
		{
			name: "json array with metrics object, epoch ms, id and seq", machine: "press-02", path: "/api/v1/events", contentType: "application/json",
			body: fmt.Sprintf(`[{"machineId":"press-02","timestamp":%d,"id":"a","seq":1,"metrics":{"temp":20,"rpm":900}},
				{"machineId":"press-02","timestamp":%d,"id":"b","seq":2,"temp":21,"metrics":{"rpm":910}}]`, ts(1).UnixMilli(), ts(2).UnixMilli()),
			status: 202, want: map[string][]float64{"temp": {20, 21}, "rpm": {900, 910}},
		},
		{
			name: "ndjson gzip", machine: "oven-03", path: "/api/v1/events", contentType: "application/x-ndjson", gzip: true,
			body: fmt.Sprintf("{\"machineId\":\"oven-03\",\"timestamp\":%d,\"temp\":180.5}\n\n{\"machineId\":\"oven-03\",\"timestamp\":%d,\"temp\":181.5}\n",
				ts(3).UnixMilli(), ts(4).UnixMilli()),
			status: 202, want: map[string][]float64{"temp": {180.5, 181.5}},
		},
		{
			name: "line protocol v1", machine: "cnc-04", path: "/write?db=plant&precision=ms",
			body: fmt.Sprintf("spindle,machineId=cnc-04 rpm=12000i,load=0.5 %d\nspindle,host=cnc-04 rpm=12100i,load=0.6 %d\n",
				ts(5).UnixMilli(), ts(6).UnixMilli()),
			status: 204, want: map[string][]float64{"spindle_rpm": {12000, 12100}, "spindle_load": {0.5, 0.6}},
		},
		{
			name: "line protocol v2 gzip, ns", machine: "pump-05", path: "/api/v2/write?bucket=plant&org=acme&precision=ns", gzip: true,
			body:   fmt.Sprintf("flow,machine=pump-05,site=lyon lpm=33.5 %d\n", ts(7).UnixNano()),
			status: 204, want: map[string][]float64{"flow_lpm": {33.5}},
		},
	}

	// Subscribe before posting: one SSE and one WebSocket client per machine.
	type subs struct{ sse, ws <-chan message }
	streams := map[string]subs{}
	for _, tt := range tests {
		streams[tt.machine] = subs{
			sse: subscribe(t, c, s, "machine="+tt.machine, true),
			ws:  subscribe(t, c, s, "machine="+tt.machine, false),
		}
	}
	all := subscribe(t, c, s, "all=1", false)

	total := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := []byte(tt.body)
			var hdr []string
			if tt.gzip {
				body = gzipped(body)
				hdr = []string{"Content-Encoding", "gzip"}
			}
			r := s.do("POST", tt.path, tt.contentType, body, hdr...)
			if r.status != tt.status {
				t.Fatalf("POST %s: %d %s; want %d", tt.path, r.status, r.body, tt.status)
			}
			if tt.status == 202 {
				var res struct{ Accepted, Duplicates int }
				r.json(t, &res)
				if res.Accepted == 0 {
					t.Errorf("202 body %s reports nothing accepted", r.body)
				}
			}
			n := 0
			for metric, want := range tt.want {
				got := s.series(tt.machine, metric)
				if diff := cmp.Diff(got.V, want); diff != "" {
					t.Errorf("series %s/%s values (-got +want):\n%s", tt.machine, metric, diff)
				}
				n += len(want)
			}
			total += n
			for name, ch := range map[string]<-chan message{"sse": streams[tt.machine].sse, "websocket": streams[tt.machine].ws} {
				got := awaitSamples(t, c, ch, tt.machine, n)
				if diff := cmp.Diff(got, tt.want); diff != "" {
					t.Errorf("%s stream samples (-got +want):\n%s", name, diff)
				}
			}
		})
	}

	// The all=1 client saw every machine.
	seen := map[string]bool{}
	for n := 0; n < total; {
		select {
		case m := <-all:
			if m.Type == "samples" {
				seen[m.Machine] = true
				n += len(m.Samples)
			}
		case <-c.Done():
			t.Fatalf("all=1 stream: %d of %d samples", n, total)
		}
	}
	if len(seen) != len(tests) {
		t.Errorf("all=1 stream saw machines %v, want %d", seen, len(tests))
	}

	// The fleet lists every machine with its latest values.
	var fleet struct {
		Count    int `json:"count"`
		Machines []struct {
			ID      string                             `json:"id"`
			Status  string                             `json:"status"`
			Metrics map[string]struct{ Value float64 } `json:"metrics"`
		} `json:"machines"`
	}
	s.get("/api/v1/machines").json(t, &fleet)
	if fleet.Count != len(tests) {
		t.Errorf("fleet count = %d, want %d", fleet.Count, len(tests))
	}
	for _, m := range fleet.Machines {
		if m.Status != "online" {
			t.Errorf("machine %s status %q, want online", m.ID, m.Status)
		}
	}
	var latest struct {
		Metrics map[string]struct {
			Value float64 `json:"value"`
			TS    int64   `json:"ts"`
		} `json:"metrics"`
	}
	s.get("/api/v1/machines/press-02/latest").json(t, &latest)
	if got := latest.Metrics["rpm"]; got.Value != 910 || got.TS != ts(2).UnixMilli() {
		t.Errorf("latest rpm = %+v, want 910 at %d", got, ts(2).UnixMilli())
	}
}

// TestPartialBatch: the valid items are stored, each bad one is named.
func TestPartialBatch(t *testing.T) {
	s := start(t, "")
	now := time.Now().UnixMilli()
	body := fmt.Sprintf(`[
		{"machineId":"m1","timestamp":%d,"temp":1},
		{"timestamp":%d,"temp":2},
		{"machineId":"m1","timestamp":%d,"temp":["hot"]},
		{"machineId":"m1","timestamp":%d,"temp":4}]`, now-3000, now-2000, now-1000, now)
	r := s.do("POST", "/api/v1/events", "application/json", []byte(body))
	if r.status != 400 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %s %s; want 400 problem+json", r.status, r.header.Get("Content-Type"), r.body)
	}
	var p struct {
		Type     string `json:"type"`
		Status   int    `json:"status"`
		Detail   string `json:"detail"`
		Accepted int    `json:"accepted"`
		Errors   []struct {
			Index  int    `json:"index"`
			Field  string `json:"field"`
			Reason string `json:"reason"`
		} `json:"errors"`
	}
	r.json(t, &p)
	if p.Accepted != 2 || len(p.Errors) != 2 {
		t.Fatalf("problem = %s; want accepted 2 and 2 errors", r.body)
	}
	if p.Errors[0].Index != 1 || p.Errors[0].Field != "machineId" || p.Errors[1].Index != 2 || p.Errors[1].Field != "temp" {
		t.Errorf("errors = %+v; want index 1 machineId, index 2 temp", p.Errors)
	}
	if got := s.series("m1", "temp").V; !cmp.Equal(got, []float64{1, 4}) {
		t.Errorf("stored = %v, want [1 4]", got)
	}

	// Line protocol: a line without machine id and a broken line, the rest stored.
	lp := fmt.Sprintf("env,host=m2 t=1 %d\nenv,site=x t=2 %d\nenv,host=m2 t=\nenv,host=m2 t=4 %d\n", now-2000, now-1000, now)
	r = s.do("POST", "/write?precision=ms", "", []byte(lp))
	if r.status != 400 {
		t.Fatalf("line protocol partial: %d %s", r.status, r.body)
	}
	var lpp struct {
		Error  string `json:"error"`
		Errors []struct {
			Line  int    `json:"line"`
			Field string `json:"field"`
		} `json:"errors"`
	}
	r.json(t, &lpp)
	if len(lpp.Errors) != 2 || lpp.Errors[0].Line != 2 || lpp.Errors[1].Line != 3 || !strings.Contains(lpp.Error, "partial write") {
		t.Errorf("line protocol problem = %s; want lines 2 and 3 named, InfluxDB partial write error", r.body)
	}
	if got := s.series("m2", "env_t").V; !cmp.Equal(got, []float64{1, 4}) {
		t.Errorf("stored = %v, want [1 4]", got)
	}
}

// TestLimits: each limit gets its own clear 4xx.
func TestLimits(t *testing.T) {
	s := start(t, "", "--max-body-bytes", "2048", "--max-decompressed-bytes", "4096", "--max-line-bytes", "300", "--max-metrics-per-event", "3", "--max-header-bytes", "4096")
	now := time.Now().UnixMilli()
	big := `{"machineId":"m","x":1,"pad":"` + strings.Repeat("a", 3000) + `"}`
	if r := s.do("POST", "/api/v1/events", "application/json", []byte(big)); r.status != 413 {
		t.Errorf("body over limit: %d %s; want 413", r.status, r.body)
	}
	bomb := gzipped([]byte(strings.Repeat(" ", 100000) + `{"machineId":"m","x":1}`))
	if r := s.do("POST", "/api/v1/events", "application/json", bomb, "Content-Encoding", "gzip"); r.status != 413 || !strings.Contains(string(r.body), "decompressed") {
		t.Errorf("decompressed over limit: %d %s; want 413 naming decompression", r.status, r.body)
	}
	lines := fmt.Sprintf("{\"machineId\":\"m\",\"timestamp\":%d,\"x\":1}\n{\"machineId\":\"m\",\"x\":1,\"y\":%q}\n", now, strings.Repeat("1", 400))
	r := s.do("POST", "/api/v1/events", "application/x-ndjson", []byte(lines))
	if r.status != 400 || !strings.Contains(string(r.body), `"line":2`) {
		t.Errorf("long line: %d %s; want 400 naming line 2", r.status, r.body)
	}
	r = s.do("POST", "/api/v1/events", "application/json", []byte(`{"machineId":"m","a":1,"b":2,"c":3,"d":4}`))
	if r.status != 400 || !strings.Contains(string(r.body), "metrics") {
		t.Errorf("too many metrics: %d %s; want 400", r.status, r.body)
	}
	// Headers over the limit: a raw connection, so the answer is read
	// exactly as sent.
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("h", 10000))
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(status, " 431 ") {
		t.Errorf("big header: status line %q, %v; want 431", status, err)
	}
	r = s.do("POST", "/api/v1/events", "application/xml", []byte(`<e/>`))
	if r.status != 415 {
		t.Errorf("xml: %d; want 415", r.status)
	}
}

// TestInfluxClient writes with the unmodified InfluxDB v2 client library.
func TestInfluxClient(t *testing.T) {
	s := start(t, "")
	client := influxdb2.NewClient(s.url, "any-token")
	defer client.Close()
	w := client.WriteAPIBlocking("acme", "plant")
	now := time.Now().Truncate(time.Millisecond)
	for i := range 5 {
		p := influxdb2.NewPoint("press", map[string]string{"machine_id": "press-09", "site": "lyon"},
			map[string]any{"temp": 70.0 + float64(i), "state": "running"}, now.Add(time.Duration(i-5)*time.Second))
		if err := w.WritePoint(ctx(t, 10*time.Second), p); err != nil {
			t.Fatalf("WritePoint: %v", err)
		}
	}
	if got := s.series("press-09", "press_temp").V; !cmp.Equal(got, []float64{70, 71, 72, 73, 74}) {
		t.Errorf("stored = %v, want 70..74", got)
	}
	// InfluxDB 1.x handshake used by Telegraf and 1.x clients.
	if r := s.do("HEAD", "/ping", "", nil); r.status != 204 || r.header.Get("X-Influxdb-Version") == "" {
		t.Errorf("HEAD /ping: %d %v", r.status, r.header)
	}
	if r := s.do("POST", "/query?q=CREATE+DATABASE+%22telegraf%22", "", nil); r.status != 200 {
		t.Errorf("CREATE DATABASE: %d %s", r.status, r.body)
	}
	r := s.get("/query?q=SHOW+DATABASES")
	if r.status != 200 || !strings.Contains(string(r.body), `["telegraf"]`) {
		t.Errorf("SHOW DATABASES: %d %s; want telegraf listed", r.status, r.body)
	}
}

// TestReadYourWrites: right after a 2xx, the twin shows what was sent:
// the machine exists and /latest has the value (the acknowledgement waits
// for the twin to take the batch).
func TestReadYourWrites(t *testing.T) {
	s := start(t, "")
	for i := range 30 {
		machine := fmt.Sprintf("ryw-%d", i)
		if r := s.do("POST", "/api/v1/events", "application/json", []byte(fmt.Sprintf(`{"machineId":%q,"temp":%d}`, machine, i))); r.status != 202 {
			t.Fatalf("post: %d %s", r.status, r.body)
		}
		r := s.get("/api/v1/machines/" + machine + "/latest")
		if r.status != 200 {
			t.Fatalf("latest right after the 2xx: %d %s", r.status, r.body)
		}
		var latest struct {
			Metrics map[string]struct{ Value float64 }
		}
		r.json(t, &latest)
		if v, ok := latest.Metrics["temp"]; !ok || v.Value != float64(i) {
			t.Fatalf("latest of %s right after the 2xx: %+v, want temp %d", machine, latest.Metrics, i)
		}
	}
}
