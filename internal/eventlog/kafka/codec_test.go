package kafka

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/ingest"
	"github.com/twinline/twinline/internal/telemetry"
)

// The wire codec itself is tested, and fuzzed as a round trip, in package
// ingest (encode_test.go); these tests pin what the record value is.

func TestAppendEventIsTheWireForm(t *testing.T) {
	ev := telemetry.Event{Machine: "press-07", ID: "a1", Seq: 7, HasSeq: true, Time: base,
		Tags: map[string]string{"line": "l1"}, Metrics: []telemetry.Metric{{Name: "temp", Value: 71.3}},
		States: []telemetry.State{{Name: "state", Value: "RUNNING"}, {Name: "mode", Value: `a "b"`}}}
	got, err := AppendEvent([]byte("prev"), &ev)
	if err != nil {
		t.Fatalf("AppendEvent: %v", err)
	}
	want, err := ingest.AppendEvent([]byte("prev"), &ev)
	if err != nil {
		t.Fatalf("ingest.AppendEvent: %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("record value %s, want the wire form %s", got, want)
	}
	events, rejects, err := ingest.DecodeJSON(got[len("prev"):], ingest.DefaultOptions(), nil)
	if err != nil || len(rejects) > 0 || len(events) != 1 {
		t.Fatalf("decoding %s: %d events, rejects %v, err %v", got, len(events), rejects, err)
	}
	if diff := cmp.Diff(events[0], ev); diff != "" {
		t.Errorf("decoded record value (-got +want):\n%s", diff)
	}
}

func TestAppendEventInvalid(t *testing.T) {
	for _, ev := range []telemetry.Event{
		{Machine: "m", Time: 1, Metrics: []telemetry.Metric{{Name: "v", Value: math.NaN()}}},
		{Machine: "m", Time: 1, Metrics: []telemetry.Metric{{Name: "v", Value: math.Inf(-1)}}},
		{Machine: "", Time: 1, Metrics: []telemetry.Metric{{Name: "v", Value: 1}}},
		{Machine: "m", Time: 1},
	} {
		got, err := AppendEvent([]byte("prev"), &ev)
		var ee *ingest.EventError
		if !errors.Is(err, ErrInvalidEvent) || !errors.As(err, &ee) {
			t.Errorf("AppendEvent(%+v) error = %v, want ErrInvalidEvent and an *ingest.EventError", ev, err)
		}
		if string(got) != "prev" {
			t.Errorf("AppendEvent(%+v) = %q, want dst unchanged", ev, got)
		}
	}
}
