package postgres

import (
	"context"
	"testing"
	"time"

	ctl "github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/control/controltest"
	"github.com/twinline/twinline/internal/twin"
)

func TestCommandStoreConformance(t *testing.T) {
	t.Parallel()
	controltest.RunCommandStore(t, func(t *testing.T) func() ctl.CommandStore {
		s := openTest(t, "", Options{})
		return func() ctl.CommandStore { return NewCommandStore(s) }
	})
}

func stopSpecs(string) map[string]twin.CommandSpec {
	return map[string]twin.CommandSpec{"stop": {}}
}

// Two replicas on one schema: what one creates or answers, the other's
// subscribers hear (through NOTIFY), and a device's fetch waiting on the
// other gets it at once.
func TestCommandsAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openTest(t, "", Options{})
	b := openTest(t, "", Options{Schema: a.Schema()})
	ca := ctl.NewCommands(NewCommandStore(a), stopSpecs, time.Now, testLogger(t))
	storeB := NewCommandStore(b)
	cb := ctl.NewCommands(storeB, stopSpecs, time.Now, testLogger(t))
	heard := make(chan ctl.Command, 16)
	cb.Subscribe(func(c ctl.Command) { heard <- c })
	listening := make(chan struct{}, 1)
	// Run B's follower, knowing when it listens.
	go func() {
		_ = storeB.Follow(ctx, func(m, id string) {
			c, err := storeB.Get(ctx, m, id)
			if err == nil {
				heard <- c
			}
		}, func() { listening <- struct{}{} })
	}()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		t.Fatal("B never listened")
	}
	cmd, _, err := ca.Create(ctx, "press-07", ctl.CreateRequest{Name: "stop", By: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	wait := func(state ctl.State) {
		t.Helper()
		select {
		case c := <-heard:
			if c.ID != cmd.ID || c.State != state {
				t.Errorf("B heard %s %s, want %s %s", c.ID, c.State, cmd.ID, state)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("B did not hear the command become %s", state)
		}
	}
	wait(ctl.StatePending)
	got, err := cb.Fetch(ctx, "press-07", 0)
	if err != nil || len(got) != 1 || got[0].ID != cmd.ID {
		t.Fatalf("B's Fetch = %v, %v", got, err)
	}
	wait(ctl.StateDelivered) // B's own subscriber (B made it)
	if _, err := ca.Respond(ctx, "press-07", cmd.ID, ctl.Response{State: ctl.StateSucceeded}); err != nil {
		t.Fatal(err)
	}
	wait(ctl.StateSucceeded)
	select {
	case c := <-heard:
		t.Errorf("B heard more: %s %s (its own change echoed?)", c.ID, c.State)
	default:
	}
}
