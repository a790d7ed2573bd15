package hub

import (
	"strings"
	"testing"
)

// TestSkip: Skip says a publish could reach nobody only with no client
// connected and none that left within the resume horizon; a skip takes a
// seq, so a cursor from before it is expired, never served as complete.
func TestSkip(t *testing.T) {
	h, _ := newTestHub(t, Options{})
	before := h.seq
	if !h.Skip() {
		t.Fatal("Skip with no client = false, want true")
	}
	if h.seq == before {
		t.Fatal("Skip took no seq")
	}
	c, _ := testClient(t, h, 16, "m-001")
	if h.Skip() {
		t.Fatal("Skip with a client connected = true, want false")
	}
	h.unregister(c)
	if h.Skip() {
		t.Fatal("Skip right after a client left = true, want false (it may resume)")
	}
	// A client resuming with a cursor from before a skip gets a reset.
	h2, _ := newTestHub(t, Options{})
	cursor := h2.seq
	h2.Skip()
	c2 := newClient(16, "m-001")
	reg, err := h2.register(c2, cursor, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(reg.first) != 2 || !strings.Contains(string(reg.first[1].frame), `"reason":"cursor_expired"`) {
		t.Errorf("resuming from before a skip: got %d messages, want hello and a cursor_expired reset", len(reg.first))
	}
}
