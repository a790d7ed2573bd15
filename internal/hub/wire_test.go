package hub

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// equateFloats compares stream numbers as the stream shows them (NaN, sent
// as null, equals NaN).
var equateFloats = cmp.Comparer(func(a, b Float) bool { return a == b || a != a && b != b })

// TestAppendersMatchTypes: every hand-written encoder's output decodes
// into its message's Go type with no unknown field, to the value it was
// given, and has exactly the members encoding/json gives that value (none
// missing, none extra, omitempty respected; encoding/json matches names
// without regard to case, the member comparison does not): the Go types
// describe the stream field for field.
func TestAppendersMatchTypes(t *testing.T) {
	raised := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	cleared := raised.Add(time.Minute)
	limit, value := 90.0, 93.5
	yes, no := true, false
	alarm := Alarm{ID: "a1", Machine: "press-07", Metric: "temp", Kind: "high", Limit: &limit, Value: &value,
		State: "cleared", RaisedAt: raised, ClearedAt: &cleared, Acked: true, AckedAt: &cleared, AckedBy: "token:ops", AckNote: "ok"}
	command := Command{ID: "c-1", Machine: "press-07", Name: "reset", Params: map[string]any{"counter": "parts"}, State: "succeeded",
		TimeoutMs: 60000, CreatedAt: raised, UpdatedAt: cleared, ExpiresAt: raised.Add(time.Minute), CreatedBy: "alice",
		Result: json.RawMessage(`{"parts":0}`), Reason: "done", IdempotencyKey: "k",
		History: []CommandTransition{{State: "pending", At: raised, By: "alice"}, {State: "succeeded", At: cleared, Via: "mqtt"}}}
	note := Note{ID: "n1", Machine: "press-07", Text: "check the \"bearing\"\n", Author: "ana", Time: raised}
	v, rv := uint64(7), uint64(0)
	twinData := TwinData{Machine: "press-07", Desired: map[string]any{"tempSetpoint": 180.0, "pid": map[string]any{"p": 1.5}},
		Reported: map[string]any{}, Delta: map[string]any{"tempSetpoint": 180.0, "pid": map[string]any{"p": 1.5}},
		Version: &v, ReportedVersion: &rv, Metadata: &TwinMetadata{
			Desired:  map[string]any{"tempSetpoint": map[string]any{"updatedAt": 1765000000000.0}, "pid": map[string]any{"p": map[string]any{"updatedAt": 1.0}}},
			Reported: map[string]any{}}}
	opts := Options{}.withDefaults()

	fleet := func() *message {
		h, _ := newTestHub(t, Options{})
		h.seq = 70
		h.fleet = newFleetState()
		h.fleet.mergeSamples([]telemetry.Sample{{Machine: "m1", Metric: "temp", Time: 5, Value: 71.2}, {Machine: "m1", Metric: "vib", Time: 6, Value: math.NaN()}}, 9)
		h.fleet.apply(fleetUpdate{Machine: "m1", Status: "online", Seen: 10})
		h.fleet.apply(fleetUpdate{Machine: "m2", Status: "offline", Alarm: true})
		h.fleet.mergeSamples([]telemetry.Sample{{Machine: "m3", Metric: "temp", Time: 7, Value: 1}}, 0)
		return h.fleetMessageLocked(0, nil)
	}

	tests := []struct {
		name string
		m    *message
		want any
	}{
		{"hello", helloMessage(41, opts, 0),
			HelloMessage{Type: TypeHello, Seq: 41, HeartbeatMs: 15000, Queue: 65536, QueueBytes: 8 << 20, MaxLagMs: 30000}},
		{"hello conflated", helloMessage(41, opts, 250*time.Millisecond),
			HelloMessage{Type: TypeHello, Seq: 41, HeartbeatMs: 15000, Queue: 65536, QueueBytes: 8 << 20, MaxLagMs: 30000, ConflateMs: 250}},
		{"heartbeat", heartbeatMessage(57, 1764482415000), HeartbeatMessage{Type: TypeHeartbeat, TS: 1764482415000, Seq: 57}},
		{"reset", resetMessage(41, reasonCursorExpired), ResetMessage{Type: TypeReset, Reason: "cursor_expired", Seq: 41}},
		{"reconnect", reconnectMessage(40, reasonSlowClient, 2345),
			ReconnectMessage{Type: TypeReconnect, Reason: "slow_client", Cursor: 40, RetryMs: 2345}},
		{"samples", bodyDraft("press-07", &samplesBody{machine: "press-07", received: 1764482400123, samples: []telemetry.Sample{
			{Machine: "press-07", Metric: "temp", Time: 1764482400000, Value: 71.3},
			{Machine: "press-07", Metric: "vib", Time: 1764482400001, Value: math.Inf(1)},
			{Machine: "press-07", Metric: "tiny", Time: 1764482400002, Value: 1e-9},
		}}).finish(42, new(message)),
			SamplesMessage{Seq: 42, Type: TypeSamples, Machine: "press-07", IngestTs: 1764482400123, Samples: []SampleData{
				{Metric: "temp", TS: 1764482400000, Value: 71.3},
				{Metric: "vib", TS: 1764482400001, Value: Float(math.NaN())},
				{Metric: "tiny", TS: 1764482400002, Value: 1e-9},
			}}},
		{"samples traced", bodyDraft("press-07", &samplesBody{machine: "press-07", received: 1764482400123,
			traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			samples:     []telemetry.Sample{{Machine: "press-07", Metric: "temp", Time: 1764482400000, Value: 71.3}}}).finish(43, new(message)),
			SamplesMessage{Seq: 43, Type: TypeSamples, Machine: "press-07", IngestTs: 1764482400123,
				Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
				Samples:     []SampleData{{Metric: "temp", TS: 1764482400000, Value: 71.3}}}},
		{"windows", bodyDraft("m", windowsBody{{Machine: "m", Metric: "temp", Start: 10000, Size: 10000, Kind: "final", Count: 3, Sum: 6, Min: 1, Max: 3, Avg: 2}}).finish(45, new(message)),
			WindowsMessage{Seq: 45, Type: TypeWindows, Machine: "m", Windows: []Window{{Metric: "temp", Start: 10000, Size: 10000, Kind: "final", Count: 3, Sum: 6, Min: 1, Max: 3, Avg: 2}}}},
		{"median", bodyDraft("m", mediansBody{{Machine: "m", Metric: "temp", Median: 71.2, Time: 5}, {Machine: "m", Metric: "vib", Median: 0.1, Time: 6}}).finish(46, new(message)),
			MedianMessage{Seq: 46, Type: TypeMedian, Machine: "m", Data: MedianData{Metrics: map[string]MedianValue{"temp": {Median: 71.2, T: 5}, "vib": {Median: 0.1, T: 6}}}}},
		{"status", statusDraft("press-07", "online", false, 1764482400123).finish(44, new(message)),
			StatusMessage{Seq: 44, Type: TypeStatus, Machine: "press-07", Data: StatusData{Status: "online", LastSeen: 1764482400123}}},
		{"status offline in alarm, never seen", statusDraft("press-07", "offline", true, 0).finish(44, new(message)),
			StatusMessage{Seq: 44, Type: TypeStatus, Machine: "press-07", Data: StatusData{Status: "offline", Alarm: true}}},
		{"alarm", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeAlarm, data: alarm}).finish(47, new(message)),
			AlarmMessage{Seq: 47, Type: TypeAlarm, Machine: "press-07", Data: alarm}},
		{"alarm active", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeAlarm, data: Alarm{ID: "a2", Machine: "press-07", Kind: "offline", State: "active", RaisedAt: raised}}).finish(48, new(message)),
			AlarmMessage{Seq: 48, Type: TypeAlarm, Machine: "press-07", Data: Alarm{ID: "a2", Machine: "press-07", Kind: "offline", State: "active", RaisedAt: raised}}},
		{"note", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeNote, data: note}).finish(49, new(message)),
			NoteMessage{Seq: 49, Type: TypeNote, Machine: "press-07", Data: note}},
		{"twin", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeTwin, data: twinData}).finish(50, new(message)),
			TwinMessage{Seq: 50, Type: TypeTwin, Machine: "press-07", Data: twinData}},
		{"twin deleted", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeTwin, data: TwinData{Machine: "press-07", Deleted: true}}).finish(51, new(message)),
			TwinMessage{Seq: 51, Type: TypeTwin, Machine: "press-07", Data: TwinData{Machine: "press-07", Deleted: true}}},
		{"command", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeCommand, data: command}).finish(50, new(message)),
			CommandMessage{Seq: 50, Type: TypeCommand, Machine: "press-07", Data: command}},
		{"state", bodyDraft("press-07", &eventBody{machine: "press-07", typ: TypeState, data: StateData{Name: "state", Value: "RUNNING", TS: 1764482400123}}).finish(50, new(message)),
			StateMessage{Seq: 50, Type: TypeState, Machine: "press-07", Data: StateData{Name: "state", Value: "RUNNING", TS: 1764482400123}}},
		{"fleet", fleet(), FleetMessage{Type: TypeFleet, Seq: 70, Machines: []FleetMachine{
			{Machine: "m1", Status: "online", Alarm: &no, LastSeen: 10, Metrics: map[string]FleetValue{"temp": {Value: 71.2, TS: 5}, "vib": {Value: Float(math.NaN()), TS: 6}}},
			{Machine: "m2", Status: "offline", Alarm: &yes, Metrics: map[string]FleetValue{}},
			{Machine: "m3", Metrics: map[string]FleetValue{"temp": {Value: 1, TS: 7}}},
		}}},
	}
	covered := map[MessageType]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.m.json()
			// Strictly into the Go type, to the value given.
			typ := reflect.TypeOf(tt.want)
			ptr := reflect.New(typ)
			dec := json.NewDecoder(bytes.NewReader(got))
			dec.DisallowUnknownFields()
			if err := dec.Decode(ptr.Interface()); err != nil {
				t.Fatalf("decoding %s into %v: %v", got, typ, err)
			}
			if diff := cmp.Diff(ptr.Elem().Interface(), tt.want, equateFloats); diff != "" {
				t.Errorf("decoded %s (-got +want):\n%s", got, diff)
			}
			// The same members as encoding/json writes for the type.
			want, err := json.Marshal(tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(generic(t, got), generic(t, want)); diff != "" {
				t.Errorf("members of %s vs encoding/json's %s (-appender +json):\n%s", got, want, diff)
			}
			covered[MessageType(reflect.ValueOf(tt.want).FieldByName("Type").String())] = true
		})
	}
	for typ := range Messages() {
		if !covered[typ] {
			t.Errorf("message type %q has no encoder case here", typ)
		}
	}
}

// generic decodes JSON into maps, slices and numbers.
func generic(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return v
}

// TestMessagesHaveTheirType: each Go message type has a "type" member, and
// Messages names every type once.
func TestMessagesHaveTheirType(t *testing.T) {
	for typ, v := range Messages() {
		f, ok := reflect.TypeOf(v).FieldByName("Type")
		if !ok || f.Type != reflect.TypeFor[MessageType]() || f.Tag.Get("json") != "type" {
			t.Errorf("%s: %T has no Type MessageType `json:\"type\"`", typ, v)
		}
	}
}

// TestRemoteCallbacks: another replica's samples and alarms reach the
// typed callbacks decoded (a null value as NaN), and a replica's own
// messages do not.
func TestRemoteCallbacks(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	prefix := testRedisPrefix(t)
	type gotSamples struct {
		machine  string
		ingestTs int64
		samples  []telemetry.Sample
	}
	samplesA, alarmsA := make(chan gotSamples, 8), make(chan Alarm, 8)
	samplesB, alarmsB := make(chan gotSamples, 8), make(chan Alarm, 8)
	statesB := make(chan StateMessage, 8)
	opts := func(s chan gotSamples, a chan Alarm, st chan StateMessage) Options {
		return Options{
			OnRemoteSamples: func(m string, ts int64, ss []telemetry.Sample) { s <- gotSamples{m, ts, ss} },
			OnRemoteAlarm:   func(al Alarm) { a <- al },
			OnRemoteState: func(m string, d StateData) {
				if st != nil {
					st <- StateMessage{Machine: m, Data: d}
				}
			},
		}
	}
	a := newReplica(t, redisAddr(), prefix, opts(samplesA, alarmsA, nil))
	newReplica(t, redisAddr(), prefix, opts(samplesB, alarmsB, statesB))
	onA := dial(t, ctx, a.srv, transportWS, "all=1", nil)
	onA.hello(t, ctx)

	in := []telemetry.Sample{
		{Machine: "press-07", Metric: "temp", Time: 1000, Value: 71.5},
		{Machine: "press-07", Metric: "vib", Time: 1001, Value: math.NaN()},
		{Machine: "oven-02", Metric: "temp", Time: 1002, Value: 181.2},
	}
	a.hub.PublishSamples(in, 5000)
	raised := time.Date(2026, 11, 30, 6, 0, 0, 0, time.UTC)
	limit := 90.0
	al := Alarm{ID: "a1", Machine: "press-07", Metric: "temp", Kind: "high", Limit: &limit, State: "active", RaisedAt: raised}
	a.hub.PublishAlarm(al)
	a.hub.PublishStatus("press-07", "online", true, 5000)
	a.hub.PublishState("press-07", StateData{Name: "state", Value: "DOWN", TS: 1003})
	a.hub.PublishNote(Note{ID: "n1", Machine: "press-07", Text: "x", Time: raised})

	var got []gotSamples
	for len(got) < 2 {
		select {
		case s := <-samplesB:
			got = append(got, s)
		case <-ctx.Done():
			t.Fatalf("B heard %d samples messages of A, want 2", len(got))
		}
	}
	want := []gotSamples{
		{"press-07", 5000, in[:2]},
		{"oven-02", 5000, in[2:]},
	}
	if diff := cmp.Diff(got, want, cmp.AllowUnexported(gotSamples{}), cmp.Comparer(func(x, y float64) bool { return x == y || x != x && y != y })); diff != "" {
		t.Errorf("remote samples (-got +want):\n%s", diff)
	}
	select {
	case gotAlarm := <-alarmsB:
		if diff := cmp.Diff(gotAlarm, al); diff != "" {
			t.Errorf("remote alarm (-got +want):\n%s", diff)
		}
	case <-ctx.Done():
		t.Fatal("B did not hear A's alarm")
	}
	select {
	case st := <-statesB:
		if diff := cmp.Diff(st, StateMessage{Machine: "press-07", Data: StateData{Name: "state", Value: "DOWN", TS: 1003}}); diff != "" {
			t.Errorf("remote state (-got +want):\n%s", diff)
		}
	case <-ctx.Done():
		t.Fatal("B did not hear A's state change")
	}
	// Once A's client has the note, everything A published has come back
	// to A (callbacks are called before the clients get a message): A
	// heard none of it as remote.
	readUntilType(t, ctx, onA, string(TypeNote))
	select {
	case s := <-samplesA:
		t.Errorf("A heard its own samples as remote: %+v", s)
	case al := <-alarmsA:
		t.Errorf("A heard its own alarm as remote: %+v", al)
	default:
	}
}

// BenchmarkDeliverRemote: delivering another replica's samples message of
// 64 samples (decoded for the app's callback) to a replica with one
// client.
func BenchmarkDeliverRemote(b *testing.B) {
	var in []telemetry.Sample
	for i := range 64 {
		in = append(in, telemetry.Sample{Machine: "press-07", Metric: "temp", Time: int64(1000 + i), Value: 71.5 + float64(i)})
	}
	d := bodyDraft("press-07", &samplesBody{machine: "press-07", received: 5000, samples: in})
	for _, callback := range []bool{false, true} {
		b.Run(map[bool]string{false: "no callback", true: "callback"}[callback], func(b *testing.B) {
			var opts Options
			n := 0
			if callback {
				opts.OnRemoteSamples = func(_ string, _ int64, s []telemetry.Sample) { n += len(s) }
			}
			h, _ := newTestHub(b, opts)
			h.bus = &bus{id: 5}
			c, _ := testClient(b, h, 1<<20)
			b.ReportAllocs()
			for b.Loop() {
				seq := h.latest()
				h.global = seq
				h.deliver(fmt.Sprintf("%d %d ", seq, seq+1) + encodeDrafts(7, 1, []draft{d}))
				c.queue.discard()
			}
		})
	}
}
