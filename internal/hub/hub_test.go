package hub

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/telemetry"
)

func TestPublishSamplesOneMessagePerMachine(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	c, reg := testClient(t, h, 16)
	base := reg.latest

	h.PublishSamples([]telemetry.Sample{
		{Machine: "press-07", Metric: "temp", Time: 1000, Value: 71.3},
		{Machine: "oven-1", Metric: "temp", Time: 1001, Value: 180},
		{Machine: "press-07", Metric: "vib", Time: 1002, Value: 0.25},
		{Machine: "press-07", Metric: "temp", Time: 999, Value: 71.1},
		{Machine: "mill-3", Metric: "rpm", Time: 1003, Value: 12000},
	}, 5000)

	got := queued(t, c)
	want := []msg{
		{Seq: base + 1, Type: "samples", Machine: "press-07", IngestTs: 5000, Samples: []sample{
			{"temp", 1000, 71.3}, {"vib", 1002, 0.25}, {"temp", 999, 71.1},
		}},
		{Seq: base + 2, Type: "samples", Machine: "oven-1", IngestTs: 5000, Samples: []sample{{"temp", 1001, 180}}},
		{Seq: base + 3, Type: "samples", Machine: "mill-3", IngestTs: 5000, Samples: []sample{{"rpm", 1003, 12000}}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("messages (-want +got):\n%s", diff)
	}
}

func TestPublishSamplesWireFormat(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	c, reg := testClient(t, h, 4)
	h.PublishSamples([]telemetry.Sample{
		{Machine: "press-07", Metric: "temp", Time: 1764482400000, Value: 71.3},
		{Machine: "press-07", Metric: "vib", Time: 1764482400001, Value: 2e-7},
	}, 1764482400123)

	m := c.queue.pop(nil, 1)[0]
	seq := reg.latest + 1
	wantJSON := fmt.Sprintf(`{"seq":%d,"type":"samples","machine":"press-07","ingestTs":1764482400123,`+
		`"samples":[{"metric":"temp","ts":1764482400000,"value":71.3},{"metric":"vib","ts":1764482400001,"value":2e-7}]}`, seq)
	if got := string(m.json()); got != wantJSON {
		t.Errorf("JSON:\ngot  %s\nwant %s", got, wantJSON)
	}
	if got, want := string(m.frame), fmt.Sprintf("id: %d\ndata: %s\n\n", seq, wantJSON); got != want {
		t.Errorf("SSE frame:\ngot  %q\nwant %q", got, want)
	}
	if !json.Valid(m.json()) {
		t.Errorf("invalid JSON %s", m.json())
	}
}

func TestPublishEvent(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	all, reg := testClient(t, h, 4)
	press, _ := testClient(t, h, 4, "press-07")

	h.PublishEvent("press-07", "alarm", map[string]any{"metric": "temp", "state": "firing"})
	h.PublishEvent("", "fleet", []int{1, 2})

	want := []msg{
		{Seq: reg.latest + 1, Type: "alarm", Machine: "press-07", Data: json.RawMessage(`{"metric":"temp","state":"firing"}`)},
		{Seq: reg.latest + 2, Type: "fleet", Data: json.RawMessage(`[1,2]`)},
	}
	if diff := cmp.Diff(want, queued(t, all)); diff != "" {
		t.Errorf("all-machines client (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[:1], queued(t, press)); diff != "" {
		t.Errorf("press-07 client (-want +got):\n%s", diff)
	}
}

func TestPublishEventUnencodable(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	c, _ := testClient(t, h, 4)
	h.PublishEvent("m", "bad", func() {})
	if got := queued(t, c); len(got) != 0 {
		t.Errorf("got %v, want nothing published", got)
	}
}

func TestFilter(t *testing.T) {
	tests := []struct {
		name     string
		machines []string // none: all
		want     []string // machines of the messages received
	}{
		{name: "all", want: []string{"a", "b", "c", ""}},
		{name: "one", machines: []string{"b"}, want: []string{"b"}},
		{name: "two", machines: []string{"c", "a"}, want: []string{"a", "c"}},
		{name: "duplicate", machines: []string{"a", "a"}, want: []string{"a"}},
		{name: "unknown", machines: []string{"z"}, want: nil},
	}
	h, _ := newTestHub(t, Options{})
	clients := make([]*client, len(tests))
	for i, tt := range tests {
		clients[i], _ = testClient(t, h, 16, tt.machines...)
	}
	h.PublishSamples(samples("a", "x", 1.0, "b", "x", 2.0, "c", "x", 3.0), 1)
	h.PublishEvent("", "note", "hi")

	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, m := range queued(t, clients[i]) {
				got = append(got, m.Machine)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("machines (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSeqMonotonic(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	c, reg := testClient(t, h, 1024)
	for i := range 100 {
		if i%3 == 0 {
			h.PublishEvent("m", "status", i)
			continue
		}
		h.PublishSamples(samples(fmt.Sprint("m", i%7), "x", float64(i), "n", "x", 1.0), int64(i))
	}
	got := seqs(queued(t, c))
	if want := seqRange(reg.latest+1, reg.latest+uint64(len(got))); !cmp.Equal(got, want) || len(got) != 34+66*2 {
		t.Errorf("seqs: got %v (%d), want consecutive from %d (%d)", got, len(got), reg.latest+1, 34+66*2)
	}
}

// TestRegisterReplay covers what a client gets before its live queue, for
// every kind of cursor.
func TestRegisterReplay(t *testing.T) {
	const ring = 8
	h, _ := newTestHub(t, Options{ReplaySize: ring})
	start := h.seq
	// 12 messages, alternating machines a and b: the ring keeps the last 8.
	for i := range 12 {
		h.PublishEvent([]string{"a", "b"}[i%2], "e", i)
	}
	latest := start + 12
	tests := []struct {
		name     string
		cursor   uint64
		resume   bool
		machines []string
		// want are the types and seqs of the first messages, hello first.
		want       []string
		wantCursor uint64
	}{
		{name: "no cursor", want: []string{"hello"}, wantCursor: latest},
		{name: "cursor at latest", resume: true, cursor: latest, want: []string{"hello"}, wantCursor: latest},
		{name: "cursor inside ring", resume: true, cursor: latest - 3,
			want: []string{"hello", seqName(latest - 2), seqName(latest - 1), seqName(latest)}, wantCursor: latest - 3},
		{name: "cursor inside ring, filtered", resume: true, cursor: latest - 4, machines: []string{"b"},
			want: []string{"hello", seqName(latest - 2), seqName(latest)}, wantCursor: latest - 4},
		{name: "cursor just before oldest", resume: true, cursor: latest - ring,
			want: append([]string{"hello"}, seqNames(latest-ring+1, latest)...), wantCursor: latest - ring},
		{name: "cursor expired", resume: true, cursor: latest - ring - 1, want: []string{"hello", "reset cursor_expired"}, wantCursor: latest},
		{name: "cursor from before a restart", resume: true, cursor: 42, want: []string{"hello", "reset cursor_expired"}, wantCursor: latest},
		{name: "cursor ahead", resume: true, cursor: latest + 1, want: []string{"hello", "reset cursor_unknown"}, wantCursor: latest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newClient(4, tt.machines...)
			reg, err := h.register(c, tt.cursor, tt.resume)
			if err != nil {
				t.Fatal(err)
			}
			defer h.unregister(c)
			var got []string
			for _, m := range filterReplay(reg, c) {
				d := decode(t, m.json())
				switch d.Type {
				case "hello":
					got = append(got, "hello")
					if d.Seq != latest {
						t.Errorf("hello seq: got %d, want %d", d.Seq, latest)
					}
				case "reset":
					got = append(got, "reset "+d.Reason)
					if d.Seq != latest || m.seq != latest || !m.id {
						t.Errorf("reset seq: got %d (id %d, %v), want %d", d.Seq, m.seq, m.id, latest)
					}
				default:
					got = append(got, seqName(d.Seq))
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("first messages (-want +got):\n%s", diff)
			}
			if reg.cursor != tt.wantCursor {
				t.Errorf("cursor: got %d, want %d", reg.cursor, tt.wantCursor)
			}
		})
	}
}

func seqName(s uint64) string { return fmt.Sprint("seq ", s) }

func seqNames(from, to uint64) []string {
	var out []string
	for s := from; s <= to; s++ {
		out = append(out, seqName(s))
	}
	return out
}

func TestSlowClientCutOffBelowTransport(t *testing.T) {
	h, reg := newTestHub(t, Options{})
	slow, _ := testClient(t, h, 2)
	fast, r := testClient(t, h, 64)
	other, _ := testClient(t, h, 2, "elsewhere")

	for i := range 5 {
		h.PublishEvent("m", "e", i)
	}

	select {
	case <-slow.cut:
	default:
		t.Fatal("slow client not cut off")
	}
	if slow.reason != reasonSlowClient {
		t.Errorf("reason: got %q, want %q", slow.reason, reasonSlowClient)
	}
	if got, want := seqs(queued(t, fast)), seqRange(r.latest+1, r.latest+5); !cmp.Equal(got, want) {
		t.Errorf("fast client seqs: got %v, want %v", got, want)
	}
	if got := len(queued(t, slow)); got != 2 {
		t.Errorf("slow client queue: got %d messages, want 2 (its queue size)", got)
	}
	select {
	case <-other.cut:
		t.Error("unrelated client cut off")
	default:
	}
	if got := testutil.ToFloat64(h.metrics.dropped.WithLabelValues(reasonSlowClient)); got != 1 {
		t.Errorf("dropped slow_client: got %v, want 1", got)
	}
	if n, err := testutil.GatherAndCount(reg, "twinline_stream_clients_dropped_total"); err != nil || n != 3 {
		t.Errorf("dropped series: got %d, %v; want 3", n, err)
	}
	// Cut off means unsubscribed: later messages do not reach it.
	h.PublishEvent("m", "e", 5)
	if got := len(queued(t, slow)); got != 0 {
		t.Errorf("slow client got %d messages after its cut-off", got)
	}
}

func TestHeartbeatBelowTransport(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	a, _ := testClient(t, h, 4, "a")
	full, _ := testClient(t, h, 1, "b")
	h.PublishEvent("b", "e", 1)
	h.heartbeat(time.Now())

	got := queued(t, a)
	if len(got) != 1 || got[0].Type != "heartbeat" || got[0].Seq != h.seq {
		t.Errorf("client a: got %+v, want one heartbeat with seq %d", got, h.seq)
	}
	if got := queued(t, full); len(got) != 1 || got[0].Type != "e" {
		t.Errorf("full client: got %+v, want its event only (heartbeat skipped)", got)
	}
	select {
	case <-full.cut:
		t.Error("a heartbeat cut a full client off")
	default:
	}
}

func TestRing(t *testing.T) {
	r := newRing(4)
	const base = 1000
	if got := r.oldest(base); got != base+1 {
		t.Errorf("oldest of empty ring: got %d, want %d", got, base+1)
	}
	for s := uint64(base + 1); s <= base+6; s++ {
		r.put(&message{seq: s})
	}
	if got := r.oldest(base + 6); got != base+3 {
		t.Errorf("oldest: got %d, want %d", got, base+3)
	}
	for cursor := uint64(base + 2); cursor <= base+6; cursor++ {
		var got []uint64
		for _, m := range r.since(cursor, base+6, 0) {
			got = append(got, m.seq)
		}
		if want := seqRange(cursor+1, base+6); !cmp.Equal(got, want) {
			t.Errorf("since(%d): got %v, want %v", cursor, got, want)
		}
	}
}

func TestQueue(t *testing.T) {
	q := newQueue(4) // 4 pushes, at most 4×64 messages
	var next, want uint64
	push := func(n int) bool {
		msgs := make([]*message, n)
		for i := range msgs {
			next++
			msgs[i] = &message{seq: next}
		}
		if q.push(msgs[:n-1], msgs[n-1]) {
			return true
		}
		next -= uint64(n)
		return false
	}
	pop := func(n int) {
		t.Helper()
		for _, m := range q.pop(nil, n) {
			want++
			if m.seq != want {
				t.Fatalf("popped seq %d, want %d", m.seq, want)
			}
		}
	}
	// Wrap the initial ring around, then grow it while wrapped, twice.
	for _, step := range []struct{ push, pop int }{{10, 8}, {12, 0}, {5, 3}, {20, 0}, {1, 100}} {
		if !push(step.push) {
			t.Fatalf("push %d: queue full at %d messages, %d pushes", step.push, q.n, q.pushes)
		}
		pop(step.pop)
	}
	if q.n != 0 || q.pushes != 0 || want != next {
		t.Errorf("after popping all: %d messages, %d pushes left, last %d of %d", q.n, q.pushes, want, next)
	}
	// The bound counts pushes, whatever their size...
	for i := range 4 {
		if !push(50) {
			t.Fatalf("push %d of 4 (50 messages each) refused", i+1)
		}
	}
	if push(1) {
		t.Error("fifth push into a queue of 4 pushes: accepted")
	}
	// ...and a push is released when its last message is popped.
	pop(49)
	if push(1) {
		t.Error("push accepted before the first push was fully popped")
	}
	pop(1)
	if !push(1) {
		t.Error("push refused after the first push was popped")
	}
	pop(1000)
	// The message cap bounds memory: 4×64 messages at most.
	if push(4*64 + 1) {
		t.Error("push over the message cap: accepted")
	}
	if !push(4 * 64) {
		t.Error("push at the message cap: refused")
	}
}

// TestQueueRun checks the queue's start-once scheduling: signal starts run
// unless it is running, and a signal while it runs makes it go on once
// more instead of being lost.
func TestQueueRun(t *testing.T) {
	q := newQueue(4)
	started := make(chan struct{}, 4)
	q.setRun(func() { started <- struct{}{} })
	q.signal()
	<-started
	q.signal() // while "running": no second goroutine
	select {
	case <-started:
		t.Fatal("signal started run while it was running")
	default:
	}
	if q.idle() {
		t.Error("idle: got true after a signal while running, want false (run goes on)")
	}
	if !q.idle() {
		t.Error("idle: got false with no signal since, want true")
	}
	q.signal() // stopped: starts run again
	<-started
}
