package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/otlptest"
	"github.com/twinline/twinline/internal/tracing"
)

const (
	testTraceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	testParentID    = "00f067aa0ba902b7"
	testTraceparent = "00-" + testTraceID + "-" + testParentID + "-01"
)

// newTracing sets up tracing at sample, exporting to a test receiver.
func newTracing(t testing.TB, sample float64) (*tracing.Tracing, *otlptest.Receiver) {
	t.Helper()
	rcv := otlptest.Start(t)
	tr, err := tracing.Setup(context.Background(), tracing.Config{Endpoint: rcv.HTTPURL, Sample: sample}, tracing.Identity{Role: "gateway"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, rcv
}

func postTraced(a *API, path, ct, body, traceparent string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Header.Set("Content-Type", ct)
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	return rec
}

// TestIngestContinuesTraceparent: a JSON or line-protocol request with a
// sampled traceparent gets an ingest server span under it (HTTP semantic
// conventions, its status) with a decode child, and its batch carries the
// ingest span on to the log; without a traceparent, or with one not
// sampled, at sampler 0 nothing is traced and the batch carries nothing.
func TestIngestContinuesTraceparent(t *testing.T) {
	tests := []struct {
		name, path, ct, body string
		status               int
		protocol             string
	}{
		{"json", "/api/v1/events", "application/json", `[{"machineId":"m1","temp":1},{"machineId":"m2","temp":2}]`, 202, "json"},
		{"line protocol", "/write?db=x", "text/plain", "cpu,host=m1 v=1\ncpu,host=m2 v=2\n", 204, "lineprotocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, rcv := newTracing(t, 0)
			log := &fakeLog{real: eventlog.New(1000, nil)}
			a := newTestAPI(t, log)
			a.tracer = tr.Tracer("api")

			if rec := postTraced(a, tt.path, tt.ct, tt.body, "00-"+testTraceID+"-"+testParentID+"-00"); rec.Code != tt.status {
				t.Fatalf("unsampled: %d %s", rec.Code, rec.Body)
			}
			if rec := postTraced(a, tt.path, tt.ct, tt.body, ""); rec.Code != tt.status {
				t.Fatalf("untraced: %d %s", rec.Code, rec.Body)
			}
			if rec := postTraced(a, tt.path, tt.ct, tt.body, testTraceparent); rec.Code != tt.status {
				t.Fatalf("traced: %d %s", rec.Code, rec.Body)
			}
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			spans := rcv.Spans()
			if len(spans) != 2 {
				t.Fatalf("%d spans received, want 2 (ingest, decode of the sampled request): %v", len(spans), spans)
			}
			ingest, decode := otlptest.Named(spans, "ingest"), otlptest.Named(spans, "decode")
			if len(ingest) != 1 || len(decode) != 1 {
				t.Fatalf("spans %v, want one ingest and one decode", spans)
			}
			in := ingest[0]
			if in.TraceID() != testTraceID || in.ParentID() != testParentID || in.Kind.String() != "SPAN_KIND_SERVER" {
				t.Errorf("ingest span %s/%s, parent %s, kind %v; want in the traceparent's trace, under its span, a server span",
					in.TraceID(), in.SpanID(), in.ParentID(), in.Kind)
			}
			route := strings.SplitN(tt.path, "?", 2)[0]
			for k, v := range map[string]string{"http.request.method": "POST", "http.route": route, "url.path": route,
				"http.response.status_code": strconv.Itoa(tt.status), "twinline.protocol": tt.protocol} {
				if got := in.Attr(k); got != v {
					t.Errorf("ingest %s = %q, want %q", k, got, v)
				}
			}
			if d := decode[0]; d.ParentID() != in.SpanID() || d.Attr("twinline.events") != "2" || d.Attr("http.request.body.size") != strconv.Itoa(len(tt.body)) {
				t.Errorf("decode span: parent %s (ingest %s), events %s, body size %s", d.ParentID(), in.SpanID(), d.Attr("twinline.events"), d.Attr("http.request.body.size"))
			}
			if len(log.got) != 3 {
				t.Fatalf("%d batches logged, want 3", len(log.got))
			}
			for i, b := range log.got[:2] {
				if b.Trace.IsValid() {
					t.Errorf("batch %d of an unsampled request carries %v", i, b.Trace)
				}
			}
			if sc := log.got[2].Trace; !sc.IsSampled() || sc.TraceID().String() != testTraceID || sc.SpanID().String() != in.SpanID() {
				t.Errorf("the traced batch carries %v, want the ingest span %s", sc, in.SpanID())
			}
		})
	}
}

// TestIngestSpanStatus: a 5xx answer makes the ingest span an error, a
// 4xx (the client's fault) does not.
func TestIngestSpanStatus(t *testing.T) {
	tr, rcv := newTracing(t, 1)
	a := newTestAPI(t, &fakeLog{real: eventlog.New(1000, nil), appendErr: eventlog.ErrFull})
	a.tracer = tr.Tracer("api")
	postTraced(a, "/api/v1/events", "application/json", `{"machineId":"m","temp":1}`, "")
	a = newTestAPI(t, &fakeLog{real: eventlog.New(1000, nil)})
	a.tracer = tr.Tracer("api")
	postTraced(a, "/api/v1/events", "application/json", `{"machineId":`, "")
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range otlptest.Named(rcv.Spans(), "ingest") {
		got[s.Attr("http.response.status_code")] = s.Status.GetCode().String()
	}
	want := map[string]string{"503": "STATUS_CODE_ERROR", "400": "STATUS_CODE_UNSET"}
	for code, status := range want {
		if got[code] != status {
			t.Errorf("ingest span of a %s: status %q, want %q (all: %v)", code, got[code], status, got)
		}
	}
}

// BenchmarkIngestTracing: one small JSON request through the handler with
// tracing off, on at sampler 0 (no traceparent), and on with a sampled
// traceparent: off and sampler 0 allocate the same.
func BenchmarkIngestTracing(b *testing.B) {
	for _, tc := range []struct {
		name        string
		on          bool
		traceparent string
	}{{"off", false, ""}, {"sampler=0", true, ""}, {"sampled", true, testTraceparent}} {
		b.Run(tc.name, func(b *testing.B) {
			a := newBenchAPI(b)
			if tc.on {
				tr, _ := newTracing(b, 0)
				a.tracer = tr.Tracer("api")
			}
			body := `{"machineId":"press-1","temp":71.5,"rpm":1500}`
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest("POST", "/api/v1/events", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				if tc.traceparent != "" {
					req.Header.Set("Traceparent", tc.traceparent)
				}
				rec := httptest.NewRecorder()
				a.ServeHTTP(rec, req)
				if rec.Code != http.StatusAccepted {
					b.Fatalf("%d %s", rec.Code, rec.Body)
				}
			}
		})
	}
}

// newBenchAPI is newTestAPI on a log whose batches are acknowledged at
// once.
func newBenchAPI(b *testing.B) *API {
	b.Helper()
	log := eventlog.New(1<<20, nil)
	go func() {
		for {
			es, err := log.Read(context.Background(), 1<<20)
			if err != nil {
				return
			}
			for _, e := range es {
				e.Ack(eventlog.Result{Accepted: len(e.Batch.Events)}, nil)
			}
		}
	}()
	b.Cleanup(log.Close)
	return newTestAPI(b, log)
}
