package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/config"
	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// fakeLog acknowledges appended batches at once with ack, or refuses them
// with appendErr.
type fakeLog struct {
	appendErr error
	ackErr    error
	got       []*telemetry.Batch
	real      *eventlog.Log
}

func (f *fakeLog) Append(b *telemetry.Batch) (*eventlog.Entry, error) {
	if f.appendErr != nil {
		return nil, f.appendErr
	}
	f.got = append(f.got, b)
	e, err := f.real.Append(b)
	if err != nil {
		return nil, err
	}
	es, _ := f.real.Read(context.Background(), 1<<30)
	for _, e := range es {
		e.Ack(eventlog.Result{Accepted: len(e.Batch.Events)}, f.ackErr)
	}
	return e, nil
}

// Submit is the SubmitFunc of the fake.
func (f *fakeLog) Submit(ctx context.Context, b *telemetry.Batch) (eventlog.Result, error) {
	e, err := f.Append(b)
	if err != nil {
		return eventlog.Result{}, err
	}
	return e.Wait(ctx)
}

type submitter interface {
	Submit(ctx context.Context, b *telemetry.Batch) (eventlog.Result, error)
}

// openTwins opens a registry in a temporary directory and the live state
// that registers into it, wired as the server wires them.
func openTwins(t testing.TB, offlineAfter time.Duration, clock func() time.Time) (*twin.Registry, *twin.Live) {
	t.Helper()
	reg, err := twin.OpenRegistryFile(filepath.Join(t.TempDir(), "registry.json"), clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	live := twin.NewLive(twin.LiveOptions{OfflineAfter: offlineAfter, MedianWindow: 60, Now: clock, Register: reg.AutoRegister})
	reg.OnDelete(live.Forget)
	return reg, live
}

func newTestAPI(t testing.TB, l submitter) *API {
	t.Helper()
	reg, live := openTwins(t, time.Minute, time.Now)
	return New(Options{
		MaxBodyBytes: 1 << 20, MaxDecompressedBytes: 4 << 20, MaxLineBytes: 1024,
		Limits:            telemetry.DefaultLimits(),
		MachineTags:       []string{"machineId", "host"},
		Retention:         time.Hour,
		MaxFuture:         time.Minute,
		MaxInflightIngest: 4,
		ReadTimeout:       time.Minute,
	}, Deps{
		Submit: l.Submit, Registry: reg, Live: live, Store: nil,
		Stream: http.NotFoundHandler(), Metrics: http.NotFoundHandler(), UI: http.NotFoundHandler(),
		Ready:  func() error { return nil },
		Logger: slog.New(slog.DiscardHandler),
	})
}

func post(a *API, path, ct, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, req)
	return rec
}

func TestIngestOutcomes(t *testing.T) {
	tests := []struct {
		name       string
		log        *fakeLog
		path, ct   string
		body       string
		status     int
		retryAfter bool
		contains   string
	}{
		{"accepted", &fakeLog{}, "/api/v1/events", "application/json", `{"machineId":"m","temp":1}`, 202, false, `"accepted":1`},
		{"log full", &fakeLog{appendErr: eventlog.ErrFull}, "/api/v1/events", "", `{"machineId":"m","temp":1}`, 503, true, "event log is full"},
		{"log full, influx", &fakeLog{appendErr: eventlog.ErrFull}, "/write", "", "cpu,host=m v=1", 503, true, `"error":`},
		{"too large for log", &fakeLog{appendErr: eventlog.ErrTooLarge}, "/api/v1/events", "", `{"machineId":"m","temp":1}`, 413, false, "split"},
		{"closed", &fakeLog{appendErr: eventlog.ErrClosed}, "/api/v1/events", "", `{"machineId":"m","temp":1}`, 503, true, "shutting down"},
		{"store failed", &fakeLog{ackErr: errors.New("disk full")}, "/api/v1/events", "", `{"machineId":"m","temp":1}`, 503, true, "nothing is acknowledged"},
		{"store out of bounds", &fakeLog{ackErr: fmt.Errorf("storing: %w", store.ErrOutOfBounds)}, "/api/v1/events", "", `{"machineId":"m","temp":1}`, 400, false, "time window"},
		{"malformed", &fakeLog{}, "/api/v1/events", "", `{"machineId":`, 400, false, "urn:twinline:problem:malformed-body"},
		{"empty", &fakeLog{}, "/api/v1/events", "", ``, 400, false, "empty body"},
		{"unsupported type", &fakeLog{}, "/api/v1/events", "text/csv", `a,b`, 415, false, "application/x-ndjson"},
		{"bad precision", &fakeLog{}, "/write?precision=fortnight", "", "cpu,host=m v=1", 400, false, "precision"},
		{"lp ok", &fakeLog{}, "/api/v2/write?precision=s", "", "cpu,host=m v=1", 204, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.log.real = eventlog.New(1000, nil)
			a := newTestAPI(t, tt.log)
			rec := post(a, tt.path, tt.ct, tt.body)
			if rec.Code != tt.status {
				t.Fatalf("status = %d (%s), want %d", rec.Code, rec.Body, tt.status)
			}
			if got := rec.Header().Get("Retry-After") != ""; got != tt.retryAfter {
				t.Errorf("Retry-After present = %v, want %v", got, tt.retryAfter)
			}
			wantCT := "application/problem+json"
			if !strings.HasPrefix(tt.path, "/api/v1/") {
				wantCT = "application/json" // what InfluxDB clients parse
			}
			if rec.Code >= 400 && rec.Header().Get("Content-Type") != wantCT {
				t.Errorf("Content-Type = %q, want %s", rec.Header().Get("Content-Type"), wantCT)
			}
			if !strings.Contains(rec.Body.String(), tt.contains) {
				t.Errorf("body %s does not contain %q", rec.Body, tt.contains)
			}
		})
	}
}

func TestSeriesParameterErrors(t *testing.T) {
	a := newTestAPI(t, &fakeLog{real: eventlog.New(10, nil)})
	if _, _, err := a.registry.Put("m", twin.Info{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		query string
		names []string
	}{
		{"", []string{"metric"}},
		{"metric=t&from=yesterday", []string{"from"}},
		{"metric=t&from=2000&to=1000", []string{"from"}},
		{"metric=t&to=later", []string{"to"}},
		{"metric=t&step=fast&agg=median", []string{"step", "agg"}},
		{"metric=t&agg=max", []string{"agg"}},
		{"metric=t&points=1", []string{"points"}},
		{"metric=t&points=10&step=10s", []string{"points"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			rec := httptest.NewRecorder()
			a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/machines/m/series?"+tt.query, nil))
			if rec.Code != 400 {
				t.Fatalf("status %d, want 400", rec.Code)
			}
			var p problem.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, ip := range p.InvalidParams {
				names = append(names, ip.Name)
			}
			if diff := cmp.Diff(names, tt.names); diff != "" {
				t.Errorf("invalidParams names (-got +want):\n%s", diff)
			}
		})
	}
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/machines/nope/series?metric=t", nil))
	if rec.Code != 404 || !strings.Contains(rec.Body.String(), "urn:twinline:problem:not-found") {
		t.Errorf("unknown machine: %d %s; want 404 problem", rec.Code, rec.Body)
	}
}

// TestOpenAPIMatchesRoutes keeps the OpenAPI document in step with the
// routes the server registers.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(openapiDoc, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi = %q, want 3.1.x", doc.OpenAPI)
	}
	a := newTestAPI(t, &fakeLog{real: eventlog.New(10, nil)})
	var fromRoutes, fromDoc []string
	for _, rt := range a.routes() {
		fromRoutes = append(fromRoutes, strings.ToLower(rt.method)+" "+strings.TrimSuffix(rt.path, "{$}"))
	}
	for path, item := range doc.Paths {
		for method := range item {
			if method != "parameters" {
				fromDoc = append(fromDoc, method+" "+path)
			}
		}
	}
	slices.Sort(fromRoutes)
	slices.Sort(fromDoc)
	if diff := cmp.Diff(fromRoutes, fromDoc); diff != "" {
		t.Errorf("routes vs openapi.json paths (-routes +doc):\n%s", diff)
	}
}

func TestNotFoundAndMethodNotAllowed(t *testing.T) {
	a := newTestAPI(t, &fakeLog{real: eventlog.New(10, nil)})
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/api/v1/nothing", 404, ""},
		{"GET", "/write", 405, "POST"},
		{"POST", "/api/v1/machines/m1", 405, "GET, HEAD, PUT, PATCH, DELETE"},
		{"DELETE", "/api/v1/machines", 405, "GET, HEAD"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		a.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Code != tt.status || rec.Header().Get("Content-Type") != "application/problem+json" || rec.Header().Get("Allow") != tt.allow {
			t.Errorf("%s %s: got %d %q Allow %q; want %d problem+json Allow %q",
				tt.method, tt.path, rec.Code, rec.Header().Get("Content-Type"), rec.Header().Get("Allow"), tt.status, tt.allow)
		}
	}
}

func TestQueryEndpoint(t *testing.T) {
	a := newTestAPI(t, &fakeLog{real: eventlog.New(10, nil)})
	for _, q := range []string{"CREATE DATABASE plant", "SHOW DATABASES"} {
		rec := post(a, "/query", "application/x-www-form-urlencoded", "q="+strings.ReplaceAll(q, " ", "+"))
		if rec.Code != 200 {
			t.Fatalf("%s: %d %s", q, rec.Code, rec.Body)
		}
		if q == "SHOW DATABASES" {
			var got struct {
				Results []struct {
					Series []struct {
						Values [][]string `json:"values"`
					} `json:"series"`
				} `json:"results"`
			}
			if err := json.NewDecoder(bytes.NewReader(rec.Body.Bytes())).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got.Results[0].Series[0].Values, [][]string{{"twinline"}, {"plant"}}); diff != "" {
				t.Errorf("databases (-got +want):\n%s", diff)
			}
		}
	}
	rec := post(a, "/query", "application/x-www-form-urlencoded", "q=SELECT+*+FROM+cpu")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"error":"twinline answers only`) {
		t.Errorf("SELECT: %d %s; want a statement error", rec.Code, rec.Body)
	}
}

func TestMaxMachines(t *testing.T) {
	fl := &fakeLog{real: eventlog.New(1000, nil)}
	a := newTestAPI(t, fl)
	a.decodeOpts.AdmitMachine = func(id string) string { return a.registry.Admit(id, 1) }
	a.registry.(*twin.Registry).AutoRegister("known-mm", time.UnixMilli(1))
	rec := post(a, "/api/v1/events", "", `[{"machineId":"known-mm","x":1},{"machineId":"new-mm","x":2}]`)
	if rec.Code != 400 || !strings.Contains(rec.Body.String(), `"index":1,"field":"machineId"`) || !strings.Contains(rec.Body.String(), "--max-machines") {
		t.Errorf("got %d %s; want 400 naming item 1 and the limit", rec.Code, rec.Body)
	}
	if len(fl.got) != 1 || len(fl.got[0].Events) != 1 || fl.got[0].Events[0].Machine != "known-mm" {
		t.Errorf("logged %+v; want the known machine's event only", fl.got)
	}
}

func TestPartialFrom(t *testing.T) {
	m := twin.Machine{Metrics: map[string]twin.Value{"temp": {TS: 95_000}, "rpm": {TS: 97_000}}} // newest 97 s
	pts := []store.Point{{Time: 70_000}, {Time: 80_000}, {Time: 90_000}}
	tests := []struct {
		lateness time.Duration
		want     *int64
	}{
		{5 * time.Second, ptr(int64(90_000))},  // watermark 92 s: [90, 100) open
		{20 * time.Second, ptr(int64(70_000))}, // watermark 77 s: [70, 80) open
		{0, ptr(int64(90_000))},
	}
	for _, tt := range tests {
		got := partialFrom(pts, 10*time.Second, m, tt.lateness, 0)
		if diff := cmp.Diff(got, tt.want); diff != "" {
			t.Errorf("lateness %s (-got +want):\n%s", tt.lateness, diff)
		}
	}
	if got := partialFrom(pts[:2], 10*time.Second, m, 5*time.Second, 0); got != nil {
		t.Errorf("all buckets closed: got %d, want nil", *got)
	}
	if got := partialFrom(pts, 10*time.Second, twin.Machine{}, 0, 0); got != nil {
		t.Errorf("no data: got %d, want nil", *got)
	}
	// Quiet for longer than the lateness: the server clock closes windows.
	quiet := twin.Machine{Metrics: m.Metrics, LastSeen: 97_000}
	if got := partialFrom(pts, 10*time.Second, quiet, 5*time.Second, 200_000); got != nil {
		t.Errorf("quiet machine: got %d, want nil (all closed)", *got)
	}
}

func ptr[T any](v T) *T { return &v }

func TestServesByRole(t *testing.T) {
	tests := []struct {
		role               config.Role
		ingest, query, ops bool
	}{
		{"", true, true, true},
		{"all", true, true, true},
		{"gateway", true, false, true},
		{"api", false, true, true},
		{"processor", false, false, true},
	}
	for _, tt := range tests {
		t.Run("role "+string(tt.role), func(t *testing.T) {
			for _, c := range []struct {
				rt   route
				want bool
			}{
				{route{method: "POST", path: "/api/v1/events"}, tt.ingest},
				{route{method: "POST", path: "/api/v2/write"}, tt.ingest},
				{route{method: "GET", path: "/ping"}, tt.ingest},
				{route{method: "GET", path: "/api/v1/machines/{id}/series"}, tt.query},
				{route{method: "GET", path: "/api/v1/stream"}, tt.query},
				{route{method: "GET", path: "/{$}"}, tt.query},
				{route{method: "GET", path: "/readyz"}, tt.ops},
				{route{method: "GET", path: "/metrics"}, tt.ops},
			} {
				if got := serves(tt.role, c.rt); got != c.want {
					t.Errorf("serves(%q, %s %s) = %v, want %v", tt.role, c.rt.method, c.rt.path, got, c.want)
				}
			}
		})
	}
}
