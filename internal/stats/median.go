package stats

import "math"

// Median is the median of a sliding window over the last n samples added,
// which the engine feeds in event-time order, so the window is the n samples
// with the latest event times.
//
// It keeps the window in a ring buffer and splits it between two indexed
// binary heaps: a max-heap holding the lower half and a min-heap holding the
// upper half. Each ring slot records its position in its heap, so once the
// window is full the new sample takes over the heap entry of the one leaving
// in place — swapped with the other half's top if it belongs there — in at
// most two O(log n) sifts. Unlike lazy deletion, no stale entries linger, so
// memory is exactly bounded and nothing needs purging. All storage is
// allocated by NewMedian; Add does not allocate.
//
// Values must not be NaN: NaN is unordered, so it would break the heap order
// and every later result. The ingest rejects non-finite values before they
// reach the engine. ±Inf are ordered and tolerated, but the mean of the two
// middle values can then be ±Inf or NaN.
//
// The zero Median has a window of zero samples: Add discards and Median
// reports false. Use NewMedian. A Median is not safe for concurrent use.
type Median struct {
	slots []medianSlot // ring buffer of the window, len n
	next  int          // ring index of the next sample to write (the oldest once full)
	count int          // samples in the window, ≤ len(slots)
	lo    []int32      // max-heap of slot indices: the lower half, len(lo) ∈ {len(hi), len(hi)+1}
	hi    []int32      // min-heap of slot indices: the upper half
}

// medianSlot is one sample of the window and where it sits in the heaps.
type medianSlot struct {
	v     float64
	pos   int32 // index in lo or hi
	inHi  bool  // whether the slot is in hi (else lo)
	inUse bool  // whether the slot holds a sample
}

// NewMedian returns a Median over a window of the last n samples. It panics
// if n < 1 or if n does not fit in an int32: the window size is configuration
// that the caller validates.
func NewMedian(n int) *Median {
	if n < 1 || n > math.MaxInt32 {
		panic("stream: NewMedian: window size out of range")
	}
	// During Add, one heap may hold one more than its share before the
	// rebalance moves it across: ceil(n/2)+1 covers that.
	c := n/2 + 2
	return &Median{
		slots: make([]medianSlot, n),
		lo:    make([]int32, 0, c),
		hi:    make([]int32, 0, c),
	}
}

// Len reports the number of samples in the window: the number added, up to
// the window size.
func (m *Median) Len() int { return m.count }

// Add adds v to the window as its newest sample; when the window is full, the
// oldest sample leaves it. It runs in O(log n) and does not allocate.
// v must not be NaN (see Median).
func (m *Median) Add(v float64) {
	if len(m.slots) == 0 {
		return
	}
	s := int32(m.next)
	if m.next++; m.next == len(m.slots) {
		m.next = 0
	}
	if m.slots[s].inUse {
		m.replace(s, v)
		return
	}
	m.count++
	m.slots[s] = medianSlot{v: v, inUse: true}
	m.insert(s)
}

// replace gives slot s, the oldest sample, the new value v, keeping both
// halves their sizes: v takes the place of the old value in its half if it
// belongs there; otherwise the nearest value of the other half crosses over
// into that place and v takes the crosser's place. At most two sifts.
func (m *Median) replace(s int32, v float64) {
	hi, p := m.slots[s].inHi, int(m.slots[s].pos)
	other := *m.heap(!hi)
	// v belongs to the half of s unless it lies beyond the other half's top.
	if len(other) == 0 || (!hi && v <= m.slots[other[0]].v) || (hi && v >= m.slots[other[0]].v) {
		m.slots[s].v = v
		m.fix(*m.heap(hi), hi, p)
		return
	}
	// Swap the heap entries of s and the other half's top t, then sift each.
	h := *m.heap(hi)
	t := other[0]
	h[p], other[0] = t, s
	m.slots[t].inHi, m.slots[t].pos = hi, int32(p)
	m.slots[s].inHi, m.slots[s].pos = !hi, 0
	m.slots[s].v = v
	m.fix(h, hi, p)
	m.down(other, !hi, 0)
}

// Median returns the median of the window and true, or 0 and false when the
// window is empty. For an even number of samples it is the mean of the two
// middle values, computed as (a+b)/2, or as a/2+b/2 when a+b overflows.
func (m *Median) Median() (float64, bool) {
	a, b, ok := m.middle()
	if !ok {
		return 0, false
	}
	return medianMidpoint(a, b), true
}

// AppendWindow appends the samples of the window to dst, oldest first, and
// returns the extended slice. Adding them in that order to an empty Median of
// the same size rebuilds this one, which is how a snapshot restores it.
func (m *Median) AppendWindow(dst []float64) []float64 {
	n := len(m.slots)
	for i := range m.count {
		dst = append(dst, m.slots[(m.next-m.count+i+n)%n].v)
	}
	return dst
}

// middle returns the two middle values of the window in order; they are the
// same value when the count is odd.
func (m *Median) middle() (a, b float64, ok bool) {
	switch {
	case m.count == 0:
		return 0, 0, false
	case len(m.lo) > len(m.hi):
		v := m.slots[m.lo[0]].v
		return v, v, true
	default:
		return m.slots[m.lo[0]].v, m.slots[m.hi[0]].v, true
	}
}

// medianMidpoint returns the mean of a and b without overflowing to ±Inf
// when both are finite.
func medianMidpoint(a, b float64) float64 {
	if m := (a + b) / 2; !math.IsInf(m, 0) {
		return m
	}
	return a/2 + b/2
}

// insert puts slot s, whose value is set and which is in no heap, into the
// half it belongs to and restores the size balance. Every value in lo stays
// ≤ every value in hi.
func (m *Median) insert(s int32) {
	v := m.slots[s].v
	switch {
	case len(m.lo) > 0 && v <= m.slots[m.lo[0]].v:
		m.push(s, false)
	case len(m.lo) > 0 || len(m.hi) > 0 && v > m.slots[m.hi[0]].v:
		m.push(s, true)
	default:
		m.push(s, false)
	}
	// One move suffices: the sizes were balanced before the push.
	switch {
	case len(m.lo) > len(m.hi)+1:
		t := m.lo[0]
		m.removeAt(false, 0)
		m.push(t, true)
	case len(m.hi) > len(m.lo):
		t := m.hi[0]
		m.removeAt(true, 0)
		m.push(t, false)
	}
}

// heap returns the heap of the given half.
func (m *Median) heap(hi bool) *[]int32 {
	if hi {
		return &m.hi
	}
	return &m.lo
}

// above reports whether heap position i must sit above position j: in lo
// (a max-heap) the greater value, in hi (a min-heap) the smaller.
func (m *Median) above(h []int32, hi bool, i, j int) bool {
	a, b := m.slots[h[i]].v, m.slots[h[j]].v
	if hi {
		return a < b
	}
	return a > b
}

func (m *Median) swap(h []int32, i, j int) {
	h[i], h[j] = h[j], h[i]
	m.slots[h[i]].pos = int32(i)
	m.slots[h[j]].pos = int32(j)
}

// push adds slot s to the given heap.
func (m *Median) push(s int32, hi bool) {
	hp := m.heap(hi)
	*hp = append(*hp, s)
	h := *hp
	m.slots[s].inHi = hi
	m.slots[s].pos = int32(len(h) - 1)
	m.up(h, hi, len(h)-1)
}

// removeAt deletes position i from the given heap.
func (m *Median) removeAt(hi bool, i int) {
	hp := m.heap(hi)
	h := *hp
	last := len(h) - 1
	if i != last {
		m.swap(h, i, last)
	}
	h = h[:last]
	*hp = h
	if i < last {
		m.fix(h, hi, i)
	}
}

// fix restores the heap order around position i after its value changed.
func (m *Median) fix(h []int32, hi bool, i int) {
	if !m.up(h, hi, i) {
		m.down(h, hi, i)
	}
}

// up sifts position i towards the root and reports whether it moved.
func (m *Median) up(h []int32, hi bool, i int) bool {
	start := i
	for i > 0 {
		p := (i - 1) / 2
		if !m.above(h, hi, i, p) {
			break
		}
		m.swap(h, i, p)
		i = p
	}
	return i != start
}

// down sifts position i towards the leaves.
func (m *Median) down(h []int32, hi bool, i int) {
	for {
		c := 2*i + 1
		if c >= len(h) {
			return
		}
		if r := c + 1; r < len(h) && m.above(h, hi, r, c) {
			c = r
		}
		if !m.above(h, hi, c, i) {
			return
		}
		m.swap(h, i, c)
		i = c
	}
}
