package sim

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// testNow is the fixed clock of the emitters under test.
var testNow = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// sleeps is a fake sleep that records the waits asked for and returns at once.
type sleeps struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waits = append(s.waits, d)
	return ctx.Err()
}

// reply is one canned answer of a test server.
type reply struct {
	status int
	header map[string]string
	body   string
}

// server answers requests with the replies in turn, repeating the last one,
// and records the decoded NDJSON lines of every request.
type server struct {
	mu       sync.Mutex
	replies  []reply
	attempts int
	lines    [][]map[string]any
	headers  []http.Header
	problems []string
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	s.headers = append(s.headers, r.Header.Clone())
	if r.Method != http.MethodPost || r.URL.Path != EventsPath {
		s.problems = append(s.problems, fmt.Sprintf("%s %s, want POST %s", r.Method, r.URL.Path, EventsPath))
	}
	lines, err := decodeNDJSON(r.Body)
	if err != nil {
		s.problems = append(s.problems, err.Error())
	}
	s.lines = append(s.lines, lines)
	rep := s.replies[min(s.attempts, len(s.replies))-1]
	for k, v := range rep.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

func decodeNDJSON(r io.Reader) ([]map[string]any, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("opening gzip body: %w", err)
	}
	var out []map[string]any
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return out, fmt.Errorf("decoding line %d %q: %w", len(out)+1, sc.Text(), err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("reading body: %w", err)
	}
	return out, zr.Close()
}

func startServer(t *testing.T, replies ...reply) (*server, *httptest.Server) {
	t.Helper()
	s := &server{replies: replies}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	t.Cleanup(func() {
		for _, p := range s.problems {
			t.Errorf("server: %s", p)
		}
	})
	return s, ts
}

var accepted = reply{status: http.StatusAccepted, header: map[string]string{"Content-Type": "application/json"}, body: `{"accepted":2,"duplicates":0}`}

func testEvents() []telemetry.Event {
	return []telemetry.Event{
		{
			Machine: "press-01", ID: "press-01-1", Seq: 1, HasSeq: true, Time: 1740830400005,
			Metrics: []telemetry.Metric{{Name: "temp", Value: 48.2}, {Name: "pressure", Value: 181}, {Name: "cycles", Value: 123456}},
			Tags:    map[string]string{"site": "plant-1", "kind": "press", "line": "line-1"},
		},
		{
			Machine: `odd"machine\é`, Time: 1740830400010,
			Metrics: []telemetry.Metric{{Name: "vibration", Value: 0.00012}, {Name: "big", Value: -1.5e21}},
		},
	}
}

func TestHTTPEmitterPostsGzipNDJSON(t *testing.T) {
	for _, target := range []string{"", "/"} { // with and without a trailing slash
		t.Run(fmt.Sprintf("target%q", target), func(t *testing.T) {
			srv, ts := startServer(t, accepted)
			emit := NewHTTPEmitter(ts.URL+target, ts.Client())
			if err := emit(t.Context(), testEvents()); err != nil {
				t.Fatalf("emit: %v", err)
			}
			if srv.attempts != 1 {
				t.Fatalf("%d requests, want 1", srv.attempts)
			}
			h := srv.headers[0]
			got := map[string]string{"Content-Type": h.Get("Content-Type"), "Content-Encoding": h.Get("Content-Encoding")}
			want := map[string]string{"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("headers (-got +want):\n%s", diff)
			}
			wantLines := []map[string]any{
				{
					"machineId": "press-01", "id": "press-01-1", "seq": 1.0, "timestamp": 1740830400005.0,
					"temp": 48.2, "pressure": 181.0, "cycles": 123456.0,
					"tags": map[string]any{"site": "plant-1", "kind": "press", "line": "line-1"},
				},
				{
					"machineId": `odd"machine\é`, "timestamp": 1740830400010.0,
					"vibration": 0.00012, "big": -1.5e21,
				},
			}
			if diff := cmp.Diff(srv.lines[0], wantLines); diff != "" {
				t.Errorf("NDJSON lines (-got +want):\n%s", diff)
			}
		})
	}
}

func TestHTTPEmitterNothingToSend(t *testing.T) {
	srv, ts := startServer(t, accepted)
	if err := NewHTTPEmitter(ts.URL, ts.Client())(t.Context(), nil); err != nil {
		t.Fatalf("emit: %v", err)
	}
	if srv.attempts != 0 {
		t.Errorf("%d requests for no events, want 0", srv.attempts)
	}
}

func TestHTTPEmitterRetries(t *testing.T) {
	overloaded := func(status int, retryAfter string) reply {
		r := reply{status: status, header: map[string]string{"Content-Type": "application/problem+json"}, body: `{"title":"overloaded","status":503}`}
		if retryAfter != "" {
			r.header["Retry-After"] = retryAfter
		}
		return r
	}
	tests := []struct {
		name      string
		replies   []reply
		wantWaits []time.Duration
	}{
		{"503, Retry-After 1", []reply{overloaded(503, "1"), accepted}, []time.Duration{time.Second}},
		{"503, Retry-After 0", []reply{overloaded(503, "0"), accepted}, []time.Duration{0}},
		{"429, Retry-After 2", []reply{overloaded(429, "2"), accepted}, []time.Duration{2 * time.Second}},
		{"Retry-After as a date", []reply{overloaded(503, testNow.Add(5*time.Second).Format(http.TimeFormat)), accepted}, []time.Duration{5 * time.Second}},
		{"Retry-After capped", []reply{overloaded(503, "3600"), accepted}, []time.Duration{maxRetryAfter}},
		{"no Retry-After: backoff", []reply{overloaded(503, ""), overloaded(503, ""), overloaded(503, "junk"), accepted}, []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}},
		{"502 bad gateway", []reply{{status: 502}, accepted}, []time.Duration{250 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, ts := startServer(t, tt.replies...)
			var sl sleeps
			emit := newHTTPEmitter(ts.URL, ts.Client(), sl.sleep, func() time.Time { return testNow })
			if err := emit(t.Context(), testEvents()); err != nil {
				t.Fatalf("emit: %v", err)
			}
			if diff := cmp.Diff(sl.waits, tt.wantWaits); diff != "" {
				t.Errorf("waits (-got +want):\n%s", diff)
			}
			if got, want := srv.attempts, len(tt.replies); got != want {
				t.Errorf("%d requests, want %d", got, want)
			}
			// Every attempt carries the whole batch.
			for i, lines := range srv.lines {
				if got, want := len(lines), 2; got != want {
					t.Errorf("attempt %d carried %d events, want %d", i+1, got, want)
				}
			}
		})
	}
}

func TestHTTPEmitterGivesUp(t *testing.T) {
	t.Run("server keeps shedding load", func(t *testing.T) {
		srv, ts := startServer(t, reply{status: 503, header: map[string]string{"Retry-After": "1", "Content-Type": "application/problem+json"}, body: `{"title":"Service Unavailable","detail":"ingest queue full"}`})
		var sl sleeps
		err := newHTTPEmitter(ts.URL, ts.Client(), sl.sleep, time.Now)(t.Context(), testEvents())
		if !errors.Is(err, ErrDropped) {
			t.Fatalf("emit = %v, want an error wrapping ErrDropped", err)
		}
		var se *StatusError
		if !errors.As(err, &se) || se.StatusCode != 503 {
			t.Errorf("emit = %v, want a *StatusError with status 503", err)
		}
		if !strings.Contains(err.Error(), "ingest queue full") {
			t.Errorf("emit = %q, want the problem detail in it", err)
		}
		if got, want := srv.attempts, maxAttempts; got != want {
			t.Errorf("%d requests, want %d", got, want)
		}
		if got, want := len(sl.waits), maxAttempts-1; got != want {
			t.Errorf("%d waits, want %d", got, want)
		}
	})
	t.Run("server unreachable", func(t *testing.T) {
		ts := httptest.NewServer(http.NotFoundHandler())
		url := ts.URL
		ts.Close()
		var sl sleeps
		err := newHTTPEmitter(url, nil, sl.sleep, time.Now)(t.Context(), testEvents())
		if err == nil || errors.Is(err, ErrDropped) {
			t.Fatalf("emit = %v, want an error not wrapping ErrDropped", err)
		}
		want := []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second}
		if diff := cmp.Diff(sl.waits, want); diff != "" {
			t.Errorf("waits (-got +want):\n%s", diff)
		}
	})
}

func TestHTTPEmitterRejects(t *testing.T) {
	tests := []struct {
		name  string
		reply reply
		want  StatusError
	}{
		{
			name: "400 problem+json",
			reply: reply{status: 400, header: map[string]string{"Content-Type": "application/problem+json"},
				body: `{"type":"about:blank","title":"Bad Request","status":400,"detail":"1 of 2 events rejected: item 1: machineId: required","accepted":1,"errors":[{"index":1,"field":"machineId","reason":"required"}]}`},
			want: StatusError{StatusCode: 400, Title: "Bad Request", Detail: "1 of 2 events rejected: item 1: machineId: required"},
		},
		{
			name:  "413 plain text",
			reply: reply{status: 413, body: "request body too large\n"},
			want:  StatusError{StatusCode: 413, Detail: "request body too large"},
		},
		{
			name:  "404 empty",
			reply: reply{status: 404},
			want:  StatusError{StatusCode: 404},
		},
		{
			name:  "500 is not retried",
			reply: reply{status: 500, header: map[string]string{"Content-Type": "application/problem+json"}, body: `{"title":"Internal Server Error","detail":"opening wal: disk full"}`},
			want:  StatusError{StatusCode: 500, Title: "Internal Server Error", Detail: "opening wal: disk full"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, ts := startServer(t, tt.reply)
			var sl sleeps
			err := newHTTPEmitter(ts.URL, ts.Client(), sl.sleep, time.Now)(t.Context(), testEvents())
			var se *StatusError
			if !errors.As(err, &se) {
				t.Fatalf("emit = %v, want a *StatusError", err)
			}
			if diff := cmp.Diff(*se, tt.want); diff != "" {
				t.Errorf("StatusError (-got +want):\n%s", diff)
			}
			if tt.want.Detail != "" && !strings.Contains(err.Error(), tt.want.Detail) {
				t.Errorf("emit = %q, want it to contain %q", err, tt.want.Detail)
			}
			if errors.Is(err, ErrDropped) {
				t.Errorf("emit = %v, want no ErrDropped", err)
			}
			if srv.attempts != 1 || len(sl.waits) != 0 {
				t.Errorf("%d requests and %d waits, want 1 and 0", srv.attempts, len(sl.waits))
			}
		})
	}
}

func TestHTTPEmitterStopsWaitingWhenContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
		defer cancel()
		// A fake transport inside the bubble: the network would keep the
		// fake clock from advancing.
		var attempts int
		client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			attempts++
			rec := httptest.NewRecorder()
			rec.Header().Set("Retry-After", "10")
			rec.WriteHeader(http.StatusServiceUnavailable)
			return rec.Result(), nil
		})}
		start := time.Now()
		err := NewHTTPEmitter("http://twinline.test", client)(ctx, testEvents())
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("emit = %v, want an error wrapping context.DeadlineExceeded", err)
		}
		if got, want := time.Since(start), 1500*time.Millisecond; got != want {
			t.Errorf("emit returned after %s, want %s", got, want)
		}
		if attempts != 1 {
			t.Errorf("%d attempts, want 1", attempts)
		}
	})
}

func TestHTTPEmitterWaitsRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var times []time.Duration
		start := time.Now()
		client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			times = append(times, time.Since(start))
			rec := httptest.NewRecorder()
			if len(times) < 3 {
				rec.Header().Set("Retry-After", "2")
				rec.WriteHeader(http.StatusServiceUnavailable)
			} else {
				rec.WriteHeader(http.StatusAccepted)
			}
			return rec.Result(), nil
		})}
		if err := NewHTTPEmitter("http://twinline.test", client)(t.Context(), testEvents()); err != nil {
			t.Fatalf("emit: %v", err)
		}
		want := []time.Duration{0, 2 * time.Second, 4 * time.Second}
		if diff := cmp.Diff(times, want); diff != "" {
			t.Errorf("attempt times (-got +want):\n%s", diff)
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", -1},
		{"0", 0},
		{" 7 ", 7 * time.Second},
		{"-3", -1},
		{"1.5", -1},
		{"soon", -1},
		{"99999999999999", maxRetryAfter},
		{testNow.Add(12 * time.Second).Format(http.TimeFormat), 12 * time.Second},
		{testNow.Add(-time.Minute).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := retryAfter(tt.in, testNow); got != tt.want {
				t.Errorf("retryAfter(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestEncodeRejectsNonFinite(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		ev := telemetry.Event{Machine: "m", Metrics: []telemetry.Metric{{Name: "x", Value: v}}}
		if _, err := newNDJSONEncoder().encode([]telemetry.Event{ev}); err == nil {
			t.Errorf("encoding %v: got nil error, want one", v)
		}
	}
}

// TestRunOverHTTP runs a simulator against a server for real: a short run
// at a high rate, so it takes milliseconds.
func TestRunOverHTTP(t *testing.T) {
	srv, ts := startServer(t, reply{status: http.StatusAccepted})
	const count = 3000
	cfg := Config{Machines: 10, Rate: 200_000, Interval: 5 * time.Millisecond, Count: count, Duplicates: 0.1, OutOfOrder: 0.1, Seed: 1}
	s := New(cfg, NewHTTPEmitter(ts.URL, ts.Client()), nil)
	if err := s.Run(t.Context()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	ids := map[string]bool{}
	lines := 0
	for _, batch := range srv.lines {
		for _, l := range batch {
			lines++
			ids[l["id"].(string)] = true
		}
	}
	st := s.Stats()
	if got, want := len(ids), count; got != want {
		t.Errorf("%d distinct ids arrived, want %d", got, want)
	}
	if got, want := int64(lines), st.Events+st.Duplicates; got != want {
		t.Errorf("%d lines arrived, want Events+Duplicates = %d", got, want)
	}
	if got, want := int64(srv.attempts), st.Batches; got != want {
		t.Errorf("%d requests, want Stats().Batches = %d", got, want)
	}
}

func TestSleepCtx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if err := sleepCtx(t.Context(), 3*time.Second); err != nil {
			t.Fatalf("sleepCtx: %v", err)
		}
		if got, want := time.Since(start), 3*time.Second; got != want {
			t.Errorf("slept %s, want %s", got, want)
		}
	})
}

// TestEncode checks that the body is the events in the wire form, one a
// line, which the server's NDJSON decoder reads back to the same events.
// The codec itself is fuzzed in package ingest.
func TestEncode(t *testing.T) {
	enc := newNDJSONEncoder()
	for range 2 { // the second time with the buffers reused
		body, err := enc.encode(testEvents())
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("opening gzip body: %v", err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("reading gzip body: %v", err)
		}
		if n := bytes.Count(raw, []byte("\n")); n != 2 || !bytes.HasSuffix(raw, []byte("}\n")) {
			t.Fatalf("body %q is not 2 NDJSON lines", raw)
		}
		got, rejects, err := ingest.DecodeNDJSON(raw, ingest.DefaultOptions(), nil)
		if err != nil || len(rejects) > 0 {
			t.Fatalf("DecodeNDJSON(%s): rejects %v, err %v", raw, rejects, err)
		}
		if diff := cmp.Diff(got, testEvents()); diff != "" {
			t.Errorf("decoded body (-got +want):\n%s", diff)
		}
	}
}

func TestEncodeRefusesInvalidEvent(t *testing.T) {
	events := testEvents()
	events[1].Metrics[0].Value = math.NaN()
	_, err := newNDJSONEncoder().encode(events)
	var ee *ingest.EventError
	if !errors.As(err, &ee) || ee.Field != "metrics.vibration" || !strings.Contains(err.Error(), "event 1") {
		t.Errorf("encode error = %v, want event 1's *ingest.EventError on metrics.vibration", err)
	}
}

func BenchmarkEncode(b *testing.B) {
	s := New(Config{Machines: 100, Rate: 10000, Seed: 1}, nil, nil)
	s.startNs = testNow.UnixNano()
	events := s.generate(nil, 1000)
	enc := newNDJSONEncoder()
	b.ReportAllocs()
	var n, raw, zipped int
	for b.Loop() {
		body, err := enc.encode(events)
		if err != nil {
			b.Fatal(err)
		}
		n += len(events)
		raw += len(enc.raw)
		zipped += len(body)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(raw)/float64(n), "json_B/event")
	b.ReportMetric(float64(zipped)/float64(n), "gzip_B/event")
}

// TestEncodeStates: an event's states ride as a "states" object, the JSON
// form ingest decodes states from, in both layouts of the metrics.
func TestEncodeStates(t *testing.T) {
	events := []telemetry.Event{
		{
			Machine: "press-01", Time: 1740830400005, Metrics: []telemetry.Metric{{Name: "temp", Value: 48.2}},
			States: []telemetry.State{{Name: "state", Value: "RUNNING"}},
		},
		{
			// A metric named like a reserved key puts the metrics in a
			// "metrics" object.
			Machine: "m\"2", Time: 1740830400010, Metrics: []telemetry.Metric{{Name: "id", Value: 1}},
			States: []telemetry.State{{Name: "state", Value: "DOWN"}, {Name: "part", Value: "A-1\"x"}},
		},
	}
	var got []string
	for i := range events {
		b, err := ingest.AppendEvent(nil, &events[i])
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(b) {
			t.Errorf("event %d: %s is not JSON", i, b)
		}
		got = append(got, string(b))
	}
	want := []string{
		`{"machineId":"press-01","timestamp":1740830400005,"temp":48.2,"states":{"state":"RUNNING"}}`,
		`{"machineId":"m\"2","timestamp":1740830400010,"metrics":{"id":1},"states":{"state":"DOWN","part":"A-1\"x"}}`,
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("encoded (-got +want):\n%s", diff)
	}
	// The events themselves are left as they were.
	if events[1].States[1].Value != "A-1\"x" {
		t.Errorf("states changed: %v", events[1].States)
	}
}
