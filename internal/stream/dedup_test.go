package stream

import (
	"fmt"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/telemetry"
)

// dedupCopy is one arrival in a deduplication test: an event with an ID or a
// sequence number, or (with neither) one sample.
type dedupCopy struct {
	ev     telemetry.Event
	metric string // for events with neither ID nor Seq
}

// see runs c through d the way the engine does.
func (c *dedupCopy) see(d *Dedup) bool {
	if c.ev.ID != "" || c.ev.HasSeq {
		return d.Event(&c.ev)
	}
	return d.Sample(c.ev.Machine, c.metric, c.ev.Time)
}

// key is c's deduplication key, spelled out for the brute-force oracles.
func (c *dedupCopy) key() string {
	switch {
	case c.ev.ID != "":
		return fmt.Sprintf("id|%q|%q", c.ev.Machine, c.ev.ID)
	case c.ev.HasSeq:
		return fmt.Sprintf("seq|%q|%d", c.ev.Machine, c.ev.Seq)
	}
	return fmt.Sprintf("sample|%q|%q|%d", c.ev.Machine, c.metric, c.ev.Time)
}

func TestDedupKeys(t *testing.T) {
	seq := func(m string, s uint64, t int64) dedupCopy {
		return dedupCopy{ev: telemetry.Event{Machine: m, Seq: s, HasSeq: true, Time: t}}
	}
	id := func(m, id string, t int64) dedupCopy {
		return dedupCopy{ev: telemetry.Event{Machine: m, ID: id, Time: t}}
	}
	sample := func(m, metric string, t int64) dedupCopy {
		return dedupCopy{ev: telemetry.Event{Machine: m, Time: t}, metric: metric}
	}
	tests := []struct {
		name   string
		copies []dedupCopy
		want   []bool
	}{
		{"id repeated", []dedupCopy{id("a", "x", 1), id("a", "x", 1), id("a", "y", 1)}, []bool{true, false, true}},
		{"id wins over seq", []dedupCopy{
			{ev: telemetry.Event{Machine: "a", ID: "x", Seq: 1, HasSeq: true, Time: 1}},
			seq("a", 1, 1),
			{ev: telemetry.Event{Machine: "a", ID: "x", Seq: 2, HasSeq: true, Time: 1}},
		}, []bool{true, true, false}},
		{"id scoped to machine", []dedupCopy{id("a", "x", 1), id("b", "x", 1)}, []bool{true, true}},
		{"seq repeated with other time", []dedupCopy{seq("a", 7, 1), seq("a", 7, 2), seq("a", 8, 1)}, []bool{true, false, true}},
		{"kinds do not mix", []dedupCopy{seq("a", 7, 1), id("a", "7", 1), sample("a", "7", 1)}, []bool{true, true, true}},
		{"sample key is machine metric time", []dedupCopy{
			sample("a", "temp", 1), sample("a", "temp", 1), sample("a", "temp", 2),
			sample("a", "rpm", 1), sample("b", "temp", 1),
		}, []bool{true, false, true, true, true}},
		{"unambiguous encoding", []dedupCopy{id("ab", "c", 1), id("a", "bc", 1), sample("ab", "c", 1), sample("a", "bc", 1)}, []bool{true, true, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDedup(time.Minute, 100)
			var got []bool
			for i := range tt.copies {
				got = append(got, tt.copies[i].see(d))
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("results (-got +want):\n%s", diff)
			}
		})
	}
}

func TestDedupEventWithoutKeyIsNotRemembered(t *testing.T) {
	d := NewDedup(time.Minute, 10)
	ev := telemetry.Event{Machine: "a", Time: 1}
	first := d.Event(&ev)
	second := d.Event(&ev) // the same event again: still not a duplicate
	if !first || !second {
		t.Errorf("Event without ID or Seq = %v, %v; want true, true", first, second)
	}
	if got := d.Len(); got != 0 {
		t.Errorf("Len = %d, want 0", got)
	}
}

func TestDedupHorizon(t *testing.T) {
	d := NewDedup(10*time.Millisecond, 100)
	ev := func(seq uint64, t int64) *telemetry.Event {
		return &telemetry.Event{Machine: "a", Seq: seq, HasSeq: true, Time: t}
	}
	steps := []struct {
		ev      *telemetry.Event
		want    bool
		wantLen int
	}{
		{ev(1, 100), true, 1},
		{ev(2, 110), true, 2},  // cutoff 100: key 1 is exactly at it, kept
		{ev(1, 100), false, 2}, // still remembered
		{ev(3, 111), true, 2},  // cutoff 101: key 1 expires
		{ev(1, 100), true, 2},  // forgotten, and older than the cutoff: new, not remembered
		{ev(1, 100), true, 2},  // the store's key decides from here
		{ev(2, 110), false, 2}, // inside the horizon: remembered
		{ev(4, 95), true, 2},   // arrives beyond the horizon, not remembered
		{ev(5, 200), true, 1},  // cutoff 190: 2 and 3 expire
	}
	for i, s := range steps {
		if got := d.Event(s.ev); got != s.want {
			t.Errorf("step %d: Event(seq %d, time %d) = %v, want %v", i, s.ev.Seq, s.ev.Time, got, s.want)
		}
		if got := d.Len(); got != s.wantLen {
			t.Errorf("step %d: Len = %d, want %d", i, got, s.wantLen)
		}
	}
}

func TestDedupCapEvictsOldest(t *testing.T) {
	d := NewDedup(time.Hour, 3)
	ev := func(m string, seq uint64) *telemetry.Event {
		return &telemetry.Event{Machine: m, Seq: seq, HasSeq: true, Time: 1000}
	}
	for _, e := range []*telemetry.Event{ev("a", 1), ev("b", 1), ev("a", 2), ev("b", 2)} {
		if !d.Event(e) {
			t.Fatalf("Event(%s %d) = false, want true", e.Machine, e.Seq)
		}
	}
	if got := d.Len(); got != 3 {
		t.Errorf("Len = %d, want 3", got)
	}
	// a/1 was evicted; b/1, a/2 and b/2 remain.
	got := []bool{d.Event(ev("b", 1)), d.Event(ev("a", 2)), d.Event(ev("b", 2)), d.Event(ev("a", 1))}
	if diff := cmp.Diff(got, []bool{false, false, false, true}); diff != "" {
		t.Errorf("after eviction (-got +want):\n%s", diff)
	}
	checkDedupInvariants(t, d)
}

// TestDedupMatchesFirstCopyOracle: for streams whose copies arrive in any
// order within the horizon, the accepted copies are exactly the first copy of
// each key.
func TestDedupMatchesFirstCopyOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		horizon := rapid.Int64Range(1, 2000).Draw(t, "horizon")
		n := rapid.IntRange(0, 150).Draw(t, "originals")
		var copies []dedupCopy
		var arrive []int64
		var tm int64 = 1_000_000
		for i := range n {
			tm += rapid.Int64Range(0, 100).Draw(t, "step")
			c := dedupCopy{ev: telemetry.Event{Machine: "m" + strconv.Itoa(rapid.IntRange(0, 3).Draw(t, "machine")), Time: tm}}
			switch rapid.IntRange(0, 2).Draw(t, "kind") {
			case 0:
				c.ev.ID = "id" + strconv.Itoa(i)
			case 1:
				c.ev.Seq, c.ev.HasSeq = uint64(i), true
			default:
				c.metric = "x" + strconv.Itoa(rapid.IntRange(0, 2).Draw(t, "metric"))
			}
			// Every copy arrives less than horizon/2 after its event
			// time, so at its arrival no copy seen is newer than its
			// time plus half the horizon: it is inside the horizon.
			for range rapid.IntRange(1, 3).Draw(t, "copies") {
				copies = append(copies, c)
				arrive = append(arrive, tm+rapid.Int64Range(0, (horizon-1)/2).Draw(t, "delay"))
			}
		}
		order := make([]int, len(copies))
		for i := range order {
			order[i] = i
		}
		sort.SliceStable(order, func(a, b int) bool { return arrive[order[a]] < arrive[order[b]] })

		maxKeys := len(copies) + 1
		d := NewDedup(time.Duration(horizon)*time.Millisecond, maxKeys)
		seen := map[string]bool{}
		var got, want []bool
		for _, i := range order {
			c := &copies[i]
			got = append(got, c.see(d))
			k := c.key()
			want = append(want, !seen[k])
			seen[k] = true
			if d.Len() > maxKeys {
				t.Fatalf("Len = %d > maxKeys %d", d.Len(), maxKeys)
			}
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Fatalf("accepted (-got +want):\n%s", diff)
		}
		checkDedupInvariants(t, d)
	})
}

// TestDedupGuarantees: for arbitrary streams (any disorder, any horizon, a
// small cap), a key never seen is accepted, and a key remembered inside the
// horizon, with fewer than maxKeys keys remembered after it, is never
// accepted again; the cap holds.
func TestDedupGuarantees(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		horizon := rapid.Int64Range(0, 500).Draw(t, "horizon")
		maxKeys := rapid.IntRange(1, 20).Draw(t, "maxKeys")
		d := NewDedup(time.Duration(horizon)*time.Millisecond, maxKeys)
		type remembered struct {
			at   int // remembered keys before it
			time int64
		}
		var (
			maxTime = map[string]int64{}
			seen    = map[string]bool{}
			mem     = map[string]remembered{}
			count   int
		)
		for range rapid.IntRange(0, 300).Draw(t, "arrivals") {
			c := dedupCopy{ev: telemetry.Event{
				Machine: "m" + strconv.Itoa(rapid.IntRange(0, 2).Draw(t, "machine")),
				Time:    rapid.Int64Range(0, 2000).Draw(t, "time"),
			}}
			v := rapid.IntRange(0, 5).Draw(t, "value")
			switch rapid.IntRange(0, 2).Draw(t, "kind") {
			case 0:
				c.ev.ID = strconv.Itoa(v)
			case 1:
				c.ev.Seq, c.ev.HasSeq = uint64(v), true
			default:
				c.metric = strconv.Itoa(v)
				c.ev.Time = c.ev.Time / 100 * 100 // make sample keys repeat
			}
			if mt, ok := maxTime[c.ev.Machine]; !ok || c.ev.Time > mt {
				maxTime[c.ev.Machine] = c.ev.Time
			}
			cutoff := maxTime[c.ev.Machine] - horizon
			k := c.key()

			got := c.see(d)
			if !seen[k] && !got {
				t.Fatalf("new key %s rejected as a duplicate", k)
			}
			if r, ok := mem[k]; ok && r.time >= cutoff && count-r.at < maxKeys && got {
				t.Fatalf("key %s (time %d, cutoff %d, %d keys remembered since) forgotten", k, r.time, cutoff, count-r.at)
			}
			seen[k] = true
			if got && c.ev.Time >= cutoff {
				count++
				mem[k] = remembered{at: count, time: c.ev.Time}
			}
			if d.Len() > maxKeys {
				t.Fatalf("Len = %d > maxKeys %d", d.Len(), maxKeys)
			}
			checkDedupInvariants(t, d)
		}
	})
}

// checkDedupInvariants checks that d's lists and map agree.
func checkDedupInvariants(t interface {
	Helper()
	Fatalf(string, ...any)
}, d *Dedup) {
	t.Helper()
	global := 0
	prev := int32(dedupNil)
	for i := d.oldest; i != dedupNil; i = d.slots[i].gnext {
		if d.slots[i].gprev != prev {
			t.Fatalf("slot %d: gprev %d, want %d", i, d.slots[i].gprev, prev)
		}
		if !d.keys.has(d.slots[i].hash) {
			t.Fatalf("slot %d: hash not in the map", i)
		}
		prev = i
		global++
	}
	if prev != d.newest {
		t.Fatalf("newest = %d, want %d", d.newest, prev)
	}
	perMachine := 0
	for mi, m := range d.ms {
		last := int32(dedupNil)
		for i := m.head; i != dedupNil; i = d.slots[i].mnext {
			if d.slots[i].machine != int32(mi) {
				t.Fatalf("slot %d in the list of machine %d belongs to %d", i, mi, d.slots[i].machine)
			}
			last = i
			perMachine++
		}
		if last != m.tail {
			t.Fatalf("machine %d: tail %d, want %d", mi, m.tail, last)
		}
	}
	if global != d.Len() || perMachine != d.Len() {
		t.Fatalf("global list %d, machine lists %d, map %d: want equal", global, perMachine, d.Len())
	}
}

// dedupBench is a steady stream of sequenced events from many machines, one
// second apart per machine, every tenth one a retry of the previous event.
type dedupBench struct {
	names []string
	ev    telemetry.Event
	seq   []uint64
	i     int
}

func newDedupBench(machines int) *dedupBench {
	b := &dedupBench{seq: make([]uint64, machines)}
	for i := range machines {
		b.names = append(b.names, fmt.Sprintf("machine-%05d", i))
	}
	return b
}

func (b *dedupBench) next() *telemetry.Event {
	m := b.i % len(b.names)
	if b.i%10 != 9 { // a retry repeats the machine's last event
		b.seq[m]++
	}
	b.i++
	b.ev = telemetry.Event{Machine: b.names[m], Seq: b.seq[m], HasSeq: true, Time: 1_700_000_000_000 + int64(b.seq[m])*1000}
	return &b.ev
}

func TestDedupSteadyStateAllocs(t *testing.T) {
	d := NewDedup(time.Minute, 1<<20)
	b := newDedupBench(1000)
	for range 200_000 {
		d.Event(b.next())
	}
	if got := testing.AllocsPerRun(100_000, func() { d.Event(b.next()) }); got != 0 {
		t.Errorf("allocs per Event = %v, want 0", got)
	}
}

// BenchmarkDedupEvent measures Event in steady state: a one-minute horizon
// over events one second apart per machine (60 keys per machine), 10%
// retries; 10 k machines (550 k keys remembered), and 100 machines for the
// cost without cache misses.
func BenchmarkDedupEvent(b *testing.B) {
	for _, machines := range []int{10_000, 100} {
		b.Run(fmt.Sprintf("machines=%d", machines), func(b *testing.B) {
			d := NewDedup(time.Minute, 1<<20)
			g := newDedupBench(machines)
			for range 200 * machines { // fill the horizon and settle
				d.Event(g.next())
			}
			b.ReportAllocs()
			for b.Loop() {
				d.Event(g.next())
			}
			b.ReportMetric(float64(d.Len()), "keys")
		})
	}
}
