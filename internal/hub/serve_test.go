package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/problem"
	"github.com/twinline/twinline/internal/telemetry"
)

// These tests run the hub behind an httptest.Server with real WebSocket
// and SSE clients, synchronised on the messages they receive.

func decodeProblem(t *testing.T, rec *httptest.ResponseRecorder) problem.Problem {
	t.Helper()
	if got := rec.Header().Get("Content-Type"); got != "application/problem+json" {
		t.Errorf("Content-Type: got %q, want application/problem+json", got)
	}
	var p problem.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("decoding problem %q: %v", rec.Body.Bytes(), err)
	}
	if p.Status != rec.Code {
		t.Errorf("problem status %d, response status %d", p.Status, rec.Code)
	}
	return p
}

func TestServeHTTPBadRequest(t *testing.T) {
	tooMany := "all=0"
	for i := range 1001 {
		tooMany += "&machine=m" + strconv.Itoa(i)
	}
	tests := []struct {
		name   string
		method string
		query  string
		accept string
		header http.Header
		want   problem.Problem
	}{
		{
			name: "no machine, no all", query: "",
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "machine", Reason: "required: name at least one machine (machine=ID, repeatable), or subscribe to all with all=1"}}},
		},
		{
			name: "all=0 alone", query: "all=0",
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "machine", Reason: "required: name at least one machine (machine=ID, repeatable), or subscribe to all with all=1"}}},
		},
		{
			name: "bad all", query: "all=yes",
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "all", Reason: "must be 1 or true, to subscribe to every machine"}}},
		},
		{
			name: "machine and all", query: "all=1&machine=a",
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "machine", Reason: "give either machine or all=1, not both"}}},
		},
		{
			name: "too many machines", query: tooMany,
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "machine", Reason: "at most 1000 machines per stream, got 1001; use all=1"}}},
		},
		{
			name: "empty machine", query: "machine=a&machine=",
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "machine", Reason: "a machine id is 1 to 128 bytes"}}},
		},
		{
			name: "bad cursor and all", query: "all=2&machine=a&cursor=-1",
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "all", Reason: "must be 1 or true, to subscribe to every machine"},
				{Name: "cursor", Reason: "must be a seq: a non-negative integer"}}},
		},
		{
			name: "bad Last-Event-ID", query: "all=1", header: http.Header{"Last-Event-Id": {"x"}},
			want: problem.Problem{Type: problem.TypeInvalidParams, Status: 400, InvalidParams: []problem.InvalidParam{
				{Name: "Last-Event-ID", Reason: "must be a seq: a non-negative integer"}}},
		},
		{
			name: "neither WebSocket nor SSE", query: "all=1", accept: "application/json",
			want: problem.Problem{Type: problem.TypeUpgradeRequired, Status: 426},
		},
		{
			name: "POST", method: http.MethodPost, query: "all=1",
			want: problem.Problem{Type: problem.TypeMethodNotAllowed, Status: 405},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newTestHub(t, Options{})
			method, accept := tt.method, tt.accept
			if method == "" {
				method = http.MethodGet
			}
			if accept == "" {
				accept = "text/event-stream"
			}
			r := httptest.NewRequest(method, "/api/v1/stream?"+tt.query, nil)
			r.Header.Set("Accept", accept)
			for k, v := range tt.header {
				r.Header[k] = v
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)

			got := decodeProblem(t, rec)
			tt.want.Title = http.StatusText(tt.want.Status)
			got.Detail = "" // checked below
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("problem (-want +got):\n%s", diff)
			}
			if rec.Code != tt.want.Status {
				t.Errorf("status: got %d, want %d", rec.Code, tt.want.Status)
			}
			if p := decodeProblem(t, rec); p.Detail == "" || len(tt.want.InvalidParams) > 0 && !strings.Contains(p.Detail, tt.want.InvalidParams[0].Name) {
				t.Errorf("detail %q does not name the parameter", p.Detail)
			}
			if got := h.Clients(); got != 0 {
				t.Errorf("clients: got %d, want 0", got)
			}
		})
	}
}

var transports = []string{transportWS, transportSSE}

func TestStreamFilter(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			ctx := testContext(t)
			h, _ := newTestHub(t, Options{})
			srv := newTestServer(t, h)

			from := h.seq
			subs := []struct {
				query string
				want  []string // machine and seq − from of the messages
			}{
				{"all=1", []string{"a 1", "b 2", "c 3", "b 4", "a 5", " 6", "a 7"}},
				{"machine=a", []string{"a 1", "a 5", "a 7"}},
				{"machine=b&machine=c", []string{"b 2", "c 3", "b 4", "b 8"}},
			}
			clients := make([]*streamClient, len(subs))
			for i, s := range subs {
				clients[i] = dial(t, ctx, srv, tr, s.query, nil)
				clients[i].hello(t, ctx)
			}
			h.PublishSamples(samples("a", "t", 1.0, "b", "t", 2.0, "c", "t", 3.0, "a", "t", 4.0), 10)
			h.publishEvent("b", "alarm", "hot")
			h.publishEvent("a", "note", "hello")
			h.publishEvent("", "fleet", nil) // all-machines subscribers only
			for _, m := range []string{"a", "b", "c"} {
				h.publishEvent(m, "end", nil)
			}

			for i, s := range subs {
				var got []string
				for {
					m := clients[i].next(t, ctx)
					got = append(got, fmt.Sprint(m.Machine, " ", m.Seq-from))
					if m.Type == "end" {
						break
					}
				}
				if diff := cmp.Diff(s.want, got); diff != "" {
					t.Errorf("%s: messages (-want +got):\n%s", s.query, diff)
				}
			}
		})
	}
}

func TestStreamOrder(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			ctx := testContext(t)
			h, _ := newTestHub(t, Options{QueueSize: 4096})
			srv := newTestServer(t, h)
			c := dial(t, ctx, srv, tr, "all=1", nil)
			from := c.hello(t, ctx)

			const n = 2000
			go func() {
				for i := range n {
					h.PublishSamples(samples(fmt.Sprint("m", i%5), "x", float64(i)), int64(i))
				}
			}()
			got := c.until(t, ctx, from+n)
			if want := seqRange(from+1, from+n); !cmp.Equal(seqs(got), want) {
				t.Errorf("seqs: got %d messages, not %d consecutive from %d", len(got), n, from+1)
			}
			for i, m := range got {
				if m.Samples[0].Value != float64(i) || m.Machine != fmt.Sprint("m", i%5) || m.IngestTs != int64(i) {
					t.Fatalf("message %d: got %+v", i, m)
				}
			}
		})
	}
}

// TestResume reconnects with a cursor while messages are being published,
// and checks that the replay and the live stream join with no gap and no
// duplicate.
func TestResume(t *testing.T) {
	tests := []struct {
		transport string
		how       string // cursor, last-event-id
	}{
		{transportWS, "cursor"},
		{transportSSE, "cursor"},
		{transportSSE, "last-event-id"},
	}
	for _, tt := range tests {
		t.Run(tt.transport+"/"+tt.how, func(t *testing.T) {
			ctx := testContext(t)
			h, _ := newTestHub(t, Options{QueueSize: 8192})
			srv := newTestServer(t, h)
			first := dial(t, ctx, srv, tt.transport, "all=1", nil)
			from := first.hello(t, ctx)

			const before, during = 300, 3000
			for i := range before {
				h.publishEvent("m", "e", i)
			}
			got := first.until(t, ctx, from+before/2)
			cursor := got[len(got)-1].Seq // the client drops here

			var wg sync.WaitGroup
			wg.Go(func() {
				for i := range during {
					h.publishEvent("m", "e", before+i)
				}
			})
			query, hdr := "all=1", http.Header(nil)
			switch tt.how {
			case "cursor":
				query += "&cursor=" + strconv.FormatUint(cursor, 10)
			case "last-event-id":
				query += "&cursor=1" // stale: the header wins
				hdr = http.Header{"Last-Event-Id": {strconv.FormatUint(cursor, 10)}}
			}
			again := dial(t, ctx, srv, tt.transport, query, hdr)
			again.hello(t, ctx)
			wg.Wait()

			resumed := again.until(t, ctx, from+before+during)
			if want := seqRange(cursor+1, from+before+during); !cmp.Equal(seqs(resumed), want) {
				t.Errorf("seqs after resume: got %d messages %v…, want %d consecutive from %d",
					len(resumed), seqs(resumed)[:min(5, len(resumed))], len(want), cursor+1)
			}
			if tt.transport == transportSSE {
				for _, m := range resumed {
					if m.ID != strconv.FormatUint(m.Seq, 10) {
						t.Fatalf("SSE id %q for seq %d", m.ID, m.Seq)
					}
				}
			}
		})
	}
}

func TestResumeFiltered(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{})
	srv := newTestServer(t, h)
	leftRecently(t, h)
	from := h.seq
	for i := range 10 {
		h.publishEvent([]string{"a", "b", "c"}[i%3], "e", i)
	}
	c := dial(t, ctx, srv, transportWS, "machine=a&machine=c&cursor="+strconv.FormatUint(from+2, 10), nil)
	c.hello(t, ctx)
	h.publishEvent("b", "e", 10)
	h.publishEvent("c", "e", 11)
	var got []uint64
	for _, m := range c.until(t, ctx, from+12) {
		got = append(got, m.Seq-from)
	}
	// a: 1 4 7 10, b: 2 5 8 11, c: 3 6 9 12 (offsets from `from`).
	if want := []uint64{3, 4, 6, 7, 9, 10, 12}; !cmp.Equal(got, want) {
		t.Errorf("seqs − start: got %v, want %v", got, want)
	}
}

func TestCursorExpired(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			ctx := testContext(t)
			h, _ := newTestHub(t, Options{ReplaySize: 4})
			srv := newTestServer(t, h)
			from := h.seq
			for i := range 10 {
				h.publishEvent("m", "e", i)
			}
			c := dial(t, ctx, srv, tr, "all=1&cursor="+strconv.FormatUint(from+3, 10), nil)
			hello := c.next(t, ctx)
			reset := c.next(t, ctx)
			h.publishEvent("m", "e", 10)
			live := c.next(t, ctx)

			got := []msg{hello, reset, {Type: live.Type, Seq: live.Seq}}
			want := []msg{
				{Type: "hello", Seq: from + 10, HeartbeatMs: 15000, Queue: 65536},
				{Type: "reset", Reason: "cursor_expired", Seq: from + 10},
				{Type: "e", Seq: from + 11},
			}
			if tr == transportSSE {
				want[1].ID = strconv.FormatUint(from+10, 10)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSlowClientWebSocket has a WebSocket client stop reading until the hub
// cuts it off, while a fast client keeps up; then the slow one reads the
// rest of its stream: a reconnect message, and close status 1013.
func TestSlowClientWebSocket(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{QueueSize: 8, ReplaySize: 16})
	srv := newTestServer(t, h)
	// The slow client's reader stops after hello: it reads nothing more
	// until its gate opens, so the TCP buffers and then its queue fill up.
	slow := dialGated(t, ctx, srv, transportWS, "all=1")
	from := slow.hello(t, ctx)
	fast := dial(t, ctx, srv, transportSSE, "machine=m", nil)
	fast.hello(t, ctx)

	payload := strings.Repeat("x", 16<<10)
	dropped := h.metrics.dropped.WithLabelValues(reasonSlowClient)
	n := uint64(0)
	for testutil.ToFloat64(dropped) == 0 {
		if n == 100000 {
			t.Fatal("slow client never cut off")
		}
		h.publishEvent("m", "e", payload)
		n++
		if m := fast.next(t, ctx); m.Seq != from+n {
			t.Fatalf("fast client: got seq %d, want %d", m.Seq, from+n)
		}
	}

	close(slow.gate)
	rest, err := slow.end(t, ctx)
	last := rest[len(rest)-1]
	if want := (msg{Type: "reconnect", Reason: "slow_client", Cursor: rest[len(rest)-2].Seq, RetryMs: last.RetryMs}); !cmp.Equal(want, last) {
		t.Errorf("last message: got %+v, want %+v", last, want)
	}
	if got, want := seqs(rest[:len(rest)-1]), seqRange(from+1, last.Cursor); !cmp.Equal(got, want) {
		t.Errorf("slow client got %d messages, want %d consecutive from %d", len(got), len(want), from+1)
	}
	if got := websocket.CloseStatus(err); got != websocket.StatusTryAgainLater {
		t.Errorf("close status: got %v (%v), want %v", got, err, websocket.StatusTryAgainLater)
	}
	// The fast client is still served.
	h.publishEvent("m", "e", "after")
	if m := fast.next(t, ctx); m.Seq != from+n+1 {
		t.Errorf("fast client after the cut-off: got seq %d, want %d", m.Seq, from+n+1)
	}
}

func TestShutdown(t *testing.T) {
	ctx := testContext(t)
	h, reg := newTestHub(t, Options{})
	srv := newTestServer(t, h)
	ws := dial(t, ctx, srv, transportWS, "all=1", nil)
	from := ws.hello(t, ctx)
	sse := dial(t, ctx, srv, transportSSE, "machine=a", nil)
	sse.hello(t, ctx)
	h.publishEvent("a", "e", 1)
	h.publishEvent("b", "e", 2)
	if got := testutil.ToFloat64(h.metrics.clients.WithLabelValues(transportWS)); got != 1 {
		t.Errorf("clients{ws}: got %v, want 1", got)
	}

	if err := h.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := h.Clients(); got != 0 {
		t.Errorf("clients after Shutdown: got %d, want 0", got)
	}

	tests := []struct {
		name       string
		c          *streamClient
		wantSeqs   []uint64
		wantCursor uint64
		wantErr    func(error) bool
	}{
		{"ws", ws, []uint64{from + 1, from + 2}, from + 2,
			func(err error) bool { return websocket.CloseStatus(err) == websocket.StatusServiceRestart }},
		{"sse", sse, []uint64{from + 1}, from + 2, func(err error) bool { return errors.Is(err, io.EOF) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rest, err := tt.c.end(t, ctx)
			last := rest[len(rest)-1]
			if want := (msg{Type: "reconnect", Reason: "shutdown", Cursor: tt.wantCursor, RetryMs: last.RetryMs}); !cmp.Equal(want, last) {
				t.Errorf("last message: got %+v, want %+v", last, want)
			}
			if got := seqs(rest[:len(rest)-1]); !cmp.Equal(got, tt.wantSeqs) {
				t.Errorf("seqs: got %v, want %v", got, tt.wantSeqs)
			}
			if !tt.wantErr(err) {
				t.Errorf("end of stream: got %v", err)
			}
		})
	}
	if got := testutil.ToFloat64(h.metrics.dropped.WithLabelValues(reasonShutdown)); got != 2 {
		t.Errorf("dropped shutdown: got %v, want 2", got)
	}
	if n, err := testutil.GatherAndCount(reg, "twinline_stream_clients"); err != nil || n != 2 {
		t.Errorf("clients series: got %d, %v; want 2", n, err)
	}
	resp, err := srv.Client().Get(srv.URL + "/?all=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET: got %d, want 426", resp.StatusCode)
	}
	_, resp, err = websocket.Dial(ctx, srv.URL+"/?all=1", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("WebSocket after Shutdown: got %v, %v; want 503", resp, err)
	}
}

func TestWebSocketOrigin(t *testing.T) {
	tests := []struct {
		name     string
		patterns []string
		origin   string
		want     int
	}{
		{name: "same origin", origin: "", want: http.StatusSwitchingProtocols},
		{name: "other origin refused", origin: "http://evil.example", want: http.StatusForbidden},
		{name: "allowed origin", patterns: []string{"dash.example"}, origin: "https://dash.example", want: http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			h, _ := newTestHub(t, Options{OriginPatterns: tt.patterns})
			srv := newTestServer(t, h)
			hdr := http.Header{}
			if tt.origin != "" {
				hdr.Set("Origin", tt.origin)
			}
			conn, resp, err := websocket.Dial(ctx, srv.URL+"/?all=1", &websocket.DialOptions{HTTPHeader: hdr})
			if conn != nil {
				conn.CloseNow()
			}
			if resp == nil {
				t.Fatalf("dialing: %v", err)
			}
			if resp.StatusCode != tt.want {
				t.Errorf("status: got %d, want %d", resp.StatusCode, tt.want)
			}
		})
	}
}

// TestPublishConcurrent publishes from several goroutines while clients
// come and go, for the race detector.
func TestPublishConcurrent(t *testing.T) {
	ctx := testContext(t)
	h, _ := newTestHub(t, Options{QueueSize: 1 << 14})
	srv := newTestServer(t, h)
	c := dial(t, ctx, srv, transportWS, "all=1", nil)
	from := c.hello(t, ctx)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 250 {
				h.PublishSamples([]telemetry.Sample{{Machine: fmt.Sprint("m", g), Metric: "x", Time: int64(i), Value: 1}}, 0)
			}
		})
	}
	for range 20 {
		cctx, cancel := context.WithCancel(ctx)
		other := dial(t, cctx, srv, transportSSE, "machine=m1", nil)
		other.hello(t, cctx)
		cancel()
	}
	wg.Wait()
	got := c.until(t, ctx, from+1000)
	if want := seqRange(from+1, from+1000); !cmp.Equal(seqs(got), want) {
		t.Errorf("got %d messages, want 1000 consecutive", len(got))
	}
}
