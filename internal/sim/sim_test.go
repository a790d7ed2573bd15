package sim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// emitted is one emit call seen by a recorder.
type emitted struct {
	at     time.Time
	events []telemetry.Event
}

// recorder is an Emit that keeps every batch.
type recorder struct {
	batches []emitted
	fail    func(call int) error // optional: the error of the call-th emit (1-based)
}

func (r *recorder) emit(_ context.Context, events []telemetry.Event) error {
	call := len(r.batches) + 1
	r.batches = append(r.batches, emitted{at: time.Now(), events: events})
	if r.fail != nil {
		return r.fail(call)
	}
	return nil
}

// all returns every event emitted, in order.
func (r *recorder) all() []telemetry.Event {
	var out []telemetry.Event
	for _, b := range r.batches {
		out = append(out, b.events...)
	}
	return out
}

// simResult is what one run of a simulator produced.
type simResult struct {
	rec      *recorder
	stats    Stats
	err      error
	start    time.Time
	end      time.Time
	machines []Machine
}

// runSim runs a simulator of cfg to its end in a synctest bubble, so
// simulated time starts at the same instant on every call.
func runSim(t *testing.T, cfg Config, fail func(int) error) simResult {
	t.Helper()
	var res simResult
	synctest.Test(t, func(t *testing.T) {
		res.rec = &recorder{fail: fail}
		s := New(cfg, res.rec.emit, time.Now)
		res.machines = s.Machines()
		res.start = time.Now()
		res.err = s.Run(t.Context())
		res.end = time.Now()
		res.stats = s.Stats()
	})
	return res
}

func TestRunPacesAtRate(t *testing.T) {
	tests := []struct {
		name     string
		rate     float64
		interval time.Duration
		duration time.Duration
		want     int64
	}{
		{"200/s every 100ms", 200, 100 * time.Millisecond, 10 * time.Second, 2000},
		{"200/s every 1ms", 200, time.Millisecond, 10 * time.Second, 2000},
		{"200/s every 7ms", 200, 7 * time.Millisecond, 10 * time.Second, 2000},
		{"200/s every 250ms", 200, 250 * time.Millisecond, 10 * time.Second, 2000},
		{"200/s every 3s (not dividing the duration)", 200, 3 * time.Second, 10 * time.Second, 2000},
		{"fractional 33.3/s every 70ms", 33.3, 70 * time.Millisecond, 10 * time.Second, 333},
		{"slow 0.7/s every 100ms", 0.7, 100 * time.Millisecond, 60 * time.Second, 42},
		{"fast 50000/s every 100ms", 50000, 100 * time.Millisecond, 2 * time.Second, 100000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Rate: tt.rate, Interval: tt.interval, Duration: tt.duration, Seed: 1}
			res := runSim(t, cfg, nil)
			if res.err != nil {
				t.Fatalf("Run: %v", res.err)
			}
			if got := res.stats.Events; got != tt.want {
				t.Errorf("Stats().Events = %d, want %d", got, tt.want)
			}
			if got := res.end.Sub(res.start); got != tt.duration {
				t.Errorf("Run took %s, want %s", got, tt.duration)
			}
			// Open loop without drift: by every emit, exactly the events
			// due by then were sent, each no later than the emit.
			var sent int64
			for _, b := range res.rec.batches {
				sent += int64(len(b.events))
				elapsed := b.at.Sub(res.start)
				if got, want := sent, int64(math.Floor(elapsed.Seconds()*tt.rate+1e-9)); got != want {
					t.Fatalf("at %s: %d events sent, want %d", elapsed, got, want)
				}
				for _, ev := range b.events {
					if ev.Time > b.at.UnixMilli() {
						t.Fatalf("event %s has time %d after its emit at %d", ev.ID, ev.Time, b.at.UnixMilli())
					}
				}
			}
		})
	}
}

func TestRunSpreadsEventTimesOverTheInterval(t *testing.T) {
	res := runSim(t, Config{Rate: 200, Interval: 100 * time.Millisecond, Count: 200, Seed: 3}, nil)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	b := res.rec.batches[0]
	var got []int64
	for _, ev := range b.events {
		got = append(got, ev.Time-res.start.UnixMilli())
	}
	want := []int64{5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("event times of the first batch, ms after start (-got +want):\n%s", diff)
	}
}

func TestRunUsesInjectedClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// A clock a day behind backfills yesterday.
		yesterday := func() time.Time { return time.Now().Add(-24 * time.Hour) }
		rec := &recorder{}
		s := New(Config{Rate: 10, Count: 10}, rec.emit, yesterday)
		start := time.Now()
		if err := s.Run(t.Context()); err != nil {
			t.Fatalf("Run: %v", err)
		}
		var got []int64
		for _, ev := range rec.all() {
			got = append(got, ev.Time-start.Add(-24*time.Hour).UnixMilli())
		}
		want := []int64{100, 200, 300, 400, 500, 600, 700, 800, 900, 1000}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("event times, ms after yesterday's start (-got +want):\n%s", diff)
		}
		if got, want := time.Since(start), time.Second; got != want {
			t.Errorf("Run took %s, want %s", got, want)
		}
	})
}

func TestRunStops(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		timeout    time.Duration // 0: none
		wantEvents int64
		wantTook   time.Duration
	}{
		{"count", Config{Count: 777}, 0, 777, 3900 * time.Millisecond},
		{"duration", Config{Duration: 2500 * time.Millisecond}, 0, 500, 2500 * time.Millisecond},
		{"count before duration", Config{Count: 100, Duration: time.Hour}, 0, 100, 500 * time.Millisecond},
		{"context", Config{}, 2050 * time.Millisecond, 400, 2050 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := t.Context()
				if tt.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tt.timeout)
					defer cancel()
				}
				rec := &recorder{}
				s := New(tt.cfg, rec.emit, time.Now)
				start := time.Now()
				if err := s.Run(ctx); err != nil {
					t.Fatalf("Run: %v", err)
				}
				if got := time.Since(start); got != tt.wantTook {
					t.Errorf("Run took %s, want %s", got, tt.wantTook)
				}
				if got := s.Stats().Events; got != tt.wantEvents {
					t.Errorf("Stats().Events = %d, want %d", got, tt.wantEvents)
				}
			})
		})
	}
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recorder{}
		s := New(Config{Count: 10}, rec.emit, time.Now)
		if err := s.Run(t.Context()); err != nil {
			t.Fatalf("first Run: %v", err)
		}
		if err := s.Run(t.Context()); err == nil {
			t.Errorf("second Run = nil, want an error")
		}
	})
}

func TestRunEmitErrors(t *testing.T) {
	errBoom := errors.New("boom")
	t.Run("an error stops Run", func(t *testing.T) {
		res := runSim(t, Config{Count: 1000}, func(call int) error {
			if call == 3 {
				return errBoom
			}
			return nil
		})
		if !errors.Is(res.err, errBoom) {
			t.Fatalf("Run = %v, want an error wrapping %v", res.err, errBoom)
		}
		got := res.stats
		want := Stats{Events: 40, Batches: 2, EmitErrors: 1}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("Stats() (-got +want):\n%s", diff)
		}
	})
	t.Run("a dropped batch does not", func(t *testing.T) {
		res := runSim(t, Config{Count: 1000}, func(call int) error {
			if call%5 == 0 {
				return fmt.Errorf("posting: %w", ErrDropped)
			}
			return nil
		})
		if res.err != nil {
			t.Fatalf("Run: %v", res.err)
		}
		got := res.stats
		want := Stats{Events: 800, Batches: 40, EmitErrors: 10, Dropped: 200}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("Stats() (-got +want):\n%s", diff)
		}
	})
}

func TestRunIsDeterministic(t *testing.T) {
	cfg := Config{Machines: 7, Rate: 300, Count: 1000, OutOfOrder: 0.1, Duplicates: 0.1, FaultEvery: time.Minute, Seed: 42}
	first := runSim(t, cfg, nil)
	second := runSim(t, cfg, nil)
	if diff := cmp.Diff(second.rec.all(), first.rec.all()); diff != "" {
		t.Errorf("same seed, different events (-second +first):\n%s", diff)
	}

	cfg.Seed = 43
	other := runSim(t, cfg, nil)
	// Compare the first batch only: cmp aligns unequal slices, slowly.
	if cmp.Equal(other.rec.batches[0].events, first.rec.batches[0].events) {
		t.Errorf("seeds 42 and 43 produced the same first batch")
	}
}

func TestMachines(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		wantIDs  []string
		wantKind []string
	}{
		{
			name:     "kinds rotate",
			cfg:      Config{Machines: 6},
			wantIDs:  []string{"press-01", "oven-02", "cnc-03", "pump-04", "compressor-05", "press-06"},
			wantKind: []string{"press", "oven", "cnc", "pump", "compressor", "press"},
		},
		{
			name:     "prefix",
			cfg:      Config{Machines: 2, Prefix: "plant1"},
			wantIDs:  []string{"plant1-press-01", "plant1-oven-02"},
			wantKind: []string{"press", "oven"},
		},
		{
			name:     "prefix ending in a separator",
			cfg:      Config{Machines: 1, Prefix: "lineA_"},
			wantIDs:  []string{"lineA_press-01"},
			wantKind: []string{"press"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids, kinds []string
			for _, m := range New(tt.cfg, nil, nil).Machines() {
				ids = append(ids, m.ID)
				kinds = append(kinds, m.Kind)
			}
			if diff := cmp.Diff(ids, tt.wantIDs); diff != "" {
				t.Errorf("ids (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(kinds, tt.wantKind); diff != "" {
				t.Errorf("kinds (-got +want):\n%s", diff)
			}
		})
	}

	t.Run("width follows the fleet size", func(t *testing.T) {
		ms := New(Config{Machines: 120}, nil, nil).Machines()
		got := []string{ms[0].ID, ms[119].ID}
		want := []string{"press-001", "compressor-120"}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("ids (-got +want):\n%s", diff)
		}
	})
	t.Run("default fleet", func(t *testing.T) {
		if got, want := len(New(Config{}, nil, nil).Machines()), DefaultMachines; got != want {
			t.Errorf("len(Machines()) = %d, want %d", got, want)
		}
	})
}

func TestEventsIdentityAndOrder(t *testing.T) {
	res := runSim(t, Config{Machines: 10, Rate: 500, Count: 20000, FaultEvery: 2 * time.Minute, Seed: 7}, nil)
	if res.err != nil {
		t.Fatalf("Run: %v", res.err)
	}
	lastSeq := map[string]uint64{}
	lastTime := map[string]int64{}
	ids := map[string]bool{}
	tagged := map[string]map[string]string{}
	for _, ev := range res.rec.all() {
		if !ev.HasSeq {
			t.Fatalf("event %s has no seq", ev.ID)
		}
		if got, want := ev.Seq, lastSeq[ev.Machine]+1; got != want {
			t.Fatalf("machine %s: seq %d, want %d", ev.Machine, got, want)
		}
		if ev.Time < lastTime[ev.Machine] {
			t.Fatalf("machine %s: time %d before %d", ev.Machine, ev.Time, lastTime[ev.Machine])
		}
		if got, want := ev.ID, fmt.Sprintf("%s-%d", ev.Machine, ev.Seq); got != want {
			t.Fatalf("id %q, want %q", got, want)
		}
		if ids[ev.ID] {
			t.Fatalf("id %s sent twice", ev.ID)
		}
		if ev.Tags != nil {
			tagged[ev.Machine] = ev.Tags
		}
		ids[ev.ID] = true
		lastSeq[ev.Machine] = ev.Seq
		lastTime[ev.Machine] = ev.Time
	}
	if got, want := int64(len(ids)), res.stats.Events; got != want {
		t.Errorf("%d distinct ids, want %d", got, want)
	}
	got := tagged["cnc-03"]
	want := map[string]string{"kind": "cnc", "site": "plant-1", "line": "line-1"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("tags of cnc-03 (-got +want):\n%s", diff)
	}
}

func TestOutOfOrderAndDuplicates(t *testing.T) {
	tests := []struct {
		name       string
		outOfOrder float64
		duplicates float64
	}{
		{"none", 0, 0},
		{"late only", 0.1, 0},
		{"duplicates only", 0, 0.05},
		{"both", 0.2, 0.1},
		{"all late", 1, 0},
		{"all twice", 0, 1},
	}
	const count = 20000
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Rate: 1000, Count: count, OutOfOrder: tt.outOfOrder, Duplicates: tt.duplicates, Seed: 11}
			res := runSim(t, cfg, nil)
			if res.err != nil {
				t.Fatalf("Run: %v", res.err)
			}
			st := res.stats
			if st.Events != count {
				t.Errorf("Stats().Events = %d, want %d", st.Events, count)
			}
			near := func(what string, n int64, want float64) {
				t.Helper()
				got := float64(n) / count
				if math.Abs(got-want) > 0.01 {
					t.Errorf("%s fraction %.4f, want %.2f ± 0.01", what, got, want)
				}
			}
			near("out-of-order", st.OutOfOrder, tt.outOfOrder)
			near("duplicate", st.Duplicates, tt.duplicates)

			// Every event arrives; a copy is exactly its original; late
			// events keep their event time.
			first := map[string]telemetry.Event{}
			maxSeq := map[string]uint64{}
			var copies, regressions int64
			for _, ev := range res.rec.all() {
				if orig, ok := first[ev.ID]; ok {
					copies++
					if diff := cmp.Diff(ev, orig); diff != "" {
						t.Fatalf("copy of %s differs (-copy +original):\n%s", ev.ID, diff)
					}
					continue
				}
				first[ev.ID] = ev
				if ev.Seq < maxSeq[ev.Machine] {
					regressions++
				}
				maxSeq[ev.Machine] = max(maxSeq[ev.Machine], ev.Seq)
			}
			if got, want := int64(len(first)), int64(count); got != want {
				t.Errorf("%d distinct events arrived, want %d", got, want)
			}
			if got, want := copies, st.Duplicates; got != want {
				t.Errorf("%d copies arrived, want Stats().Duplicates = %d", got, want)
			}
			if regressions > st.OutOfOrder {
				t.Errorf("%d events arrived after newer ones, more than Stats().OutOfOrder = %d", regressions, st.OutOfOrder)
			}
			if tt.outOfOrder > 0 && regressions < st.OutOfOrder/2 {
				t.Errorf("only %d of %d late events arrived after newer ones of their machine", regressions, st.OutOfOrder)
			}
			perMachine := map[string][]telemetry.Event{}
			for _, ev := range first {
				perMachine[ev.Machine] = append(perMachine[ev.Machine], ev)
			}
			for m, evs := range perMachine {
				times := map[uint64]int64{}
				for _, ev := range evs {
					times[ev.Seq] = ev.Time
				}
				for seq := uint64(2); seq <= uint64(len(evs)); seq++ {
					if times[seq] < times[seq-1] {
						t.Fatalf("machine %s: seq %d has time %d before seq %d's %d", m, seq, times[seq], seq-1, times[seq-1])
					}
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none: valid
	}{
		{"zero is all defaults", Config{}, nil},
		{"typical", Config{Machines: 50, Rate: 1000, OutOfOrder: 0.05, Duplicates: 0.01, Prefix: "plant-2.hall_3:", Interval: 250 * time.Millisecond, Duration: time.Hour, Count: 1e6}, nil},
		{"faults disabled", Config{FaultEvery: -1}, nil},
		{"negative machines", Config{Machines: -1}, []string{"machines:"}},
		{"too many machines", Config{Machines: MaxMachines + 1}, []string{"machines:"}},
		{"negative rate", Config{Rate: -5}, []string{"rate:"}},
		{"NaN rate", Config{Rate: math.NaN()}, []string{"rate:"}},
		{"infinite rate", Config{Rate: math.Inf(1)}, []string{"rate:"}},
		{"out-of-order above 1", Config{OutOfOrder: 1.5}, []string{"out-of-order:"}},
		{"negative duplicates", Config{Duplicates: -0.1}, []string{"duplicates:"}},
		{"prefix with a slash", Config{Prefix: "a/b"}, []string{`prefix: may hold only letters, digits and - _ . :, got '/' at byte 1`}},
		{"prefix with a non-ASCII letter", Config{Prefix: "hallé"}, []string{`prefix: may hold only letters, digits and - _ . :, got 'é' at byte 4`}},
		{"long prefix", Config{Prefix: strings.Repeat("x", MaxPrefixLen+1)}, []string{"prefix: must be at most 64 bytes"}},
		{"short interval", Config{Interval: time.Microsecond}, []string{"interval:"}},
		{"negative duration", Config{Duration: -time.Second}, []string{"duration:"}},
		{"negative count", Config{Count: -1}, []string{"count:"}},
		{"tiny fault-every", Config{FaultEvery: time.Millisecond}, []string{"fault-every:"}},
		{
			"every problem at once",
			Config{Machines: -1, Rate: -1, OutOfOrder: 2, Duplicates: 2, Prefix: "a b", Interval: -1, Duration: -1, Count: -1, FaultEvery: 1},
			[]string{"machines:", "rate:", "out-of-order:", "duplicates:", "prefix:", "interval:", "duration:", "count:", "fault-every:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tt.want)
			}
			if got, want := strings.Count(err.Error(), "\n")+1, len(tt.want); got != want {
				t.Errorf("Validate() reported %d problems, want %d:\n%v", got, want, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestRunRejectsInvalidConfig(t *testing.T) {
	err := New(Config{Rate: -1}, (&recorder{}).emit, nil).Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "rate:") {
		t.Errorf("Run = %v, want the validation error", err)
	}
}

func BenchmarkGenerate(b *testing.B) {
	const batch = 1000
	s := New(Config{Machines: 100, Rate: 10000, Seed: 1}, nil, nil)
	s.startNs = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	b.ReportAllocs()
	var events int
	for b.Loop() {
		evs := s.generate(make([]telemetry.Event, 0, batch), batch)
		events += len(evs)
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
}
