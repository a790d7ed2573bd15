package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/twinline/twinline/internal/hub"
	"github.com/twinline/twinline/internal/sim"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/store/postgres"
	"github.com/twinline/twinline/internal/stream"
	"github.com/twinline/twinline/internal/telemetry"
	"github.com/twinline/twinline/internal/twin"
)

// observeRemoteSamples updates the twins with the samples another replica
// processed (with Redis; the hub decodes them): machines processed
// elsewhere show their status, last seen time, latest values and rates
// here too.
func (a *App) observeRemoteSamples(_ string, ingestTs int64, samples []telemetry.Sample) {
	a.twins.Observe(&telemetry.Batch{Received: ingestTs}, samples)
	// Seen elsewhere is seen: no offline alarm for it here.
	if _, err := a.alarms.Seen(samples, ingestTs); err != nil {
		a.logger.Error("journaling alarms", "component", "alarms", "err", err)
	}
}

// observeRemoteMedians records the medians another replica computed for a
// machine it processes (with Redis; the hub decodes them): /latest here
// then shows the same median as that replica, and as its stream does.
func (a *App) observeRemoteMedians(ms []hub.Median) {
	us := make([]twin.MedianUpdate, len(ms))
	for i, m := range ms {
		us[i] = twin.MedianUpdate{Machine: m.Machine, Metric: m.Metric, Median: m.Median, Time: m.Time}
	}
	a.twins.ApplyMedians(us)
}

// observeRemoteAlarm records an alarm change another replica made, so that
// this replica's alarm list and acknowledgements include it. Only on a
// shared store (PostgreSQL): alarm ids are unique across replicas there,
// while each embedded replica numbers its own.
func (a *App) observeRemoteAlarm(al hub.Alarm) {
	if _, shared := a.store.(*postgres.Store); !shared {
		return
	}
	a.alarms.Apply(twin.Alarm(al))
}

// offlineTick is how often machines are checked for silence.
const offlineTick = time.Second

// watchOffline raises offline alarms until ctx ends.
func (a *App) watchOffline(ctx context.Context) error {
	t := time.NewTicker(offlineTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if _, err := a.alarms.Tick(now); err != nil {
				a.logger.Error("journaling alarms", "component", "alarms", "err", err)
			}
		}
	}
}

// publishWindows pushes closed and corrected windows to the machines'
// stream subscribers: one message per machine.
func (a *App) publishWindows(ws []stream.Window) {
	if len(ws) == 0 {
		return
	}
	out := make([]hub.Window, len(ws)) // the hub keeps it until encoded
	for i, w := range ws {
		out[i] = hub.Window{
			Machine: w.Machine, Metric: w.Metric, Start: w.Start, Size: w.Size, Kind: w.Kind.String(),
			Count: w.Agg.Count, Sum: w.Agg.Sum, Min: w.Agg.Min, Max: w.Agg.Max, Avg: w.Agg.Avg(),
		}
	}
	a.hub.PublishWindows(out)
}

// publishMedians pushes the medians updated by a released group, one
// message per machine: {"metrics":{"temp":{"median":71.2,"t":…}}}.
func (a *App) publishMedians(us []twin.MedianUpdate) {
	if len(us) == 0 {
		return
	}
	out := make([]hub.Median, len(us)) // us is reused; the hub keeps out
	for i, u := range us {
		out[i] = hub.Median{Machine: u.Machine, Metric: u.Metric, Median: u.Median, Time: u.Time}
	}
	a.hub.PublishMedians(out)
}

// registerDemo registers the simulated machines that are not registered
// yet, with their site, line and an equipment temperature alarm at 90 °C
// that the simulator's overheat faults cross; machines an operator already
// registered are left as they are.
func registerDemo(twins *twin.Twins, machines []sim.Machine) error {
	high := 90.0
	infos := make([]twin.Info, len(machines))
	for i, m := range machines {
		infos[i] = twin.Info{
			ID: m.ID, Name: demoName(m), Site: m.Site, Line: m.Line,
			Thresholds: map[string]twin.Threshold{"temp": {High: &high, Deadband: 2, For: "10s"}},
			Attributes: map[string]any{"kind": m.Kind, "simulated": true},
		}
	}
	_, err := twins.RegisterMissing(infos)
	return err
}

// demoName names a simulated machine for people: "Hydraulic press 07".
func demoName(m sim.Machine) string {
	kinds := map[string]string{"press": "Hydraulic press", "oven": "Curing oven", "cnc": "CNC mill", "pump": "Pump", "compressor": "Compressor"}
	kind, ok := kinds[m.Kind]
	if !ok {
		kind = m.Kind
	}
	num := m.ID[strings.LastIndexByte(m.ID, '-')+1:]
	return kind + " " + num
}

func machineIDs(ms []sim.Machine) []string {
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	return ids
}

// restoreLatest seeds the twins from the store at start-up: each series'
// latest value, and its median from its last medianWindow samples.
func restoreLatest(ctx context.Context, st store.Store, twins *twin.Twins, now time.Time, maxFuture time.Duration, medianWindow int) error {
	from, to := now.Add(-restoreWindow).UnixMilli(), now.Add(maxFuture).UnixMilli()
	keys, err := st.Series(ctx, from, to)
	if err != nil {
		return fmt.Errorf("listing recent series: %w", err)
	}
	var history []telemetry.Sample // one series at a time
	// Most series have enough samples in the last minute: read that first,
	// and the whole window only for those that do not.
	recent := max(from, now.Add(-time.Minute).UnixMilli())
	ring := make([]store.Point, medianWindow)
	for _, k := range keys {
		n := 0
		keep := func(p store.Point) bool { ring[n%len(ring)] = p; n++; return true }
		if err := st.Select(ctx, k, recent, to, keep); err != nil {
			return fmt.Errorf("reading latest of %s/%s: %w", k.Machine, k.Metric, err)
		}
		if n < len(ring) && recent > from {
			n = 0
			if err := st.Select(ctx, k, from, to, keep); err != nil {
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
		twins.Restore(history[len(history)-1:])
		twins.ObserveReleased(history, nil)
	}
	return nil
}
