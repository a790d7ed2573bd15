package offsettest

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/twinline/twinline/internal/store"
	"github.com/twinline/twinline/internal/telemetry"
)

// Memory is an in-memory offset-keeping store for tests and measurements.
// It keeps the first value of each (machine, metric, time), like the real
// stores, and counts the samples that arrived again in a committed write,
// so a test can tell "stored exactly once" from "stored, then repeated". It
// is safe for concurrent use.
type Memory struct {
	mu      sync.Mutex
	samples map[memKey]float64
	offsets map[memPart]int64
	repeats int
	commits int
	// fail, when set, is asked before each write and offsets read; a
	// non-nil answer fails it.
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

// NewMemory returns an empty Memory.
func NewMemory() *Memory {
	return &Memory{samples: map[memKey]float64{}, offsets: map[memPart]int64{}}
}

// FailWith makes every later write and offsets read ask fn first: a non-nil
// error fails it (and stores nothing). nil removes the hook.
func (m *Memory) FailWith(fn func() error) {
	m.mu.Lock()
	m.fail = fn
	m.mu.Unlock()
}

// AppendWithOffsets stores samples and moves the offset of c from
// c.Expected to c.Next, or stores nothing and returns an error wrapping
// store.ErrFenced. fresh (nil, or as long as samples) reports which samples
// it stored.
func (m *Memory) AppendWithOffsets(ctx context.Context, samples []telemetry.Sample, fresh []bool, c store.OffsetCommit) error {
	if err := m.check(ctx, samples, fresh); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		if err := m.fail(); err != nil {
			return err
		}
	}
	k := memPart{c.Group, c.Topic, c.Partition}
	cur, ok := m.offsets[k]
	if !ok {
		cur = -1
	}
	if cur != c.Expected {
		return fmt.Errorf("storing offset %d of partition %d: %w: stored %d, expected %d", c.Next, c.Partition, store.ErrFenced, cur, c.Expected)
	}
	m.store(samples, fresh)
	m.offsets[k] = c.Next
	return nil
}

// AppendFresh stores samples (see store.FreshAppender), moving no offset.
func (m *Memory) AppendFresh(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
	if err := m.check(ctx, samples, fresh); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		if err := m.fail(); err != nil {
			return err
		}
	}
	m.store(samples, fresh)
	return nil
}

// Force stores samples and sets the offset of (group, topic, partition) to
// next without a fence, as another consumer that owns the partition would.
func (m *Memory) Force(group, topic string, partition int32, next int64, samples []telemetry.Sample) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store(samples, nil)
	m.offsets[memPart{group, topic, partition}] = next
}

func (m *Memory) check(ctx context.Context, samples []telemetry.Sample, fresh []bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if fresh != nil && len(fresh) != len(samples) {
		return fmt.Errorf("appending samples: %d fresh flags for %d samples", len(fresh), len(samples))
	}
	return nil
}

// store adds samples; m.mu is held.
func (m *Memory) store(samples []telemetry.Sample, fresh []bool) {
	for i, s := range samples {
		sk := memKey{s.Machine, s.Metric, s.Time}
		_, dup := m.samples[sk]
		if fresh != nil {
			fresh[i] = !dup
		}
		if dup {
			m.repeats++
			continue
		}
		m.samples[sk] = s.Value
	}
	m.commits++
}

// Offsets returns the stored offsets of a group's partitions of topic.
func (m *Memory) Offsets(ctx context.Context, group, topic string) (map[int32]int64, error) {
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
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.samples)
}

// Repeats returns the number of samples that came again, in a committed
// write, after they were stored.
func (m *Memory) Repeats() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.repeats
}

// Commits returns the number of committed writes.
func (m *Memory) Commits() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.commits
}

// Samples returns the stored samples ordered by machine, metric and time.
func (m *Memory) Samples() []telemetry.Sample {
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
