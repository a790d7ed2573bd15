package alerting

import (
	"fmt"
	"path/filepath"
	"testing"
)

// TestFileOutboxStatesBounded: the delivery states kept are bounded even
// while the oldest alarm's message stays pending (retried for a long
// time): it keeps its state, the settled ones after it are forgotten.
func TestFileOutboxStatesBounded(t *testing.T) {
	o, err := OpenFileOutbox(filepath.Join(t.TempDir(), "outbox.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.byID["stuck-delivery"] = &fileMsg{}
	o.setState("stuck", fileState{ID: "stuck-delivery"})
	for i := range maxOutboxStates + 100 {
		o.setState(fmt.Sprint("a", i), fileState{ID: fmt.Sprint("d", i)})
	}
	if n := len(o.states); n > maxOutboxStates {
		t.Errorf("%d states kept; want at most %d", n, maxOutboxStates)
	}
	if len(o.order) != len(o.states) {
		t.Errorf("order has %d alarms, states %d", len(o.order), len(o.states))
	}
	if _, ok := o.states["stuck"]; !ok {
		t.Error("the pending alarm's state was forgotten")
	}
	if _, ok := o.states["a0"]; ok {
		t.Error("the oldest settled state was kept")
	}
	if _, ok := o.states[fmt.Sprint("a", maxOutboxStates+99)]; !ok {
		t.Error("the newest state was forgotten")
	}
}
