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

// replica is one server's Commands on a shared schema, running, with the
// transitions its subscribers hear.
type replica struct {
	cmds  *ctl.Commands
	heard chan ctl.Command
}

func newReplica(t *testing.T, ctx context.Context, s *Store) *replica {
	t.Helper()
	cs := NewCommandStore(s)
	listening := make(chan struct{}, 1)
	cs.testHookListening = func() {
		select {
		case listening <- struct{}{}:
		default:
		}
	}
	r := &replica{cmds: ctl.NewCommands(cs, stopSpecs, time.Now, testLogger(t)), heard: make(chan ctl.Command, 64)}
	r.cmds.Subscribe(func(c ctl.Command) { r.heard <- c })
	done := make(chan error, 1)
	go func() { done <- r.cmds.Run(ctx) }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		t.Fatal("the replica never listened")
	}
	return r
}

// await returns the next transition r hears, failing after 5 s.
func (r *replica) await(t *testing.T) ctl.Command {
	t.Helper()
	select {
	case c := <-r.heard:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("heard nothing within 5s")
	}
	return ctl.Command{}
}

// Two replicas on one schema: each one's subscribers hear every
// transition, its own and the other's, exactly once; a device's fetch on
// one gets what the other created; both expiring the same command write
// one transition.
func TestCommandsAcrossReplicas(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel() // before the replicas' cleanups wait for Run
	a := openTest(t, "", Options{})
	b := openTest(t, "", Options{Schema: a.Schema()})
	ra, rb := newReplica(t, ctx, a), newReplica(t, ctx, b)

	cmd, _, err := ra.cmds.Create(ctx, "press-07", ctl.CreateRequest{Name: "stop", By: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	check := func(r *replica, name string, want ctl.State) {
		t.Helper()
		if c := r.await(t); c.ID != cmd.ID || c.State != want {
			t.Errorf("%s heard %s %s, want %s %s", name, c.ID, c.State, cmd.ID, want)
		}
	}
	check(ra, "A", ctl.StatePending)
	check(rb, "B", ctl.StatePending)
	got, err := rb.cmds.Fetch(ctx, "press-07", 0)
	if err != nil || len(got) != 1 || got[0].ID != cmd.ID {
		t.Fatalf("B's Fetch = %v, %v", got, err)
	}
	check(rb, "B", ctl.StateDelivered)
	check(ra, "A", ctl.StateDelivered)
	if _, err := ra.cmds.Respond(ctx, "press-07", cmd.ID, ctl.Response{State: ctl.StateSucceeded}); err != nil {
		t.Fatal(err)
	}
	check(ra, "A", ctl.StateSucceeded)
	check(rb, "B", ctl.StateSucceeded)

	// A fetch waiting on B wakes for a command A creates.
	fetched := make(chan []ctl.Command, 1)
	go func() {
		cmds, _ := rb.cmds.Fetch(ctx, "press-07", 30*time.Second)
		fetched <- cmds
	}()
	cmd, _, err = ra.cmds.Create(ctx, "press-07", ctl.CreateRequest{Name: "stop", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case cmds := <-fetched:
		if len(cmds) != 1 || cmds[0].ID != cmd.ID {
			t.Errorf("B's waiting fetch got %v, want %s", cmds, cmd.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("B's waiting fetch did not wake")
	}
	check(ra, "A", ctl.StatePending)
	check(ra, "A", ctl.StateDelivered)
	// B's fetch may have found the command before B heard of it: the
	// order of these two is not fixed.
	heardB := map[ctl.State]bool{}
	for range 2 {
		c := rb.await(t)
		heardB[c.State] = c.ID == cmd.ID
	}
	if !heardB[ctl.StatePending] || !heardB[ctl.StateDelivered] {
		t.Errorf("B heard %v, want pending and delivered of %s", heardB, cmd.ID)
	}
	// Both run expiry on it: one transition.
	check(ra, "A", ctl.StateExpired)
	check(rb, "B", ctl.StateExpired)
	final, err := ra.cmds.Get(ctx, "press-07", cmd.ID)
	if err != nil || len(final.History) != 3 {
		t.Errorf("after expiry: %d transitions (%v), want 3", len(final.History), err)
	}
	select {
	case c := <-ra.heard:
		t.Errorf("A heard more: %s %s", c.ID, c.State)
	case c := <-rb.heard:
		t.Errorf("B heard more: %s %s", c.ID, c.State)
	default:
	}
}
