// Package oee computes Overall Equipment Effectiveness (ISO 22400) from a
// machine's state series and part counters: per machine and time bucket,
// availability, performance, quality and their product, the downtime by
// reason, and the time-weighted rollups of machines into lines and sites.
//
// It is pure computation: no I/O, no clock. The API reads the state
// changes and counter samples from the store and hands them in.
//
//	availability = run time / planned production time
//	performance  = ideal cycle time × total count / run time
//	quality      = good count / total count
//	oee          = availability × performance × quality
//
// Planned production time is the time in any known state but the planned
// stops; run time the time in a running state. A ratio whose denominator
// is zero is undefined (null), never 0 or 1, and nothing is capped:
// a performance above 1 says the ideal cycle time is too long (or the
// counter counts something else), and is shown as computed.
package oee

import (
	"cmp"
	"math"
	"slices"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/twin"
)

// TopDowntime is the number of downtime reasons a bucket lists.
const TopDowntime = 5

// Downtime is the time spent in one non-running state during planned
// production time.
type Downtime struct {
	State string `json:"state"`
	Ms    int64  `json:"ms"`
}

// Bucket is the OEE of one machine, line or site over one time range.
type Bucket struct {
	From      int64 `json:"from"`
	To        int64 `json:"to"`
	PlannedMs int64 `json:"plannedMs"`
	RunMs     int64 `json:"runMs"`
	// TotalCount and GoodCount are the increases of the part counters.
	TotalCount float64 `json:"totalCount"`
	GoodCount  float64 `json:"goodCount"`
	// The ratios are nil (JSON null) when undefined: a zero denominator,
	// or a machine without the counter or ideal cycle time they need.
	Availability *float64 `json:"availability"`
	Performance  *float64 `json:"performance"`
	Quality      *float64 `json:"quality"`
	OEE          *float64 `json:"oee"`
	// Downtime lists the top TopDowntime reasons, longest first.
	Downtime []Downtime `json:"downtime"`

	sums sums
}

// sums are the additive parts of a bucket that the ratios are computed
// from: summing them over machines (or buckets) and computing the ratios
// again is the time-weighted rollup.
type sums struct {
	// perfRunMs is the run time of the machines that have performance
	// inputs (a total counter and an ideal cycle time); idealMs their
	// ideal run time: Σ ideal cycle × total count.
	perfRunMs int64
	idealMs   float64
	// qualTotal and qualGood count the parts of the machines that count
	// good parts too.
	qualTotal, qualGood float64
	// down has every downtime reason (Downtime only the top ones).
	down []Downtime
}

// Series is the OEE of one machine, line or site: one Bucket per bucket
// of the grid, and the Total over the whole range.
type Series struct {
	Buckets []Bucket `json:"buckets"`
	Total   Bucket   `json:"total"`
}

// class is what a state counts as.
type class uint8

const (
	unplanned class = iota // planned production time, not running: downtime
	running
	plannedStop
)

func classOf(spec *twin.OEESpec, value string) class {
	switch {
	case slices.Contains(spec.RunningStates, value):
		return running
	case slices.Contains(spec.PlannedStopStates, value):
		return plannedStop
	}
	return unplanned
}

// Compute returns the OEE of one machine over the grid.
//
// changes are the changes of its state series (spec.StateMetric) in time
// order: the one in force at g.From (if any) and those after it (a change
// earlier than the one before it is ignored; of changes at the same time
// the last wins). The state before the first change is unknown, and
// unknown time is neither planned nor run; the last state holds until
// min(g.To, until) (until is the present: the future is not counted).
// total and good are the increases of the counters per bucket of g (see
// Counter; g.Len() long), nil for a counter the spec does not name.
func Compute(g Grid, spec twin.OEESpec, changes []store.StateChange, total, good []float64, until int64) Series {
	n := g.Len()
	s := Series{Buckets: make([]Bucket, n)}
	for i := range s.Buckets {
		s.Buckets[i].From, s.Buckets[i].To = g.Bounds(i)
	}
	end := min(g.To, until)
	cur, last := -1, int64(0) // the change in force, and the time of the latest in order
	for i, c := range changes {
		if cur >= 0 && c.Time < last {
			continue // out of time order: ignored, as store.StateIntervals does
		}
		if cur >= 0 {
			s.addState(g, &spec, changes[cur].Value, changes[cur].Time, min(c.Time, end))
		}
		cur, last = i, c.Time
	}
	if cur >= 0 {
		s.addState(g, &spec, changes[cur].Value, changes[cur].Time, end)
	}
	perf := total != nil && spec.IdealCycleSeconds > 0
	for i := range s.Buckets {
		bk := &s.Buckets[i]
		if total != nil {
			bk.TotalCount = total[i]
		}
		if good != nil {
			bk.GoodCount = good[i]
		}
		if perf {
			bk.sums.perfRunMs = bk.RunMs
			bk.sums.idealMs = spec.IdealCycleSeconds * 1000 * bk.TotalCount
		}
		if total != nil && good != nil {
			bk.sums.qualTotal, bk.sums.qualGood = bk.TotalCount, bk.GoodCount
		}
	}
	s.finish(g)
	return s
}

// addState counts the time [from, to) ∩ the grid in state value.
func (s *Series) addState(g Grid, spec *twin.OEESpec, value string, from, to int64) {
	from = max(from, g.From)
	if from >= to {
		return
	}
	cl := classOf(spec, value)
	if cl == plannedStop {
		return
	}
	for b := g.index(from); from < to; b++ {
		bk := &s.Buckets[b]
		d := min(to, bk.To) - from
		bk.PlannedMs += d
		if cl == running {
			bk.RunMs += d
		} else {
			bk.sums.down = addDown(bk.sums.down, value, d)
		}
		from += d
	}
}

// Rollup returns the time-weighted combination of parts computed over the
// same grid (machines into a line, lines into a site):
//
//	A = Σrun / Σplanned    P = Σ(ideal × total) / Σrun    Q = Σgood / Σtotal
//
// where P sums over the parts that have performance inputs and Q over
// those that count good parts, so a machine without counters lowers
// neither.
func Rollup(g Grid, parts []*Series) Series {
	s := Series{Buckets: make([]Bucket, g.Len())}
	for i := range s.Buckets {
		s.Buckets[i].From, s.Buckets[i].To = g.Bounds(i)
	}
	for _, p := range parts {
		for i := range s.Buckets {
			s.Buckets[i].add(&p.Buckets[i])
		}
	}
	s.finish(g)
	return s
}

// finish computes the ratios of every bucket and the total.
func (s *Series) finish(g Grid) {
	ratios := make([]float64, 4*(len(s.Buckets)+1)) // one allocation for every ratio
	s.Total = Bucket{From: g.From, To: g.To}
	for i := range s.Buckets {
		s.Total.add(&s.Buckets[i])
		s.Buckets[i].ratios(ratios[4*i : 4*i+4])
	}
	s.Total.ratios(ratios[len(ratios)-4:])
}

// add adds o's counts to b.
func (b *Bucket) add(o *Bucket) {
	b.PlannedMs += o.PlannedMs
	b.RunMs += o.RunMs
	b.TotalCount += o.TotalCount
	b.GoodCount += o.GoodCount
	b.sums.perfRunMs += o.sums.perfRunMs
	b.sums.idealMs += o.sums.idealMs
	b.sums.qualTotal += o.sums.qualTotal
	b.sums.qualGood += o.sums.qualGood
	for _, d := range o.sums.down {
		b.sums.down = addDown(b.sums.down, d.State, d.Ms)
	}
}

// ratios computes the ratios and the top downtime reasons, using buf (4
// floats) for the ratios.
func (b *Bucket) ratios(buf []float64) {
	ratio := func(i int, num, den float64) *float64 {
		if den <= 0 || math.IsNaN(num) || math.IsInf(num, 0) {
			return nil
		}
		buf[i] = num / den
		return &buf[i]
	}
	b.Availability = ratio(0, float64(b.RunMs), float64(b.PlannedMs))
	b.Performance = ratio(1, b.sums.idealMs, float64(b.sums.perfRunMs))
	b.Quality = ratio(2, b.sums.qualGood, b.sums.qualTotal)
	b.OEE = nil
	if b.Availability != nil && b.Performance != nil && b.Quality != nil {
		buf[3] = *b.Availability * *b.Performance * *b.Quality
		b.OEE = &buf[3]
	}
	slices.SortFunc(b.sums.down, func(x, y Downtime) int {
		return cmp.Or(cmp.Compare(y.Ms, x.Ms), cmp.Compare(x.State, y.State))
	})
	b.Downtime = b.sums.down[:min(len(b.sums.down), TopDowntime):min(len(b.sums.down), TopDowntime)]
	if b.Downtime == nil {
		b.Downtime = []Downtime{}
	}
}

// addDown adds ms of state to down.
func addDown(down []Downtime, state string, ms int64) []Downtime {
	for i := range down {
		if down[i].State == state {
			down[i].Ms += ms
			return down
		}
	}
	return append(down, Downtime{State: state, Ms: ms})
}

// Counter turns the samples of a part counter into its increase per
// bucket of a grid. The increase from one sample to the next counts in
// the bucket of the later one; a drop is a reset, and the later sample's
// value is then its increase (the counter restarted from 0). Samples
// before the grid only set the value increases are counted from; a
// counter's first sample counts nothing.
type Counter struct {
	g    Grid
	inc  []float64
	prev float64
	seen bool
}

// NewCounter returns a counter over g.
func NewCounter(g Grid) *Counter { return &Counter{g: g, inc: make([]float64, g.Len())} }

// Add adds the next sample, in time order; samples at or after the
// grid's end and non-finite values are ignored.
func (c *Counter) Add(p store.Point) {
	if p.Time >= c.g.To || math.IsNaN(p.Value) || math.IsInf(p.Value, 0) {
		return
	}
	if c.seen && p.Time >= c.g.From {
		d := p.Value - c.prev
		if d < 0 {
			d = max(p.Value, 0) // a reset: counted from 0
		}
		c.inc[c.g.index(p.Time)] += d
	}
	c.prev, c.seen = p.Value, true
}

// Increases returns the increase per bucket.
func (c *Counter) Increases() []float64 { return c.inc }
