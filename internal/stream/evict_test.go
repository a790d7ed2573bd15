package stream

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/telemetry"
)

// BenchmarkEngineTickIdleFleet: one Tick with 100 k machines ever seen,
// 100 of them sending; the others fell silent an hour ago.
func BenchmarkEngineTickIdleFleet(b *testing.B) {
	const seen, active = 100_000, 100
	e := NewEngine(DefaultEngineConfig())
	var out Output
	ev := make([]telemetry.Event, 1)
	send := func(m int, t, now int64) {
		ev[0] = telemetry.Event{Machine: fmt.Sprintf("machine-%06d", m), Time: t, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}
		out.Reset()
		e.Process(ev, &out)
		e.Release(&out, now)
	}
	const start = 1_700_000_000_000
	for m := range seen {
		send(m, start, start)
	}
	now := int64(start + time.Hour.Milliseconds())
	out.Reset()
	e.Tick(now, &out)
	b.ReportAllocs()
	for b.Loop() {
		now += 1000
		for m := range active {
			send(m, now, now)
		}
		out.Reset()
		e.Tick(now, &out)
	}
}

// TestEngineEvictsIdleMachinesMatchesOracle: with the server clock moving
// on and Tick evicting machines idle beyond EvictAfter, machines that come
// back (with new data, old data and copies of events sent before their
// eviction) still get every distinct sample stored once, released in
// event-time order, and windows equal to the oracle's.
func TestEngineEvictsIdleMachinesMatchesOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := EngineConfig{
			Lateness:     time.Duration(rapid.IntRange(0, 5).Draw(t, "lateness_s")) * time.Second,
			Window:       time.Duration(rapid.IntRange(1, 10).Draw(t, "window_s")) * time.Second,
			WindowGrace:  time.Duration(rapid.IntRange(0, 30).Draw(t, "grace_s")) * time.Second,
			DedupHorizon: time.Hour,
			DedupMaxKeys: 1 << 20,
			MaxBuffered:  1 << 20,
			StoreDedups:  true, // the store decides on sample keys: simulated below
			EvictAfter:   time.Duration(rapid.IntRange(1, 120).Draw(t, "evict_after_s")) * time.Second,
		}
		machines := rapid.IntRange(1, 3).Draw(t, "machines")
		n := rapid.IntRange(1, 80).Draw(t, "events")
		var events []telemetry.Event
		for i := range n {
			m := fmt.Sprintf("m%d", rapid.IntRange(0, machines-1).Draw(t, "machine"))
			ev := telemetry.Event{Machine: m, ID: fmt.Sprintf("e%d", i), Time: int64(rapid.IntRange(0, 600).Draw(t, "t")) * 1000}
			for k := range rapid.IntRange(1, 2).Draw(t, "metrics") {
				ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: fmt.Sprintf("k%d", k), Value: float64(rapid.IntRange(-50, 50).Draw(t, "v"))})
			}
			events = append(events, ev)
		}
		arrival := slices.Clone(events)
		for range rapid.IntRange(0, n).Draw(t, "dups") {
			arrival = append(arrival, events[rapid.IntRange(0, n-1).Draw(t, "dup")])
		}
		perm := rapid.Permutation(arrival).Draw(t, "order")

		type skey struct {
			machine, metric string
			t               int64
		}
		seen := map[skey]bool{}
		oracle := map[engWinKey]Agg{}
		var want []telemetry.Sample
		for _, ev := range perm {
			for _, m := range ev.Metrics {
				k := skey{ev.Machine, m.Name, ev.Time}
				if seen[k] {
					continue
				}
				seen[k] = true
				want = append(want, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
				wk := engWinKey{ev.Machine, m.Name, windowStart(ev.Time, cfg.Window.Milliseconds())}
				a := oracle[wk]
				a.Add(m.Value)
				oracle[wk] = a
			}
		}

		e := NewEngine(cfg)
		var out, all Output
		held := map[skey]bool{}
		now, evictions := int64(0), 0
		collect := func() {
			all.Released = append(all.Released, out.Released...)
			all.Windows = append(all.Windows, out.Windows...)
		}
		for len(perm) > 0 {
			k := min(len(perm), rapid.IntRange(1, 10).Draw(t, "batch"))
			now += int64(rapid.IntRange(0, 200).Draw(t, "pause_s")) * 1000
			out.Reset()
			e.Process(perm[:k], &out)
			fresh := make([]bool, len(out.Samples))
			for i, s := range out.Samples {
				key := skey{s.Machine, s.Metric, s.Time}
				fresh[i] = !held[key]
				held[key] = true
			}
			kept, _ := KeepFresh(out.Samples, out.Origin, fresh)
			out.Samples, out.Origin = out.Samples[:kept], out.Origin[:kept]
			e.Release(&out, now)
			perm = perm[k:]
			all.Samples = append(all.Samples, out.Samples...)
			collect()
			before := e.Stats().Machines
			out.Reset()
			e.Tick(now+int64(rapid.IntRange(0, 200).Draw(t, "tick_s"))*1000, &out)
			collect()
			if e.Stats().Machines < before {
				evictions++
			}
		}
		out.Reset()
		e.Flush(&out)
		collect()

		less := func(a, b telemetry.Sample) int {
			return cmp.Or(cmp.Compare(a.Machine, b.Machine), cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Time, b.Time))
		}
		if diff := gocmp.Diff(all.Samples, want, cmpopts.SortSlices(func(a, b telemetry.Sample) bool { return less(a, b) < 0 })); diff != "" {
			t.Fatalf("stored samples (-got +want):\n%s", diff)
		}
		byMachine := map[string][]int64{}
		for _, s := range all.Released {
			byMachine[s.Machine] = append(byMachine[s.Machine], s.Time)
		}
		for m, ts := range byMachine {
			if !slices.IsSorted(ts) {
				t.Fatalf("released samples of %s not in event-time order: %v", m, ts)
			}
		}
		got, lateSum := map[engWinKey]Agg{}, map[engWinKey]Agg{}
		for _, w := range all.Windows {
			k := engWinKey{w.Machine, w.Metric, w.Start}
			switch w.Kind {
			case WindowFinal, WindowCorrection:
				got[k] = w.Agg
			case WindowLate:
				a := lateSum[k]
				a.Merge(w.Agg)
				lateSum[k] = a
			}
		}
		for k, a := range lateSum {
			g := got[k]
			g.Merge(a)
			got[k] = g
		}
		if diff := gocmp.Diff(got, oracle, gocmp.AllowUnexported(engWinKey{})); diff != "" {
			t.Fatalf("window aggregates (-got +want), %d evictions:\n%s", evictions, diff)
		}
	})
}

// TestEngineEvictsIdleMachines: a machine silent beyond EvictAfter leaves
// the engine (Tick no longer visits it, its keys are gone); when it comes
// back, a sample before its old watermark is late, and a new one opens its
// window as usual.
func TestEngineEvictsIdleMachines(t *testing.T) {
	cfg := DefaultEngineConfig() // lateness 5 s, windows 10 s, grace 1 m
	cfg.EvictAfter = 10 * time.Minute
	e := NewEngine(cfg)
	var out Output
	send := func(machine, id string, t, now int64) {
		out.Reset()
		e.Process([]telemetry.Event{{Machine: machine, ID: id, Time: t, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}, &out)
		e.Release(&out, now)
	}
	const t0 = 1_700_000_000_000
	send("quiet", "q1", t0, t0)
	send("busy", "b1", t0, t0)
	for now := int64(t0); now <= t0+12*time.Minute.Milliseconds(); now += time.Minute.Milliseconds() {
		send("busy", fmt.Sprint(now), now, now)
		out.Reset()
		e.Tick(now, &out)
	}
	got := e.Stats()
	want := EngineStats{Machines: 1, Active: 1, Windowed: 1, Keyed: 1}
	if diff := gocmp.Diff(got, want); diff != "" {
		t.Fatalf("after the quiet machine's 12 idle minutes (-got +want):\n%s", diff)
	}
	// Back with an old sample (its window long past grace) and a new one.
	now := t0 + 13*time.Minute.Milliseconds()
	out.Reset()
	e.Process([]telemetry.Event{
		{Machine: "quiet", ID: "q0", Time: t0 - 1000, Metrics: []telemetry.Metric{{Name: "x", Value: 5}}},
		{Machine: "quiet", ID: "q2", Time: now, Metrics: []telemetry.Metric{{Name: "x", Value: 7}}},
	}, &out)
	e.Release(&out, now)
	wantWins := []Window{{Machine: "quiet", Metric: "x", Start: windowStart(t0-1000, 10_000), Size: 10_000, Agg: Agg{Count: 1, Sum: 5, Min: 5, Max: 5}, Kind: WindowLate}}
	if diff := gocmp.Diff(out.Windows, wantWins); diff != "" {
		t.Errorf("the returning machine's old sample (-got +want):\n%s", diff)
	}
	out.Reset()
	e.Tick(now+time.Minute.Milliseconds(), &out)
	var final []Window
	for _, w := range out.Windows {
		if w.Machine == "quiet" {
			final = append(final, w)
		}
	}
	wantFinal := []Window{{Machine: "quiet", Metric: "x", Start: windowStart(now, 10_000), Size: 10_000, Agg: Agg{Count: 1, Sum: 7, Min: 7, Max: 7}, Kind: WindowFinal}}
	if diff := gocmp.Diff(final, wantFinal); diff != "" {
		t.Errorf("the returning machine's new window (-got +want):\n%s", diff)
	}
}

// TestEngineForgetMachine: a deleted machine leaves nothing behind, and
// starts afresh if it sends again.
func TestEngineForgetMachine(t *testing.T) {
	e := NewEngine(DefaultEngineConfig())
	var out Output
	ev := []telemetry.Event{{Machine: "m", ID: "1", Time: 1000, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}
	e.Process(ev, &out)
	e.Release(&out, 1000)
	e.ForgetMachine("m")
	if diff := gocmp.Diff(e.Stats(), EngineStats{}); diff != "" {
		t.Fatalf("after ForgetMachine (-got +want):\n%s", diff)
	}
	out.Reset()
	if dups := e.Process(ev, &out); dups != 0 || len(out.Samples) != 1 {
		t.Fatalf("the same event after ForgetMachine: %d duplicates, %d samples; want 0, 1", dups, len(out.Samples))
	}
	e.Release(&out, 2000)
	out.Reset()
	e.Flush(&out)
	if len(out.Released) != 1 || len(out.Windows) != 1 || out.Windows[0].Kind != WindowFinal {
		t.Errorf("after coming back: released %v, windows %v; want the sample and its final window", out.Released, out.Windows)
	}
}

// TestEngineReleasesIdleMachinesWithoutSamples: a machine the reorder never
// holds (keyed events without samples; keys from Remember) has its entry
// and keys dropped once unused for EvictAfter, in both dedup modes, while
// one that keeps sending such events keeps its keys.
func TestEngineReleasesIdleMachinesWithoutSamples(t *testing.T) {
	for _, storeDedups := range []bool{false, true} {
		cfg := DefaultEngineConfig()
		cfg.EvictAfter, cfg.StoreDedups = time.Minute, storeDedups
		e := NewEngine(cfg)
		const t0 = 1_700_000_000_000
		e.Remember([]Key{{Machine: "journaled", ID: "j1", Time: t0}})
		var out Output
		send := func(machine, id string, now int64) int {
			out.Reset()
			ev := []telemetry.Event{{Machine: machine, ID: id, Time: now, States: []telemetry.State{{Name: "mode", Value: "run"}}}}
			dups := e.Process(ev, &out)
			e.Release(&out, now)
			return dups
		}
		send("quiet", "q1", t0)
		var now int64
		for i := range 7 {
			now = int64(t0 + i*30_000)
			send("busy", fmt.Sprintf("b%d", i), now)
			out.Reset()
			e.Tick(now, &out)
			if st := e.Stats(); i == 2 && (st.Keyed != 3 || len(e.machines) != 3) {
				t.Fatalf("StoreDedups=%v: at EvictAfter: %+v, %d entries", storeDedups, st, len(e.machines))
			}
		}
		if st := e.Stats(); st.Keyed != 1 || len(e.machines) != 1 || e.machines["busy"] == nil {
			t.Errorf("StoreDedups=%v: after EvictAfter: %+v, entries %v", storeDedups, st, e.machines)
		}
		if dups := send("busy", "b6", now); dups != 1 {
			t.Errorf("StoreDedups=%v: a copy of busy's event is not a duplicate", storeDedups)
		}
	}
}
