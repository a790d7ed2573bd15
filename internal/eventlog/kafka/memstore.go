package kafka

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/twinline/twinline/internal/telemetry"
)

// MemStore is an in-memory TxStore for tests and benchmarks. It keeps the
// first value of each (machine, metric, time), like the real stores, and
// counts the samples that arrived again in a committed transaction, so a
// test can tell "stored exactly once" from "stored, then repeated". It is
// safe for concurrent use.
type MemStore struct {
	mu      sync.Mutex
	samples map[memKey]float64
	offsets map[memPart]int64
	repeats int
	commits int
	// fail, when set, is asked before each transaction and offsets read;
	// a non-nil answer fails it.
	fail func() error
}

type memKey struct {
	machine, metric string
	time            int64
}

type memPart struct {
	group, topic string
	partition    int32
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{samples: map[memKey]float64{}, offsets: map[memPart]int64{}}
}

// FailWith makes every later transaction and offsets read ask fn first: a
// non-nil error fails it (and stores nothing). nil removes the hook.
func (m *MemStore) FailWith(fn func() error) {
	m.mu.Lock()
	m.fail = fn
	m.mu.Unlock()
}

// AppendWithOffsets implements TxStore.
func (m *MemStore) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, group, topic string, partition int32, next, expected int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		if err := m.fail(); err != nil {
			return err
		}
	}
	k := memPart{group, topic, partition}
	cur, ok := m.offsets[k]
	if !ok {
		cur = -1
	}
	if cur != expected {
		return fmt.Errorf("storing offset %d of partition %d: %w: stored %d, expected %d", next, partition, ErrFenced, cur, expected)
	}
	for _, s := range samples {
		sk := memKey{s.Machine, s.Metric, s.Time}
		if _, dup := m.samples[sk]; dup {
			m.repeats++
			continue
		}
		m.samples[sk] = s.Value
	}
	m.offsets[k] = next
	m.commits++
	return nil
}

// Offsets implements TxStore.
func (m *MemStore) Offsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		if err := m.fail(); err != nil {
			return nil, err
		}
	}
	out := map[int32]int64{}
	for k, off := range m.offsets {
		if k.group == group && k.topic == topic {
			out[k.partition] = off
		}
	}
	return out, nil
}

// Len returns the number of stored samples.
func (m *MemStore) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.samples)
}

// Repeats returns the number of samples that came again, in a committed
// transaction, after they were stored.
func (m *MemStore) Repeats() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.repeats
}

// Commits returns the number of committed transactions.
func (m *MemStore) Commits() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.commits
}

// Samples returns the stored samples ordered by machine, metric and time.
func (m *MemStore) Samples() []telemetry.Sample {
	m.mu.Lock()
	out := make([]telemetry.Sample, 0, len(m.samples))
	for k, v := range m.samples {
		out = append(out, telemetry.Sample{Machine: k.machine, Metric: k.metric, Time: k.time, Value: v})
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b telemetry.Sample) int {
		return cmp.Or(cmp.Compare(a.Machine, b.Machine), cmp.Compare(a.Metric, b.Metric), cmp.Compare(a.Time, b.Time))
	})
	return out
}
