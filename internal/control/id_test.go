package control

import (
	"strings"
	"testing"
	"time"
)

// TestIDsSortInCreationOrder checks that the ids one process makes sort as
// they were made: within one millisecond (the random part counts up), across
// milliseconds, and with the clock a millisecond back — so the commands a
// test or a script creates back to back list in that order (a flaky
// TestCommandRoutes listed two commands of one millisecond at random).
func TestIDsSortInCreationOrder(t *testing.T) {
	var g idGen
	t0 := time.UnixMilli(1_765_000_000_000)
	times := []time.Time{t0, t0, t0, t0.Add(time.Millisecond), t0, t0.Add(time.Millisecond), t0.Add(5 * time.Millisecond)}
	for range 1000 {
		times = append(times, t0.Add(5*time.Millisecond))
	}
	prev := ""
	for i, at := range times {
		id := g.next(at)
		if len(id) != 28 || !strings.HasPrefix(id, "c-") {
			t.Fatalf("id %q: want c- and 26 characters", id)
		}
		if id <= prev {
			t.Fatalf("id %d %q (at %v) does not sort after %q", i, id, at, prev)
		}
		prev = id
	}
	// The id's first 10 characters are its milliseconds.
	var h idGen
	if a, b := h.next(t0), encodeID(uint64(t0.UnixMilli()), [10]byte{}); a[:12] != b[:12] {
		t.Errorf("id %s, want the time part of %s", a, b)
	}
}
