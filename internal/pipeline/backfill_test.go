package pipeline

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
)

// backfillSinks records every sample the sinks get, live included.
type backfillSinks struct {
	mu                    sync.Mutex
	live, batch, released []telemetry.Sample
	windows               []stream.Window
	// backfill are the events of the entries the Backfill sink got.
	backfill [][]telemetry.Event
}

func (s *backfillSinks) sinks() Sinks {
	return Sinks{
		Live: func(_ context.Context, _ *telemetry.Batch, samples []telemetry.Sample) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.live = append(s.live, samples...)
		},
		Batch: func(_ *telemetry.Batch, samples []telemetry.Sample) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.batch = append(s.batch, samples...)
		},
		Group: func(released []telemetry.Sample, windows []stream.Window) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.released = append(s.released, released...)
			s.windows = append(s.windows, windows...)
		},
		Backfill: func(b *telemetry.Batch) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.backfill = append(s.backfill, slices.Clone(b.Events))
		},
	}
}

func (s *backfillSinks) snapshot() (live, batch, released []telemetry.Sample, windows []stream.Window) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.live), slices.Clone(s.batch), slices.Clone(s.released), slices.Clone(s.windows)
}

// TestBackfill: samples older than the backfill horizon are stored (and
// acknowledged) like the others, and reach no sink: not the live stream,
// not the twin (Batch), not the engine's reorder, windows, medians or
// alarms (Group); the live samples beside them, in the same entry or
// another, go everywhere as before. A machine met only through backfill
// gets no window and releases nothing.
func TestBackfill(t *testing.T) {
	runSuite(t, func(t *testing.T, e *env) {
		const horizon = 24 * time.Hour
		now := time.Now().UnixMilli()
		ev := func(machine string, at int64, v float64) telemetry.Event {
			return telemetry.Event{Machine: machine, Time: at, Metrics: []telemetry.Metric{{Name: "x", Value: v}, {Name: "y", Value: -v}}}
		}
		var history []telemetry.Event // a new machine, 20 days ago, every 10 s
		for i := range 50 {
			history = append(history, ev("hist", now-20*24*3600_000+int64(i)*10_000, float64(i)))
		}
		// A live machine whose gateway replays two days of buffered data
		// in the same request as a live reading.
		mixed := []telemetry.Event{ev("live", now-48*3600_000, 1), ev("live", now-2000, 2), ev("live", now-47*3600_000, 3)}
		liveOnly := []telemetry.Event{ev("live", now-1000, 4)}

		var sk backfillSinks
		r := e.start(procOpts{sinks: sk.sinks(), backfill: horizon})
		for _, batch := range [][]telemetry.Event{history[:25], mixed, history[25:], liveOnly} {
			res, err := e.send(batch...)
			if err != nil {
				t.Fatalf("send: %v", err)
			}
			if e.acks && res.Accepted != len(batch) {
				t.Errorf("ack = %+v, want %d accepted", res, len(batch))
			}
		}
		e.settle()
		// The live samples are released once the watermark passes them
		// (a tick, lateness behind the clock): by then the backfill would
		// have been too, had it gone to the engine.
		waitFor(t, 30*time.Second, "the live samples released", func() bool {
			_, _, released, _ := sk.snapshot()
			return len(released) >= 4
		})

		all := slices.Concat(history, mixed, liveOnly)
		if diff := cmp.Diff(e.stored(), sortSamples(samplesOf(all))); diff != "" {
			t.Errorf("stored (-got +want):\n%s", diff)
		}
		wantLive := samplesOf([]telemetry.Event{mixed[1], liveOnly[0]})
		live, batch, released, windows := sk.snapshot()
		if diff := cmp.Diff(live, wantLive); diff != "" {
			t.Errorf("Live sink (-got +want):\n%s", diff)
		}
		if diff := cmp.Diff(batch, wantLive); diff != "" {
			t.Errorf("Batch sink (-got +want):\n%s", diff)
		}
		if diff := cmp.Diff(sortSamples(released), sortSamples(wantLive)); diff != "" {
			t.Errorf("released (-got +want):\n%s", diff)
		}
		for _, w := range windows {
			if w.Machine != "live" || w.End() <= now-horizon.Milliseconds() {
				t.Errorf("window %+v of backfill pushed", w)
			}
		}
		// The Backfill sink got the events of each entry that held
		// backfill, once. (Under Kafka the machines' partitions may be
		// committed in another order, and the log's entries need not be
		// the requests: a fetch may join or split them.)
		sk.mu.Lock()
		gotEvents := slices.Concat(sk.backfill...)
		sk.mu.Unlock()
		byMachineTime := cmpopts.SortSlices(func(a, b telemetry.Event) bool {
			return a.Machine < b.Machine || a.Machine == b.Machine && a.Time < b.Time
		})
		if diff := cmp.Diff(gotEvents, slices.Concat(history, mixed), byMachineTime); diff != "" {
			t.Errorf("Backfill sink events (-got +want):\n%s", diff)
		}
		if got, want := testutil.ToFloat64(r.p.backfilled), float64(2*(len(history)+2)); got != want {
			t.Errorf("twinline_backfill_samples_total = %g, want %g", got, want)
		}
		// Sent again, the backfill is a duplicate: stored once.
		if _, err := e.send(history[:10]...); err != nil {
			t.Fatal(err)
		}
		e.settle()
		e.stop()
		if got, want := len(e.stored()), len(samplesOf(all)); got != want {
			t.Errorf("after a resend: %d samples stored, want %d", got, want)
		}
	})
}

// TestDropBackfill: dropBackfill keeps each entry's live samples, in
// order, with their origins, and rewrites the bounds.
func TestDropBackfill(t *testing.T) {
	s := func(t int64) telemetry.Sample { return telemetry.Sample{Machine: "m", Metric: fmt.Sprint(t), Time: t} }
	out := &stream.Output{
		Samples: []telemetry.Sample{s(1), s(50), s(2), s(60), s(70), s(3)},
		Origin:  []int32{0, 1, 0, 0, 1, 2},
	}
	bounds := []int{0, 2, 2, 5, 6}
	var entries []int
	if n := dropBackfill(out, bounds, 10, &entries); n != 3 {
		t.Errorf("dropped %d, want 3", n)
	}
	if diff := cmp.Diff(entries, []int{0, 2, 3}); diff != "" {
		t.Errorf("entries with backfill (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(out.Samples, []telemetry.Sample{s(50), s(60), s(70)}); diff != "" {
		t.Errorf("samples (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(out.Origin, []int32{1, 0, 1}); diff != "" {
		t.Errorf("origin (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(bounds, []int{0, 1, 1, 3, 3}); diff != "" {
		t.Errorf("bounds (-got +want):\n%s", diff)
	}
	// Nothing to drop: nothing moves.
	if n := dropBackfill(out, bounds, 10, &entries); n != 0 || len(out.Samples) != 3 {
		t.Errorf("second pass dropped %d, left %d samples", n, len(out.Samples))
	}
}
