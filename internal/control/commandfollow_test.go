package control

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// sharedStore is a FileCommandStore another "replica" writes behind our
// back: the test tells Follow's changed callback of each such write, as
// PostgreSQL's NOTIFY would.
type sharedStore struct {
	*FileCommandStore
	notify chan [2]string
}

func (s *sharedStore) Follow(ctx context.Context, changed func(machine, id string), resync func()) error {
	resync()
	for {
		select {
		case <-ctx.Done():
			return nil
		case n := <-s.notify:
			changed(n[0], n[1])
		}
	}
}

// TestRunFollowsOtherReplicas: a command another replica created reaches
// our subscribers and wakes a device's fetch waiting here.
func TestRunFollowsOtherReplicas(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		fs, err := OpenFileCommandStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer fs.Close()
		shared := &sharedStore{FileCommandStore: fs, notify: make(chan [2]string)}
		ours := NewCommands(shared, testSpecs, time.Now, nil)
		heard := make(chan Command, 4)
		ours.Subscribe(func(c Command) { heard <- c })
		done := make(chan error)
		go func() { done <- ours.Run(ctx) }()

		type fetched struct {
			cmds []Command
			took time.Duration
		}
		got := make(chan fetched)
		start := time.Now()
		go func() {
			cmds, _ := ours.Fetch(ctx, "press-07", 20*time.Second)
			got <- fetched{cmds, time.Since(start)}
		}()
		time.Sleep(5 * time.Second)

		// The other replica: its own Commands on the same storage.
		theirs := NewCommands(fs, testSpecs, time.Now, nil)
		cmd, _, err := theirs.Create(ctx, "press-07", CreateRequest{Name: "stop"})
		if err != nil {
			t.Fatal(err)
		}
		shared.notify <- [2]string{cmd.Machine, cmd.ID}
		if c := <-heard; c.ID != cmd.ID || c.State != StatePending || !c.Remote {
			t.Errorf("heard %s %s (remote %v), want %s pending, remote", c.ID, c.State, c.Remote, cmd.ID)
		}
		f := <-got
		if len(f.cmds) != 1 || f.cmds[0].ID != cmd.ID || f.took != 5*time.Second {
			t.Errorf("the waiting fetch got %d commands after %v, want %s after 5s", len(f.cmds), f.took, cmd.ID)
		}
		if c := <-heard; c.State != StateDelivered || c.Remote {
			t.Errorf("then heard %s (remote %v), want our own delivery", c.State, c.Remote)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestFollowedLateHearsEachStep: a replica that hears of another's command
// only after several transitions tells its subscribers each step once, in
// order, and a repeated notification nothing more.
func TestFollowedLateHearsEachStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		fs, err := OpenFileCommandStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer fs.Close()
		shared := &sharedStore{FileCommandStore: fs, notify: make(chan [2]string)}
		ours := NewCommands(shared, testSpecs, time.Now, nil)
		heard := make(chan Command, 8)
		ours.Subscribe(func(c Command) { heard <- c })
		done := make(chan error)
		go func() { done <- ours.Run(ctx) }()

		theirs := NewCommands(fs, testSpecs, time.Now, nil)
		cmd, _, err := theirs.Create(ctx, "press-07", CreateRequest{Name: "stop"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := theirs.Delivered(ctx, "press-07", cmd.ID, "mqtt"); err != nil {
			t.Fatal(err)
		}
		if _, err := theirs.Respond(ctx, "press-07", cmd.ID, Response{State: StateSucceeded, Result: map[string]any{"ok": true}}); err != nil {
			t.Fatal(err)
		}
		shared.notify <- [2]string{cmd.Machine, cmd.ID}
		shared.notify <- [2]string{cmd.Machine, cmd.ID} // a repeat
		synctest.Wait()
		var got []State
		for len(heard) > 0 {
			c := <-heard
			got = append(got, c.State)
			if c.Revision() != len(got) || (c.State != StateSucceeded && c.Result != nil) {
				t.Errorf("step %d: revision %d, result %s", len(got), c.Revision(), c.Result)
			}
		}
		if want := []State{StatePending, StateDelivered, StateSucceeded}; !slices.Equal(got, want) {
			t.Errorf("heard %v, want %v", got, want)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestRestartTellsNoOldSteps: after a restart, the first transition of a
// command created before it is told alone: its creation was told by the
// process before (and a command told as created is published again).
func TestRestartTellsNoOldSteps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		fs, err := OpenFileCommandStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer fs.Close()
		before := NewCommands(fs, testSpecs, time.Now, nil)
		cmd, _, err := before.Create(ctx, "press-07", CreateRequest{Name: "stop", Timeout: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the restart
		after := NewCommands(fs, testSpecs, time.Now, nil)
		var heard []State
		after.Subscribe(func(c Command) { heard = append(heard, c.State) })
		if _, err := after.Delivered(ctx, "press-07", cmd.ID, "mqtt"); err != nil {
			t.Fatal(err)
		}
		if want := []State{StateDelivered}; !slices.Equal(heard, want) {
			t.Errorf("heard %v, want %v", heard, want)
		}
	})
}
