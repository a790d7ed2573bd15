package ingest

import (
	"fmt"
	"hash/maphash"
	"maps"
	"sync"
	"sync/atomic"
)

// MissingMachine says what becomes of a line-protocol line that carries
// none of Options.MachineTags (--lp-missing-machine).
type MissingMachine uint8

const (
	// MissingReject rejects the line: the request is answered 400 naming
	// it, and the other lines are kept.
	MissingReject MissingMachine = iota
	// MissingDrop drops the line and counts it in Stats.DroppedLines: the
	// request succeeds when every other line does.
	MissingDrop
	// MissingMeasurement takes the line's measurement name as its machine
	// id.
	MissingMeasurement
)

// String returns the flag value of m.
func (m MissingMachine) String() string {
	switch m {
	case MissingDrop:
		return "drop"
	case MissingMeasurement:
		return "measurement"
	}
	return "reject"
}

// ParseMissingMachine parses a --lp-missing-machine value: reject, drop or
// measurement.
func ParseMissingMachine(s string) (MissingMachine, error) {
	switch s {
	case "reject", "":
		return MissingReject, nil
	case "drop":
		return MissingDrop, nil
	case "measurement":
		return MissingMeasurement, nil
	}
	return 0, fmt.Errorf("%q is not one of reject, drop, measurement", s)
}

// TagSet is the tags of one machine's line, other than the tag that
// carried its machine id, as the decoder found them on the machine's last
// accepted line of a body whose tags differ from what the TagCache
// remembers for it.
type TagSet struct {
	Machine string
	// Hash identifies the tags, for TagCache.Remember.
	Hash uint64
	// Tags are the tags by key; the values are those of the line.
	Tags map[string]string
}

// TagCache remembers, per machine, a hash of the tags its lines last
// carried once they were applied (to the registry), so the decoder reports
// a machine's tags only when they change: a fleet that sends the same tags
// on every line costs one hash and one lock-free map lookup per line.
// Remember and Forget copy the map (writes are rare: a machine's first
// line after a start, a tag that changes). It is safe for concurrent use.
type TagCache struct {
	seed maphash.Seed
	mu   sync.Mutex // orders writers
	m    atomic.Pointer[map[string]uint64]
}

// NewTagCache returns an empty TagCache.
func NewTagCache() *TagCache {
	c := &TagCache{seed: maphash.MakeSeed()}
	m := map[string]uint64{}
	c.m.Store(&m)
	return c
}

// known reports whether machine's tags were last applied with hash h.
func (c *TagCache) known(machine string, h uint64) bool {
	got, ok := (*c.m.Load())[machine]
	return ok && got == h
}

// Remember records that the tag sets were applied.
func (c *TagCache) Remember(sets []TagSet) {
	c.Apply(sets, func(TagSet) bool { return true })
}

// Apply calls apply for each set, then remembers those it applied (apply
// reports true). Concurrent Apply calls run one after the other, so what
// c remembers of a machine is what was applied last.
func (c *TagCache) Apply(sets []TagSet, apply func(TagSet) bool) {
	if len(sets) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var m map[string]uint64
	for _, s := range sets {
		if !apply(s) {
			continue
		}
		if m == nil {
			m = maps.Clone(*c.m.Load())
		}
		m[s.Machine] = s.Hash
	}
	if m != nil {
		c.m.Store(&m)
	}
}

// Forget drops what c remembers of a machine (deleted from the registry),
// so its next line's tags are applied again.
func (c *TagCache) Forget(machine string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := (*c.m.Load())[machine]; !ok {
		return
	}
	m := maps.Clone(*c.m.Load())
	delete(m, machine)
	c.m.Store(&m)
}

// Len returns the number of machines c remembers.
func (c *TagCache) Len() int { return len(*c.m.Load()) }
