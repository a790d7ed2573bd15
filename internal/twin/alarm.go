package twin

import (
	"fmt"
	"time"
)

// Alarm kinds.
const (
	AlarmHigh    = "high"
	AlarmLow     = "low"
	AlarmOffline = "offline"
)

// Transition is a change of an alarm condition reported by a Rule.
type Transition int

// Transitions.
const (
	NoChange Transition = iota
	Raised
	Cleared
)

func (t Transition) String() string {
	switch t {
	case Raised:
		return "raised"
	case Cleared:
		return "cleared"
	}
	return "none"
}

// Rule evaluates one threshold alarm (high or low) of one metric of one
// machine, in event time, with a hold time and hysteresis:
//
//   - raised once the value has stayed beyond the limit for For (a sample
//     back within the limit restarts the count; For 0 raises at once);
//   - cleared only once the value is back past the deadband (below
//     high − deadband, or above low + deadband), so a value hovering at the
//     limit does not flap.
//
// Samples must come in event-time order (the engine releases them so). A
// Rule is pure: no clock, no I/O.
type Rule struct {
	Kind     string // AlarmHigh or AlarmLow
	Limit    float64
	Deadband float64
	For      time.Duration

	pending bool
	since   int64 // event time the condition started, when pending
	active  bool
}

// Rules returns the threshold rules of th, high before low.
func Rules(th Threshold) ([]Rule, error) {
	var hold time.Duration
	if th.For != "" {
		d, err := time.ParseDuration(th.For)
		if err != nil {
			return nil, fmt.Errorf("parsing for: %w", err)
		}
		hold = d
	}
	var rs []Rule
	if th.High != nil {
		rs = append(rs, Rule{Kind: AlarmHigh, Limit: *th.High, Deadband: th.Deadband, For: hold})
	}
	if th.Low != nil {
		rs = append(rs, Rule{Kind: AlarmLow, Limit: *th.Low, Deadband: th.Deadband, For: hold})
	}
	return rs, nil
}

// Active reports whether the alarm is raised.
func (r *Rule) Active() bool { return r.active }

// Observe feeds one sample (event time t, Unix ms) and reports whether the
// alarm was raised or cleared by it.
func (r *Rule) Observe(t int64, v float64) Transition {
	beyond := v > r.Limit
	back := v < r.Limit-r.Deadband
	if r.Kind == AlarmLow {
		beyond = v < r.Limit
		back = v > r.Limit+r.Deadband
	}
	if r.active {
		if back {
			r.active, r.pending = false, false
			return Cleared
		}
		return NoChange
	}
	if !beyond {
		r.pending = false
		return NoChange
	}
	if !r.pending {
		r.pending, r.since = true, t
	}
	if t-r.since >= r.For.Milliseconds() {
		r.active, r.pending = true, false
		return Raised
	}
	return NoChange
}

// Offline evaluates the offline alarm of one machine in server time: raised
// when no event arrived for longer than After, cleared by the next event.
type Offline struct {
	After time.Duration

	lastSeen int64
	active   bool
}

// Seen records an event arriving at server time now (Unix ms).
func (o *Offline) Seen(now int64) Transition {
	o.lastSeen = max(o.lastSeen, now)
	if o.active {
		o.active = false
		return Cleared
	}
	return NoChange
}

// Tick evaluates the alarm at server time now; a machine never seen is not
// offline (it is unknown).
func (o *Offline) Tick(now int64) Transition {
	if o.active || o.lastSeen == 0 || now-o.lastSeen <= o.After.Milliseconds() {
		return NoChange
	}
	o.active = true
	return Raised
}

// Active reports whether the machine is offline.
func (o *Offline) Active() bool { return o.active }
