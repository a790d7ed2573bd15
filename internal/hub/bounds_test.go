package hub

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/telemetry"
)

// fleetRound publishes what one second of a fleet of machines × metrics
// brings at t (Unix ms): one samples publish, and at every 10s boundary the
// windows and medians closed, as the app's sinks do.
func fleetRound(h *Hub, machines, metrics int, t int64) {
	var ss []telemetry.Sample
	for m := range machines {
		for k := range metrics {
			ss = append(ss, telemetry.Sample{Machine: fmt.Sprintf("m-%03d", m), Metric: fmt.Sprintf("metric_%d", k), Time: t, Value: float64(t%1000) + 0.25})
		}
	}
	h.PublishSamples(ss, t)
	if t%10_000 != 0 {
		return
	}
	var ws []Window
	var ms []Median
	for m := range machines {
		for k := range metrics {
			machine, metric := fmt.Sprintf("m-%03d", m), fmt.Sprintf("metric_%d", k)
			ws = append(ws, Window{Machine: machine, Metric: metric, Start: t - 10_000, Size: 10_000, Kind: "final", Count: 10, Sum: 10, Min: 1, Max: 1, Avg: 1})
			ms = append(ms, Median{Machine: machine, Metric: metric, Median: 1, Time: t})
		}
	}
	h.PublishMedians(ms)
	h.PublishWindows(ws)
}

// TestHealthyClientThroughWindowCloses: a client that reads as it should
// keeps its stream through the window closes of 100 machines × 10 metrics
// (issue 13: it was cut off at the first one), and gets every message.
func TestHealthyClientThroughWindowCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?all=1", nil, w)
		synctest.Wait()
		start := time.Now().UnixMilli() / 10_000 * 10_000
		for i := range 60 {
			fleetRound(h, 100, 10, start+int64(i)*1000)
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if got := testutil.ToFloat64(h.metrics.dropped.WithLabelValues(reasonSlowClient)); got != 0 {
			t.Errorf("dropped slow_client: got %v, want 0", got)
		}
		counts := map[string]int{}
		for _, m := range w.events(t) {
			counts[m.Type]++
		}
		// 60 samples publishes of 100 machines; 6 window closes, each one
		// windows and one median message per machine.
		if counts["samples"] != 6000 || counts["windows"] != 600 || counts["median"] != 600 || counts["reconnect"] != 0 {
			t.Errorf("messages by type: got %v, want 6000 samples, 600 windows, 600 median, no reconnect", counts)
		}
		stop()
	})
}

// TestStalledClientDroppedWithinMaxLag: a client whose peer stops reading
// is dropped once it is MaxLag behind, with a reconnect event carrying the
// cursor of the last message it got, while a healthy client keeps
// everything. The stalled writer is stuck in a write: the hub interrupts
// it to send the notice.
func TestStalledClientDroppedWithinMaxLag(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const lag = 5 * time.Second
		h, _ := newTestHub(t, Options{MaxLag: lag, WriteTimeout: time.Minute})
		healthy := newMemWriter()
		stopHealthy := startSSE(t, h, "/api/v1/stream?all=1", nil, healthy)
		stalled := newMemWriter()
		stopStalled := startSSE(t, h, "/api/v1/stream?all=1", nil, stalled)
		synctest.Wait()
		base := h.seq

		stalled.mu.Lock()
		stalled.block = make(chan struct{})
		stalled.mu.Unlock()
		stalledAt := time.Now()
		dropped := h.metrics.dropped.WithLabelValues(reasonSlowClient)
		var droppedAfter time.Duration
		for i := range 20 {
			h.publishEvent("m", "e", i)
			synctest.Wait()
			if droppedAfter == 0 && testutil.ToFloat64(dropped) == 1 {
				droppedAfter = time.Since(stalledAt)
				// The peer reads again: the notice, written within
				// noticeTimeout, reaches it.
				close(stalled.block)
				synctest.Wait()
			}
			time.Sleep(500 * time.Millisecond)
		}
		if droppedAfter == 0 || droppedAfter > lag+time.Second {
			t.Errorf("stalled client dropped %v after it stalled, want within %v", droppedAfter, lag+time.Second)
		}
		got := stalled.events(t)
		last := got[len(got)-1]
		if last.Type != "reconnect" || last.Reason != reasonSlowClient {
			t.Fatalf("last message of the stalled client: got %+v, want a slow_client reconnect", last)
		}
		if got, want := seqs(got[1:len(got)-1]), seqRange(base+1, last.Cursor); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("stalled client seqs before the notice: got %v, want %v (up to its cursor)", got, want)
		}
		if got, want := seqs(healthy.events(t)[1:]), seqRange(base+1, base+20); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("healthy client seqs: got %v, want %v", got, want)
		}
		if got := h.Clients(); got != 1 {
			t.Errorf("clients: got %d, want 1", got)
		}
		stopStalled()
		stopHealthy()
	})
}

// TestStalledQuietClientDroppedAtHeartbeat: a stalled client with nothing
// new published for it is dropped at a heartbeat once MaxLag behind.
func TestStalledQuietClientDroppedAtHeartbeat(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{MaxLag: 5 * time.Second, Heartbeat: time.Second, WriteTimeout: time.Minute})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- h.Run(ctx) }()
		w := newMemWriter()
		stop := startSSE(t, h, "/api/v1/stream?machine=m", nil, w)
		synctest.Wait()
		w.mu.Lock()
		w.block = make(chan struct{})
		w.mu.Unlock()
		h.publishEvent("m", "e", 1)
		time.Sleep(7 * time.Second)
		synctest.Wait()
		if got := testutil.ToFloat64(h.metrics.dropped.WithLabelValues(reasonSlowClient)); got != 1 {
			t.Errorf("dropped slow_client after 7s stalled: got %v, want 1", got)
		}
		close(w.block)
		synctest.Wait()
		if got := w.events(t); got[len(got)-1].Type != "reconnect" {
			t.Errorf("last message: got %+v, want reconnect", got[len(got)-1])
		}
		stop()
		cancel()
		<-done
	})
}

// TestLazyReplay: what is published while no client wants it is encoded
// on demand, for a client resuming, as it would have been at once.
func TestLazyReplay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		leftRecently(t, h)
		from := h.seq
		publish := func() {
			h.PublishSamples(samples("a", "temp", 71.5, "b", "temp", 12.0, "a", "vib", 0.5), 5000)
			h.PublishStatus("a", "online", true, 5000)
			h.PublishWindows([]Window{{Machine: "b", Metric: "temp", Kind: "final", Count: 1, Sum: 2, Min: 2, Max: 2, Avg: 2}})
			h.PublishMedians([]Median{{Machine: "a", Metric: "temp", Median: 70, Time: 4000}})
			h.publishEvent("a", "note", map[string]string{"text": "hi"})
		}
		publish() // nobody wants it: kept unencoded
		lazy := newMemWriter()
		stop := startSSE(t, h, fmt.Sprintf("/api/v1/stream?all=1&cursor=%d", from), nil, lazy)
		synctest.Wait()
		mid := h.seq
		publish() // a client wants it: encoded at once
		synctest.Wait()
		stop()

		raw := lazy.rawEvents(t)[1:] // without hello
		if len(raw) != 12 {
			t.Fatalf("got %d messages, want 12", len(raw))
		}
		for i := range 6 {
			replayed, live := decode(t, raw[i]), decode(t, raw[6+i])
			if replayed.Seq != from+uint64(i)+1 || live.Seq != mid+uint64(i)+1 {
				t.Errorf("message %d: seqs %d and %d, want %d and %d", i, replayed.Seq, live.Seq, from+uint64(i)+1, mid+uint64(i)+1)
			}
			replayed.Seq, live.Seq = 0, 0
			if fmt.Sprint(replayed) != fmt.Sprint(live) {
				t.Errorf("message %d: replayed %+v, live %+v", i, replayed, live)
			}
		}
	})
}

// TestPublishToNobody: with no client connected, and none that left
// within resumeHorizon, nothing is kept, and a cursor from before is
// expired rather than silently served.
func TestPublishToNobody(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		leftRecently(t, h)
		cursor := h.seq
		time.Sleep(resumeHorizon)
		h.publishEvent("a", "e", 1)
		h.PublishSamples(samples("a", "temp", 1.0), 1)
		if h.ring.n != 0 || h.seq != cursor+2 {
			t.Errorf("ring holds %d messages, seq moved by %d; want 0 and 2", h.ring.n, h.seq-cursor)
		}
		w := newMemWriter()
		stop := startSSE(t, h, fmt.Sprintf("/api/v1/stream?machine=a&cursor=%d", cursor), nil, w)
		synctest.Wait()
		got := w.events(t)
		if len(got) != 2 || got[1].Type != "reset" || got[1].Reason != "cursor_expired" {
			t.Errorf("resuming: got %+v, want hello and a cursor_expired reset", got)
		}
		stop()
	})
}
