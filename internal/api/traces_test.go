package api

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/twinline/twinline/internal/auth"
	"github.com/twinline/twinline/internal/otlptest"
	"github.com/twinline/twinline/internal/ratelimit"
)

// relaySpan is one dashboard span as the OpenTelemetry JS exporter writes
// it: OTLP/JSON, ids in hex, a resource that claims to be the server.
func relaySpan(traceID, spanID, parentID string) string {
	return `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"twinline"}},` +
		`{"key":"telemetry.sdk.language","value":{"stringValue":"webjs"}}]},` +
		`"scopeSpans":[{"scope":{"name":"twinline-dashboard"},"spans":[{"traceId":"` + traceID + `","spanId":"` + spanID + `",` +
		`"parentSpanId":"` + parentID + `","name":"render","kind":5,"startTimeUnixNano":"1765000000000000000",` +
		`"endTimeUnixNano":"1765000000016000000","attributes":[{"key":"twinline.machine","value":{"stringValue":"press-07"}},` +
		`{"key":"twinline.samples","value":{"intValue":3}}]}]}]}]}`
}

const (
	relayTrace  = "5b8efff798038103d269b633813fc60c"
	relaySpanID = "eee19b7ec3c1b174"
	relayParent = "a3ce929d0e0e4736"
)

// newRelayAPI is an API with auth on (tokens "reader": read, "ingester":
// ingest), relaying spans with upload (nil: tracing off) behind limit.
func newRelayAPI(upload UploadTracesFunc, limit func(http.Handler) http.Handler, opts TracingOptions) *API {
	verify := func(secret string) (auth.Identity, error) {
		switch secret {
		case "reader":
			return auth.Identity{Name: "reader", Kind: auth.KindToken, Scopes: auth.ScopeRead, TokenID: "r"}, nil
		case "ingester":
			return auth.Identity{Name: "ingester", Kind: auth.KindToken, Scopes: auth.ScopeIngest, TokenID: "i"}, nil
		}
		return auth.Identity{}, auth.ErrInvalidToken
	}
	return New(Options{MaxInflightIngest: 1, Tracing: opts}, Deps{
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready:        func() error { return nil },
		Logger:       slog.New(slog.DiscardHandler),
		UploadTraces: upload,
		TracesLimit:  limit,
		Auth:         &Auth{Open: func() bool { return false }, Verify: verify, CSRF: func(string) string { return "csrf" }},
	})
}

func postTraces(a *API, token, ct, body string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest("POST", "/api/v1/traces", strings.NewReader(body))
	if ct != "" {
		r.Header.Set("Content-Type", ct)
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	w := httptest.NewRecorder()
	a.ServeHTTP(w, r)
	return w
}

// TestTraceRelayForwardsToTheCollector: a span posted the way the
// dashboard's SDK posts it reaches a real OTLP receiver through a real
// OTLP/HTTP exporter client, with its ids, parent and attributes, and the
// service name forced to twinline-dashboard.
func TestTraceRelayForwardsToTheCollector(t *testing.T) {
	rcv := otlptest.Start(t)
	client := otlptracehttp.NewClient(otlptracehttp.WithEndpointURL(rcv.HTTPURL + "/v1/traces"))
	if err := client.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Stop(context.Background()) })
	a := newRelayAPI(client.UploadTraces, nil, TracingOptions{})

	w := postTraces(a, "reader", "application/json", relaySpan(relayTrace, relaySpanID, relayParent))
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("got %d %s %s; want 200 OTLP/JSON", w.Code, w.Header().Get("Content-Type"), w.Body)
	}
	spans := rcv.Wait(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) > 0 })
	type got struct{ Trace, Span, Parent, Name, Service, SDK, Machine, Samples string }
	s := spans[0]
	if diff := cmp.Diff(got{s.TraceID(), s.SpanID(), s.ParentID(), s.Name, s.Resource["service.name"], s.Resource["telemetry.sdk.language"],
		s.Attr("twinline.machine"), s.Attr("twinline.samples")},
		got{relayTrace, relaySpanID, relayParent, "render", DashboardService, "webjs", "press-07", "3"}); diff != "" {
		t.Errorf("received span (-got +want):\n%s", diff)
	}
	if len(spans) != 1 {
		t.Errorf("received %d spans, want 1", len(spans))
	}
}

// TestTraceRelayRefuses: every bad request is a problem naming what is
// wrong, and nothing of it is uploaded.
func TestTraceRelayRefuses(t *testing.T) {
	span := relaySpan(relayTrace, relaySpanID, relayParent)
	many := `{"resourceSpans":[{"scopeSpans":[{"spans":[` + strings.Repeat(`{"traceId":"`+relayTrace+`","spanId":"`+relaySpanID+`","name":"r"},`, 3) +
		`{"traceId":"` + relayTrace + `","spanId":"` + relaySpanID + `","name":"r"}]}]}]}`
	tests := []struct {
		name, token, ct, body string
		header                []string
		status                int
		detail                string
	}{
		{"no token", "", "application/json", span, nil, http.StatusUnauthorized, "needs a token"},
		{"wrong scope", "ingester", "application/json", span, nil, http.StatusForbidden, "read scope"},
		{"oversize", "reader", "application/json", `{"resourceSpans":[],"x":"` + strings.Repeat("a", 2048) + `"}`, nil,
			http.StatusRequestEntityTooLarge, "exceeds 1024 bytes"},
		{"too many spans", "reader", "application/json", many, nil, http.StatusRequestEntityTooLarge, "4 spans: at most 3"},
		{"not JSON", "reader", "application/json", `{"resourceSpans":[`, nil, http.StatusBadRequest, "not an OTLP/JSON"},
		{"wrong type", "reader", "application/json", `{"resourceSpans":{}}`, nil, http.StatusBadRequest, "not an OTLP/JSON"},
		{"short trace id", "reader", "application/json", relaySpan("5b8efff7", relaySpanID, ""), nil, http.StatusBadRequest,
			"spans[0].traceId: must be 16 bytes"},
		{"zero span id", "reader", "application/json", relaySpan(relayTrace, "0000000000000000", ""), nil, http.StatusBadRequest,
			"spans[0].spanId: all zero"},
		{"protobuf", "reader", "application/x-protobuf", "\x0a\x00", nil, http.StatusUnsupportedMediaType, "OTLP/HTTP JSON"},
		{"no content type", "reader", "", span, nil, http.StatusUnsupportedMediaType, "OTLP/HTTP JSON"},
		{"gzip", "reader", "application/json", span, []string{"Content-Encoding", "gzip"}, http.StatusUnsupportedMediaType, "uncompressed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uploaded := 0
			a := newRelayAPI(func(context.Context, []*tracepb.ResourceSpans) error { uploaded++; return nil }, nil,
				TracingOptions{MaxBodyBytes: 1024, MaxSpans: 3})
			w := postTraces(a, tt.token, tt.ct, tt.body, tt.header...)
			if w.Code != tt.status || !strings.Contains(w.Header().Get("Content-Type"), "problem+json") || !strings.Contains(w.Body.String(), tt.detail) {
				t.Errorf("got %d %s %s; want %d problem saying %q", w.Code, w.Header().Get("Content-Type"), w.Body, tt.status, tt.detail)
			}
			if uploaded != 0 {
				t.Errorf("the refused request was uploaded")
			}
		})
	}
}

// TestTraceRelayRateLimit: past its burst a client gets 429 with
// Retry-After, another client is not affected.
func TestTraceRelayRateLimit(t *testing.T) {
	now := time.Unix(1765000000, 0)
	l, err := ratelimit.New(ratelimit.Options{Name: "traces", Limit: ratelimit.Limit{Rate: 1, Burst: 2}, Key: ClientKey,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	uploaded := 0
	a := newRelayAPI(func(context.Context, []*tracepb.ResourceSpans) error { uploaded++; return nil }, l.Middleware, TracingOptions{})
	span := relaySpan(relayTrace, relaySpanID, "")
	var codes []int
	for range 3 {
		codes = append(codes, postTraces(a, "reader", "application/json", span).Code)
	}
	w := postTraces(a, "reader", "application/json", span)
	if diff := cmp.Diff(append(codes, w.Code), []int{200, 200, 429, 429}); diff != "" {
		t.Errorf("statuses (-got +want):\n%s", diff)
	}
	if w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "too many traces requests") {
		t.Errorf("429 answer: %v %s", w.Header(), w.Body)
	}
	if uploaded != 2 {
		t.Errorf("uploaded %d requests, want 2", uploaded)
	}
	if got := postTraces(a, "ingester", "application/json", span).Code; got != http.StatusForbidden {
		t.Errorf("another client: %d, want its own answer (403), not 429", got)
	}
	now = now.Add(time.Second)
	if got := postTraces(a, "reader", "application/json", span).Code; got != http.StatusOK {
		t.Errorf("a second later: %d, want 200", got)
	}
}

// TestTraceRelayOff: without an upload func the relay is not found and the
// session tells the dashboard not to trace; with one it says so, with the
// trace viewer's URL.
func TestTraceRelayOff(t *testing.T) {
	session := func(a *API) map[string]any {
		r := httptest.NewRequest("GET", "/api/v1/session", nil)
		r.Header.Set("Authorization", "Bearer reader")
		w := httptest.NewRecorder()
		a.ServeHTTP(w, r)
		var v struct {
			Tracing map[string]any `json:"tracing"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || w.Code != 200 {
			t.Fatalf("session: %d %s %v", w.Code, w.Body, err)
		}
		return v.Tracing
	}
	off := newRelayAPI(nil, nil, TracingOptions{UIURL: "http://jaeger:16686/trace/{traceId}"})
	w := postTraces(off, "reader", "application/json", relaySpan(relayTrace, relaySpanID, ""))
	if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "tracing is off") {
		t.Errorf("tracing off: %d %s; want 404 saying tracing is off", w.Code, w.Body)
	}
	if diff := cmp.Diff(session(off), map[string]any{"enabled": false, "uiUrl": "http://jaeger:16686/trace/{traceId}"}); diff != "" {
		t.Errorf("session tracing, off (-got +want):\n%s", diff)
	}
	on := newRelayAPI(func(context.Context, []*tracepb.ResourceSpans) error { return nil }, nil, TracingOptions{})
	if diff := cmp.Diff(session(on), map[string]any{"enabled": true}); diff != "" {
		t.Errorf("session tracing, on (-got +want):\n%s", diff)
	}
}

// TestTraceRelayCollectorDown: an upload error is a 503 the exporter
// retries after Retry-After.
func TestTraceRelayCollectorDown(t *testing.T) {
	a := newRelayAPI(func(context.Context, []*tracepb.ResourceSpans) error { return errors.New("connection refused") }, nil, TracingOptions{})
	w := postTraces(a, "reader", "application/json", relaySpan(relayTrace, relaySpanID, ""))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" || !strings.Contains(w.Body.String(), "upstream-unavailable") {
		t.Errorf("got %d %v %s; want 503 upstream-unavailable with Retry-After", w.Code, w.Header(), w.Body)
	}
}

func TestOTLPID(t *testing.T) {
	// protojson reads the id's JSON string as base64: what it gives for s.
	read := func(s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("%q is not base64: %v", s, err)
		}
		return b
	}
	trace, _ := hex.DecodeString(relayTrace)
	tests := []struct {
		name     string
		in       []byte
		size     int
		optional bool
		want     string // hex, or "error"
	}{
		{"hex trace id", read(relayTrace), 16, false, relayTrace},
		{"upper-case hex", read(strings.ToUpper(relayTrace)), 16, false, relayTrace},
		{"hex span id", read(relaySpanID), 8, false, relaySpanID},
		{"base64 trace id", read(base64.StdEncoding.EncodeToString(trace)), 16, false, relayTrace},
		{"missing", nil, 16, false, "error"},
		{"missing parent", nil, 8, true, ""},
		{"zero parent", read("0000000000000000"), 8, true, ""},
		{"zero trace id", read(strings.Repeat("0", 32)), 16, false, "error"},
		{"not hex", read("zzzzzzzzzzzzzzzz"), 8, false, "error"},
		{"wrong size", read("5b8efff798038103"), 16, false, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := otlpID(tt.in, tt.size, tt.optional)
			h := hex.EncodeToString(got)
			if err != nil {
				h = "error"
			}
			if h != tt.want {
				t.Errorf("got %s; want %s", h, tt.want)
			}
		})
	}
}

// FuzzTraceRelay: no body makes the relay fail other than with a 2xx or a
// 4xx problem, and what it uploads always has valid ids and the
// dashboard's service name.
func FuzzTraceRelay(f *testing.F) {
	f.Add(relaySpan(relayTrace, relaySpanID, relayParent))
	f.Add(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"AAECAwQFBgcICQoLDA0ODw==","spanId":"AAECAwQFBgc=","name":"x"}]}]}]}`)
	f.Add(`{"resourceSpans":[null]}`)
	var bad error
	a := newRelayAPI(func(_ context.Context, rss []*tracepb.ResourceSpans) error {
		for _, rs := range rss {
			if names := serviceNames(rs); len(names) != 1 || names[0] != DashboardService {
				bad = fmt.Errorf("service.name %q", names)
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					if len(s.TraceId) != 16 || len(s.SpanId) != 8 || len(s.ParentSpanId) != 0 && len(s.ParentSpanId) != 8 {
						bad = fmt.Errorf("ids %x %x %x", s.TraceId, s.SpanId, s.ParentSpanId)
					}
				}
			}
		}
		return nil
	}, nil, TracingOptions{})
	f.Fuzz(func(t *testing.T, body string) {
		bad = nil
		w := postTraces(a, "reader", "application/json", body)
		if w.Code != http.StatusOK && (w.Code < 400 || w.Code >= 500) {
			t.Errorf("status %d: %s", w.Code, w.Body)
		}
		if bad != nil {
			t.Error(bad)
		}
	})
}

// serviceNames returns the values of rs's service.name attributes.
func serviceNames(rs *tracepb.ResourceSpans) []string {
	var out []string
	for _, kv := range rs.GetResource().GetAttributes() {
		if kv.GetKey() == "service.name" {
			out = append(out, kv.GetValue().GetStringValue())
		}
	}
	return out
}
