package hub

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// fleetView is a fleet state as a client holds it: what the fleet
// messages told it so far.
type fleetView map[string]fleetEntry

type fleetEntry struct {
	Machine  string                  `json:"machine"`
	Status   string                  `json:"status,omitempty"`
	Alarm    bool                    `json:"alarm,omitempty"`
	LastSeen int64                   `json:"lastSeen,omitempty"`
	Metrics  map[string]fleetMetricV `json:"metrics"`
}

type fleetMetricV struct {
	Value *float64 `json:"value"`
	TS    int64    `json:"ts"`
}

// applyFleet merges a fleet message's machines into v, as the dashboard
// does.
func (v fleetView) applyFleet(t testing.TB, machines []byte) {
	t.Helper()
	var ms []fleetEntry
	if err := json.Unmarshal(machines, &ms); err != nil {
		t.Fatalf("decoding fleet machines %s: %v", machines, err)
	}
	for _, m := range ms {
		e, ok := v[m.Machine]
		if !ok {
			e = fleetEntry{Machine: m.Machine, Metrics: map[string]fleetMetricV{}}
		}
		if m.Status != "" {
			e.Status, e.Alarm = m.Status, m.Alarm
		}
		e.LastSeen = max(e.LastSeen, m.LastSeen)
		for k, x := range m.Metrics {
			e.Metrics[k] = x
		}
		v[m.Machine] = e
	}
}

// flushView returns what a client at version since is sent.
func flushView(t testing.TB, s *fleetState, since uint64, v fleetView) {
	t.Helper()
	b, _, _ := s.appendChanges(nil, since, nil, nil)
	v.applyFleet(t, b)
}

// FuzzConflate checks conflation: merging updates in any split, with a
// flush after each part, shows a client the same fleet as merging them at
// once and flushing once.
func FuzzConflate(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, uint8(3))
	f.Add([]byte{7, 7, 7, 7, 200, 100, 3, 3, 3, 9}, uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, splits uint8) {
		var us []fleetUpdate
		for len(data) >= 3 {
			b0, b1, b2 := data[0], data[1], data[2]
			data = data[3:]
			u := fleetUpdate{Machine: string(rune('a' + b0%4)), Seen: int64(b2 % 16)}
			switch b1 % 4 {
			case 0:
				u.Status, u.Alarm = []string{"online", "offline"}[b2%2], b2%3 == 0
			default:
				u.Metric = string(rune('x' + b1%3))
				u.TS = int64(b2 % 8)
				u.Value = float64(b1 / 4)
				if b1 == 255 {
					u.Value = math.NaN()
				}
			}
			us = append(us, u)
		}
		whole := newFleetState()
		whole.merge(us)
		want := fleetView{}
		flushView(t, whole, 0, want)

		split := newFleetState()
		got := fleetView{}
		rest := us
		n := max(int(splits), 1)
		for len(rest) > 0 {
			k := min(len(rest), 1+len(rest)/n)
			since := split.v
			split.merge(rest[:k])
			flushView(t, split, since, got)
			rest = rest[k:]
		}
		if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b *float64) bool {
			return a == nil && b == nil || a != nil && b != nil && sameFloat(*a, *b)
		})); diff != "" {
			t.Errorf("fleet seen through split flushes (-whole +split):\n%s", diff)
		}
	})
}

// TestConflatedStream: a conflated client gets at most one fleet message
// per interval, with the machines changed since the last and their latest
// values, status and alarm flag; alarms pass through at once; windows and
// raw samples do not reach it; a site filter applies.
func TestConflatedStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		w := newMemWriter()
		ctx := WithFilter(context.Background(), func(m string) bool { return m != "hidden" })
		stop := startSSEContext(t, h, ctx, "/api/v1/stream?all=1&conflate=250ms", w)
		synctest.Wait()
		if hello := w.events(t)[0]; hello.Type != "hello" {
			t.Fatalf("first message: got %+v, want hello", hello)
		}

		// 1000 publishes within one interval: one fleet message.
		for i := range 1000 {
			h.PublishSamples([]telemetry.Sample{
				{Machine: "a", Metric: "temp", Time: int64(1000 + i), Value: float64(i)},
				{Machine: "b", Metric: "temp", Time: int64(1000 + i), Value: float64(-i)},
				{Machine: "hidden", Metric: "temp", Time: 1, Value: 1},
			}, 5000)
		}
		h.PublishWindows([]Window{{Machine: "a", Metric: "temp", Kind: "final"}})
		h.PublishStatus("b", "offline", true, 5000) // offline and in alarm
		h.publishEvent("b", "alarm", map[string]string{"kind": "high"})
		synctest.Wait()
		types := func() []string {
			var out []string
			for _, m := range w.events(t)[1:] {
				out = append(out, m.Type)
			}
			return out
		}
		if diff := cmp.Diff([]string{"alarm"}, types()); diff != "" {
			t.Errorf("before the first flush (-want +got):\n%s", diff)
		}
		time.Sleep(250 * time.Millisecond)
		synctest.Wait()
		if diff := cmp.Diff([]string{"alarm", "fleet"}, types()); diff != "" {
			t.Errorf("after the first flush (-want +got):\n%s", diff)
		}
		var fleet struct {
			Type     string          `json:"type"`
			Machines json.RawMessage `json:"machines"`
		}
		if err := json.Unmarshal(w.rawEvents(t)[2], &fleet); err != nil {
			t.Fatal(err)
		}
		view := fleetView{}
		view.applyFleet(t, fleet.Machines)
		v := func(f float64) *float64 { return &f }
		want := fleetView{
			"a": {Machine: "a", LastSeen: 5000, Metrics: map[string]fleetMetricV{"temp": {v(999), 1999}}},
			"b": {Machine: "b", Status: "offline", Alarm: true, LastSeen: 5000, Metrics: map[string]fleetMetricV{"temp": {v(-999), 1999}}},
		}
		if diff := cmp.Diff(want, view); diff != "" {
			t.Errorf("fleet (-want +got):\n%s", diff)
		}

		// Nothing changes: no message. Then one machine changes: only it.
		time.Sleep(time.Second)
		synctest.Wait()
		if got := len(types()); got != 2 {
			t.Errorf("messages after an idle second: got %d, want 2", got)
		}
		h.PublishSamples([]telemetry.Sample{{Machine: "a", Metric: "vib", Time: 3000, Value: 0.5}}, 6000)
		time.Sleep(250 * time.Millisecond)
		synctest.Wait()
		raw := w.rawEvents(t)
		if err := json.Unmarshal(raw[len(raw)-1], &fleet); err != nil {
			t.Fatal(err)
		}
		if got, want := string(fleet.Machines), `[{"machine":"a","lastSeen":6000,"metrics":{"vib":{"value":0.5,"ts":3000}}}]`; got != want {
			t.Errorf("second flush: got %s, want %s", got, want)
		}
		stop()
	})
}

// TestConflateParameter: conflate takes a duration from 50ms to 10s, with
// all=1 only; resuming a conflated stream is answered with a reset.
func TestConflateParameter(t *testing.T) {
	for _, tt := range []struct {
		query string
		ok    bool
	}{
		{"all=1&conflate=250ms", true},
		{"all=1&conflate=50ms", true},
		{"all=1&conflate=10s", true},
		{"all=1&conflate=49ms", false},
		{"all=1&conflate=11s", false},
		{"all=1&conflate=soon", false},
		{"machine=a&conflate=250ms", false},
	} {
		t.Run(tt.query, func(t *testing.T) {
			h, _ := newTestHub(t, Options{})
			r := httptest.NewRequest(http.MethodGet, "/api/v1/stream?"+tt.query, nil)
			_, invalid := parseQuery(r, true, 10)
			if ok := len(invalid) == 0; ok != tt.ok {
				t.Errorf("parseQuery: got invalid %v, want ok %v", invalid, tt.ok)
			}
			_ = h
		})
	}
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		w := newMemWriter()
		stop := startSSEContext(t, h, context.Background(), "/api/v1/stream?all=1&conflate=1s&cursor=5", w)
		synctest.Wait()
		got := w.events(t)
		if len(got) != 2 || got[1].Type != "reset" || got[1].Reason != reasonConflated {
			t.Errorf("resuming a conflated stream: got %+v, want hello and a reset (conflated)", got)
		}
		stop()
	})
}

// TestConflatedClientsShareFlush: unfiltered conflated clients of one
// interval get the same fleet message, encoded once, whenever they joined.
func TestConflatedClientsShareFlush(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, _ := newTestHub(t, Options{})
		wa, wb := newMemWriter(), newMemWriter()
		stopA := startSSEContext(t, h, context.Background(), "/api/v1/stream?all=1&conflate=250ms", wa)
		synctest.Wait()
		h.PublishSamples([]telemetry.Sample{{Machine: "a", Metric: "temp", Time: 1000, Value: 1}}, 5000)
		time.Sleep(100 * time.Millisecond)
		stopB := startSSEContext(t, h, context.Background(), "/api/v1/stream?all=1&conflate=250ms", wb)
		synctest.Wait()
		h.PublishSamples([]telemetry.Sample{{Machine: "b", Metric: "temp", Time: 1000, Value: 2}}, 5000)
		time.Sleep(200 * time.Millisecond)
		synctest.Wait()
		fleets := func(w *memWriter) []string {
			var out []string
			for i, m := range w.events(t) {
				if m.Type == "fleet" {
					out = append(out, string(w.rawEvents(t)[i]))
				}
			}
			return out
		}
		a, b := fleets(wa), fleets(wb)
		if len(a) != 1 || !cmp.Equal(a, b) {
			t.Errorf("fleet messages: A %v, B %v; want the same one", a, b)
		}
		if !strings.Contains(a[0], `"machine":"a"`) || !strings.Contains(a[0], `"machine":"b"`) {
			t.Errorf("fleet message %s: want both machines", a[0])
		}
		stopA()
		stopB()
	})
}
