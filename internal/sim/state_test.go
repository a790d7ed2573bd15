package sim

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newOperation is an operation of a press-like machine: 2 parts a second
// while running, a breakdown every hour of running on average.
func newOperation(seed uint64) *operation {
	return &operation{srng: rand.New(rand.NewPCG(seed, 1)), breakdownEvery: 3600, partRate: 2, tempBase: 50}
}

// stint is a stretch of time in one state.
type stint struct {
	state    runState
	from, to int64
}

// drive steps o every second from t0 for d and returns the stints and the
// parts made in each state.
func drive(o *operation, t0 int64, d time.Duration) (stints []stint, partsIn map[runState]float64) {
	partsIn = map[runState]float64{}
	end := t0 + d.Milliseconds()
	for t := t0; t <= end; t += 1000 {
		before := o.parts
		dt := 1.0
		if t == t0 {
			dt = 0
		}
		o.step(t, dt)
		partsIn[o.state] += o.parts - before
		if n := len(stints); n == 0 || stints[n-1].state != o.state {
			stints = append(stints, stint{o.state, t, t})
		}
		stints[len(stints)-1].to = t
	}
	return stints, partsIn
}

// TestOperationCycle: over two simulated days a machine runs jobs, pauses
// between them, breaks down and is repaired, for the documented durations;
// only a running machine makes parts, about 2 % of them scrap.
func TestOperationCycle(t *testing.T) {
	o := newOperation(7)
	stints, partsIn := drive(o, 1_765_000_000_000, 48*time.Hour)
	seen := map[runState]int{}
	for i, s := range stints {
		seen[s.state]++
		if i == 0 || i == len(stints)-1 {
			continue // cut by the window
		}
		ms := s.to - s.from + 1000
		lo, hi := int64(0), int64(0)
		switch s.state {
		case idle:
			lo, hi = idleMinMS, idleMaxMS
		case down:
			lo, hi = repairMinMS, repairMaxMS
		case running:
			lo, hi = 1000, jobMaxMS // a breakdown may cut a job short
		}
		if ms < lo || ms > hi+1000 {
			t.Errorf("stint %d: %s for %s, want %s–%s", i, s.state, time.Duration(ms)*time.Millisecond, time.Duration(lo)*time.Millisecond, time.Duration(hi)*time.Millisecond)
		}
		next := stints[min(i+1, len(stints)-1)].state
		if s.state != running && next != running {
			t.Errorf("stint %d: %s is followed by %s, want RUNNING", i, s.state, next)
		}
	}
	if seen[running] < 50 || seen[idle] < 20 || seen[down] < 5 || seen[stopped] != 0 {
		t.Errorf("stints per state = %v, want many RUNNING, IDLE and DOWN, no STOPPED", seen)
	}
	if partsIn[idle] != 0 || partsIn[down] != 0 {
		t.Errorf("parts made while not running: %v", partsIn)
	}
	if o.parts < 100_000 {
		t.Errorf("parts_total = %v after 2 days at 2/s, want > 100000", o.parts)
	}
	if scrap := 1 - o.good/o.parts; scrap < 0.015 || scrap > 0.025 {
		t.Errorf("scrap = %.4f, want 0.02 ± 0.005", scrap)
	}
}

// TestOperationNoBreakdowns: breakdownEvery 0 (FaultEvery < 0) disables
// breakdowns.
func TestOperationNoBreakdowns(t *testing.T) {
	o := newOperation(1)
	o.breakdownEvery = 0
	stints, _ := drive(o, 1_765_000_000_000, 24*time.Hour)
	for _, s := range stints {
		if s.state == down {
			t.Fatalf("DOWN at %d with breakdowns disabled", s.from)
		}
	}
}

// TestOperationManualMode: in manual mode a machine that finished its job
// stays IDLE until it is started.
func TestOperationManualMode(t *testing.T) {
	o := newOperation(2)
	o.breakdownEvery = 0
	var in inbox
	t0 := int64(1_765_000_000_000)
	in.setDesired(false, 0, ModeManual)
	o.apply(&in, t0)
	stints, _ := drive(o, t0, 2*time.Hour)
	// It may begin in a pause between two jobs, then runs one job.
	if last := stints[len(stints)-1]; last.state != idle || last.to-last.from < time.Hour.Milliseconds() || len(stints) > 3 {
		t.Fatalf("stints in manual mode = %v, want one job then IDLE to the end", stints)
	}
	now := stints[len(stints)-1].to
	if got := o.execute(cmdStart, now); got != (opResult{State: StateRunning}) {
		t.Errorf("start = %+v, want RUNNING", got)
	}

	// Back to auto while waiting: the next job starts after a pause.
	o.execute(cmdStop, now)
	o.state, o.until = idle, 0
	in.setDesired(false, 0, ModeAuto)
	o.apply(&in, now)
	stints, _ = drive(o, now, time.Duration(idleMaxMS)*time.Millisecond+time.Second)
	if got := stints[len(stints)-1].state; got != running {
		t.Errorf("state a pause after switching to auto = %s, want RUNNING (stints %v)", got, stints)
	}
}

// TestOperationExecute: the commands from every state.
func TestOperationExecute(t *testing.T) {
	const now = 1_765_000_000_000
	for _, tt := range []struct {
		from      runState
		cmd       string
		want      opResult
		wantParts float64
	}{
		{running, cmdStop, opResult{State: StateStopped}, 10},
		{idle, cmdStop, opResult{State: StateStopped}, 10},
		{down, cmdStop, opResult{State: StateStopped}, 10},
		{stopped, cmdStop, opResult{State: StateStopped}, 10},
		{running, cmdStart, opResult{State: StateRunning}, 10},
		{idle, cmdStart, opResult{State: StateRunning}, 10},
		{stopped, cmdStart, opResult{State: StateRunning}, 10},
		{down, cmdStart, opResult{State: StateDown, Err: "the machine is down, waiting for repair"}, 10},
		{running, cmdReset, opResult{State: StateRunning}, 0},
		{stopped, cmdReset, opResult{State: StateStopped}, 0},
	} {
		t.Run(tt.from.String()+"/"+tt.cmd, func(t *testing.T) {
			o := newOperation(3)
			o.begin(now)
			o.state, o.until, o.parts, o.good = tt.from, now+60_000, 10, 9
			got := o.execute(tt.cmd, now)
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("execute (-got +want):\n%s", diff)
			}
			if o.parts != tt.wantParts || o.good > o.parts {
				t.Errorf("parts = %v good %v, want %v", o.parts, o.good, tt.wantParts)
			}
			// A stopped machine stays stopped, a started one runs a job.
			o.step(now+30*60_000, 0)
			if tt.want.State == StateStopped && o.state != stopped {
				t.Errorf("30 min after stop: %s, want STOPPED", o.state)
			}
		})
	}
}

// TestSetpoint: the temperature heads for the desired setpoint with a
// one-minute time constant, and back when the setpoint goes.
func TestSetpoint(t *testing.T) {
	o := newOperation(4)
	var in inbox
	t0 := int64(1_765_000_000_000)
	o.step(t0, 0)
	in.setDesired(true, 180, ModeAuto)
	o.apply(&in, t0)
	var got []float64
	for i := 1; i <= 300; i++ {
		o.step(t0+int64(i)*1000, 1)
		if i%60 == 0 {
			got = append(got, o.tempBase+o.spOffset)
		}
	}
	// 50 + 130·(1−e^(−k)) at k = 1…5 minutes.
	want := []float64{132.2, 162.4, 173.5, 177.6, 179.1}
	if !cmp.Equal(got, want, cmp.Comparer(func(a, b float64) bool { return a-b < 0.1 && b-a < 0.1 })) {
		t.Errorf("temperature each minute = %v, want %v", got, want)
	}
	in.setDesired(false, 0, ModeAuto)
	o.apply(&in, t0+300_000)
	for i := 301; i <= 900; i++ {
		o.step(t0+int64(i)*1000, 1)
	}
	if o.spOffset > 0.01 {
		t.Errorf("offset 10 minutes after the setpoint went = %v, want ~0", o.spOffset)
	}
}

// TestEventsCarryState: every event carries the machine's state and its
// parts counters, which never drop and keep good ≤ total.
func TestEventsCarryState(t *testing.T) {
	res := runSim(t, Config{Machines: 5, Rate: 10, Duration: 2 * time.Hour, FaultEvery: 10 * time.Minute, Seed: 9}, nil)
	if res.err != nil {
		t.Fatal(res.err)
	}
	valid := []string{StateRunning, StateIdle, StateDown}
	seen := map[string]bool{}
	lastTotal := map[string]float64{}
	for _, ev := range res.rec.all() {
		if len(ev.States) != 1 || ev.States[0].Name != StateMetric || !slices.Contains(valid, ev.States[0].Value) {
			t.Fatalf("%s states = %v, want one of %v", ev.ID, ev.States, valid)
		}
		seen[ev.States[0].Value] = true
		total, good := metricOf(ev, PartsTotal), metricOf(ev, PartsGood)
		if total < lastTotal[ev.Machine] || good > total || good < 0 {
			t.Fatalf("%s parts total %v good %v after total %v", ev.ID, total, good, lastTotal[ev.Machine])
		}
		lastTotal[ev.Machine] = total
	}
	if len(seen) != len(valid) {
		t.Errorf("states seen = %v, want all of %v", seen, valid)
	}
}
