package sim

import (
	"math"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/twinline/twinline/internal/telemetry"
)

// Signal model. Every metric of every machine is
//
//	baseline + drift·sin(2πt/period + phase) + walk + noise + spike (+ fault)
//
// where the baseline is drawn per machine around the kind's nominal value,
// the drift is a slow sinusoid (20–60 min period), the walk is a
// mean-reverting random walk (Ornstein–Uhlenbeck, 5 min time constant), the
// noise is Gaussian, and spikes are rare single-sample outliers. Counters
// (cycles, volume) only ever grow, and only while the machine is RUNNING
// (see state.go). Values are clamped to physical limits and
// rounded to a sensor-like resolution.

const (
	// spikeProb is the chance that one sample of one metric is a spike.
	spikeProb = 0.002
	// walkTau is the time constant of the mean-reverting random walk, in s.
	walkTau = 300.0
	// tagEvery: a machine's tags ride on its first event and on every
	// tagEvery-th event after it, so a registry learns them soon after a
	// restart without every event paying for them.
	tagEvery = 1000

	// Fault model.
	defaultFaultEvery = 30 * 60 // s, mean time between faults of one machine
	silentShare       = 0.35    // share of faults that are silences (the rest overheat)
	heatUpTau         = 40.0    // s, time constant of heating up during an overheat
	coolDownTau       = 120.0   // s, time constant of cooling down after it
	overheatPeakMin   = 95.0    // °C, temperature an overheating machine heads for…
	overheatPeakMax   = 120.0   // …at most
	overheatMinMS     = 2 * 60 * 1000
	overheatMaxMS     = 6 * 60 * 1000
	silenceMinMS      = 45 * 1000
	silenceMaxMS      = 3 * 60 * 1000
)

// metricSpec describes one metric of a machine kind.
type metricSpec struct {
	name     string
	nominal  float64 // fleet-typical value; for counters, increments per second
	spread   float64 // sd of the per-machine baseline around nominal (clamped at ±2.5 sd)
	noise    float64 // sd of the per-sample Gaussian noise
	drift    float64 // amplitude of the slow sinusoidal drift
	walk     float64 // stationary sd of the mean-reverting random walk
	spike    float64 // typical spike size; negative spikes are dips (0: none)
	lo, hi   float64 // physical limits
	decimals int     // sensor resolution
	// heatAdd and heatGain say how an overheat moves the metric: heat (°C
	// above normal) is added heatAdd times, and the value is scaled by
	// 1+heatGain·heat.
	heatAdd, heatGain float64
	counter           bool // a monotonically increasing total
}

// kindSpec is a machine kind with its metric set.
type kindSpec struct {
	name    string
	metrics []metricSpec
	// idealCycle is the fastest a part can be made, in s (OEE's ideal
	// cycle time); a running machine makes parts 80–97 % as fast.
	idealCycle float64
}

// temp is every kind's equipment temperature (oil, spindle, bearing, motor or
// shell, °C): 35–65 °C normally, so that a fleet-wide alarm threshold of
// ~90 °C fires only on overheat faults.
func temp(nominal float64) metricSpec {
	return metricSpec{name: "temp", nominal: nominal, spread: 4, noise: 0.3, drift: 2.5, walk: 1, spike: 6, lo: -20, hi: 300, decimals: 1, heatAdd: 1}
}

// vibration is RMS vibration velocity, mm/s (ISO 10816 style).
func vibration(nominal float64) metricSpec {
	return metricSpec{name: "vibration", nominal: nominal, spread: nominal / 5, noise: nominal / 12, drift: nominal / 8, walk: nominal / 16, spike: 4, lo: 0, hi: 60, decimals: 2, heatGain: 0.01}
}

// power is electrical power draw, kW.
func power(nominal, spread float64) metricSpec {
	return metricSpec{name: "power", nominal: nominal, spread: spread, noise: nominal / 30, drift: nominal / 12, walk: nominal / 25, spike: nominal / 3, lo: 0, hi: 500, decimals: 2, heatGain: 0.004}
}

// motorRPM is the shaft speed of a 2-pole induction motor on 50 Hz.
func motorRPM() metricSpec {
	return metricSpec{name: "rpm", nominal: 2955, spread: 15, noise: 4, drift: 8, walk: 4, spike: -400, lo: 0, hi: 3600}
}

// cycles counts completed work cycles (strokes, batches, parts, load cycles).
func cycles(perSecond float64) metricSpec {
	return metricSpec{name: "cycles", nominal: perSecond, spread: perSecond / 4, counter: true}
}

// kinds returns the machine kinds in the order machines rotate through them.
func kinds() []kindSpec {
	return []kindSpec{
		{name: "press", idealCycle: 2.5, metrics: []metricSpec{ // hydraulic press
			temp(48),
			{name: "pressure", nominal: 180, spread: 15, noise: 3, drift: 6, walk: 3, spike: 35, lo: 0, hi: 400, decimals: 1},
			vibration(3.2),
			power(35, 6),
			cycles(0.35),
		}},
		{name: "oven", idealCycle: 600, metrics: []metricSpec{ // curing oven: a batch
			temp(52),
			{name: "chamber_temp", nominal: 200, spread: 10, noise: 0.8, drift: 3, walk: 1.5, spike: 12, lo: -20, hi: 450, decimals: 1},
			power(85, 12),
			{name: "fan_rpm", nominal: 1450, spread: 30, noise: 6, drift: 10, walk: 5, spike: -300, lo: 0, hi: 3600},
			cycles(1.0 / 900),
		}},
		{name: "cnc", idealCycle: 75, metrics: []metricSpec{ // CNC milling machine
			temp(38),
			{name: "rpm", nominal: 8000, spread: 1500, noise: 30, drift: 500, walk: 200, spike: -2500, lo: 0, hi: 24000},
			vibration(1.8),
			power(11, 3),
			cycles(1.0 / 90),
		}},
		{name: "pump", idealCycle: 30, metrics: []metricSpec{ // centrifugal pump: a filled container
			temp(45),
			{name: "pressure", nominal: 6, spread: 1, noise: 0.08, drift: 0.4, walk: 0.2, spike: 2, lo: 0, hi: 40, decimals: 2},
			{name: "flow", nominal: 60, spread: 15, noise: 1.2, drift: 5, walk: 2, spike: -25, lo: 0, hi: 600, decimals: 1},
			motorRPM(),
			vibration(2.6),
			power(15, 4),
			{name: "volume", nominal: 60.0 / 3600, spread: 15.0 / 3600, counter: true, decimals: 2},
		}},
		{name: "compressor", idealCycle: 50, metrics: []metricSpec{ // screw air compressor: a load cycle
			temp(55),
			{name: "pressure", nominal: 7.5, spread: 0.4, noise: 0.06, drift: 0.3, walk: 0.15, spike: 1.5, lo: 0, hi: 16, decimals: 2},
			motorRPM(),
			vibration(2.8),
			power(45, 8),
			cycles(1.0 / 60),
		}},
	}
}

type faultKind uint8

const (
	faultNone faultKind = iota
	faultOverheat
	faultSilent
)

// metricState is one metric of one machine.
type metricState struct {
	spec        *metricSpec
	base        float64 // per-machine baseline (for counters: increments per second)
	driftPeriod float64 // s
	driftPhase  float64 // rad
	walk        float64 // current random-walk offset
	total       float64 // counter value
}

// machine is one simulated machine: its identity, its signal state and its
// fault state. Each machine draws from its own random source, so its signals
// depend only on the seed, its index and its event times.
type machine struct {
	id      string
	kind    string
	site    string
	line    string
	rng     *rand.Rand
	metrics []metricState
	// idealCycle is its kind's ideal cycle time, s.
	idealCycle float64

	seq     uint64
	started bool
	last    int64 // event time of the previous event, Unix ms

	fault      faultKind
	faultUntil int64 // Unix ms
	checked    int64 // last time the fault hazard was rolled, Unix ms
	heat       float64
	heatTarget float64

	// op is the operating state; in is what the device side hands it.
	op operation
	in inbox
}

// machineID builds the id of the i-th machine (0-based).
func machineID(prefix, kind string, i, width int) string {
	var b strings.Builder
	if prefix != "" {
		b.WriteString(prefix)
		if !strings.ContainsAny(prefix[len(prefix)-1:], "-_.:") {
			b.WriteByte('-')
		}
	}
	b.WriteString(kind)
	b.WriteByte('-')
	n := strconv.Itoa(i + 1)
	for range width - len(n) {
		b.WriteByte('0')
	}
	b.WriteString(n)
	return b.String()
}

func newMachine(seed int64, i int, id string, k *kindSpec, faultEvery float64) *machine {
	const machinesPerLine = 5
	m := &machine{
		id:   id,
		kind: k.name,
		site: "plant-1",
		line: "line-" + strconv.Itoa(i/machinesPerLine+1),
		rng:  rand.New(rand.NewPCG(uint64(seed), 0x7477696e6c696e65^uint64(i))),

		idealCycle: k.idealCycle,
	}
	m.metrics = make([]metricState, len(k.metrics))
	for j := range k.metrics {
		spec := &k.metrics[j]
		st := &m.metrics[j]
		st.spec = spec
		st.base = spec.nominal + spec.spread*clampAbs(m.rng.NormFloat64(), 2.5)
		st.driftPeriod = 60 * (20 + 40*m.rng.Float64())
		st.driftPhase = 2 * math.Pi * m.rng.Float64()
		st.walk = spec.walk * m.rng.NormFloat64()
		if spec.counter {
			st.base = max(st.base, spec.nominal/5)
			// A machine has a history: start somewhere between one and
			// thirty days of work.
			st.total = math.Floor(st.base * 86400 * (1 + 29*m.rng.Float64()))
		}
	}
	srng := rand.New(rand.NewPCG(uint64(seed), 0x6f7065726174696f^uint64(i)))
	m.op = operation{
		srng:           srng,
		breakdownEvery: breakdownFactor * faultEvery,
		partRate:       (0.8 + 0.17*srng.Float64()) / k.idealCycle,
		tempBase:       m.metrics[0].base,
	}
	return m
}

// hazard rolls whether a fault starts at event time t.
func (m *machine) hazard(t int64, every float64) bool {
	if m.checked == 0 || t <= m.checked {
		m.checked = t
		return false
	}
	dt := float64(t-m.checked) / 1000
	m.checked = t
	return m.rng.Float64() < -math.Expm1(-dt/every)
}

func (m *machine) startOverheat(t int64) {
	m.fault = faultOverheat
	m.faultUntil = t + overheatMinMS + m.rng.Int64N(overheatMaxMS-overheatMinMS)
	peak := overheatPeakMin + (overheatPeakMax-overheatPeakMin)*m.rng.Float64()
	m.heatTarget = max(peak-m.metrics[0].base, 30)
}

func (m *machine) startSilence(t int64) {
	m.fault = faultSilent
	m.faultUntil = t + silenceMinMS + m.rng.Int64N(silenceMaxMS-silenceMinMS)
}

func (m *machine) endFault() {
	m.fault = faultNone
	m.heatTarget = 0
	m.checked = m.faultUntil
}

// sample produces the machine's next event values at event time t (Unix ms)
// into dst, which has metricCount elements, and advances its sequence and
// its operating state.
func (m *machine) sample(t int64, dst []telemetry.Metric) {
	dt := 0.0
	if m.started && t > m.last {
		dt = float64(t-m.last) / 1000
	}
	m.started = true
	m.last = t
	m.seq++
	m.op.apply(&m.in, t)
	m.op.step(t, dt)
	isRunning := m.op.state == running

	if m.fault == faultOverheat && t >= m.faultUntil {
		m.endFault()
	}
	if dt > 0 && (m.heat != 0 || m.heatTarget != 0) {
		tau := heatUpTau
		if m.heatTarget < m.heat {
			tau = coolDownTau
		}
		m.heat = m.heatTarget + (m.heat-m.heatTarget)*math.Exp(-dt/tau)
		if m.heatTarget == 0 && m.heat < 0.05 {
			m.heat = 0
		}
	}

	// The walk's decay over dt, shared by all metrics.
	var decay, kick float64
	if dt > 0 {
		decay = math.Exp(-dt / walkTau)
		kick = math.Sqrt(1 - decay*decay)
	}
	ts := float64(t) / 1000
	for j := range m.metrics {
		st := &m.metrics[j]
		spec := st.spec
		var v float64
		if spec.counter {
			if dt > 0 {
				inc := max(0, st.base*dt*(1+0.1*m.rng.NormFloat64()))
				if isRunning {
					st.total += inc
				}
			}
			v = st.total
			if spec.decimals == 0 {
				v = math.Floor(v)
			}
		} else {
			if dt > 0 {
				st.walk = st.walk*decay + spec.walk*kick*m.rng.NormFloat64()
			}
			v = st.base +
				spec.drift*math.Sin(2*math.Pi*ts/st.driftPeriod+st.driftPhase) +
				st.walk +
				spec.noise*m.rng.NormFloat64()
			if spec.spike != 0 && m.rng.Float64() < spikeProb {
				v += spec.spike * (0.5 + m.rng.Float64())
			}
			if j == 0 {
				v += m.op.spOffset // temp follows its setpoint
			}
			if m.heat != 0 {
				v = (v + spec.heatAdd*m.heat) * (1 + spec.heatGain*m.heat)
			}
			v = min(max(v, spec.lo), spec.hi)
		}
		dst[j] = telemetry.Metric{Name: spec.name, Value: round(v, spec.decimals)}
	}
	n := len(m.metrics)
	dst[n] = telemetry.Metric{Name: PartsTotal, Value: m.op.parts}
	dst[n+1] = telemetry.Metric{Name: PartsGood, Value: m.op.good}
}

// metricCount is the number of metrics of the machine's events.
func (m *machine) metricCount() int { return len(m.metrics) + 2 }

// round rounds v to the given number of decimals.
func round(v float64, decimals int) float64 {
	if decimals <= 0 {
		return math.Round(v)
	}
	p := math.Pow10(decimals)
	return math.Round(v*p) / p
}

func clampAbs(v, limit float64) float64 { return min(max(v, -limit), limit) }

// fleet picks which machine sends each event: round robin over the machines
// that are not silent, so the fleet keeps its total rate while some are.
type fleet struct {
	machines   []*machine
	next       int
	faultEvery float64 // s; 0 disables faults
}

// pick returns the machine that sends the event at time t, starting and
// ending faults on the way.
func (f *fleet) pick(t int64) *machine {
	for range len(f.machines) {
		m := f.machines[f.next]
		f.next++
		if f.next == len(f.machines) {
			f.next = 0
		}
		if m.fault == faultSilent {
			if t < m.faultUntil {
				continue
			}
			m.endFault()
		}
		if f.faultEvery > 0 && m.fault == faultNone && m.hazard(t, f.faultEvery) {
			if m.rng.Float64() < silentShare && f.othersActive(m, t) {
				m.startSilence(t)
				continue
			}
			m.startOverheat(t)
		}
		return m
	}
	// Every machine is silent (the fleet never lets this happen, but stay
	// safe): wake the one whose silence ends first.
	first := f.machines[0]
	for _, m := range f.machines[1:] {
		if m.faultUntil < first.faultUntil {
			first = m
		}
	}
	first.endFault()
	return first
}

// othersActive reports whether a machine other than m is not silent at t: a
// machine may go silent only while another one keeps sending.
func (f *fleet) othersActive(m *machine, t int64) bool {
	for _, o := range f.machines {
		if o != m && (o.fault != faultSilent || t >= o.faultUntil) {
			return true
		}
	}
	return false
}
