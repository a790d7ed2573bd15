package sim

import (
	"math"
	"sync"
	"sync/atomic"
)

// Operating model. Besides its signals every machine has an operating
// state, sent as the string state "state" on every event:
//
//	RUNNING ──job done──▶ IDLE ──next job──▶ RUNNING
//	RUNNING ──breakdown──▶ DOWN ──repaired──▶ RUNNING
//	any ──stop──▶ STOPPED ──start──▶ RUNNING
//
// Jobs last 5–25 minutes, the pause between them 1–6 minutes; in manual
// mode (desired "mode": "manual") a machine that finished a job stays IDLE
// until it is started. Breakdowns come on average every four FaultEvery of
// running time and take 3–15 minutes to repair. Only a RUNNING machine
// makes parts (parts_total, parts_good: about 2 % scrap) and advances its
// cycle counter. Its equipment temperature follows the desired
// tempSetpoint, when one is set, with a one-minute time constant.
//
// All of it runs on event time and draws from the machine's own random
// source (separate from its signals'), so a seed gives the same states.

// Machine states, as sent.
const (
	StateRunning = "RUNNING"
	StateIdle    = "IDLE"
	StateDown    = "DOWN"
	StateStopped = "STOPPED"
	// StatePlanned is the planned stop of the demo OEE spec; the
	// simulator never sends it by itself.
	StatePlanned = "PLANNED"
)

// StateMetric is the name of the state the simulator sends.
const StateMetric = "state"

// Parts counters every machine sends.
const (
	PartsTotal = "parts_total"
	PartsGood  = "parts_good"
)

// Modes of the desired "mode" field.
const (
	ModeAuto   = "auto"
	ModeManual = "manual"
)

// Setpoint limits (°C) of the desired tempSetpoint, as the demo schema says.
const (
	MinSetpoint = 20.0
	MaxSetpoint = 250.0
)

const (
	jobMinMS        = 5 * 60 * 1000
	jobMaxMS        = 25 * 60 * 1000
	idleMinMS       = 1 * 60 * 1000
	idleMaxMS       = 6 * 60 * 1000
	repairMinMS     = 3 * 60 * 1000
	repairMaxMS     = 15 * 60 * 1000
	breakdownFactor = 4     // mean running time between breakdowns, in FaultEvery
	scrapRate       = 0.02  // share of parts that are scrap
	setpointTau     = 60.0  // s, time constant of the temperature following its setpoint
	maxTransitions  = 10000 // bound on the state changes one sample catches up on
)

// runState is a machine's operating state.
type runState uint8

const (
	running runState = iota
	idle
	down
	stopped
)

var runStateNames = [...]string{StateRunning, StateIdle, StateDown, StateStopped}

func (s runState) String() string { return runStateNames[s] }

// opResult is how a machine carried out a command.
type opResult struct {
	// State is the machine's state after the command.
	State string
	// Err says why the command failed; "" when it succeeded.
	Err string
}

// op is a command waiting for its machine's next sample.
type op struct {
	name string
	done chan<- opResult // buffered: the machine never blocks on it
}

// inbox is what the device side hands a machine between two samples: the
// desired settings and commands. The device goroutines write it; the
// simulator goroutine drains it at the machine's next sample.
type inbox struct {
	dirty atomic.Bool // something to apply

	mu          sync.Mutex
	hasSetpoint bool
	setpoint    float64
	mode        string
	ops         []op
}

// setDesired records the machine's desired settings.
func (b *inbox) setDesired(hasSetpoint bool, setpoint float64, mode string) {
	b.mu.Lock()
	b.hasSetpoint, b.setpoint, b.mode = hasSetpoint, setpoint, mode
	b.mu.Unlock()
	b.dirty.Store(true)
}

// push queues a command for the machine's next sample.
func (b *inbox) push(o op) {
	b.mu.Lock()
	b.ops = append(b.ops, o)
	b.mu.Unlock()
	b.dirty.Store(true)
}

// cancel takes back a command the machine has not carried out yet, and
// reports whether it did.
func (b *inbox) cancel(done chan<- opResult) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, o := range b.ops {
		if o.done == done {
			b.ops = append(b.ops[:i], b.ops[i+1:]...)
			return true
		}
	}
	return false
}

// operation is a machine's operating state and what drives it.
type operation struct {
	srng           randSource
	breakdownEvery float64 // s of running time; 0 disables breakdowns
	partRate       float64 // parts per second while running

	init     bool
	state    runState
	until    int64 // Unix ms the current job, pause or repair ends; 0: none
	manual   bool
	checked  int64 // last time the breakdown hazard was rolled
	partAcc  float64
	parts    float64
	good     float64
	hasSP    bool
	setpoint float64
	tempBase float64 // the machine's baseline temperature
	spOffset float64 // °C the setpoint currently moves the temperature by
}

// randSource is the part of *rand.Rand the operation model draws from.
type randSource interface {
	Float64() float64
	Int64N(n int64) int64
}

func (o *operation) span(lo, hi int64) int64 { return lo + o.srng.Int64N(hi-lo) }

// apply takes what the device side left in in: desired settings, then
// commands in order.
func (o *operation) apply(in *inbox, t int64) {
	if !in.dirty.Swap(false) {
		return
	}
	in.mu.Lock()
	o.hasSP, o.setpoint, o.manual = in.hasSetpoint, in.setpoint, in.mode == ModeManual
	ops := in.ops
	in.ops = nil
	in.mu.Unlock()
	if o.init && !o.manual && o.state == idle && o.until == 0 {
		// Back in auto mode: a machine waiting for a start pauses as
		// usual, then starts its next job.
		o.until = t + o.span(idleMinMS, idleMaxMS)
	}
	for _, p := range ops {
		p.done <- o.execute(p.name, t)
	}
}

// execute carries out one command at event time t.
func (o *operation) execute(name string, t int64) opResult {
	o.begin(t)
	switch name {
	case cmdStop:
		o.state, o.until = stopped, 0
	case cmdStart:
		switch o.state {
		case down:
			return opResult{State: o.state.String(), Err: "the machine is down, waiting for repair"}
		case idle, stopped:
			o.state, o.until = running, t+o.span(jobMinMS, jobMaxMS)
			o.checked = t
		}
	case cmdReset:
		o.parts, o.good, o.partAcc = 0, 0, 0
	}
	return opResult{State: o.state.String()}
}

// begin sets the first state, at the first sample: most machines are
// running a job, some pause between two.
func (o *operation) begin(t int64) {
	if o.init {
		return
	}
	o.init = true
	o.checked = t
	if o.srng.Float64() < 0.2 {
		o.state, o.until = idle, t+o.span(0, idleMaxMS)
		return
	}
	o.state, o.until = running, t+o.span(0, jobMaxMS)
}

// step advances the state to event time t, dt seconds after the previous
// sample, and counts the parts made meanwhile.
func (o *operation) step(t int64, dt float64) {
	if !o.init {
		o.begin(t)
	}
	wasRunning := o.state == running
	// Scheduled changes, each at its own time, so that a gap in the
	// events does not stretch jobs or pauses.
	for range maxTransitions {
		if o.until == 0 || t < o.until {
			break
		}
		at := o.until
		switch o.state {
		case running:
			o.state, o.until = idle, at+o.span(idleMinMS, idleMaxMS)
			if o.manual {
				o.until = 0
			}
		case idle, down:
			o.state, o.until = running, at+o.span(jobMinMS, jobMaxMS)
			o.checked = at
		default:
			o.until = 0
		}
	}
	if o.state == running && o.breakdownEvery > 0 && t > o.checked {
		h := float64(t-o.checked) / 1000
		o.checked = t
		if o.srng.Float64() < -math.Expm1(-h/o.breakdownEvery) {
			o.state, o.until = down, t+o.span(repairMinMS, repairMaxMS)
		}
	}
	if dt <= 0 {
		return
	}
	if wasRunning && o.state == running {
		o.partAcc += dt * o.partRate
		for ; o.partAcc >= 1; o.partAcc-- {
			o.parts++
			if o.srng.Float64() >= scrapRate {
				o.good++
			}
		}
	}
	target := 0.0
	if o.hasSP {
		target = o.setpoint - o.tempBase
	}
	o.spOffset = target + (o.spOffset-target)*math.Exp(-dt/setpointTau)
}
