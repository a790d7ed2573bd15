package store

// StateInterval is one stretch of a state series: from From to To (Unix
// ms, From inclusive, To exclusive) the state was Value.
type StateInterval struct {
	Value string `json:"value"`
	From  int64  `json:"from"`
	To    int64  `json:"to"`
}

// StateIntervals turns the changes of one state series (in time order, as
// StateStore.States returns them: the change in force at from first) into
// the intervals they cover, clipped to [from, to]. The time before the
// first change is not covered (the state is unknown there); the last
// interval ends at to. Consecutive changes to the same value merge into
// one interval, and empty intervals are left out. Changes out of time
// order are ignored, as are changes after to.
func StateIntervals(changes []StateChange, from, to int64) []StateInterval {
	if to <= from {
		return nil
	}
	var out []StateInterval
	var prev int64
	for i, c := range changes {
		if i > 0 && c.Time < prev {
			continue
		}
		prev = c.Time
		if c.Time >= to {
			break
		}
		start := max(c.Time, from)
		n := len(out)
		if n > 0 && out[n-1].From == start {
			// A later change at the same (clipped) instant wins.
			out = out[:n-1]
			n--
			if n > 0 {
				out[n-1].To = to
			}
		}
		if n > 0 && out[n-1].Value == c.Value {
			continue
		}
		if n > 0 {
			out[n-1].To = start
		}
		out = append(out, StateInterval{Value: c.Value, From: start, To: to})
	}
	return out
}

// StateTotals sums the intervals' durations (ms) per value.
func StateTotals(intervals []StateInterval) map[string]int64 {
	totals := make(map[string]int64, len(intervals))
	for _, iv := range intervals {
		totals[iv.Value] += iv.To - iv.From
	}
	return totals
}
