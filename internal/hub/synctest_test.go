package hub

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/problem"
)

// These tests drive the SSE handler with an in-memory ResponseWriter inside
// a synctest bubble: time is fake, and synctest.Wait returns once every
// goroutine of the hub is blocked, so no test waits on the wall clock.

func TestHeartbeatCadence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{Heartbeat: 15 * time.Second})
		ctx, cancel := context.WithCancel(t.Context())
		run := make(chan error)
		go func() { run <- h.Run(ctx) }()

		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?machine=press-07", nil, w)
		synctest.Wait()
		start := time.Now()
		hello := w.events(t)[0]

		type beat struct {
			At  time.Duration
			Seq uint64
			TS  int64
		}
		var got []beat
		record := func() {
			for _, m := range w.events(t) {
				if m.Type == "heartbeat" {
					if m.ID != strconv.FormatUint(m.Seq, 10) {
						t.Errorf("heartbeat SSE id: got %q, want %d", m.ID, m.Seq)
					}
					got = append(got, beat{time.Duration(m.TS-start.UnixMilli()) * time.Millisecond, m.Seq, m.TS})
				}
			}
		}
		// Idle for 30s, then traffic for another machine and this one, then
		// idle again.
		time.Sleep(30*time.Second - time.Millisecond)
		synctest.Wait()
		h.publishEvent("oven-1", "status", "up") // seq+1, not for this client
		time.Sleep(time.Millisecond)
		synctest.Wait()
		h.publishEvent("press-07", "status", "up") // seq+2
		time.Sleep(15 * time.Second)
		synctest.Wait()
		record()

		want := []beat{
			{15 * time.Second, hello.Seq, start.Add(15 * time.Second).UnixMilli()},
			{30 * time.Second, hello.Seq + 1, start.Add(30 * time.Second).UnixMilli()},
			{45 * time.Second, hello.Seq + 2, start.Add(45 * time.Second).UnixMilli()},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("heartbeats (-want +got):\n%s", diff)
		}
		stop()
		cancel()
		if err := <-run; err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
	})
}

func TestSSEHeadersAndResume(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		leftRecently(t, h)
		base := h.seq
		for i := range 6 {
			h.publishEvent([]string{"a", "b"}[i%2], "e", i)
		}
		w := newMemWriter()
		// Last-Event-ID wins over ?cursor (EventSource keeps its first URL).
		hdr := http.Header{"Last-Event-Id": {strconv.FormatUint(base+2, 10)}}
		stop := startSSE(t, h, fmt.Sprintf("/api/v1/stream?machine=a&cursor=%d", base), hdr, w)
		synctest.Wait()
		h.publishEvent("a", "e", 6)
		h.publishEvent("b", "e", 7)
		synctest.Wait()

		wantHeader := http.Header{
			"Content-Type":      {"text/event-stream"},
			"Cache-Control":     {"no-cache"},
			"X-Accel-Buffering": {"no"},
		}
		if diff := cmp.Diff(wantHeader, w.Header()); diff != "" {
			t.Errorf("header (-want +got):\n%s", diff)
		}
		if w.status != http.StatusOK {
			t.Errorf("status: got %d, want 200", w.status)
		}
		type ev struct {
			ID   string
			Type string
			Seq  uint64
		}
		var got []ev
		for _, m := range w.events(t) {
			got = append(got, ev{m.ID, m.Type, m.Seq})
		}
		id := func(s uint64) string { return strconv.FormatUint(s, 10) }
		want := []ev{
			{"", "hello", base + 6},
			{id(base + 3), "e", base + 3}, // replay of machine a after the cursor
			{id(base + 5), "e", base + 5},
			{id(base + 7), "e", base + 7}, // live
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
		stop()
		if got := h.Clients(); got != 0 {
			t.Errorf("clients after disconnect: got %d, want 0", got)
		}
	})
}

func TestSlowClientCutOffSSE(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{QueueSize: 4})
		fast := newMemWriter()
		stopFast := startSSE(t, h, "/api/v1/stream?all=1", nil, fast)
		slow := newMemWriter()
		stopSlow := startSSE(t, h, "/api/v1/stream?all=1", nil, slow)
		synctest.Wait()
		base := h.seq

		// The slow client takes its first message, then its peer stalls.
		h.publishEvent("m", "e", 0)
		synctest.Wait()
		slow.mu.Lock()
		slow.block = make(chan struct{})
		slow.mu.Unlock()
		for i := 1; i <= 10; i++ {
			h.publishEvent("m", "e", i)
			synctest.Wait() // the fast client keeps up
		}
		if got := h.Clients(); got != 2 {
			t.Errorf("clients while the slow one is stuck in a write: got %d, want 2", got)
		}
		close(slow.block) // the peer reads again
		synctest.Wait()

		if got, want := seqs(fast.events(t)[1:]), seqRange(base+1, base+11); !cmp.Equal(got, want) {
			t.Errorf("fast client seqs: got %v, want %v", got, want)
		}
		got := slow.events(t)
		last := got[len(got)-1]
		want := msg{Type: "reconnect", Reason: "slow_client", Cursor: got[len(got)-2].Seq, RetryMs: last.RetryMs}
		if diff := cmp.Diff(want, last); diff != "" {
			t.Errorf("last message of the slow client (-want +got):\n%s", diff)
		}
		if last.RetryMs < 1000 || last.RetryMs > 5000 {
			t.Errorf("retryMs: got %d, want 1000–5000", last.RetryMs)
		}
		// Every message it got before the reconnect is in order, and the
		// cursor is the last of them: resuming from it loses nothing.
		if got, want := seqs(got[1:len(got)-1]), seqRange(base+1, last.Cursor); !cmp.Equal(got, want) {
			t.Errorf("slow client seqs: got %v, want %v", got, want)
		}
		if got := h.Clients(); got != 1 {
			t.Errorf("clients after the cut-off: got %d, want 1", got)
		}
		if got := testutil.ToFloat64(h.metrics.dropped.WithLabelValues(reasonSlowClient)); got != 1 {
			t.Errorf("dropped slow_client: got %v, want 1", got)
		}
		stopSlow() // the handler has returned already
		stopFast()
	})
}

func TestWriteTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{WriteTimeout: 10 * time.Second})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?all=1", nil, w)
		synctest.Wait()
		w.mu.Lock()
		w.block = make(chan struct{}) // never closed: a stuck TCP peer
		w.mu.Unlock()
		h.publishEvent("m", "e", 1)
		start := time.Now()
		synctest.Wait()
		if got := h.Clients(); got != 1 {
			t.Fatalf("clients during the stuck write: got %d, want 1", got)
		}
		// The write times out; then the final notice is attempted, within
		// noticeTimeout, and the client is gone.
		time.Sleep(10*time.Second + noticeTimeout)
		synctest.Wait()
		if got := h.Clients(); got != 0 {
			t.Errorf("clients %v after the write began: got %d, want 0", time.Since(start), got)
		}
		if got := testutil.ToFloat64(h.metrics.dropped.WithLabelValues(reasonWriteError)); got != 1 {
			t.Errorf("dropped write_error: got %v, want 1", got)
		}
		stop()
	})
}

func TestShutdownDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?machine=a", nil, w)
		synctest.Wait()
		h.publishEvent("a", "e", 1)
		h.publishEvent("a", "e", 2)
		// Shutdown right away: what is queued is still delivered.
		if err := h.Shutdown(t.Context()); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		got := w.events(t)
		last := got[len(got)-1]
		want := msg{Type: "reconnect", Reason: "shutdown", Cursor: h.seq, RetryMs: last.RetryMs}
		if diff := cmp.Diff(want, last); diff != "" {
			t.Errorf("last message (-want +got):\n%s", diff)
		}
		if got, want := seqs(got[1:len(got)-1]), seqRange(h.seq-1, h.seq); !cmp.Equal(got, want) {
			t.Errorf("seqs before the reconnect: got %v, want %v", got, want)
		}
		if got := h.Clients(); got != 0 {
			t.Errorf("clients: got %d, want 0", got)
		}
		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/api/v1/stream?all=1", nil)
		r.Header.Set("Accept", "text/event-stream")
		h.ServeHTTP(rec, r)
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
			t.Errorf("after Shutdown: got %d, Retry-After %q; want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
		}
		stop()
	})
}

func TestShutdownTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{WriteTimeout: time.Minute})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?all=1", nil, w)
		synctest.Wait()
		w.mu.Lock()
		w.block = make(chan struct{}) // stuck
		w.mu.Unlock()
		h.publishEvent("m", "e", 1)
		synctest.Wait()

		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()
		err := h.Shutdown(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown: got %v, want context.DeadlineExceeded", err)
		}
		if got := time.Since(start); got != 5*time.Second {
			t.Errorf("Shutdown returned after %v, want 5s", got)
		}
		close(w.block)
		stop()
	})
}

func TestMaxClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{MaxClients: 1})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?all=1", nil, w)
		synctest.Wait()

		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/api/v1/stream?all=1", nil)
		r.Header.Set("Accept", "text/event-stream")
		h.ServeHTTP(rec, r)
		got := decodeProblem(t, rec)
		want := problem.Problem{
			Type: problem.TypeOverloaded, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: "the server has its maximum of 1 stream clients; retry later",
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("problem (-want +got):\n%s", diff)
		}
		if got := rec.Header().Get("Retry-After"); got == "" {
			t.Error("no Retry-After")
		}
		if got := testutil.ToFloat64(h.metrics.rejected.WithLabelValues(rejectMaxClients)); got != 1 {
			t.Errorf("rejected max_clients: got %v, want 1", got)
		}
		if got := testutil.ToFloat64(h.metrics.clients.WithLabelValues(transportSSE)); got != 1 {
			t.Errorf("clients{sse}: got %v, want 1", got)
		}
		stop()
		w2 := newMemWriter()
		stop = startSSE(t, h, "/api/v1/stream?all=1", nil, w2)
		synctest.Wait()
		if w2.status != http.StatusOK {
			t.Errorf("after the first client left: got %d, want 200", w2.status)
		}
		stop()
	})
}

func TestWriteInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const interval = 50 * time.Millisecond
		h, _ := newTestHub(t, Options{WriteInterval: interval})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?machine=a", nil, w)
		synctest.Wait()
		base := h.seq
		state := func() (int, int) {
			w.mu.Lock()
			defer w.mu.Unlock()
			return len(parseEvents(t, w.flushed.String())) - 1, w.flushes // minus hello
		}
		_, flushes := state()
		type step struct {
			After  time.Duration // since the previous step
			Events int           // events written by then, hello aside
			Writes int           // writes since hello
		}
		var got, want []step
		record := func(after time.Duration, publish bool) {
			time.Sleep(after)
			if publish {
				h.publishEvent("a", "e", nil)
			}
			synctest.Wait()
			n, f := state()
			got = append(got, step{after, n, f - flushes})
		}
		record(0, true)                    // idle client: written at once
		record(10*time.Millisecond, true)  // within the interval: waits
		record(10*time.Millisecond, true)  // waits too
		record(30*time.Millisecond, false) // the interval has passed: both in one write
		record(100*time.Millisecond, true) // idle again: at once
		want = []step{
			{0, 1, 1},
			{10 * time.Millisecond, 1, 1},
			{10 * time.Millisecond, 1, 1},
			{30 * time.Millisecond, 3, 2},
			{100 * time.Millisecond, 4, 3},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("writes (-want +got):\n%s", diff)
		}
		if got, want := seqs(w.events(t)[1:]), seqRange(base+1, base+4); !cmp.Equal(got, want) {
			t.Errorf("seqs: got %v, want %v", got, want)
		}
		stop()
	})
}

// TestIdleClientHasNoWriter checks that a client's writer goroutine ends
// once its queue is empty, and starts again for the next message.
func TestIdleClientHasNoWriter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?machine=a", nil, w)
		synctest.Wait()
		running := func() []bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			var out []bool
			for c := range h.clients {
				c.queue.mu.Lock()
				out = append(out, c.queue.running)
				c.queue.mu.Unlock()
			}
			return out
		}
		if got := running(); !cmp.Equal(got, []bool{false}) {
			t.Errorf("after hello: writer running %v, want [false]", got)
		}
		h.publishEvent("a", "e", 1)
		synctest.Wait()
		if got := running(); !cmp.Equal(got, []bool{false}) {
			t.Errorf("after a message: writer running %v, want [false]", got)
		}
		if got := len(w.events(t)); got != 2 {
			t.Errorf("events: got %d, want hello and the message", got)
		}
		stop()
		if got := h.Clients(); got != 0 {
			t.Errorf("clients after disconnect: got %d, want 0", got)
		}
	})
}
