package kafka

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// roundTrip encodes ev and decodes it with the ingest JSON decoder.
func roundTrip(t testing.TB, ev telemetry.Event) telemetry.Event {
	t.Helper()
	b, err := AppendEvent(nil, &ev)
	if err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	got, rejects, err := ingest.DecodeJSON(b, ingest.DefaultOptions(), nil)
	if err != nil || len(rejects) > 0 || len(got) != 1 {
		t.Fatalf("decoding %s: events %d, rejects %v, err %v", b, len(got), rejects, err)
	}
	return got[0]
}

func TestAppendEventRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		ev   telemetry.Event
	}{
		{"plain", telemetry.Event{Machine: "press-07", Time: base, Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}}}},
		{"id seq tags", telemetry.Event{Machine: "m1", ID: "evt-1", Seq: 1<<64 - 1, HasSeq: true, Time: base,
			Tags:    map[string]string{"site": "lyon", "line": "l2", "note": `say "hi" \ bye`},
			Metrics: []telemetry.Metric{{Name: "a", Value: 1}, {Name: "b", Value: -2.5}}}},
		{"seq zero", telemetry.Event{Machine: "m1", Seq: 0, HasSeq: true, Time: 0, Metrics: []telemetry.Metric{{Name: "a", Value: 0}}}},
		{"reserved metric names", telemetry.Event{Machine: "m1", Time: base, Metrics: []telemetry.Metric{
			{Name: "id", Value: 1}, {Name: "seq", Value: 2}, {Name: "timestamp", Value: 3}, {Name: "tags", Value: 4}, {Name: "machineId", Value: 5}, {Name: "metrics", Value: 6}}}},
		{"extreme values", telemetry.Event{Machine: "m1", Time: -1, Metrics: []telemetry.Metric{
			{Name: "max", Value: math.MaxFloat64}, {Name: "tiny", Value: math.SmallestNonzeroFloat64},
			{Name: "third", Value: 1.0 / 3}, {Name: "big", Value: 1e21}, {Name: "neg", Value: -1e-7}}}},
		{"unicode", telemetry.Event{Machine: "presse-é-東京", ID: "ü", Time: base,
			Tags: map[string]string{"ort": "Köln ☃"}, Metrics: []telemetry.Metric{{Name: "t", Value: 1}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := roundTrip(t, tt.ev)
			if diff := cmp.Diff(got, tt.ev, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("round trip (-got +want):\n%s", diff)
			}
		})
	}
}

func TestAppendEventEscapes(t *testing.T) {
	ev := telemetry.Event{Machine: "m", Time: 1, Tags: map[string]string{"k": "a\"b\\c\n\t\r\x01\x1f"}, Metrics: []telemetry.Metric{{Name: "v", Value: 1}}}
	b, err := AppendEvent(nil, &ev)
	if err != nil {
		t.Fatal(err)
	}
	got, want := string(b), `{"machineId":"m","timestamp":1,"tags":{"k":"a\"b\\c\n\t\r\u0001\u001f"},"metrics":{"v":1}}`
	if got != want {
		t.Errorf("AppendEvent = %s, want %s", got, want)
	}
}

func TestAppendEventNonFinite(t *testing.T) {
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		ev := telemetry.Event{Machine: "m", Time: 1, Metrics: []telemetry.Metric{{Name: "v", Value: v}}}
		if _, err := AppendEvent(nil, &ev); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("AppendEvent(%v) error = %v, want ErrInvalidEvent", v, err)
		}
	}
}

// FuzzAppendEvent checks that every event the decoder accepts survives an
// encode and a second decode unchanged.
func FuzzAppendEvent(f *testing.F) {
	f.Add([]byte(`{"machineId":"m","timestamp":1764482400000,"id":"x","seq":3,"tags":{"a":"b"},"temp":1.5}`))
	f.Add([]byte(`{"machineId":"m","metrics":{"id":1,"seq":2e300},"ok":true}`))
	f.Add([]byte(`[{"machineId":"a\u0001","v":-0.000001},{"machineId":"b","v":1e-320}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		opts := ingest.DefaultOptions()
		opts.Now = base
		evs, _, err := ingest.DecodeJSON(body, opts, nil)
		if err != nil {
			return
		}
		for _, ev := range evs {
			b, err := AppendEvent(nil, &ev)
			if err != nil {
				t.Fatalf("AppendEvent(%+v): %v", ev, err)
			}
			got, rejects, err := ingest.DecodeJSON(b, opts, nil)
			if err != nil || len(rejects) > 0 || len(got) != 1 {
				t.Fatalf("decoding %s: %d events, rejects %v, err %v", b, len(got), rejects, err)
			}
			if diff := cmp.Diff(got[0], ev, cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("round trip of %s (-got +want):\n%s", b, diff)
			}
		}
	})
}

func BenchmarkAppendEvent(b *testing.B) {
	ev := telemetry.Event{Machine: "press-07", Seq: 12345, HasSeq: true, Time: base,
		Tags:    map[string]string{"line": "l1"},
		Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}, {Name: "rpm", Value: 1480}, {Name: "vibration", Value: 0.0231}}}
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		buf, _ = AppendEvent(buf[:0], &ev)
	}
	b.SetBytes(int64(len(buf)))
}
