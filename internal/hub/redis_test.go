package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/telemetry"
)

// readUntilType reads c's messages, heartbeats skipped, up to and
// including the first event of type typ.
func readUntilType(t *testing.T, ctx context.Context, c *streamClient, typ string) []msg {
	t.Helper()
	var out []msg
	for {
		m := c.next(t, ctx)
		if m.Type == "heartbeat" {
			continue
		}
		out = append(out, m)
		if m.Type == typ {
			return out
		}
	}
}

// summary names a message by type, machine and seq.
func summary(ms []msg) []string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s %s %d", m.Type, m.Machine, m.Seq))
	}
	return out
}

// TestFanoutAcrossReplicas: a message published on A reaches the clients
// of B once and those of A once, with the same seqs on both.
func TestFanoutAcrossReplicas(t *testing.T) {
	for _, sharded := range []bool{false, true} {
		t.Run(fmt.Sprintf("sharded=%v", sharded), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			prefix := testRedisPrefix(t)
			a := newReplica(t, redisAddr(), prefix, Options{RedisSharded: sharded})
			b := newReplica(t, redisAddr(), prefix, Options{RedisSharded: sharded})

			aAll := dial(t, ctx, a.srv, transportWS, "all=1", nil)
			bAll := dial(t, ctx, b.srv, transportSSE, "all=1", nil)
			bPress := dial(t, ctx, b.srv, transportWS, "machine=press-07", nil)
			for _, c := range []*streamClient{aAll, bAll, bPress} {
				c.hello(t, ctx)
			}

			a.hub.PublishSamples([]telemetry.Sample{
				{Machine: "press-07", Metric: "temp", Time: 1000, Value: 71.3},
				{Machine: "oven-1", Metric: "temp", Time: 1000, Value: 180},
			}, 5000)
			a.hub.publishEvent("press-07", "alarm", map[string]string{"state": "firing"})
			b.hub.publishEvent("oven-1", "note", "door open")
			a.hub.publishEvent("", "end", nil)

			gotA := readUntilType(t, ctx, aAll, "end")
			gotB := readUntilType(t, ctx, bAll, "end")
			if diff := cmp.Diff(summary(gotA), summary(gotB)); diff != "" {
				t.Errorf("A and B all-machines clients differ (-A +B):\n%s", diff)
			}
			first := gotA[0].Seq
			want := []string{
				fmt.Sprintf("samples press-07 %d", first),
				fmt.Sprintf("samples oven-1 %d", first+1),
				fmt.Sprintf("alarm press-07 %d", first+2),
				fmt.Sprintf("note oven-1 %d", first+3),
				fmt.Sprintf("end  %d", first+4),
			}
			if diff := cmp.Diff(want, summary(gotA)); diff != "" {
				t.Errorf("A's client (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff([]sample{{"temp", 1000, 71.3}}, gotB[0].Samples); diff != "" {
				t.Errorf("samples on B (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(json.RawMessage(`{"state":"firing"}`), gotB[2].Data); diff != "" {
				t.Errorf("alarm data on B (-want +got):\n%s", diff)
			}
			// The press client of B gets its machine's messages only; a
			// final press-07 event shows nothing else (no duplicate) came.
			a.hub.publishEvent("press-07", "end", nil)
			gotPress := readUntilType(t, ctx, bPress, "end")
			wantPress := []string{want[0], want[2], fmt.Sprintf("end press-07 %d", first+5)}
			if diff := cmp.Diff(wantPress, summary(gotPress)); diff != "" {
				t.Errorf("B's press-07 client (-want +got):\n%s", diff)
			}
			// And nothing more for the all-machines clients but that end.
			for name, c := range map[string]*streamClient{"A": aAll, "B": bAll} {
				if got := summary(readUntilType(t, ctx, c, "end")); !cmp.Equal(got, wantPress[2:]) {
					t.Errorf("%s all-machines client after the first end: %v, want %v", name, got, wantPress[2:])
				}
			}
			if got := testutil.ToFloat64(a.hub.metrics.busLocal); got != 0 {
				t.Errorf("messages delivered locally only: %v, want 0", got)
			}
		})
	}
}

// TestResumeOnAnotherReplica: a cursor obtained on A resumes on B with no
// gap and no duplicate.
func TestResumeOnAnotherReplica(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testRedisPrefix(t)
	a := newReplica(t, redisAddr(), prefix, Options{})
	b := newReplica(t, redisAddr(), prefix, Options{})

	onA := dial(t, ctx, a.srv, transportSSE, "machine=press-07", nil)
	onA.hello(t, ctx)
	for i := range 3 {
		a.hub.publishEvent("press-07", "note", i)
	}
	got := readUntilType(t, ctx, onA, "note")
	cursor := got[0].Seq // the first note; the client "disconnects" here
	for i := 3; i < 6; i++ {
		b.hub.publishEvent("press-07", "note", i)
		a.hub.publishEvent("oven-1", "note", i) // filtered out
	}
	b.hub.publishEvent("press-07", "end", nil)

	hdr := http.Header{"Last-Event-Id": {strconv.FormatUint(cursor, 10)}}
	onB := dial(t, ctx, b.srv, transportSSE, "machine=press-07", hdr)
	onB.hello(t, ctx)
	resumed := readUntilType(t, ctx, onB, "end")
	var data []string
	for _, m := range resumed {
		data = append(data, m.Type+" "+string(m.Data))
	}
	want := []string{"note 1", "note 2", "note 3", "note 4", "note 5", "end null"}
	if diff := cmp.Diff(want, data); diff != "" {
		t.Errorf("resumed on B (-want +got):\n%s", diff)
	}
	if resumed[0].Seq != cursor+1 {
		t.Errorf("first replayed seq %d, want %d", resumed[0].Seq, cursor+1)
	}
}

// TestResumeWaitsForAFasterReplica: a cursor B has not reached yet (A is
// ahead) is held until B catches up, not answered cursor_unknown.
func TestResumeWaitsForAFasterReplica(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testRedisPrefix(t)
	b := newReplica(t, redisAddr(), prefix, Options{})
	ahead := b.hub.latest() + 2
	done := make(chan []msg, 1)
	go func() {
		hdr := http.Header{"Last-Event-Id": {strconv.FormatUint(ahead, 10)}}
		c := dial(t, ctx, b.srv, transportSSE, "all=1", hdr)
		c.hello(t, ctx)
		done <- readUntilType(t, ctx, c, "end")
	}()
	// Wait until the request is held, then let B reach the cursor.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.hub.mu.Lock()
		waiting := b.hub.advanced != nil
		b.hub.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("resume request not held")
		}
		b.hub.waitSeq(ctx, b.hub.latest()+1, time.Millisecond)
	}
	for i := range 3 {
		b.hub.publishEvent("m", "note", i)
	}
	b.hub.publishEvent("m", "end", nil)
	got := <-done
	if diff := cmp.Diff([]string{"note 2 " + strconv.FormatUint(ahead+1, 10), "end null " + strconv.FormatUint(ahead+2, 10)},
		func() []string {
			var out []string
			for _, m := range got {
				out = append(out, m.Type+" "+string(m.Data)+" "+strconv.FormatUint(m.Seq, 10))
			}
			return out
		}()); diff != "" {
		t.Errorf("resumed (-want +got):\n%s", diff)
	}
}

// TestFanoutSurvivesRedisCut cuts both replicas off Redis (TCP proxies)
// while messages flow: local clients keep receiving local messages, Ready
// says so, and fan-out comes back by itself when Redis does.
func TestFanoutSurvivesRedisCut(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testRedisPrefix(t)
	pa, pb := newProxy(t, redisAddr()), newProxy(t, redisAddr())
	a := newReplica(t, pa.Addr(), prefix, Options{})
	b := newReplica(t, pb.Addr(), prefix, Options{})
	onA := dial(t, ctx, a.srv, transportWS, "all=1", nil)
	onB := dial(t, ctx, b.srv, transportWS, "all=1", nil)
	onA.hello(t, ctx)
	onB.hello(t, ctx)

	a.hub.publishEvent("m", "before", nil)
	before := readUntilType(t, ctx, onA, "before")[0].Seq
	readUntilType(t, ctx, onB, "before")

	pa.Cut()
	pb.Cut()
	// Messages keep flowing on A: its own client gets every one.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; a.hub.Ready() == nil || i < 20; i++ {
		if time.Now().After(deadline) {
			t.Fatal("A still ready 10s after Redis was cut off")
		}
		a.hub.publishEvent("m", "during", i)
		readUntilType(t, ctx, onA, "during")
	}
	if a.hub.Ready() == nil {
		t.Error("A ready with Redis cut off")
	}
	if got := testutil.ToFloat64(a.hub.metrics.busLocal); got == 0 {
		t.Error("no message delivered locally during the outage")
	}

	pa.Restore()
	pb.Restore()
	a.waitReady(t)
	b.waitReady(t)
	// Recovered without a restart: each client is told that messages of
	// other replicas may have been lost (a reset), then a message from A
	// reaches both again, with the same seq.
	a.hub.publishEvent("m", "after", nil)
	gotA := readUntilType(t, ctx, onA, "after")
	gotB := readUntilType(t, ctx, onB, "after")
	for name, got := range map[string][]msg{"A": gotA, "B": gotB} {
		var types []string
		for _, m := range got {
			if m.Type == "during" {
				continue // sent before the cut was noticed
			}
			types = append(types, m.Type+" "+m.Reason)
		}
		if diff := cmp.Diff([]string{"reset fanout_gap", "after "}, types); diff != "" {
			t.Errorf("%s after recovery (-want +got):\n%s", name, diff)
		}
	}
	if gotA[len(gotA)-1].Seq != gotB[len(gotB)-1].Seq {
		t.Errorf("seq of after: A %d, B %d; want the same", gotA[len(gotA)-1].Seq, gotB[len(gotB)-1].Seq)
	}
	// A cursor from before the outage is expired on B.
	hdr := http.Header{"Last-Event-Id": {strconv.FormatUint(before, 10)}}
	again := dial(t, ctx, b.srv, transportSSE, "all=1", hdr)
	again.hello(t, ctx)
	if m := again.next(t, ctx); m.Type != "reset" || m.Reason != "cursor_expired" {
		t.Errorf("resuming on B from before the outage: %+v, want a cursor_expired reset", m)
	}
	// And the fan-out goes on.
	b.hub.publishEvent("m", "later", nil)
	if got := readUntilType(t, ctx, onA, "later"); len(got) != 1 {
		t.Errorf("A after B's later: %v", summary(got))
	}
}

func TestDecodeDrafts(t *testing.T) {
	d := eventDraft("press-07", "note", []byte(`"x"`))
	payload := "40 42 " + encodeDrafts(7, 9, []draft{d, eventDraft("", "fleet", []byte(`1`))})
	p, err := decodeDrafts(payload)
	if err != nil {
		t.Fatal(err)
	}
	if p.prev != 40 || p.first != 42 || p.origin != 7 || p.no != 9 || len(p.drafts) != 2 {
		t.Fatalf("decoded %+v", p)
	}
	var m message
	p.drafts[0].finish(42, &m)
	if got, want := string(m.json()), `{"seq":42,"type":"note","machine":"press-07","data":"x"}`; got != want {
		t.Errorf("decoded\n%s\nwant\n%s", got, want)
	}
	if p, err := decodeDrafts("40 42 "); err != nil || len(p.drafts) != 0 {
		t.Errorf("decoding a jump: %+v, %v", p, err)
	}
	for _, bad := range []string{"", "42", "x 1 ", "1 x ", "42 42 ", "40 42 \x07", "40 42 \x07\x09",
		"40 42 \x07\x09\x05ab", "40 42 \x07\x09\x01a\xff", "40 42 \x07\x09\x01a"} {
		if _, err := decodeDrafts(bad); err == nil {
			t.Errorf("decodeDrafts(%q): no error", bad)
		}
	}
}

// TestOwnPublishOnce drives the states of a publish call whose answer and
// echo race: whatever the order, the replica delivers it once.
func TestOwnPublishOnce(t *testing.T) {
	tests := []struct {
		name string
		// echoFirst: the message comes back before the answer; failed:
		// the answer is an error (the call may still have run).
		echoFirst, failed bool
	}{
		{"answer then echo", false, false},
		{"echo then answer", true, false},
		{"failed, then echo", false, true},
		{"echo, then failed", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newTestHub(t, Options{})
			h.bus = &bus{id: 5}
			h.pubs = make(map[uint64]pubState)
			c, _ := testClient(t, h, 16)
			d := eventDraft("m", "note", []byte(`1`))
			echo := fmt.Sprintf("%d %d ", h.seq, h.seq+1) + encodeDrafts(5, 1, []draft{d})
			h.global = h.seq
			h.pubs[1] = pubPending
			if tt.echoFirst {
				h.deliver(echo)
			}
			var err error
			if tt.failed {
				err = errors.New("timeout")
			}
			if h.answered(1, err) {
				h.publishDrafts([]draft{eventDraft("m", "note", []byte(`1`))}, nil)
			}
			if !tt.echoFirst {
				h.deliver(echo)
			}
			got := queued(t, c)
			if len(got) != 1 {
				t.Fatalf("delivered %d times: %+v", len(got), got)
			}
			if len(h.pubs) != 0 {
				t.Errorf("publish calls left tracked: %v", h.pubs)
			}
		})
	}
}

// TestConflatedAcrossReplicas: a conflated fleet stream on B shows the
// samples and status A published (an api replica processes nothing
// itself), once per interval.
func TestConflatedAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testRedisPrefix(t)
	a := newReplica(t, redisAddr(), prefix, Options{})
	b := newReplica(t, redisAddr(), prefix, Options{})
	fleet := dial(t, ctx, b.srv, transportWS, "all=1&conflate=50ms", nil)
	fleet.hello(t, ctx)
	a.hub.PublishSamples([]telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: 1000, Value: 71.5}}, 5000)
	a.hub.PublishStatus("press-07", "offline", true, 5000)
	for {
		m := readUntilType(t, ctx, fleet, "fleet")
		got := string(m[len(m)-1].Machines)
		if strings.Contains(got, `"temp":{"value":71.5,"ts":1000}`) && strings.Contains(got, `"status":"offline","alarm":true`) {
			break
		}
	}
}
