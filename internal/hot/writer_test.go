package hot

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// failing is a window whose appends fail.
type failing struct{ Window }

func (failing) Append(context.Context, []telemetry.Sample) error { return errors.New("redis down") }

// TestWriterWritesAndDrains: a Writer writes what it is given, and when
// stopped, what was still queued; afterwards Add drops samples without
// waiting.
func TestWriterWritesAndDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newClock()
		w := NewMemory(Options{Window: 5 * time.Minute, Now: c.Now})
		h := NewWriter(w, slog.New(slog.DiscardHandler), nil)
		now := c.Now().UnixMilli()
		// Queued before Run starts: written by the drain at the latest.
		for i := range 3 {
			h.Add([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: now + int64(i), Value: float64(i)}})
		}
		h.Add(nil) // nothing to write
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- h.Run(ctx) }()
		h.Add([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: now + 3, Value: 3}})
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v", err)
		}
		h.Add([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: now + 4, Value: 4}}) // after Run: dropped, not blocked
		got, _, err := w.Range(context.Background(), store.SeriesKey{Machine: "m", Metric: "temp"}, now, now+10)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 4 || got[3].Value != 3 {
			t.Errorf("window holds %v, want the 4 samples added while running", got)
		}
	})
}

// TestWriterCountsErrors: a failed write is counted, and the Writer goes on.
func TestWriterCountsErrors(t *testing.T) {
	h := NewWriter(failing{}, slog.New(slog.DiscardHandler), nil)
	h.Add([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: 1, Value: 1}})
	h.Add([]telemetry.Sample{{Machine: "m", Metric: "temp", Time: 2, Value: 2}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(h.errors); got != 2 {
		t.Errorf("errors counted = %v, want 2", got)
	}
}
