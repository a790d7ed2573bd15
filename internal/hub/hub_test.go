package hub

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
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

	h.publishEvent("press-07", "alarm", map[string]any{"metric": "temp", "state": "firing"})
	h.publishEvent("", "fleet", []int{1, 2})

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
	h.publishEvent("m", "bad", func() {})
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
	h.publishEvent("", "note", "hi")

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
			h.publishEvent("m", "status", i)
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
	leftRecently(t, h)
	start := h.seq
	// 12 messages, alternating machines a and b: the ring keeps the last 8.
	for i := range 12 {
		h.publishEvent([]string{"a", "b"}[i%2], "e", i)
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
		h.publishEvent("m", "e", i)
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
	if got := len(queued(t, slow)); got != 0 {
		t.Errorf("slow client queue: got %d messages, want 0 (discarded when cut off)", got)
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
	h.publishEvent("m", "e", 5)
	if got := len(queued(t, slow)); got != 0 {
		t.Errorf("slow client got %d messages after its cut-off", got)
	}
}

func TestHeartbeatBelowTransport(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	a, _ := testClient(t, h, 4, "a")
	full, _ := testClient(t, h, 1, "b")
	h.publishEvent("b", "e", 1)
	h.heartbeat(time.Now())

	got := queued(t, a)
	if len(got) != 1 || got[0].Type != "heartbeat" || got[0].Seq != h.seq {
		t.Errorf("client a: got %+v, want one heartbeat with seq %d", got, h.seq)
	}
	// A client at its cap is behind: the heartbeat cuts it off.
	select {
	case <-full.cut:
	default:
		t.Error("a heartbeat left a full client connected")
	}
	if full.reason != reasonSlowClient || full.why != tooMany {
		t.Errorf("full client: cut off for %q (%v), want %q (messages)", full.reason, full.why, reasonSlowClient)
	}
}

func TestRing(t *testing.T) {
	r := newRing(4, 0)
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
	q := newQueue(queueLimits{messages: 1000})
	var next, want uint64
	push := func(n int) bool {
		msgs := make([]*message, n)
		for i := range msgs {
			next++
			msgs[i] = &message{seq: next, size: 10}
		}
		if q.push(0, msgs[:n-1], msgs[n-1]) == pushed {
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
			t.Fatalf("push %d: queue full at %d messages", step.push, q.n)
		}
		pop(step.pop)
	}
	if q.n != 0 || q.bytes != 0 || want != next {
		t.Errorf("after popping all: %d messages, %d bytes left, last %d of %d", q.n, q.bytes, want, next)
	}
	// The message cap holds whatever the number of pushes.
	if push(1001) {
		t.Error("push over the message cap: accepted")
	}
	if !push(1000) {
		t.Error("push at the message cap: refused")
	}
}

// TestQueueBounds checks each bound of a queue against a model: bytes
// queued, age of the oldest message, messages; and that a refused push
// changes nothing.
func TestQueueBounds(t *testing.T) {
	const maxBytes, lag, cap = 1000, int64(30e9), 50
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		q := newQueue(queueLimits{messages: cap, bytes: maxBytes, lag: lag})
		type item struct {
			size int
			at   int64
		}
		var model []item
		now := int64(0)
		for step := range 200 {
			now += rng.Int64N(int64(5e9))
			if rng.IntN(3) == 0 {
				n := rng.IntN(len(model) + 1)
				if got := len(q.pop(nil, n)); got != n {
					t.Fatalf("round %d step %d: popped %d, want %d", round, step, got, n)
				}
				model = model[n:]
				continue
			}
			var msgs []*message
			size := 0
			for range 1 + rng.IntN(5) {
				m := &message{size: 1 + rng.IntN(400)}
				msgs = append(msgs, m)
				size += m.size
			}
			queued := 0
			for _, it := range model {
				queued += it.size
			}
			var want refusal
			switch {
			case len(model) > 0 && now-model[0].at > lag:
				want = tooLate
			case len(model)+len(msgs) > cap:
				want = tooMany
			case len(model) > 0 && queued+size > maxBytes:
				want = tooBig
			}
			if got := q.push(now, msgs, nil); got != want {
				t.Fatalf("round %d step %d: push of %d bytes onto %d bytes (oldest %v old): got %v, want %v",
					round, step, size, queued, time.Duration(now-model[0].at), got, want)
			}
			if want == pushed {
				for _, m := range msgs {
					model = append(model, item{m.size, now})
				}
			}
			if q.n != len(model) {
				t.Fatalf("round %d step %d: %d messages queued, want %d", round, step, q.n, len(model))
			}
		}
	}
}

// TestQueueTakesOneLargePush: a push larger than the byte bound goes into
// an empty queue; a client is cut off for being behind, not for one large
// publish.
func TestQueueTakesOneLargePush(t *testing.T) {
	q := newQueue(queueLimits{bytes: 100})
	if got := q.push(0, nil, &message{size: 500}); got != pushed {
		t.Fatalf("large push into an empty queue: got %v, want accepted", got)
	}
	if got := q.push(0, nil, &message{size: 1}); got != tooBig {
		t.Errorf("push behind a large one: got %v, want bytes", got)
	}
}

// TestRingBytes checks that the ring evicts by bytes as well as by count,
// and that a cursor before what it evicted is expired.
func TestRingBytes(t *testing.T) {
	r := newRing(100, 1000)
	const base = 1000
	for s := uint64(base + 1); s <= base+30; s++ {
		r.put(&message{seq: s, size: 100})
		if r.bytes > 1000 {
			t.Fatalf("after seq %d: ring holds %d bytes, bound 1000", s, r.bytes)
		}
	}
	if r.n != 10 {
		t.Errorf("ring holds %d messages, want 10 (1000 bytes of 100)", r.n)
	}
	if got := r.oldest(base + 30); got != base+21 {
		t.Errorf("oldest: got %d, want %d", got, base+21)
	}
	// One message larger than the bound replaces everything.
	r.put(&message{seq: base + 31, size: 5000})
	if r.n != 1 || r.bytes != 5000 || r.oldest(base+31) != base+31 {
		t.Errorf("after a large message: %d messages, %d bytes, oldest %d", r.n, r.bytes, r.oldest(base+31))
	}
	r.put(&message{seq: base + 32, size: 10})
	if r.n != 1 || r.bytes != 10 {
		t.Errorf("after the large message: %d messages, %d bytes; want 1 and 10", r.n, r.bytes)
	}
}

// TestQueueRun checks the queue's start-once scheduling: signal starts run
// unless it is running, and a signal while it runs makes it go on once
// more instead of being lost.
func TestQueueRun(t *testing.T) {
	q := newQueue(queueLimits{messages: 4})
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
