package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"pgregory.net/rapid"

	"github.com/twinline/twinline/internal/eventlog"
	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

func event(machine string, t int64, metrics ...string) telemetry.Event {
	ev := telemetry.Event{Machine: machine, Time: t}
	for i, m := range metrics {
		ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: m, Value: float64(i + 1)})
	}
	return ev
}

// fakeStore records appends, first write wins on (machine, metric, time),
// and fails those of machine "bad"; samples of machine "old" are out of
// bounds (the others are stored).
type fakeStore struct {
	mu     sync.Mutex
	stored []telemetry.Sample
	keys   map[store.SeriesKey]map[int64]bool
}

func (f *fakeStore) append(_ context.Context, ss []telemetry.Sample, fresh []bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range ss {
		if s.Machine == "bad" {
			return errors.New("disk full")
		}
	}
	if f.keys == nil {
		f.keys = map[store.SeriesKey]map[int64]bool{}
	}
	old := 0
	for i, s := range ss {
		if s.Machine == "old" {
			old++
			continue
		}
		k := store.SeriesKey{Machine: s.Machine, Metric: s.Metric}
		if f.keys[k] == nil {
			f.keys[k] = map[int64]bool{}
		}
		if f.keys[k][s.Time] {
			continue
		}
		f.keys[k][s.Time] = true
		f.stored = append(f.stored, s)
		if fresh != nil {
			fresh[i] = true
		}
	}
	if old > 0 {
		return fmt.Errorf("%d samples: %w", old, store.ErrOutOfBounds)
	}
	return nil
}

func TestProcessorGroupOutcomes(t *testing.T) {
	tests := []struct {
		name     string
		machine  string
		wantErr  bool
		wantSunk bool
	}{
		{"stored", "a", false, true},
		{"out of bounds", "old", true, false},
		{"store error", "bad", true, false},
	}
	for _, tt := range tests {
		for _, storeDedups := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/store dedups %v", tt.name, storeDedups), func(t *testing.T) {
				cfg := DefaultEngineConfig()
				cfg.StoreDedups = storeDedups
				l := eventlog.New(100, nil)
				fs := &fakeStore{}
				var sunk []telemetry.Sample
				p := NewProcessor(l, fs.append, Sinks{Batch: func(_ *telemetry.Batch, ss []telemetry.Sample) {
					sunk = append(sunk, ss...)
				}}, cfg, slog.New(slog.DiscardHandler), nil)
				e, err := l.Append(&telemetry.Batch{Events: []telemetry.Event{event(tt.machine, 7, "x", "y")}})
				if err != nil {
					t.Fatal(err)
				}
				l.Close()
				if err := p.Run(context.Background()); err != nil {
					t.Fatal(err)
				}
				res, err := e.Wait(context.Background())
				if (err != nil) != tt.wantErr {
					t.Errorf("ack error = %v, want error %v", err, tt.wantErr)
				}
				if !tt.wantErr && res.Accepted != 1 {
					t.Errorf("Accepted = %d, want 1", res.Accepted)
				}
				if got := len(sunk) > 0; got != tt.wantSunk {
					t.Errorf("sink called = %v, want %v", got, tt.wantSunk)
				}
				if tt.wantSunk && len(sunk) != 2 {
					t.Errorf("sink got %d samples, want 2", len(sunk))
				}
			})
		}
	}
}

func TestProcessorStopsOnContext(t *testing.T) {
	l := eventlog.New(100, nil)
	p := NewProcessor(l, (&fakeStore{}).append, Sinks{}, DefaultEngineConfig(), slog.New(slog.DiscardHandler), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", err)
	}
}

// TestProcessorSinkSeesEachEntrysSamples checks that pipelined sinks get
// exactly their entry's samples across many groups (the buffers alternate).
func TestProcessorSinkSeesEachEntrysSamples(t *testing.T) {
	l := eventlog.New(1<<20, nil)
	var got []string
	p := NewProcessor(l, (&fakeStore{}).append, Sinks{Batch: func(b *telemetry.Batch, ss []telemetry.Sample) {
		for _, s := range ss {
			got = append(got, fmt.Sprintf("%s/%s@%d", b.Protocol, s.Machine, s.Time))
		}
	}}, DefaultEngineConfig(), slog.New(slog.DiscardHandler), nil)
	var want []string
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	for i := range 500 {
		name := fmt.Sprint(i)
		if _, err := l.Append(&telemetry.Batch{Protocol: name, Events: []telemetry.Event{event("m"+name, int64(i), "x")}}); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprintf("%s/m%s@%d", name, name, i))
	}
	l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("sink samples (-got +want):\n%s", diff)
	}
}

// TestProcessorAttributesOutOfBounds: in a group where the store rejected
// some samples, only the entry that carried them is acknowledged with the
// error; the others succeed.
func TestProcessorAttributesOutOfBounds(t *testing.T) {
	l := eventlog.New(100, nil)
	fs := &fakeStore{}
	sinkCalls := 0
	p := NewProcessor(l, fs.append, Sinks{Batch: func(*telemetry.Batch, []telemetry.Sample) { sinkCalls++ }}, DefaultEngineConfig(), slog.New(slog.DiscardHandler), nil)
	good, err := l.Append(&telemetry.Batch{Events: []telemetry.Event{event("a", 1, "x")}})
	if err != nil {
		t.Fatal(err)
	}
	old, err := l.Append(&telemetry.Batch{Events: []telemetry.Event{event("old", 1, "x")}})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if res, err := good.Wait(context.Background()); err != nil || res.Accepted != 1 {
		t.Errorf("good entry: %+v, %v; want accepted 1", res, err)
	}
	if _, err := old.Wait(context.Background()); !errors.Is(err, store.ErrOutOfBounds) {
		t.Errorf("old entry: %v; want ErrOutOfBounds", err)
	}
	if sinkCalls != 0 {
		t.Errorf("sinks called %d times for a group with rejected samples, want 0", sinkCalls)
	}
}

// TestProcessorStoreFailureKeepsEarlierGroups: a group the store refuses
// does not cost the event-time stages what earlier, durable groups brought,
// and its events are not duplicates when the client retries.
func TestProcessorStoreFailureKeepsEarlierGroups(t *testing.T) {
	l := eventlog.New(100, nil)
	fs := &fakeStore{}
	var released []telemetry.Sample
	p := NewProcessor(l, fs.append, Sinks{Group: func(rel []telemetry.Sample, _ []Window) {
		released = append(released, rel...)
	}}, DefaultEngineConfig(), slog.New(slog.DiscardHandler), nil)
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	wait := func(b *telemetry.Batch) (eventlog.Result, error) {
		t.Helper()
		e, err := l.Append(b)
		if err != nil {
			t.Fatal(err)
		}
		return e.Wait(context.Background())
	}
	if _, err := wait(&telemetry.Batch{Events: []telemetry.Event{event("a", 1000, "x")}}); err != nil {
		t.Fatal(err)
	}
	bad := &telemetry.Batch{Events: []telemetry.Event{{Machine: "bad", ID: "retry-me", Time: 2000, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}}
	if _, err := wait(bad); err == nil {
		t.Fatal("the store failed, yet the batch was acknowledged")
	}
	// The retry is not a duplicate (it would be stored under another name
	// here; the fake store fails "bad" again, so only the count matters).
	good := &telemetry.Batch{Events: []telemetry.Event{{Machine: "b", ID: "retry-me", Time: 2000, Metrics: []telemetry.Metric{{Name: "x", Value: 1}}}}}
	if res, err := wait(good); err != nil || res.Duplicates != 0 || res.Accepted != 1 {
		t.Errorf("retry after a failure: %+v, %v; want accepted 1, no duplicate", res, err)
	}
	l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range released {
		got = append(got, s.Machine)
	}
	if diff := cmp.Diff(got, []string{"a", "b"}); diff != "" {
		t.Errorf("released machines (-got +want):\n%s", diff)
	}
}

// TestProcessorJournalsKeysBeforeAck: a group's keyed events' keys are
// journaled after the store committed it and before the ack; a group the
// store refuses journals nothing; remembered keys make retries duplicates.
func TestProcessorJournalsKeysBeforeAck(t *testing.T) {
	l := eventlog.New(100, nil)
	fs := &fakeStore{}
	var (
		mu       sync.Mutex
		journal  []Key
		failNext bool
	)
	p := NewProcessor(l, fs.append, Sinks{}, DefaultEngineConfig(), slog.New(slog.DiscardHandler), nil)
	p.Remember([]Key{{Machine: "m", ID: "from-last-run", Time: 500}})
	p.JournalKeys(func(ks []Key) error {
		mu.Lock()
		defer mu.Unlock()
		if failNext {
			failNext = false
			return errors.New("disk full")
		}
		journal = append(journal, ks...)
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	send := func(evs ...telemetry.Event) (eventlog.Result, error) {
		t.Helper()
		e, err := l.Append(&telemetry.Batch{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		return e.Wait(context.Background())
	}
	x := []telemetry.Metric{{Name: "x", Value: 1}}
	res, err := send(
		telemetry.Event{Machine: "m", ID: "from-last-run", Time: 9000, Metrics: x},
		telemetry.Event{Machine: "m", ID: "new", Time: 1000, Metrics: x},
		telemetry.Event{Machine: "m", Seq: 3, HasSeq: true, Time: 1001, Metrics: x},
		telemetry.Event{Machine: "m", Time: 1002, Metrics: x},
	)
	if err != nil || res.Accepted != 3 || res.Duplicates != 1 {
		t.Errorf("first batch: %+v, %v; want 3 accepted, 1 duplicate (remembered from the last run)", res, err)
	}
	mu.Lock()
	got := append([]Key(nil), journal...)
	failNext = true
	mu.Unlock()
	want := []Key{{Machine: "m", ID: "new", Time: 1000}, {Machine: "m", Seq: 3, HasSeq: true, Time: 1001}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("journaled keys at the ack (-got +want):\n%s", diff)
	}
	// A journal failure after the commit loses nothing: the batch is
	// stored and acknowledged.
	if res, err := send(telemetry.Event{Machine: "m", ID: "unlucky", Time: 2000, Metrics: x}); err != nil || res.Accepted != 1 {
		t.Errorf("the journal failed after the commit: %+v, %v; want acknowledged", res, err)
	}
	// A group the store refuses journals nothing: the client's retry must
	// not be taken for a duplicate, after a restart either.
	if _, err := send(telemetry.Event{Machine: "bad", ID: "refused", Time: 3000, Metrics: x}); err == nil {
		t.Error("the store failed, yet the batch was acknowledged")
	}
	mu.Lock()
	for _, k := range journal {
		if k.ID == "refused" {
			t.Errorf("the key of a group the store refused was journaled: %+v", k)
		}
	}
	mu.Unlock()
	l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestProcessorStoreDedups: with a store that reports what it held, the
// engine keeps no sample keys: the store's answer decides, also across a
// restart (a new processor), and the responses count the duplicates.
func TestProcessorStoreDedups(t *testing.T) {
	fs := &fakeStore{}
	cfg := DefaultEngineConfig()
	cfg.StoreDedups = true
	run := func(batches ...[]telemetry.Event) (results []eventlog.Result, sunk []telemetry.Sample, released []telemetry.Sample) {
		t.Helper()
		l := eventlog.New(1000, nil)
		p := NewProcessor(l, fs.append, Sinks{
			Batch: func(_ *telemetry.Batch, ss []telemetry.Sample) { sunk = append(sunk, ss...) },
			Group: func(rel []telemetry.Sample, _ []Window) { released = append(released, rel...) },
		}, cfg, slog.New(slog.DiscardHandler), nil)
		var entries []*eventlog.Entry
		for _, evs := range batches {
			e, err := l.Append(&telemetry.Batch{Events: evs})
			if err != nil {
				t.Fatal(err)
			}
			entries = append(entries, e)
		}
		l.Close()
		if err := p.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			res, err := e.Wait(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
		}
		return results, sunk, released
	}
	a1 := event("a", 1000, "x", "y")
	a2 := event("a", 2000, "x")
	results, sunk, released := run(
		[]telemetry.Event{a1, a2, a1}, // a1 twice in one batch
		[]telemetry.Event{a2, event("a", 3000, "x")},
	)
	if diff := cmp.Diff(results, []eventlog.Result{{Accepted: 2, Duplicates: 1}, {Accepted: 1, Duplicates: 1}}); diff != "" {
		t.Errorf("results (-got +want):\n%s", diff)
	}
	if len(sunk) != 4 || len(released) != 4 {
		t.Errorf("sinks got %d samples, released %d; want the 4 distinct ones each", len(sunk), len(released))
	}
	// After a restart the engine remembers nothing; the store still does.
	// An event with one old and one new sample is not a duplicate.
	results, sunk, _ = run([]telemetry.Event{a1, {Machine: "a", Time: 2000, Metrics: []telemetry.Metric{{Name: "x", Value: 9}, {Name: "z", Value: 1}}}})
	if diff := cmp.Diff(results, []eventlog.Result{{Accepted: 1, Duplicates: 1}}); diff != "" {
		t.Errorf("after restart (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(sunk, []telemetry.Sample{{Machine: "a", Metric: "z", Time: 2000, Value: 1}}); diff != "" {
		t.Errorf("after restart, sunk (-got +want):\n%s", diff)
	}
}

// TestProcessorRestartsMatchOracle: a shuffled stream with duplicates —
// keyed retries carrying another event time among them — goes through
// processors restarted at random points (a new engine that remembers only
// the journaled keys; the store keeps what it stored). Whatever the order
// and the restarts, the store holds exactly the first copies' samples
// (so every aggregate computed from it equals the oracle's), and, with a
// store that reports what it held, the responses count each distinct
// event once.
func TestProcessorRestartsMatchOracle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		storeDedups := rapid.Bool().Draw(t, "store_dedups")
		n := rapid.IntRange(1, 60).Draw(t, "events")
		var events []telemetry.Event
		for i := range n {
			ev := telemetry.Event{Machine: fmt.Sprintf("m%d", rapid.IntRange(0, 2).Draw(t, "machine")),
				Time: int64(rapid.IntRange(0, 40).Draw(t, "t")) * 1000}
			switch rapid.IntRange(0, 2).Draw(t, "key") {
			case 1:
				ev.ID = fmt.Sprintf("e%d", i)
			case 2:
				ev.Seq, ev.HasSeq = uint64(i), true
			}
			for k := range rapid.IntRange(1, 2).Draw(t, "metrics") {
				ev.Metrics = append(ev.Metrics, telemetry.Metric{Name: fmt.Sprintf("k%d", k), Value: float64(rapid.IntRange(-9, 9).Draw(t, "v"))})
			}
			events = append(events, ev)
		}
		arrival := slices.Clone(events)
		for range rapid.IntRange(0, n).Draw(t, "dups") {
			dup := events[rapid.IntRange(0, n-1).Draw(t, "dup")]
			if (dup.ID != "" || dup.HasSeq) && rapid.Bool().Draw(t, "restamped") {
				dup.Time += 500 // a retry stamped with another server time
			}
			arrival = append(arrival, dup)
		}
		arrival = rapid.Permutation(arrival).Draw(t, "order")

		// The oracle: an event whose id or seq was seen is dropped whole;
		// otherwise each sample whose (machine, metric, time) was seen is.
		type skey struct {
			machine, metric string
			t               int64
		}
		seenKey, seenSample := map[string]bool{}, map[skey]bool{}
		want, distinct := map[skey]float64{}, 0
		for _, ev := range arrival {
			key := ""
			if ev.ID != "" {
				key = ev.Machine + "/id/" + ev.ID
			} else if ev.HasSeq {
				key = fmt.Sprintf("%s/seq/%d", ev.Machine, ev.Seq)
			}
			if key != "" && seenKey[key] {
				continue
			}
			if key != "" {
				seenKey[key] = true
			}
			added := false
			for _, m := range ev.Metrics {
				k := skey{ev.Machine, m.Name, ev.Time}
				if !seenSample[k] {
					seenSample[k], want[k], added = true, m.Value, true
				}
			}
			if added {
				distinct++
			}
		}

		fs := &fakeStore{}
		var journal []Key
		cfg := DefaultEngineConfig()
		cfg.StoreDedups = storeDedups
		accepted := 0
		for len(arrival) > 0 {
			// One processor's life: a few batches, then a restart.
			l := eventlog.New(1<<20, nil)
			p := NewProcessor(l, fs.append, Sinks{}, cfg, slog.New(slog.DiscardHandler), nil)
			p.Remember(journal)
			p.JournalKeys(func(ks []Key) error { journal = append(journal, ks...); return nil })
			var entries []*eventlog.Entry
			for range rapid.IntRange(1, 4).Draw(t, "batches") {
				if len(arrival) == 0 {
					break
				}
				k := min(len(arrival), rapid.IntRange(1, 8).Draw(t, "batch"))
				e, err := l.Append(&telemetry.Batch{Events: slices.Clone(arrival[:k])})
				if err != nil {
					t.Fatal(err)
				}
				entries = append(entries, e)
				arrival = arrival[k:]
			}
			l.Close()
			if err := p.Run(context.Background()); err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				res, err := e.Wait(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				accepted += res.Accepted
			}
		}
		got := map[skey]float64{}
		for _, s := range fs.stored {
			k := skey{s.Machine, s.Metric, s.Time}
			if _, dup := got[k]; dup {
				t.Fatalf("sample %+v stored twice", k)
			}
			got[k] = s.Value
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Fatalf("stored samples (-got +want):\n%s", diff)
		}
		// A store that reports what it held lets the responses count each
		// distinct event once across restarts; without it, a restarted
		// engine takes a re-sent unkeyed sample for new (the store still
		// keeps it once, checked above).
		if storeDedups && accepted != distinct || accepted < distinct {
			t.Fatalf("responses accepted %d events, want the %d distinct ones", accepted, distinct)
		}
	})
}

// TestProcessorAcksAfterBatchSink: an entry is acknowledged only once the
// Batch sink took it, so a client reading right after its 2xx (the twin's
// latest values) sees its events.
func TestProcessorAcksAfterBatchSink(t *testing.T) {
	l := eventlog.New(100, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	p := NewProcessor(l, (&fakeStore{}).append, Sinks{Batch: func(*telemetry.Batch, []telemetry.Sample) {
		close(entered)
		<-release
	}}, DefaultEngineConfig(), slog.New(slog.DiscardHandler), nil)
	done := make(chan error, 1)
	go func() { done <- p.Run(context.Background()) }()
	e, err := l.Append(&telemetry.Batch{Events: []telemetry.Event{event("a", 1, "x")}})
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	select {
	case <-e.Done():
		t.Fatal("acknowledged while the Batch sink still holds the entry")
	default:
	}
	close(release)
	if res, err := e.Wait(context.Background()); err != nil || res.Accepted != 1 {
		t.Errorf("after the sink: %+v, %v", res, err)
	}
	l.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
