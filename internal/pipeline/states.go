package pipeline

import (
	"context"
	"fmt"
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// MaxStateValues is how many distinct values one state series (machine,
// name) may take: a change to a value beyond them is dropped and counted
// (twinline_state_changes_dropped_total). Ingest cannot know it (it keeps
// no history), so the processor enforces it, per lane and since the
// lane's engine started: after a restart a series may gain up to as many
// again.
const MaxStateValues = 1024

// States makes the processor keep the machines' state series: the
// changes among the states of each committed group's new events (a value
// that differs from the series' value in force at the event's time) are
// appended to st before the group's samples are committed, in the same
// failure domain (a failed append fails the commit, and the retry appends
// again: appends are idempotent). changes, if set, receives them after the
// commit, from the goroutine of the Batch sink. Call it before Run. reg
// (may be nil) receives twinline_state_changes_total and
// twinline_state_changes_dropped_total.
func (p *Processor) States(st store.StateStore, changes func([]store.StateChange), reg prometheus.Registerer) error {
	p.stateStore, p.stateSink = st, changes
	labels := prometheus.Labels{"log": p.logName}
	p.stateChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_state_changes_total", ConstLabels: labels,
		Help: "State changes (a string field taking a new value) stored.",
	})
	p.stateDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "twinline_state_changes_dropped_total", ConstLabels: labels,
		Help: "State changes dropped because their series had MaxStateValues distinct values already.",
	})
	if reg != nil {
		for _, c := range []prometheus.Collector{p.stateChanges, p.stateDropped} {
			if err := reg.Register(c); err != nil {
				return fmt.Errorf("registering state metrics: %w", err)
			}
		}
	}
	return nil
}

// stateKey names a state series.
type stateKey struct{ machine, name string }

// stateRun is what a lane knows of a state series: its newest change
// (at, value), the newest event time it was observed at (seen ≥ at,
// with that value), and the distinct values met.
type stateRun struct {
	at, seen int64
	value    string
	values   map[string]struct{}
}

// stateMemory is a lane's state series, loaded from the store on first
// use (one query per series and lane life).
type stateMemory map[stateKey]*stateRun

func (m stateMemory) forget(machine string) {
	for k := range m {
		if k.machine == machine {
			delete(m, k)
		}
	}
}

// tracker finds the changes of one group.
type tracker struct {
	ctx     context.Context
	st      store.StateStore
	mem     stateMemory
	changes []store.StateChange
	dropped int
}

// groupStates returns the state changes of the job's new events (keyed
// duplicates, which the engine dropped, have no key in out.Keys), and
// appends them to the store. On error the lane's memory is dropped: it may
// hold changes that were not stored.
func (p *Processor) groupStates(ctx context.Context, j *job) ([]store.StateChange, error) {
	ln := j.lane
	ln.statesMu.Lock()
	defer ln.statesMu.Unlock()
	if ln.states == nil {
		ln.states = stateMemory{}
	}
	tr := &tracker{ctx: ctx, st: p.stateStore, mem: ln.states}
	err := tr.group(j)
	if err == nil && len(tr.changes) > 0 {
		err = p.stateStore.AppendStates(ctx, tr.changes)
	}
	if err != nil {
		ln.states = nil
		return nil, fmt.Errorf("storing state changes: %w", err)
	}
	p.stateChanges.Add(float64(len(tr.changes)))
	p.stateDropped.Add(float64(tr.dropped))
	return tr.changes, nil
}

// group observes the states of the job's new events.
func (tr *tracker) group(j *job) error {
	for i, e := range j.batch.Entries {
		keys := j.out.Keys[j.keyBounds[i]:j.keyBounds[i+1]]
		for k := range e.Events {
			ev := &e.Events[k]
			if ev.ID != "" || ev.HasSeq {
				if len(keys) == 0 || !hasKey(ev, keys[0]) {
					continue // a duplicate
				}
				keys = keys[1:]
			}
			for _, s := range ev.States {
				if err := tr.observe(ev, s); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// observe takes the state s of ev. In event-time order a change is a value
// other than the newest one. An event older than the newest observation
// of its series is placed by the store: older than the newest change, it
// is a change if the value in force at its time differs (and runs to the
// next change); within the newest run, a different value is a change at
// its time and the run's value comes back at the newest observation (the
// only later time known to have it).
func (tr *tracker) observe(ev *telemetry.Event, s telemetry.State) error {
	k := stateKey{ev.Machine, s.Name}
	run := tr.mem[k]
	if run == nil {
		var err error
		if run, err = tr.load(k); err != nil {
			return err
		}
		tr.mem[k] = run
	}
	t := ev.Time
	switch {
	case run.values == nil: // a series never seen
		run.values = map[string]struct{}{}
		tr.change(run, k, t, s.Value)
		run.at, run.seen, run.value = t, t, s.Value
	case t > run.seen:
		if s.Value != run.value && tr.change(run, k, t, s.Value) {
			run.at, run.value = t, s.Value
		}
		run.seen = t
	case t == run.seen || s.Value == run.value && t >= run.at:
		// The same instant (first write wins), or nothing new.
	case t > run.at:
		// Inside the newest run, another value.
		if tr.change(run, k, t, s.Value) {
			tr.change(run, k, run.seen, run.value)
			run.at = run.seen
		}
	default:
		// Older than the newest change: the store knows what was in force.
		prev, err := tr.inForce(k, t)
		if err != nil {
			return err
		}
		if prev == nil || prev.Time != t && prev.Value != s.Value {
			tr.change(run, k, t, s.Value)
		}
	}
	return nil
}

// change adds the change (k, t, value) unless its series has MaxStateValues
// other values already; it reports whether it did.
func (tr *tracker) change(run *stateRun, k stateKey, t int64, value string) bool {
	if _, ok := run.values[value]; !ok {
		if len(run.values) >= MaxStateValues {
			tr.dropped++
			return false
		}
		run.values[value] = struct{}{}
	}
	tr.changes = append(tr.changes, store.StateChange{Machine: k.machine, Name: k.name, Time: t, Value: value})
	return true
}

// load reads a series' newest change from the store (a run with nil
// values when it has none).
func (tr *tracker) load(k stateKey) (*stateRun, error) {
	cs, err := tr.st.States(tr.ctx, k.machine, k.name, math.MaxInt64, math.MaxInt64)
	if err != nil {
		return nil, fmt.Errorf("reading state %s/%s: %w", k.machine, k.name, err)
	}
	run := &stateRun{}
	if n := len(cs); n > 0 {
		c := cs[n-1]
		run.at, run.seen, run.value = c.Time, c.Time, c.Value
		run.values = map[string]struct{}{c.Value: {}}
	}
	return run, nil
}

// inForce returns the change of series k in force at t (nil: none),
// counting the group's changes not stored yet.
func (tr *tracker) inForce(k stateKey, t int64) (*store.StateChange, error) {
	cs, err := tr.st.States(tr.ctx, k.machine, k.name, t, t)
	if err != nil {
		return nil, fmt.Errorf("reading state %s/%s: %w", k.machine, k.name, err)
	}
	var best *store.StateChange
	if len(cs) > 0 {
		best = &cs[0]
	}
	for i := range tr.changes {
		c := &tr.changes[i]
		if c.Machine == k.machine && c.Name == k.name && c.Time <= t && (best == nil || c.Time >= best.Time) {
			best = c
		}
	}
	return best, nil
}
