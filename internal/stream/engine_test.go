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

func TestEngineDuplicates(t *testing.T) {
	e := NewEngine(DefaultEngineConfig())
	var out Output
	ev := func(id string, seq uint64, hasSeq bool, t int64, metrics ...string) telemetry.Event {
		x := telemetry.Event{Machine: "m", ID: id, Seq: seq, HasSeq: hasSeq, Time: t}
		for _, name := range metrics {
			x.Metrics = append(x.Metrics, telemetry.Metric{Name: name, Value: 1})
		}
		return x
	}
	tests := []struct {
		name    string
		events  []telemetry.Event
		dups    int
		samples int
	}{
		{"new ids", []telemetry.Event{ev("a", 0, false, 1, "x"), ev("b", 0, false, 2, "x")}, 0, 2},
		{"same id again, other content", []telemetry.Event{ev("a", 0, false, 9, "y")}, 1, 0},
		{"new id, sample already stored: first write wins", []telemetry.Event{ev("c", 0, false, 1, "x", "w")}, 0, 1},
		{"new id, every sample already stored", []telemetry.Event{ev("d", 0, false, 2, "x")}, 1, 0},
		{"seq", []telemetry.Event{ev("", 7, true, 3, "x"), ev("", 7, true, 4, "x")}, 1, 1},
		{"no key: by sample", []telemetry.Event{ev("", 0, false, 5, "x", "y"), ev("", 0, false, 5, "y", "z")}, 0, 3},
		{"no key: every sample seen", []telemetry.Event{ev("", 0, false, 5, "x", "z")}, 1, 0},
	}
	for _, tt := range tests {
		out.Reset()
		if got := e.Process(tt.events, &out); got != tt.dups || len(out.Samples) != tt.samples {
			t.Errorf("%s: duplicates %d, samples %d; want %d, %d", tt.name, got, len(out.Samples), tt.dups, tt.samples)
		}
	}
}

type engWinKey struct {
	machine, metric string
	start           int64
}

// TestEngineMatchesOracle: whatever the arrival order, the batching and
// the duplicates, the engine stores each distinct sample once, releases each
// machine's samples in event-time order, and its windows (last final or
// correction, merged with every late aggregate) equal the aggregates of the
// sorted, deduplicated stream.
func TestEngineMatchesOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		cfg := EngineConfig{
			Lateness:     time.Duration(rapid.IntRange(0, 5).Draw(t, "lateness_s")) * time.Second,
			Window:       time.Duration(rapid.IntRange(1, 10).Draw(t, "window_s")) * time.Second,
			WindowGrace:  time.Duration(rapid.IntRange(0, 30).Draw(t, "grace_s")) * time.Second,
			DedupHorizon: time.Hour,
			DedupMaxKeys: 1 << 20,
			MaxBuffered:  1 << 20,
			// The store decides on sample keys: simulated below.
			StoreDedups: rapid.Bool().Draw(t, "store_dedups"),
		}
		machines := rapid.IntRange(1, 3).Draw(t, "machines")
		n := rapid.IntRange(1, 80).Draw(t, "events")
		// Distinct events: machine, seq, time (whole seconds), 1–2 metrics.
		var events []telemetry.Event
		for i := range n {
			m := fmt.Sprintf("m%d", rapid.IntRange(0, machines-1).Draw(t, "machine"))
			ev := telemetry.Event{Machine: m, ID: fmt.Sprintf("e%d", i), Time: int64(rapid.IntRange(0, 120).Draw(t, "t")) * 1000}
			for k := range rapid.IntRange(1, 2).Draw(t, "metrics") {
				ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: fmt.Sprintf("k%d", k), Value: float64(rapid.IntRange(-50, 50).Draw(t, "v"))})
			}
			events = append(events, ev)
		}
		// Arrival: a permutation with some events sent twice, in batches.
		arrival := slices.Clone(events)
		for range rapid.IntRange(0, n).Draw(t, "dups") {
			arrival = append(arrival, events[rapid.IntRange(0, n-1).Draw(t, "dup")])
		}
		perm := rapid.Permutation(arrival).Draw(t, "order")

		// The oracle: the store keys samples by (machine, metric, time) and
		// the first write wins; an event id seen before is dropped whole.
		type skey struct {
			machine, metric string
			t               int64
		}
		seenKey, seenID := map[skey]bool{}, map[string]bool{}
		oracle := map[engWinKey]Agg{}
		var want []telemetry.Sample
		for _, ev := range perm {
			if seenID[ev.ID] {
				continue
			}
			seenID[ev.ID] = true
			for _, m := range ev.Metrics {
				k := skey{ev.Machine, m.Name, ev.Time}
				if seenKey[k] {
					continue
				}
				seenKey[k] = true
				want = append(want, telemetry.Sample{Machine: ev.Machine, Metric: m.Name, Time: ev.Time, Value: m.Value})
				wk := engWinKey{ev.Machine, m.Name, windowStart(ev.Time, cfg.Window.Milliseconds())}
				a := oracle[wk]
				a.Add(m.Value)
				oracle[wk] = a
			}
		}

		e := NewEngine(cfg)
		var out, all Output
		got := map[engWinKey]Agg{}
		lateSum := map[engWinKey]Agg{}
		held := map[skey]bool{} // the simulated store's keys
		for len(perm) > 0 {
			k := min(len(perm), rapid.IntRange(1, 10).Draw(t, "batch"))
			out.Reset()
			e.Process(perm[:k], &out)
			if cfg.StoreDedups {
				fresh := make([]bool, len(out.Samples))
				for i, s := range out.Samples {
					key := skey{s.Machine, s.Metric, s.Time}
					fresh[i] = !held[key]
					held[key] = true
				}
				n, _ := KeepFresh(out.Samples, out.Origin, fresh)
				out.Samples, out.Origin = out.Samples[:n], out.Origin[:n]
			}
			e.Release(&out, 0)
			perm = perm[k:]
			all.Samples = append(all.Samples, out.Samples...)
			all.Released = append(all.Released, out.Released...)
			all.Windows = append(all.Windows, out.Windows...)
		}
		out.Reset()
		e.Flush(&out)
		all.Released = append(all.Released, out.Released...)
		all.Windows = append(all.Windows, out.Windows...)

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
			t.Fatalf("window aggregates (-got +want):\n%s", diff)
		}
	})
}

// BenchmarkEngine: steady state with 10 000 machines × 5 metrics, one event
// per machine per second in order, batches of 1 000 events.
// BenchmarkEngine runs the engine in steady state, 10 k machines × 5
// metrics, events with a seq: with the engine remembering sample keys, and
// with the store deciding on them (StoreDedups: the store reported every
// sample fresh).
func BenchmarkEngine(b *testing.B) {
	for _, storeDedups := range []bool{false, true} {
		name := "engine_dedups"
		if storeDedups {
			name = "store_dedups"
		}
		b.Run(name, func(b *testing.B) { benchmarkEngine(b, storeDedups, 10_000, 5, 1000) })
	}
}

// BenchmarkEngineTSBS is BenchmarkEngine in the shape of a TSBS iot load
// (issue 18): 1 000 machines × 10 metrics, one event per machine every
// 10 s (event time), events without an id or seq, the store deciding on
// duplicates.
func BenchmarkEngineTSBS(b *testing.B) {
	benchmarkEngine(b, true, 1000, 10, 1000)
}

func benchmarkEngine(b *testing.B, storeDedups bool, machines, metrics, batch int) {
	cfg := DefaultEngineConfig()
	cfg.StoreDedups = storeDedups
	e := NewEngine(cfg)
	names := make([]string, machines)
	for i := range names {
		names[i] = fmt.Sprintf("machine-%05d", i)
	}
	metricNames := []string{"temp", "rpm", "vibration", "power", "pressure", "latitude", "longitude", "elevation", "velocity", "heading"}[:metrics]
	step, keyed := int64(1000), true
	if metrics == 10 { // the TSBS shape: 10 s apart, no id or seq
		step, keyed = 10_000, false
	}
	events := make([]telemetry.Event, batch)
	ms := make([]telemetry.Metric, batch*metrics)
	var out Output
	next := 0
	fill := func() {
		for i := range events {
			k := next + i
			ev := &events[i]
			ev.Machine = names[k%machines]
			ev.Time = int64(k/machines) * step
			ev.Seq, ev.HasSeq = uint64(k/machines), keyed
			ev.Metrics = ms[i*metrics : (i+1)*metrics : (i+1)*metrics]
			for j := range ev.Metrics {
				ev.Metrics[j] = telemetry.Metric{Name: metricNames[j], Value: float64(k % 97)}
			}
		}
		next += batch
	}
	// Warm up: every machine seen, windows and buffers at steady size.
	for range 30 * machines / batch {
		fill()
		out.Reset()
		e.Process(events, &out)
		e.Release(&out, 0)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPUTime()
	for range b.N {
		fill()
		out.Reset()
		e.Process(events, &out)
		e.Release(&out, 0)
	}
	cpu = processCPUTime() - cpu
	b.ReportMetric(float64(b.N*batch*metrics)/b.Elapsed().Seconds(), "samples/s")
	// Per second of CPU (the process's, garbage collection included): on a
	// shared machine, the figure that does not count other processes.
	if cpu > 0 {
		b.ReportMetric(float64(b.N*batch*metrics)/cpu.Seconds(), "samples/cpu-s")
	}
}

// TestEngineTickReleasesQuietMachines: a machine that stops sending has
// its samples released and its windows closed once the server clock passes
// them by the lateness.
func TestEngineTickReleasesQuietMachines(t *testing.T) {
	cfg := DefaultEngineConfig() // lateness 5 s, windows 10 s
	e := NewEngine(cfg)
	var out Output
	e.Process([]telemetry.Event{
		{Machine: "m", ID: "1", Time: 1000, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}},
		{Machine: "m", ID: "2", Time: 2000, Metrics: []telemetry.Metric{{Name: "x", Value: 3}}},
	}, &out)
	e.Release(&out, 500)
	if len(out.Released) != 0 || len(out.Windows) != 0 {
		t.Fatalf("released %d, windows %d before any tick; want 0, 0", len(out.Released), len(out.Windows))
	}
	out.Reset()
	e.Tick(6999, &out) // watermark 1999: only the first sample
	if len(out.Released) != 1 || out.Released[0].Time != 1000 || len(out.Windows) != 0 {
		t.Fatalf("tick at 6999: released %v, windows %v", out.Released, out.Windows)
	}
	out.Reset()
	e.Tick(15000, &out) // watermark 10000: the second sample and window [0, 10000)
	want := []Window{{Machine: "m", Metric: "x", Start: 0, Size: 10000, Agg: Agg{Count: 2, Sum: 4, Min: 1, Max: 3}, Kind: WindowFinal}}
	if len(out.Released) != 1 || out.Released[0].Time != 2000 {
		t.Errorf("tick at 15000: released %v", out.Released)
	}
	if diff := gocmp.Diff(out.Windows, want); diff != "" {
		t.Errorf("tick at 15000: windows (-got +want):\n%s", diff)
	}
}

// TestEngineTickLeavesBusyMachines: a machine still sending, even old data
// (a backfill), keeps its own watermark: the server clock does not make its
// samples late.
func TestEngineTickLeavesBusyMachines(t *testing.T) {
	e := NewEngine(DefaultEngineConfig())
	var out Output
	for i, received := range []int64{100_000, 104_000, 108_000} {
		out.Reset()
		e.Process([]telemetry.Event{{Machine: "backfill", ID: fmt.Sprint(i), Time: int64(i) * 1000, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}, &out)
		e.Release(&out, received)
		e.Tick(received+1000, &out)
		if len(out.Windows) != 0 {
			t.Fatalf("step %d: windows %v; a busy machine's old samples must not be closed out as late", i, out.Windows)
		}
	}
	out.Reset()
	e.Tick(200_000, &out) // now idle: everything released, windows closed
	if len(out.Released) != 3 || len(out.Windows) != 1 || out.Windows[0].Kind != WindowFinal || out.Windows[0].Agg.Count != 3 {
		t.Errorf("after going idle: released %d, windows %+v; want 3 and one final window of 3", len(out.Released), out.Windows)
	}
}

// TestEngineMergesLateAggregates: a replay of old data gives one late
// aggregate per window and call, not one per sample.
func TestEngineMergesLateAggregates(t *testing.T) {
	e := NewEngine(DefaultEngineConfig())
	var out Output
	e.Process([]telemetry.Event{{Machine: "m", Time: 600_000, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}, &out)
	e.Release(&out, 0)
	out.Reset()
	var replay []telemetry.Event
	for i := range 50 { // 50 samples in [0, 10 s), far beyond lateness and grace
		replay = append(replay, telemetry.Event{Machine: "m", Time: int64(i) * 100, Metrics: []telemetry.Metric{{Name: "x", Value: 2}}})
	}
	e.Process(replay, &out)
	e.Release(&out, 0)
	want := []Window{{Machine: "m", Metric: "x", Start: 0, Size: 10_000, Agg: Agg{Count: 50, Sum: 100, Min: 2, Max: 2}, Kind: WindowLate}}
	if diff := gocmp.Diff(out.Windows, want); diff != "" {
		t.Errorf("windows (-got +want):\n%s", diff)
	}
}

// TestEngineRememberJournaledKeys: the keys a run hands out let a new
// engine (after a restart) recognise retries of keyed events, even when
// the retry carries another event time (a server-assigned one).
func TestEngineRememberJournaledKeys(t *testing.T) {
	first := NewEngine(DefaultEngineConfig())
	var out Output
	now := int64(1_000_000_000)
	events := []telemetry.Event{
		{Machine: "m", ID: "a", Time: now, Metrics: []telemetry.Metric{{Name: "temp", Value: 1}}},
		{Machine: "m", Seq: 5, HasSeq: true, Time: now + 1, Metrics: []telemetry.Metric{{Name: "temp", Value: 2}}},
		{Machine: "m", Time: now + 2, Metrics: []telemetry.Metric{{Name: "temp", Value: 3}}},          // unkeyed: no key
		{Machine: "m", ID: "a", Time: now + 3, Metrics: []telemetry.Metric{{Name: "temp", Value: 4}}}, // duplicate: no key
	}
	if dups := first.Process(events, &out); dups != 1 {
		t.Fatalf("first run: %d duplicates, want 1", dups)
	}
	want := []Key{{Machine: "m", ID: "a", Time: now}, {Machine: "m", Seq: 5, HasSeq: true, Time: now + 1}}
	if diff := gocmp.Diff(out.Keys, want); diff != "" {
		t.Fatalf("keys (-got +want):\n%s", diff)
	}

	restarted := NewEngine(DefaultEngineConfig())
	restarted.Remember(out.Keys)
	var again Output
	retries := []telemetry.Event{
		{Machine: "m", ID: "a", Time: now + 10_000, Metrics: []telemetry.Metric{{Name: "temp", Value: 1}}},
		{Machine: "m", Seq: 5, HasSeq: true, Time: now + 10_001, Metrics: []telemetry.Metric{{Name: "temp", Value: 2}}},
		{Machine: "m", Seq: 6, HasSeq: true, Time: now + 10_002, Metrics: []telemetry.Metric{{Name: "temp", Value: 9}}},
	}
	if dups := restarted.Process(retries, &again); dups != 2 {
		t.Errorf("after restart: %d duplicates, want 2 (id a and seq 5)", dups)
	}
	if len(again.Samples) != 1 || again.Samples[0].Value != 9 {
		t.Errorf("after restart: samples %+v, want only seq 6's", again.Samples)
	}
}

// TestEngineForgetDropsOnlyTheFailedGroup: with StoreDedups, a group the
// store refused forgets its own keys only; keys of durable groups stay.
func TestEngineForgetDropsOnlyTheFailedGroup(t *testing.T) {
	cfg := DefaultEngineConfig()
	cfg.StoreDedups = true
	e := NewEngine(cfg)
	x := []telemetry.Metric{{Name: "x", Value: 1}}
	var out Output
	e.Process([]telemetry.Event{{Machine: "m", ID: "a", Time: 1, Metrics: x}}, &out)
	e.Release(&out, 0) // durable
	out.Reset()
	if dups := e.Process([]telemetry.Event{{Machine: "m", ID: "b", Time: 2, Metrics: x}, {Machine: "m", ID: "b", Time: 3, Metrics: x}}, &out); dups != 1 {
		t.Errorf("a key twice in one group: %d duplicates, want 1", dups)
	}
	e.Forget() // the store refused this group
	out.Reset()
	if dups := e.Process([]telemetry.Event{{Machine: "m", ID: "a", Time: 9, Metrics: x}, {Machine: "m", ID: "b", Time: 9, Metrics: x}}, &out); dups != 1 {
		t.Errorf("after a failed group: %d duplicates, want 1 (a, durable; not b, refused)", dups)
	}
}

// TestEnginePipelinedGroups: with StoreDedups, a processor may process
// group B while group A commits. A's Release remembers A's keys and
// leaves B's pending (a copy of B's event in C is a duplicate before B is
// durable); ForgetGroup(B) drops B's keys alone, so B's retry is new while
// A's stays a duplicate.
func TestEnginePipelinedGroups(t *testing.T) {
	cfg := DefaultEngineConfig()
	cfg.StoreDedups = true
	e := NewEngine(cfg)
	x := []telemetry.Metric{{Name: "x", Value: 1}}
	var a, b, c, d Output
	e.Process([]telemetry.Event{{Machine: "m", ID: "a", Time: 1, Metrics: x}}, &a)
	e.Process([]telemetry.Event{{Machine: "m", ID: "b", Time: 2, Metrics: x}}, &b)
	e.Release(&a, 0)
	if dups := e.Process([]telemetry.Event{{Machine: "m", ID: "b", Time: 5, Metrics: x}}, &c); dups != 1 {
		t.Errorf("b while its group commits: %d duplicates, want 1", dups)
	}
	e.ForgetGroup(b.Keys) // b's group failed; c's (no keys) goes on
	if dups := e.Process([]telemetry.Event{{Machine: "m", ID: "a", Time: 9, Metrics: x}, {Machine: "m", ID: "b", Time: 9, Metrics: x}}, &d); dups != 1 {
		t.Errorf("after b's group failed: %d duplicates, want 1 (a, durable; not b)", dups)
	}
	if diff := len(d.Keys); diff != 1 || d.Keys[0].ID != "b" {
		t.Errorf("new keys %+v, want b's", d.Keys)
	}
}

// TestEngineMachineStateAfterForget: the engine keeps each machine's place
// in every stage (one look-up per event); after Forget, ForgetMachine and
// eviction those places are made afresh, so duplicates are still told
// apart per machine and no machine takes another's state.
func TestEngineMachineStateAfterForget(t *testing.T) {
	for _, storeDedups := range []bool{false, true} {
		t.Run(fmt.Sprintf("store_dedups=%v", storeDedups), func(t *testing.T) {
			cfg := DefaultEngineConfig()
			cfg.StoreDedups = storeDedups
			e := NewEngine(cfg)
			var out Output
			// process processes one event of machine with seq at time ts
			// and releases it, reporting whether it was a duplicate.
			process := func(machine string, seq uint64, ts int64) bool {
				out.Reset()
				dups := e.Process([]telemetry.Event{{Machine: machine, Seq: seq, HasSeq: true, Time: ts,
					Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}, &out)
				e.Release(&out, ts)
				return dups == 1
			}
			if process("a", 1, 1000) || process("b", 1, 1000) {
				t.Fatal("first copies reported duplicates")
			}
			if !process("a", 1, 1000) || !process("b", 1, 1000) {
				t.Fatal("second copies not reported duplicates")
			}
			e.ForgetMachine("a")
			// A new machine may take a's freed places: b's keys stay b's.
			if process("c", 1, 1000) {
				t.Fatal("c's first event reported a duplicate")
			}
			if !process("b", 1, 1000) {
				t.Fatal("b's key lost after a was forgotten")
			}
			if process("a", 1, 1000) {
				t.Fatal("a's key kept after ForgetMachine")
			}
			if !process("a", 1, 1000) {
				t.Fatal("a's key not remembered again")
			}
			e.Forget()
			if !storeDedups {
				// Every remembered key goes: a retry is new, then
				// remembered again.
				if process("b", 1, 1000) || !process("b", 1, 1000) {
					t.Fatal("b's key after Forget: want new, then duplicate")
				}
			}
			// Eviction: a quiet machine is dropped and comes back later.
			out.Reset()
			e.Tick(10*time.Hour.Milliseconds(), &out)
			out.Reset()
			e.Tick(20*time.Hour.Milliseconds(), &out)
			if st := e.Stats(); st.Machines != 0 {
				t.Fatalf("machines held after eviction: %d, want 0", st.Machines)
			}
			if process("b", 2, 21*time.Hour.Milliseconds()) || !process("b", 2, 21*time.Hour.Milliseconds()) {
				t.Fatal("b after eviction: want new, then duplicate")
			}
			if len(out.Released) != 0 {
				t.Fatalf("released %v before the watermark passed", out.Released)
			}
		})
	}
}
