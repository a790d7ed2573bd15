package app

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/otlptest"
)

const (
	testTraceID  = "4bf92f3577b34da6a3ce929d0e0e4736"
	testParentID = "00f067aa0ba902b7"
)

// TestTraceHTTPToStream: one JSON request with a sampled traceparent, on
// the in-process log and the embedded store, makes one trace — ingest
// (under the request's span) → decode, and process → store commit, sinks
// → hub publish — and the stream client's samples message carries the
// hub publish span's traceparent, in the same trace. (The Kafka and
// PostgreSQL path, from MQTT, is e2e's TestTraceMQTTKafkaPostgres.)
func TestTraceHTTPToStream(t *testing.T) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "20") // ms: export at once
	url := startApp(t, func(c *config.Config) {
		c.Tracing = config.Tracing{Endpoint: rcv.HTTPURL, Sample: 0}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/api/v1/stream?machine=tr-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	type message struct {
		Type        string `json:"type"`
		Machine     string `json:"machine"`
		Traceparent string `json:"traceparent"`
	}
	next := func() message {
		t.Helper()
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		var m message
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("decoding %s: %v", b, err)
		}
		return m
	}
	if m := next(); m.Type != "hello" {
		t.Fatalf("first message %+v, want hello", m)
	}

	post := func(body, traceparent string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "POST", url+"/api/v1/events", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if traceparent != "" {
			req.Header.Set("traceparent", traceparent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST: %d", resp.StatusCode)
		}
	}
	post(`{"machineId":"tr-1","temp":1}`, "") // untraced at sampler 0
	post(`{"machineId":"tr-1","temp":2}`, "00-"+testTraceID+"-"+testParentID+"-01")
	var got []message
	for len(got) < 2 {
		if m := next(); m.Type == "samples" && m.Machine == "tr-1" {
			got = append(got, m)
		}
	}
	if got[0].Traceparent != "" {
		t.Errorf("the untraced request's samples carry traceparent %q", got[0].Traceparent)
	}

	names := []string{"ingest", "decode", "process", "store commit", "sinks", "hub publish"}
	spans := rcv.Wait(t, 20*time.Second, func(s []otlptest.Span) bool { return len(otlptest.Trace(s, testTraceID)) >= len(names) })
	if all := len(spans); all != len(names) {
		t.Errorf("%d spans received in all, want only the %d of the traced request", all, len(names))
	}
	byName := map[string]otlptest.Span{}
	for _, s := range otlptest.Trace(spans, testTraceID) {
		if _, dup := byName[s.Name]; dup {
			t.Errorf("two %q spans", s.Name)
		}
		byName[s.Name] = s
	}
	parents := map[string]string{"ingest": "", "decode": "ingest", "process": "ingest", "store commit": "process", "sinks": "process", "hub publish": "sinks"}
	for name, parent := range parents {
		s, ok := byName[name]
		if !ok {
			t.Errorf("no %q span; got %v", name, spans)
			continue
		}
		want := testParentID
		if parent != "" {
			want = byName[parent].SpanID()
		}
		if s.ParentID() != want {
			t.Errorf("%s under %s, want under %s %s", name, s.ParentID(), cmp.Or(parent, "the traceparent's span"), want)
		}
		if s.Resource["service.name"] != "twinline" || s.Resource["twinline.role"] != "all" || s.Resource["service.version"] != "test" {
			t.Errorf("%s: resource %v", name, s.Resource)
		}
	}
	if got := byName["store commit"].Attr("db.system.name"); got != "twinline.embedded" {
		t.Errorf("store commit db.system.name = %q", got)
	}
	if want := "00-" + testTraceID + "-" + byName["hub publish"].SpanID() + "-01"; got[1].Traceparent != want {
		t.Errorf("samples traceparent = %q, want %q (the hub publish span)", got[1].Traceparent, want)
	}

	// Exemplars: the traced batch's observations of the latency
	// histograms carry its trace id, in OpenMetrics. The delivery is
	// observed once the server's write returned, which may be after this
	// client read the message: read /metrics until it is there.
	exemplar := `# {trace_id="` + testTraceID + `"}`
	series := []string{"twinline_ingest_durable_seconds_bucket", `twinline_leg_seconds_bucket{leg="ingest_ack"`,
		`twinline_leg_seconds_bucket{leg="store_commit"`, "twinline_store_write_seconds_bucket", "twinline_stream_delivery_seconds_bucket"}
	var missing []string
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/metrics", nil)
		req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		missing = missing[:0]
		for _, name := range series {
			found := false
			for line := range strings.Lines(string(body)) {
				if strings.HasPrefix(line, name) && strings.Contains(line, exemplar) {
					found = true
					break
				}
			}
			if !found {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no line with the exemplar %s for %v", exemplar, missing)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
