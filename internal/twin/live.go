package twin

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/stats"
	"github.com/twinline/twinline/internal/telemetry"
)

// Live is the live state of the machines: each one's latest values, last
// seen time, sliding medians and event rates, built from the samples the
// processor hands over once they are durable (Observe, ObserveReleased) or
// that other replicas processed (Observe, ApplyMedians). With a registry
// entry it makes the twin the API shows (Machine). It is safe for
// concurrent use.
type Live struct {
	opts LiveOptions

	mu       sync.RWMutex
	machines map[string]*state
	fleet    stats.Rate // events of every machine
	// touched is ObserveReleased's scratch: the index in dst of each
	// series without a latest value it touched; empty between calls. gen
	// numbers its calls (see latest.gen).
	touched map[seriesKey]int
	gen     uint64
}

// LiveOptions configure a Live.
type LiveOptions struct {
	// OfflineAfter is the silence after which a machine shows offline.
	OfflineAfter time.Duration
	// MedianWindow is the number of samples a sliding median covers
	// (at least 1).
	MedianWindow int
	// Now is the server clock; nil is time.Now.
	Now func() time.Time
	// Register is told of each machine the live state sees for the first
	// time (or again after Forget), after the call that saw it and
	// without the Live's lock held: the registry auto-registers it
	// (Registry.AutoRegister). at is the server time of its batch, or the
	// event time of a restored sample. nil: nobody is told.
	Register func(id string, at time.Time)
}

// state is one machine's live state.
type state struct {
	lastSeen int64
	latest   map[string]*latest
	// names are the keys of latest, sorted, and vals their values in
	// that order: the fleet list reads them without a look-up.
	names   []string
	vals    []*latest
	states  map[string]StateValue // nil until the first state
	rate    *stats.Rate           // nil until the first event, and once trimmed
	medians map[string]*stats.Median
}

// addLatest adds metric name to latest (and names, vals) and returns its
// zero value.
func (e *state) addLatest(name string) *latest {
	v := new(latest)
	e.latest[name] = v
	i, _ := slices.BinarySearch(e.names, name)
	e.names = slices.Insert(e.names, i, name)
	e.vals = slices.Insert(e.vals, i, v)
	return v
}

// latest is the internal form of Value, without a pointer to allocate.
type latest struct {
	value, median float64
	ts            int64
	hasMedian     bool
	// med is the metric's sliding median (the one in state.medians), nil
	// until the first released sample or once trimmed; gen and at say
	// it is dst[at] of the ObserveReleased call numbered gen.
	med *stats.Median
	gen uint64
	at  int
}

// idleFactor times --offline-after (at least idleMin) is how long a
// machine must be silent before Trim drops its sliding medians.
const (
	idleFactor = 10
	idleMin    = time.Hour
)

// TrimInterval is how often Live.Run trims the state of silent machines.
const TrimInterval = time.Minute

// NewLive returns an empty live state.
func NewLive(opts LiveOptions) *Live {
	opts.MedianWindow = max(opts.MedianWindow, 1)
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Live{opts: opts, machines: map[string]*state{}, touched: map[seriesKey]int{}}
}

// stateLocked returns id's state, creating it (and adding id to *fresh)
// when it has none; l.mu must be held for writing.
func (l *Live) stateLocked(id string, fresh *[]string) *state {
	e := l.machines[id]
	if e == nil {
		e = &state{latest: map[string]*latest{}}
		l.machines[id] = e
		*fresh = append(*fresh, id)
	}
	return e
}

// register tells Register of the machines first seen at at.
func (l *Live) register(fresh []string, at func(i int) time.Time) {
	if l.opts.Register == nil {
		return
	}
	for i, id := range fresh {
		l.opts.Register(id, at(i))
	}
}

// Observe updates the live state with durable samples that arrived in b.
// It does not retain samples.
func (l *Live) Observe(b *telemetry.Batch, samples []telemetry.Sample) {
	var fresh []string
	l.mu.Lock()
	var e *state
	for i := range samples {
		s := &samples[i]
		if i == 0 || samples[i-1].Machine != s.Machine {
			e = l.stateLocked(s.Machine, &fresh)
			e.lastSeen = max(e.lastSeen, b.Received)
		}
		// An event's samples come together: count one hit per event.
		if i == 0 || samples[i-1].Machine != s.Machine || samples[i-1].Time != s.Time {
			if e.rate == nil {
				e.rate = new(stats.Rate)
			}
			e.rate.Hit(b.Received, 1)
			l.fleet.Hit(b.Received, 1)
		}
		v, ok := e.latest[s.Metric]
		if !ok {
			v = e.addLatest(s.Metric)
		}
		if !ok || s.Time >= v.ts {
			v.value, v.ts = s.Value, s.Time
		}
	}
	for i := range b.Events {
		if ev := &b.Events[i]; len(ev.States) > 0 {
			l.observeStatesLocked(ev, b.Received, &fresh)
		}
	}
	l.mu.Unlock()
	if len(fresh) > 0 {
		at := time.UnixMilli(b.Received)
		l.register(fresh, func(int) time.Time { return at })
	}
}

// observeStatesLocked keeps the states of ev that are newer (event time)
// than those the machine has; l.mu must be held for writing. An event of
// states only counts as one seen (lastSeen, rate) here, as an event with
// samples does in Observe.
func (l *Live) observeStatesLocked(ev *telemetry.Event, received int64, fresh *[]string) {
	e := l.stateLocked(ev.Machine, fresh)
	if len(ev.Metrics) == 0 {
		e.lastSeen = max(e.lastSeen, received)
		if e.rate == nil {
			e.rate = new(stats.Rate)
		}
		e.rate.Hit(received, 1)
		l.fleet.Hit(received, 1)
	}
	if e.states == nil {
		e.states = make(map[string]StateValue, len(ev.States))
	}
	for _, st := range ev.States {
		if v, ok := e.states[st.Name]; !ok || ev.Time >= v.TS {
			e.states[st.Name] = StateValue{Value: st.Value, TS: ev.Time}
		}
	}
}

// ApplyState sets a machine's state name to value from event time ts on,
// unless it has a newer one: a change another replica stored (hub
// OnRemoteState). It does not touch lastSeen, and a machine without live
// state is left alone (its samples register it).
func (l *Live) ApplyState(machine, name, value string, ts int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.machines[machine]
	if e == nil {
		return
	}
	if e.states == nil {
		e.states = map[string]StateValue{}
	}
	if v, ok := e.states[name]; !ok || ts >= v.TS {
		e.states[name] = StateValue{Value: value, TS: ts}
	}
}

// Restore seeds latest values from stored samples (at start-up), without
// touching lastSeen: a restarted server does not claim machines are online.
func (l *Live) Restore(samples []telemetry.Sample) {
	var fresh []string
	var firstAt []time.Time
	l.mu.Lock()
	for _, s := range samples {
		n := len(fresh)
		e := l.stateLocked(s.Machine, &fresh)
		if len(fresh) > n {
			firstAt = append(firstAt, time.UnixMilli(s.Time))
		}
		v, ok := e.latest[s.Metric]
		if !ok {
			v = e.addLatest(s.Metric)
		}
		if !ok || s.Time >= v.ts {
			v.value, v.ts = s.Value, s.Time
		}
	}
	l.mu.Unlock()
	l.register(fresh, func(i int) time.Time { return firstAt[i] })
}

type seriesKey struct{ machine, metric string }

// MedianUpdate is a metric's sliding median after a group of released
// samples: the median, and the event time of the newest sample it covers.
type MedianUpdate struct {
	Machine string
	Metric  string
	Time    int64
	Median  float64
}

// ObserveReleased feeds the sliding medians with samples released in
// event-time order, and appends to dst each touched series' median after
// the group (one entry per machine and metric, in the order first seen).
// Samples of a machine without live state (forgotten meanwhile: deleted)
// are skipped.
func (l *Live) ObserveReleased(samples []telemetry.Sample, dst []MedianUpdate) []MedianUpdate {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.gen++
	at := l.touched
	defer clear(at)
	var e *state
	for i := range samples {
		s := &samples[i]
		if i == 0 || samples[i-1].Machine != s.Machine {
			e = l.machines[s.Machine]
		}
		if e == nil {
			continue
		}
		// One look-up by metric: the latest value holds its median and
		// its place in dst.
		v, ok := e.latest[s.Metric]
		var m *stats.Median
		if ok {
			m = v.med
		}
		if m == nil {
			m = e.medians[s.Metric]
			if m == nil {
				if e.medians == nil {
					e.medians = map[string]*stats.Median{}
				}
				m = stats.NewMedian(l.opts.MedianWindow)
				e.medians[s.Metric] = m
			}
			if ok {
				v.med = m
			}
		}
		m.Add(s.Value)
		med, _ := m.Median()
		if !ok {
			k := seriesKey{s.Machine, s.Metric}
			if j, ok := at[k]; ok {
				dst[j].Time, dst[j].Median = s.Time, med
			} else {
				at[k] = len(dst)
				dst = append(dst, MedianUpdate{Machine: s.Machine, Metric: s.Metric, Time: s.Time, Median: med})
			}
			continue
		}
		v.median = med
		v.hasMedian = true
		if v.gen == l.gen {
			dst[v.at].Time, dst[v.at].Median = s.Time, med
		} else {
			v.gen, v.at = l.gen, len(dst)
			dst = append(dst, MedianUpdate{Machine: s.Machine, Metric: s.Metric, Time: s.Time, Median: med})
		}
	}
	return dst
}

// ApplyMedians records the sliding medians another replica computed for
// the machines it processes (with Kafka, each machine's partition is
// processed by one replica; the others hear its live messages): this
// replica's twins then show the owner's medians, as its own would be. A
// median for a machine or metric without a latest value here is ignored:
// the owner publishes a sample before any median covering it.
func (l *Live) ApplyMedians(us []MedianUpdate) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, u := range us {
		e := l.machines[u.Machine]
		if e == nil {
			continue
		}
		v, ok := e.latest[u.Metric]
		if !ok {
			continue
		}
		v.median, v.hasMedian = u.Median, true
	}
}

// FleetRate returns the fleet's events per second over window (1m or 5m)
// of server time.
func (l *Live) FleetRate(window time.Duration) float64 {
	now := l.opts.Now().UnixMilli()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fleet.PerSecond(now, window)
}

// Machine returns the twin of the machine registered as in: its entry and
// its live state (none yet: offline, no metrics).
func (l *Live) Machine(in Info) Machine {
	now := l.opts.Now().UnixMilli()
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.viewLocked(in, now)
}

// Machines returns the twins of the machines registered as infos, in
// their order.
func (l *Live) Machines(infos []Info) []Machine {
	now := l.opts.Now().UnixMilli()
	out := make([]Machine, len(infos))
	l.mu.RLock()
	defer l.mu.RUnlock()
	for i, in := range infos {
		out[i] = l.viewLocked(in, now)
	}
	return out
}

// viewLocked copies the live state of in.ID; l.mu must be held.
func (l *Live) viewLocked(in Info, now int64) Machine {
	m := Machine{Info: in, Status: StatusOffline}
	e := l.machines[in.ID]
	if e == nil {
		m.Metrics = map[string]Value{}
		return m
	}
	if e.lastSeen > 0 && now-e.lastSeen <= l.opts.OfflineAfter.Milliseconds() {
		m.Status = StatusOnline
	}
	m.LastSeen = e.lastSeen
	m.Metrics = make(map[string]Value, len(e.latest))
	for name, v := range e.latest {
		mv := Value{Value: v.value, TS: v.ts}
		if v.hasMedian {
			med := v.median
			mv.Median = &med
		}
		m.Metrics[name] = mv
	}
	if len(e.states) > 0 {
		m.States = make(map[string]StateValue, len(e.states))
		for name, v := range e.states {
			m.States[name] = v
		}
	}
	if e.rate != nil {
		m.Rate1m, m.Rate5m = e.rate.PerSecond(now, time.Minute), e.rate.PerSecond(now, 5*time.Minute)
	}
	return m
}

// Forget drops the live state of a machine (deleted from the registry).
func (l *Live) Forget(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.machines, id)
}

// Trim drops the sliding medians and the event rate of machines silent
// (server time now) for idleFactor × --offline-after, at least idleMin,
// and reports how many machines it trimmed: their latest values and last
// median stay, and a machine that comes back starts its medians afresh.
// Its rate answers 0 either way (a Rate covers the last MaxRateWindow, far
// less than idleMin; unless the server clock goes back by more than
// idleMin), and the Rate its next event creates counts as the dropped one
// would have (a hit after a gap longer than the window starts it afresh).
// It costs O(machines); Run calls it.
func (l *Live) Trim(now time.Time) (trimmed int) {
	cutoff := now.Add(-max(idleFactor*l.opts.OfflineAfter, idleMin)).UnixMilli()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.machines {
		if (e.medians != nil || e.rate != nil) && e.lastSeen < cutoff {
			if e.medians != nil {
				for _, v := range e.vals {
					v.med = nil
				}
			}
			e.medians, e.rate = nil, nil
			trimmed++
		}
	}
	return trimmed
}

// Run trims the state of silent machines every TrimInterval until ctx
// ends.
func (l *Live) Run(ctx context.Context) error {
	t := time.NewTicker(TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			l.Trim(now)
		}
	}
}
