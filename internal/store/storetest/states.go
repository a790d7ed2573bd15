package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/store"
)

// RunStateStore runs the conformance suite of store.StateStore. newStore
// must return a new, empty store; the caller closes it.
func RunStateStore(t *testing.T, newStore func(t *testing.T) store.StateStore) {
	t.Run("AppendQuery", func(t *testing.T) { testStatesAppendQuery(t, newStore(t)) })
	t.Run("InForceAtFrom", func(t *testing.T) { testStatesInForce(t, newStore(t)) })
	t.Run("Duplicates", func(t *testing.T) { testStatesDuplicates(t, newStore(t)) })
	t.Run("OutOfOrder", func(t *testing.T) { testStatesOutOfOrder(t, newStore(t)) })
	t.Run("Isolation", func(t *testing.T) { testStatesIsolation(t, newStore(t)) })
	t.Run("Text", func(t *testing.T) { testStatesText(t, newStore(t)) })
	t.Run("ConcurrentAppend", func(t *testing.T) { testStatesConcurrent(t, newStore(t)) })
	t.Run("CanceledContext", func(t *testing.T) { testStatesCanceled(t, newStore(t)) })
}

func change(machine, name string, t int64, value string) store.StateChange {
	return store.StateChange{Machine: machine, Name: name, Time: t, Value: value}
}

func mustAppendStates(t *testing.T, s store.StateStore, changes ...store.StateChange) {
	t.Helper()
	if err := s.AppendStates(context.Background(), changes); err != nil {
		t.Fatalf("AppendStates: %v", err)
	}
}

func checkStates(t *testing.T, s store.StateStore, machine, name string, from, to int64, want []store.StateChange) {
	t.Helper()
	got, err := s.States(context.Background(), machine, name, from, to)
	if err != nil {
		t.Fatalf("States(%s, %s, %d, %d): %v", machine, name, from, to, err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("States(%s, %s, %d, %d) (-got +want):\n%s", machine, name, from, to, diff)
	}
}

func testStatesAppendQuery(t *testing.T, s store.StateStore) {
	a := change("m1", "state", Base, "RUNNING")
	b := change("m1", "state", Base+10*sec, "DOWN")
	c := change("m1", "state", Base+20*sec, "RUNNING")
	mustAppendStates(t, s, a, b, c)
	checkStates(t, s, "m1", "state", Base-sec, Base+30*sec, []store.StateChange{a, b, c})
	checkStates(t, s, "m1", "state", Base+10*sec, Base+20*sec, []store.StateChange{b, c})
	checkStates(t, s, "m1", "state", Base-2*sec, Base-sec, nil)
	checkStates(t, s, "m1", "other", Base-sec, Base+30*sec, nil)
}

// testStatesInForce: the change in force at from comes first, however old.
func testStatesInForce(t *testing.T, s store.StateStore) {
	a := change("m1", "state", Base-30*24*3600*sec, "IDLE")
	b := change("m1", "state", Base+5*sec, "RUNNING")
	mustAppendStates(t, s, a, b)
	checkStates(t, s, "m1", "state", Base, Base+sec, []store.StateChange{a})
	checkStates(t, s, "m1", "state", Base, Base+5*sec, []store.StateChange{a, b})
	checkStates(t, s, "m1", "state", Base+5*sec, Base+9*sec, []store.StateChange{b})
}

// testStatesDuplicates: a change at the time of a stored one is dropped,
// first write wins.
func testStatesDuplicates(t *testing.T, s store.StateStore) {
	a := change("m1", "state", Base, "RUNNING")
	mustAppendStates(t, s, a)
	mustAppendStates(t, s, a, change("m1", "state", Base, "DOWN"))
	checkStates(t, s, "m1", "state", Base-sec, Base+sec, []store.StateChange{a})
}

func testStatesOutOfOrder(t *testing.T, s store.StateStore) {
	a := change("m1", "state", Base+20*sec, "RUNNING")
	b := change("m1", "state", Base, "IDLE")
	c := change("m1", "state", Base+10*sec, "DOWN")
	mustAppendStates(t, s, a)
	mustAppendStates(t, s, b, c)
	checkStates(t, s, "m1", "state", Base-sec, Base+30*sec, []store.StateChange{b, c, a})
}

func testStatesIsolation(t *testing.T, s store.StateStore) {
	a := change("m1", "state", Base, "A")
	b := change("m2", "state", Base, "B")
	c := change("m1", "mode", Base, "C")
	mustAppendStates(t, s, a, b, c)
	checkStates(t, s, "m1", "state", Base-sec, Base+sec, []store.StateChange{a})
	checkStates(t, s, "m2", "state", Base-sec, Base+sec, []store.StateChange{b})
	checkStates(t, s, "m1", "mode", Base-sec, Base+sec, []store.StateChange{c})
}

// testStatesText: values are kept byte for byte: quotes, backslashes,
// non-ASCII, 256 bytes.
func testStatesText(t *testing.T, s store.StateStore) {
	long := string(slices.Repeat([]byte("é"), 128))
	cs := []store.StateChange{
		change("m-ü", "a.b:c-d_e", Base, `say "hi" \ 'x' %_`),
		change("m-ü", "a.b:c-d_e", Base+sec, "東京 ✓"),
		change("m-ü", "a.b:c-d_e", Base+2*sec, long),
	}
	mustAppendStates(t, s, cs...)
	checkStates(t, s, "m-ü", "a.b:c-d_e", Base-sec, Base+3*sec, cs)
}

func testStatesConcurrent(t *testing.T, s store.StateStore) {
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			for i := range 25 {
				c := change(fmt.Sprintf("m%d", g), "state", Base+int64(i)*sec, fmt.Sprintf("v%d", i%3))
				if err := s.AppendStates(context.Background(), []store.StateChange{c}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for g := range 4 {
		got, err := s.States(context.Background(), fmt.Sprintf("m%d", g), "state", Base-sec, Base+100*sec)
		if err != nil || len(got) != 25 {
			t.Errorf("machine m%d: %d changes, err %v; want 25", g, len(got), err)
		}
	}
}

func testStatesCanceled(t *testing.T, s store.StateStore) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.AppendStates(ctx, []store.StateChange{change("m", "s", Base, "x")}); !errors.Is(err, context.Canceled) {
		t.Errorf("AppendStates with a canceled context: %v, want context.Canceled", err)
	}
	if _, err := s.States(ctx, "m", "s", Base-sec, Base); !errors.Is(err, context.Canceled) {
		t.Errorf("States with a canceled context: %v, want context.Canceled", err)
	}
}

// MemoryStates is an in-memory store.StateStore for tests of its
// consumers (and the reference of the suite).
type MemoryStates struct {
	mu      sync.Mutex
	changes []store.StateChange
	err     error // fails every AppendStates
}

// Fail makes every later AppendStates fail with err (nil: succeed again).
func (m *MemoryStates) Fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.err = err
}

// AppendStates implements store.StateStore.
func (m *MemoryStates) AppendStates(ctx context.Context, changes []store.StateChange) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	for _, c := range changes {
		if !slices.ContainsFunc(m.changes, func(x store.StateChange) bool {
			return x.Machine == c.Machine && x.Name == c.Name && x.Time == c.Time
		}) {
			m.changes = append(m.changes, c)
		}
	}
	return nil
}

// States implements store.StateStore.
func (m *MemoryStates) States(ctx context.Context, machine, name string, from, to int64) ([]store.StateChange, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var series []store.StateChange
	for _, c := range m.changes {
		if c.Machine == machine && c.Name == name && c.Time <= to {
			series = append(series, c)
		}
	}
	slices.SortFunc(series, func(a, b store.StateChange) int { return int(a.Time - b.Time) })
	i := slices.IndexFunc(series, func(c store.StateChange) bool { return c.Time > from })
	if i < 0 {
		i = len(series)
	}
	return series[max(i-1, 0):], nil
}

// All returns every change stored, in append order.
func (m *MemoryStates) All() []store.StateChange {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.changes)
}
