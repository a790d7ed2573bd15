package twin

import (
	"context"
	"fmt"
	"time"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// RestoreWindow is how far back RestoreLatest looks for each series'
// latest value.
const RestoreWindow = 10 * time.Minute

// History is the part of the store RestoreLatest reads.
type History interface {
	// Series lists the series with samples in [from, to].
	Series(ctx context.Context, from, to int64) ([]store.SeriesKey, error)
	// Select calls fn with the points of key in [from, to], in time order.
	Select(ctx context.Context, key store.SeriesKey, from, to int64, fn func(store.Point) bool) error
}

// RestoreLatest seeds the live state from the store at start-up: the
// latest value of each series with samples in the RestoreWindow before now
// (up to ahead after it: the accepted future), and its median from its last
// MedianWindow samples. It does not mark machines as seen (Restore).
func (l *Live) RestoreLatest(ctx context.Context, h History, now time.Time, ahead time.Duration) error {
	from, to := now.Add(-RestoreWindow).UnixMilli(), now.Add(ahead).UnixMilli()
	keys, err := h.Series(ctx, from, to)
	if err != nil {
		return fmt.Errorf("listing recent series: %w", err)
	}
	var history []telemetry.Sample // one series at a time
	// Most series have enough samples in the last minute: read that first,
	// and the whole window only for those that do not.
	recent := max(from, now.Add(-time.Minute).UnixMilli())
	ring := make([]store.Point, l.opts.MedianWindow)
	for _, k := range keys {
		n := 0
		keep := func(p store.Point) bool { ring[n%len(ring)] = p; n++; return true }
		if err := h.Select(ctx, k, recent, to, keep); err != nil {
			return fmt.Errorf("reading latest of %s/%s: %w", k.Machine, k.Metric, err)
		}
		if n < len(ring) && recent > from {
			n = 0
			if err := h.Select(ctx, k, from, to, keep); err != nil {
				return fmt.Errorf("reading latest of %s/%s: %w", k.Machine, k.Metric, err)
			}
		}
		if n == 0 {
			continue
		}
		history = history[:0]
		for i := max(n-len(ring), 0); i < n; i++ { // oldest first
			p := ring[i%len(ring)]
			history = append(history, telemetry.Sample{Machine: k.Machine, Metric: k.Metric, Time: p.Time, Value: p.Value})
		}
		l.Restore(history[len(history)-1:])
		l.ObserveReleased(history, nil)
	}
	return nil
}
