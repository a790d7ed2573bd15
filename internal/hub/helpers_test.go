package hub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/telemetry"
)

// msg is a stream message as a client decodes it.
type msg struct {
	Seq         uint64          `json:"seq,omitempty"`
	Type        string          `json:"type"`
	Machine     string          `json:"machine,omitempty"`
	IngestTs    int64           `json:"ingestTs,omitempty"`
	Samples     []sample        `json:"samples,omitempty"`
	Data        json.RawMessage `json:"data,omitempty"`
	TS          int64           `json:"ts,omitempty"`
	HeartbeatMs int64           `json:"heartbeatMs,omitempty"`
	Queue       int             `json:"queue,omitempty"`
	Reason      string          `json:"reason,omitempty"`
	Cursor      uint64          `json:"cursor,omitempty"`
	RetryMs     int64           `json:"retryMs,omitempty"`
	Machines    json.RawMessage `json:"machines,omitempty"`
	// ID is the SSE event id, "" if none (or not SSE).
	ID string `json:"-"`
}

type sample struct {
	Metric string  `json:"metric"`
	TS     int64   `json:"ts"`
	Value  float64 `json:"value"`
}

func decode(t testing.TB, b []byte) msg {
	t.Helper()
	m, err := decodeMsg(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func decodeMsg(b []byte) (msg, error) {
	var m msg
	if err := json.Unmarshal(b, &m); err != nil {
		return msg{}, fmt.Errorf("decoding %q: %w", b, err)
	}
	return m, nil
}

// newTestHub returns a hub with its own registry.
func newTestHub(t testing.TB, opts Options) (*Hub, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return New(opts, nil, reg), reg
}

// testClient registers a client below the transport.
func testClient(t testing.TB, h *Hub, queue int, machines ...string) (*client, registration) {
	t.Helper()
	c := newClient(queue, machines...)
	reg, err := h.register(c, 0, false)
	if err != nil {
		t.Fatalf("registering: %v", err)
	}
	return c, reg
}

// leftRecently has a client connect to h and leave, so that h keeps what
// is published for a client that may resume (see skipLocked).
func leftRecently(t testing.TB, h *Hub) {
	t.Helper()
	c, _ := testClient(t, h, 16, "nobody")
	h.unregister(c)
}

// newClient returns a client of no machines (all) or of machines.
func newClient(queue int, machines ...string) *client {
	return &client{
		queue:     newQueue(queueLimits{messages: queue}),
		cut:       make(chan struct{}),
		all:       len(machines) == 0,
		machines:  slices.Compact(slices.Sorted(slices.Values(machines))),
		transport: transportWS,
	}
}

// queued returns the messages in c's queue now.
func queued(t testing.TB, c *client) []msg {
	t.Helper()
	var out []msg
	for _, m := range c.queue.pop(nil, 1<<30) {
		out = append(out, decode(t, m.json()))
	}
	return out
}

func samples(machineMetricValue ...any) []telemetry.Sample {
	var out []telemetry.Sample
	for i := 0; i+2 < len(machineMetricValue); i += 3 {
		out = append(out, telemetry.Sample{
			Machine: machineMetricValue[i].(string),
			Metric:  machineMetricValue[i+1].(string),
			Time:    int64(1000 + i),
			Value:   machineMetricValue[i+2].(float64),
		})
	}
	return out
}

// memWriter is an in-memory http.ResponseWriter for driving the SSE
// handler inside a synctest bubble. With block set, writes wait until
// block is closed or the write deadline passes.
type memWriter struct {
	mu       sync.Mutex
	header   http.Header
	status   int
	pending  bytes.Buffer
	flushed  bytes.Buffer
	block    chan struct{}
	deadline time.Time
	// changed is closed when the deadline is set again.
	changed chan struct{}
	flushes int
}

func newMemWriter() *memWriter { return &memWriter{header: make(http.Header)} }

func (w *memWriter) Header() http.Header { return w.header }

func (w *memWriter) WriteHeader(status int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status == 0 {
		w.status = status
	}
}

func (w *memWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	block, deadline, changed := w.block, w.deadline, w.changed
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.mu.Unlock()
	for block != nil {
		var timeout <-chan time.Time
		if !deadline.IsZero() {
			t := time.NewTimer(time.Until(deadline))
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-block:
			block = nil
		case <-timeout:
			return 0, os.ErrDeadlineExceeded
		case <-changed:
			// The deadline moved (an interrupt): wait again with it.
			w.mu.Lock()
			deadline, changed = w.deadline, w.changed
			w.mu.Unlock()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pending.Write(p)
}

func (w *memWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending.WriteTo(&w.flushed)
	w.flushes++
}

func (w *memWriter) SetWriteDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deadline = t
	if w.changed != nil {
		close(w.changed)
	}
	w.changed = make(chan struct{})
	return nil
}

// rawEvents returns the data of the SSE events flushed so far, minus the
// retry hint.
func (w *memWriter) rawEvents(t testing.TB) [][]byte {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][]byte
	for ev := range strings.SplitSeq(w.flushed.String(), "\n\n") {
		for line := range strings.SplitSeq(ev, "\n") {
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				out = append(out, []byte(data))
			}
		}
	}
	return out
}

// events returns the SSE events flushed so far, minus the retry hint.
func (w *memWriter) events(t testing.TB) []msg {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	return parseEvents(t, w.flushed.String())
}

func parseEvents(t testing.TB, s string) []msg {
	t.Helper()
	var out []msg
	for ev := range strings.SplitSeq(s, "\n\n") {
		if ev == "" || strings.HasPrefix(ev, "retry: ") {
			continue
		}
		m, err := parseEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func parseEvent(ev string) (msg, error) {
	var id, data string
	var hasData bool
	for line := range strings.SplitSeq(ev, "\n") {
		switch k, v, _ := strings.Cut(line, ": "); k {
		case "id":
			id = v
		case "data":
			data, hasData = v, true
		default:
			return msg{}, fmt.Errorf("unexpected SSE line %q", line)
		}
	}
	if !hasData {
		return msg{}, fmt.Errorf("SSE event without data: %q", ev)
	}
	m, err := decodeMsg([]byte(data))
	m.ID = id
	return m, err
}

// startSSE runs the hub's handler for target as an SSE request with an
// in-memory writer; stop cancels the request and waits for the handler.
func startSSE(t testing.TB, h http.Handler, target string, hdr http.Header, w *memWriter) (stop func()) {
	t.Helper()
	return startSSEWith(t, h, context.Background(), target, hdr, w)
}

// startSSEContext is startSSE with the request's context derived from
// parent (WithFilter, WithClientKey).
func startSSEContext(t testing.TB, h http.Handler, parent context.Context, target string, w *memWriter) (stop func()) {
	t.Helper()
	return startSSEWith(t, h, parent, target, nil, w)
}

func startSSEWith(t testing.TB, h http.Handler, parent context.Context, target string, hdr http.Header, w *memWriter) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(parent)
	r := httptest.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	r.Header.Set("Accept", "text/event-stream")
	for k, v := range hdr {
		r.Header[k] = v
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(w, r)
	}()
	return func() {
		cancel()
		<-done
	}
}

// newTestServer serves h; it is closed after the test's clients, which
// are closed in cleanups registered later.
func newTestServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// streamClient is a real WebSocket or SSE client of an httptest.Server.
type streamClient struct {
	msgs chan msg
	// err receives how the stream ended: the WebSocket close error, or
	// io.EOF for an SSE response that ended.
	err  chan error
	conn *websocket.Conn // nil for SSE
	// gate, if not nil, stops the reader after the first message until
	// it is closed.
	gate chan struct{}
}

// dialGated is dial with a reader that stops after the first message until
// the client's gate is closed.
func dialGated(t *testing.T, ctx context.Context, srv *httptest.Server, transport, query string) *streamClient {
	t.Helper()
	return dialClient(t, ctx, srv, transport, query, nil, make(chan struct{}))
}

// dial connects to srv's stream with query; transport is "ws" or "sse";
// hdr is added to the request.
func dial(t *testing.T, ctx context.Context, srv *httptest.Server, transport, query string, hdr http.Header) *streamClient {
	t.Helper()
	return dialClient(t, ctx, srv, transport, query, hdr, nil)
}

func dialClient(t *testing.T, ctx context.Context, srv *httptest.Server, transport, query string, hdr http.Header, gate chan struct{}) *streamClient {
	t.Helper()
	c := &streamClient{msgs: make(chan msg, 1<<16), err: make(chan error, 1), gate: gate}
	target := srv.URL + "/api/v1/stream?" + query
	switch transport {
	case transportWS:
		conn, resp, err := websocket.Dial(ctx, target, &websocket.DialOptions{HTTPHeader: hdr})
		if err != nil {
			t.Fatalf("dialing %s: %v (response %v)", target, err, resp)
		}
		conn.SetReadLimit(-1)
		c.conn = conn
		t.Cleanup(func() { conn.CloseNow() })
		go func() {
			for n := 0; ; n++ {
				if n == 1 && gate != nil {
					<-gate
				}
				_, b, err := conn.Read(context.Background())
				if err != nil {
					c.err <- err
					close(c.msgs)
					return
				}
				m, err := decodeMsg(b)
				if err != nil {
					c.err <- err
					close(c.msgs)
					return
				}
				c.msgs <- m
			}
		}()
	case transportSSE:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "text/event-stream")
		for k, v := range hdr {
			req.Header[k] = v
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("requesting %s: %v", target, err)
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("requesting %s: status %d: %s", target, resp.StatusCode, b)
		}
		t.Cleanup(func() { resp.Body.Close() })
		go func() {
			defer close(c.msgs)
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(nil, 1<<20)
			var ev strings.Builder
			for sc.Scan() {
				if line := sc.Text(); line != "" {
					ev.WriteString(line)
					ev.WriteByte('\n')
					continue
				}
				s := strings.TrimSuffix(ev.String(), "\n")
				ev.Reset()
				if strings.HasPrefix(s, "retry: ") {
					continue
				}
				m, err := parseEvent(s)
				if err != nil {
					c.err <- err
					return
				}
				c.msgs <- m
			}
			if err := sc.Err(); err != nil {
				c.err <- err
				return
			}
			c.err <- io.EOF
		}()
	default:
		t.Fatalf("unknown transport %q", transport)
	}
	return c
}

// next returns the client's next message, failing the test if none comes
// before ctx ends.
func (c *streamClient) next(t *testing.T, ctx context.Context) msg {
	t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			t.Fatalf("stream ended: %v", <-c.err)
		}
		return m
	case <-ctx.Done():
		t.Fatalf("waiting for a message: %v", ctx.Err())
	}
	return msg{}
}

// hello reads the hello message and returns its seq.
func (c *streamClient) hello(t *testing.T, ctx context.Context) uint64 {
	t.Helper()
	m := c.next(t, ctx)
	if m.Type != "hello" {
		t.Fatalf("first message: got %+v, want hello", m)
	}
	return m.Seq
}

// until reads messages up to and including the first with seq ≥ seq,
// skipping heartbeats.
func (c *streamClient) until(t *testing.T, ctx context.Context, seq uint64) []msg {
	t.Helper()
	var out []msg
	for {
		m := c.next(t, ctx)
		if m.Type == "heartbeat" {
			continue
		}
		out = append(out, m)
		if m.Seq >= seq {
			return out
		}
	}
}

// end reads to the end of the stream and returns the messages left and
// how it ended.
func (c *streamClient) end(t *testing.T, ctx context.Context) ([]msg, error) {
	t.Helper()
	var out []msg
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				return out, <-c.err
			}
			out = append(out, m)
		case <-ctx.Done():
			t.Fatalf("waiting for the stream to end: %v", ctx.Err())
		}
	}
}

func seqs(ms []msg) []uint64 {
	out := make([]uint64, 0, len(ms))
	for _, m := range ms {
		out = append(out, m.Seq)
	}
	return out
}

// seqRange returns from, from+1, …, to.
func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
