package mqtt

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twinline/twinline/internal/telemetry"
)

// TestPrepareBackfill: a message of any age within the retention is taken
// (an old one is backfill, routed by the processor: ADR 0033); one older
// than the retention is rejected as the HTTP API rejects it.
func TestPrepareBackfill(t *testing.T) {
	now := time.UnixMilli(1_795_996_800_000)
	h, err := newHandler(IngestOptions{Retention: 30 * 24 * time.Hour, MaxFuture: time.Minute},
		Deps{Submit: func(context.Context, *telemetry.Batch) (int, int, error) { return 0, 0, nil }, Clock: func() time.Time { return now }}, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		age    time.Duration
		reason string
	}{
		{"live", 0, ""},
		{"25 hours old", 25 * time.Hour, ""},
		{"20 days old", 20 * 24 * time.Hour, ""},
		{"29 days 23 h old", 30*24*time.Hour - time.Hour, ""},
		{"31 days old", 31 * 24 * time.Hour, reasonPayload},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ts := now.Add(-tt.age).UnixMilli()
			p, out := h.prepare("twinline/s/l/m/telemetry", fmt.Appendf(nil, `{"timestamp":%d,"temp":1}`, ts), nil)
			if out.reason != tt.reason {
				t.Fatalf("prepare: reason %q (%s), want %q", out.reason, out.detail, tt.reason)
			}
			if tt.reason == "" && (p == nil || len(p.batch.Events) != 1 || p.batch.Events[0].Time != ts) {
				t.Fatalf("prepare: batch %+v, want one event at %d", p, ts)
			}
		})
	}
}
