package hot

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/telemetry"
)

// writerQueue is how many batches a Writer holds before Add waits.
const writerQueue = 64

// writerDrain bounds how long a stopping Writer spends writing what is
// still queued.
const writerDrain = 2 * time.Second

// Writer writes acknowledged samples to a window on a goroutine of its
// own, so that a Redis round trip never delays the live stream. Its queue
// is bounded: when the window falls behind, Add waits (and so the
// processor's sinks, and ingest) rather than the window silently missing
// samples.
type Writer struct {
	w      Window
	queue  chan []telemetry.Sample
	done   chan struct{} // closed when Run returns
	logger *slog.Logger
	errors prometheus.Counter
}

// NewWriter returns a Writer to w; reg (nil for none) receives its error
// counter.
func NewWriter(w Window, logger *slog.Logger, reg prometheus.Registerer) *Writer {
	h := &Writer{w: w, queue: make(chan []telemetry.Sample, writerQueue), done: make(chan struct{}), logger: logger,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "twinline_hot_window_write_errors_total",
			Help: "Batches the hot window could not store (its reads then fall back to the store).",
		})}
	if reg != nil {
		reg.MustRegister(h.errors)
	}
	return h
}

// Add queues a copy of samples; once Run has returned (shutting down) it
// drops them: the store has them.
func (h *Writer) Add(samples []telemetry.Sample) {
	if len(samples) == 0 {
		return
	}
	select {
	case h.queue <- append([]telemetry.Sample(nil), samples...):
	case <-h.done:
	}
}

// Run writes queued batches until ctx ends, then what is still queued,
// for at most writerDrain. A write error is counted and logged: the
// window's reads then fall back to the store.
func (h *Writer) Run(ctx context.Context) error {
	defer close(h.done)
	write := func(ctx context.Context, b []telemetry.Sample) {
		if err := h.w.Append(ctx, b); err != nil {
			h.errors.Inc()
			h.logger.Warn("writing the hot window", "err", err, "samples", len(b))
		}
	}
	for {
		select {
		case b := <-h.queue:
			write(ctx, b)
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writerDrain)
			defer cancel()
			for {
				select {
				case b := <-h.queue:
					write(dctx, b)
				default:
					return nil
				}
			}
		}
	}
}
