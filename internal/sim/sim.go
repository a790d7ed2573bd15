// Package sim simulates a fleet of manufacturing machines — presses, ovens,
// CNC mills, pumps, compressors — sending telemetry. It backs `twinline
// simulate`, which posts to a running server through NewHTTPEmitter, and
// `twinline serve --demo`, which hands the events to ingest in-process.
//
// Signals are realistic enough to exercise the whole platform: per-machine
// baselines, Gaussian noise, slow drift, spikes, monotonically increasing
// counters, and faults — a machine overheats past typical ~90 °C alarm
// thresholds, or goes silent long enough to show offline. On request some
// events are delivered late (out of order) or twice (duplicates). Emission is
// paced open-loop at a fixed total rate, and the same seed gives the same
// signals.
//
// The machines also close the loop with their twin (state.go, control.go):
// each runs jobs, idles between them, breaks down and is repaired, counts
// parts, and sends its operating state as the string state "state" on
// every event. Through a Control — the server's twin and command routes
// over HTTP (NewHTTPControl), or the server's own twins in-process
// (ControlFuncs) — a subset of them follows its desired setpoint and mode,
// reports what it applied and carries out commands (RunControl).
package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/twinline/twinline/internal/telemetry"
)

// Config configures a Simulator. A zero field takes its default.
type Config struct {
	// Machines is the number of simulated machines (default 20).
	Machines int
	// Rate is the total number of distinct events per second across the
	// fleet (default 200). Duplicate copies come on top.
	Rate float64
	// OutOfOrder is the fraction [0,1] of events held back and delivered in
	// a later batch, after newer events of the same machine (default 0).
	OutOfOrder float64
	// Duplicates is the fraction [0,1] of events delivered twice (default 0).
	Duplicates float64
	// Seed seeds the random sources: the same seed gives the same signals.
	Seed int64
	// Prefix is prepended to machine ids: "press-01" becomes
	// "<prefix>-press-01" (no dash is added when Prefix ends in - _ . or :).
	Prefix string
	// Interval is how often a batch is emitted (default 100ms). Events in a
	// batch carry their own event times, spread over the interval.
	Interval time.Duration
	// Duration stops the simulator after this much time; 0 runs until the
	// context ends.
	Duration time.Duration
	// Count stops the simulator after this many distinct events; 0 is
	// unlimited.
	Count int64
	// FaultEvery is the mean time between faults of one machine (default
	// 30m); breakdowns (state DOWN) come every 4 FaultEvery of running
	// time. A negative value disables both.
	FaultEvery time.Duration
}

// Defaults of Config.
const (
	DefaultMachines   = 20
	DefaultRate       = 200
	DefaultInterval   = 100 * time.Millisecond
	DefaultFaultEvery = defaultFaultEvery * time.Second
)

// Limits enforced by Validate.
const (
	MaxMachines  = 1_000_000
	MaxRate      = 10_000_000
	MinInterval  = time.Millisecond
	MaxInterval  = time.Minute
	MaxPrefixLen = 64
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if c.Machines == 0 {
		c.Machines = DefaultMachines
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.FaultEvery == 0 {
		c.FaultEvery = DefaultFaultEvery
	}
	return c
}

// Validate reports every problem of c at once, joined.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if c.Machines < 0 || c.Machines > MaxMachines {
		bad("machines", "must be between 1 and %d, got %d", MaxMachines, c.Machines)
	}
	if math.IsNaN(c.Rate) || c.Rate < 0 || c.Rate > MaxRate {
		bad("rate", "must be a positive number of events per second up to %d, got %g", MaxRate, c.Rate)
	}
	if math.IsNaN(c.OutOfOrder) || c.OutOfOrder < 0 || c.OutOfOrder > 1 {
		bad("out-of-order", "must be a fraction between 0 and 1, got %g", c.OutOfOrder)
	}
	if math.IsNaN(c.Duplicates) || c.Duplicates < 0 || c.Duplicates > 1 {
		bad("duplicates", "must be a fraction between 0 and 1, got %g", c.Duplicates)
	}
	if len(c.Prefix) > MaxPrefixLen {
		bad("prefix", "must be at most %d bytes, got %d", MaxPrefixLen, len(c.Prefix))
	}
	if i := strings.IndexFunc(c.Prefix, func(r rune) bool { return !isIDRune(r) }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(c.Prefix[i:])
		bad("prefix", "may hold only letters, digits and - _ . :, got %q at byte %d", r, i)
	}
	if c.Interval != 0 && (c.Interval < MinInterval || c.Interval > MaxInterval) {
		bad("interval", "must be between %s and %s, got %s", MinInterval, MaxInterval, c.Interval)
	}
	if c.Duration < 0 {
		bad("duration", "must not be negative, got %s", c.Duration)
	}
	if c.Count < 0 {
		bad("count", "must not be negative, got %d", c.Count)
	}
	if c.FaultEvery > 0 && c.FaultEvery < time.Second {
		bad("fault-every", "must be at least 1s (or negative to disable faults), got %s", c.FaultEvery)
	}
	return errors.Join(errs...)
}

func isIDRune(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		r == '-' || r == '_' || r == '.' || r == ':'
}

// Emit delivers one batch of events. It may keep the events: the simulator
// never touches them again. An error wrapping ErrDropped means the batch was
// lost but later ones may get through: Run counts it and goes on. Any other
// error stops Run.
type Emit func(ctx context.Context, events []telemetry.Event) error

// ErrDropped marks an emit error after which the simulator goes on: the batch
// was not delivered (the server kept shedding load), but later batches may
// be.
var ErrDropped = errors.New("batch dropped")

// Machine describes one simulated machine.
type Machine struct {
	ID   string
	Kind string // press, oven, cnc, pump, compressor
	Site string
	Line string
	// Metrics names the metrics its events carry, in order.
	Metrics []string
	// IdealCycleSeconds is the fastest it makes a part (OEE's ideal cycle
	// time).
	IdealCycleSeconds float64
}

// Stats counts what a Simulator delivered.
type Stats struct {
	// Events is the number of distinct events delivered (emit returned nil),
	// late ones included, duplicate copies not.
	Events int64
	// Duplicates is the number of duplicate copies delivered.
	Duplicates int64
	// OutOfOrder is the number of events delivered late, after newer ones.
	OutOfOrder int64
	// Batches is the number of batches delivered.
	Batches int64
	// EmitErrors is the number of emit calls that failed.
	EmitErrors int64
	// Dropped is the number of events (copies included) in batches lost to
	// ErrDropped.
	Dropped int64
}

// maxBatch bounds the fresh events of one emit call, so that catching up
// after a stall sends several bounded batches instead of one huge one.
const maxBatch = 10_000

// Simulator generates the fleet's events and paces their emission. Run it
// once.
type Simulator struct {
	cfg     Config // with defaults
	raw     Config // as given, for Validate
	emit    Emit
	now     func() time.Time
	fleet   fleet
	byID    map[string]*machine
	maxMets int
	idLen   int
	rng     *rand.Rand // delivery decisions: late and duplicate

	started atomic.Bool

	// Run state.
	startNs   int64 // Unix ns of the first event's time base
	generated int64 // distinct events generated so far
	tick      int64 // batches assembled so far
	pending   []pendingEvent
	idEnds    []int

	events, duplicates, outOfOrder, batches, emitErrors, dropped atomic.Int64
}

// pendingEvent is an event held back: a late original or a duplicate copy.
type pendingEvent struct {
	ev        telemetry.Event
	afterTick int64 // not before the batch after this one
	due       int64 // not before this Unix ns
	dup       bool
}

// New returns a Simulator of the fleet cfg describes, emitting through emit.
// now is the clock event times come from (nil: time.Now); it must advance
// with the timers Run waits on, as time.Now does inside a synctest bubble,
// but may be offset from them (to backfill history, say). Run reports an
// invalid cfg.
func New(cfg Config, emit Emit, now func() time.Time) *Simulator {
	if now == nil {
		now = time.Now
	}
	c := cfg.withDefaults()
	s := &Simulator{
		cfg:  c,
		raw:  cfg,
		emit: emit,
		now:  now,
		rng:  rand.New(rand.NewPCG(uint64(c.Seed), 0x64656c6976657279)),
	}
	if c.FaultEvery > 0 {
		s.fleet.faultEvery = c.FaultEvery.Seconds()
	}
	s.byID = make(map[string]*machine, max(c.Machines, 1))
	n := max(c.Machines, 1)
	width := max(2, len(strconv.Itoa(n)))
	ks := kinds()
	s.fleet.machines = make([]*machine, n)
	for i := range n {
		k := &ks[i%len(ks)]
		m := newMachine(c.Seed, i, machineID(c.Prefix, k.name, i, width), k, s.fleet.faultEvery)
		s.fleet.machines[i] = m
		s.byID[m.id] = m
		s.maxMets = max(s.maxMets, m.metricCount())
		s.idLen = max(s.idLen, len(m.id))
	}
	return s
}

// Machines describes the simulated machines.
func (s *Simulator) Machines() []Machine {
	out := make([]Machine, len(s.fleet.machines))
	for i, m := range s.fleet.machines {
		names := make([]string, 0, m.metricCount())
		for j := range m.metrics {
			names = append(names, m.metrics[j].spec.name)
		}
		names = append(names, PartsTotal, PartsGood)
		out[i] = Machine{ID: m.id, Kind: m.kind, Site: m.site, Line: m.line, Metrics: names, IdealCycleSeconds: m.idealCycle}
	}
	return out
}

// Stats returns what the simulator delivered so far. It is safe to call
// while Run runs.
func (s *Simulator) Stats() Stats {
	return Stats{
		Events:     s.events.Load(),
		Duplicates: s.duplicates.Load(),
		OutOfOrder: s.outOfOrder.Load(),
		Batches:    s.batches.Load(),
		EmitErrors: s.emitErrors.Load(),
		Dropped:    s.dropped.Load(),
	}
}

// Run emits the fleet's events until ctx ends, Duration has passed or Count
// events were generated, and then returns nil; on Duration or Count it first
// delivers the events still held back. Pacing is open-loop: every Interval
// it emits the events due by then at Rate — computed from the elapsed time,
// so it never drifts, and catches up after a slow emit. An emit error stops
// Run and is returned, unless it wraps ErrDropped.
func (s *Simulator) Run(ctx context.Context) error {
	if err := s.raw.Validate(); err != nil {
		return fmt.Errorf("validating simulator config: %w", err)
	}
	if s.emit == nil {
		return errors.New("running simulator: no emit function")
	}
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("running simulator: Run may be called only once")
	}
	start := s.now()
	s.startNs = start.UnixNano()

	interval := s.cfg.Interval
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for tick := int64(1); ; tick++ {
		next := time.Duration(tick) * interval
		if s.cfg.Duration > 0 && next > s.cfg.Duration {
			next = s.cfg.Duration
		}
		if d := start.Add(next).Sub(s.now()); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
		} else if ctx.Err() != nil {
			return nil
		}

		elapsed := s.now().Sub(start)
		final := s.cfg.Duration > 0 && elapsed >= s.cfg.Duration
		if final {
			elapsed = s.cfg.Duration
		}
		due := int64(math.Floor(elapsed.Seconds()*s.cfg.Rate + 1e-9))
		if s.cfg.Count > 0 && due >= s.cfg.Count {
			due = s.cfg.Count
			final = true
		}
		nowNs := s.startNs + elapsed.Nanoseconds()
		for {
			n := max(0, min(due-s.generated, maxBatch))
			last := s.generated+n >= due
			if err := s.deliver(ctx, int(n), nowNs, final && last); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if last {
				break
			}
		}
		if final {
			return nil
		}
		// Skip the ticks a slow emit made us miss.
		tick = max(tick, int64(s.now().Sub(start)/interval))
	}
}

// deliver generates n fresh events, holds some back, releases held ones that
// are due, adds duplicate copies, and emits the batch. On final everything
// held back goes out.
func (s *Simulator) deliver(ctx context.Context, n int, nowNs int64, final bool) error {
	s.tick++
	batch := s.generate(make([]telemetry.Event, 0, n+len(s.pending)+n/8+1), n)

	// Hold some fresh events back.
	out := batch[:0]
	interval := s.cfg.Interval.Nanoseconds()
	for _, ev := range batch {
		if !final && s.cfg.OutOfOrder > 0 && s.rng.Float64() < s.cfg.OutOfOrder {
			lateNs := interval + s.rng.Int64N(int64(2*time.Second))
			s.pending = append(s.pending, pendingEvent{ev: ev, afterTick: s.tick, due: nowNs + lateNs})
			continue
		}
		out = append(out, ev)
	}
	fresh := len(out)

	// Release held events that are due: late originals, then copies.
	out, late := s.release(out, false, nowNs, final)
	out, dups := s.release(out, true, nowNs, final)

	// Duplicate some originals, in this batch or a later one.
	originals := fresh + late
	if s.cfg.Duplicates > 0 {
		for i := range originals {
			if s.rng.Float64() >= s.cfg.Duplicates {
				continue
			}
			cp := out[i]
			cp.Metrics = append([]telemetry.Metric(nil), cp.Metrics...)
			cp.States = append([]telemetry.State(nil), cp.States...)
			if final || s.rng.IntN(3) == 0 {
				out = append(out, cp)
				dups++
				continue
			}
			lateNs := interval + s.rng.Int64N(int64(time.Second))
			s.pending = append(s.pending, pendingEvent{ev: cp, afterTick: s.tick, due: nowNs + lateNs, dup: true})
		}
	}

	if len(out) == 0 {
		return nil
	}
	if err := s.emit(ctx, out); err != nil {
		s.emitErrors.Add(1)
		if errors.Is(err, ErrDropped) {
			s.dropped.Add(int64(len(out)))
			return nil
		}
		return fmt.Errorf("emitting %d events: %w", len(out), err)
	}
	s.events.Add(int64(originals))
	s.outOfOrder.Add(int64(late))
	s.duplicates.Add(int64(dups))
	s.batches.Add(1)
	return nil
}

// release appends to out the held events of the given sort (duplicate
// copies or late originals) that are due, or all of them on final, and
// returns out and how many it appended.
func (s *Simulator) release(out []telemetry.Event, dup bool, nowNs int64, final bool) ([]telemetry.Event, int) {
	n := 0
	kept := s.pending[:0]
	for _, p := range s.pending {
		if p.dup != dup || !final && (p.afterTick >= s.tick || p.due > nowNs) {
			kept = append(kept, p)
			continue
		}
		out = append(out, p.ev)
		n++
	}
	clear(s.pending[len(kept):])
	s.pending = kept
	return out, n
}

// generate appends the next n events of the fleet to dst. Event k (1-based,
// counted from the start of Run) carries the time start + k/Rate.
func (s *Simulator) generate(dst []telemetry.Event, n int) []telemetry.Event {
	if n <= 0 {
		return dst
	}
	// One allocation each for the metrics and the ids of the whole batch.
	slab := make([]telemetry.Metric, n*s.maxMets)
	states := make([]telemetry.State, n)
	idbuf := make([]byte, 0, n*(s.idLen+8))
	first := len(dst)
	nsPerEvent := 1e9 / s.cfg.Rate
	for range n {
		s.generated++
		t := (s.startNs + int64(float64(s.generated)*nsPerEvent)) / int64(time.Millisecond)
		m := s.fleet.pick(t)
		k := m.metricCount()
		mets := slab[:k:k]
		slab = slab[k:]
		m.sample(t, mets)
		st := states[:1:1]
		states = states[1:]
		st[0] = telemetry.State{Name: StateMetric, Value: m.op.state.String()}

		idbuf = append(idbuf, m.id...)
		idbuf = append(idbuf, '-')
		idbuf = strconv.AppendUint(idbuf, m.seq, 10)
		s.idEnds = append(s.idEnds, len(idbuf))

		ev := telemetry.Event{Machine: m.id, Seq: m.seq, HasSeq: true, Time: t, Metrics: mets, States: st}
		if m.seq%tagEvery == 1 {
			ev.Tags = map[string]string{"kind": m.kind, "site": m.site, "line": m.line}
		}
		dst = append(dst, ev)
	}
	ids := string(idbuf)
	from := 0
	for i, end := range s.idEnds {
		dst[first+i].ID = ids[from:end]
		from = end
	}
	s.idEnds = s.idEnds[:0]
	return dst
}
