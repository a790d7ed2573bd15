// Package controltest is the conformance suite of the stores behind the
// control package: control.CommandStore (RunCommandStore). The file store
// of package control and the PostgreSQL store of internal/store/postgres
// both run it.
//
// A backend's test calls, for example,
//
//	controltest.RunCommandStore(t, func(t *testing.T) func() control.CommandStore {
//		dir := t.TempDir()
//		return func() control.CommandStore { s, _ := control.OpenFileCommandStore(dir); return s }
//	})
//
// The function passed creates new, empty storage of its own for t (a
// directory, a schema) and returns an opener: each call opens a new handle
// on that same storage, as a restarted server would. The suite closes the
// handles it opens. Times are whole milliseconds in UTC.
package controltest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/control"
)

// base is the time the suite works around.
var base = time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return base.Add(time.Duration(sec) * time.Second) }

// command returns a pending command created at second sec.
func command(id, machine, name string, sec int) control.Command {
	t := at(sec)
	return control.Command{
		ID: id, Machine: machine, Name: name, Params: map[string]any{"counter": "parts", "n": 3.0},
		State: control.StatePending, TimeoutMs: 60000, CreatedAt: t, UpdatedAt: t, ExpiresAt: t.Add(time.Minute),
		CreatedBy: "alice", History: []control.Transition{{State: control.StatePending, At: t, By: "alice"}},
	}
}

// moved returns cmd moved to state at second sec.
func moved(cmd control.Command, state control.State, sec int) control.Command {
	cmd.History = append(append([]control.Transition(nil), cmd.History...), control.Transition{State: state, At: at(sec), Via: "mqtt"})
	cmd.State, cmd.UpdatedAt = state, at(sec)
	return cmd
}

// RunCommandStore runs the command store conformance tests.
func RunCommandStore(t *testing.T, newStorage func(t *testing.T) func() control.CommandStore) {
	t.Run("CreateGet", func(t *testing.T) { testCreateGet(t, open(t, newStorage(t))) })
	t.Run("Idempotency", func(t *testing.T) { testIdempotency(t, open(t, newStorage(t))) })
	t.Run("UpdateRevision", func(t *testing.T) { testUpdate(t, open(t, newStorage(t))) })
	t.Run("ConcurrentUpdate", func(t *testing.T) { testConcurrentUpdate(t, open(t, newStorage(t))) })
	t.Run("List", func(t *testing.T) { testList(t, open(t, newStorage(t))) })
	t.Run("PendingPrune", func(t *testing.T) { testPendingPrune(t, open(t, newStorage(t))) })
	t.Run("Reopen", func(t *testing.T) { testReopen(t, newStorage(t)) })
}

// open returns the opener, each handle closed at the end of t.
func open(t *testing.T, opener func() control.CommandStore) func() control.CommandStore {
	return func() control.CommandStore {
		s := opener()
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func mustCreate(t *testing.T, s control.CommandStore, cmd control.Command) control.Command {
	t.Helper()
	got, created, err := s.Create(context.Background(), cmd)
	if err != nil || !created {
		t.Fatalf("Create(%s) = created %v, %v; want created", cmd.ID, created, err)
	}
	return got
}

func mustUpdate(t *testing.T, s control.CommandStore, cmd control.Command) {
	t.Helper()
	if err := s.Update(context.Background(), cmd); err != nil {
		t.Fatalf("Update(%s → %s): %v", cmd.ID, cmd.State, err)
	}
}

func testCreateGet(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	want := command("c-1", "press-07", "reset", 0)
	want.Result = json.RawMessage(`{"ok":true}`)
	want.Reason = "because"
	if diff := cmp.Diff(mustCreate(t, s, want), want); diff != "" {
		t.Errorf("Create returned (-got +want):\n%s", diff)
	}
	got, err := s.Get(ctx, "press-07", "c-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Get (-got +want):\n%s", diff)
	}
	for _, tt := range []struct{ machine, id string }{{"press-07", "c-2"}, {"press-08", "c-1"}} {
		if _, err := s.Get(ctx, tt.machine, tt.id); !errors.Is(err, control.ErrNotFound) {
			t.Errorf("Get(%s, %s) error = %v, want ErrNotFound", tt.machine, tt.id, err)
		}
	}
}

func testIdempotency(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	first := command("c-1", "press-07", "reset", 0)
	first.IdempotencyKey = "k1"
	mustCreate(t, s, first)
	again := command("c-2", "press-07", "stop", 1)
	again.IdempotencyKey = "k1"
	got, created, err := s.Create(ctx, again)
	if err != nil || created {
		t.Fatalf("Create with a used key = created %v, %v; want the existing command", created, err)
	}
	if diff := cmp.Diff(got, first); diff != "" {
		t.Errorf("Create with a used key returned (-got +want):\n%s", diff)
	}
	if _, err := s.Get(ctx, "press-07", "c-2"); !errors.Is(err, control.ErrNotFound) {
		t.Errorf("the repeat was stored: Get error = %v", err)
	}
	// Keys are per machine.
	other := command("c-3", "press-08", "reset", 2)
	other.IdempotencyKey = "k1"
	mustCreate(t, s, other)
}

func testUpdate(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	cmd := mustCreate(t, s, command("c-1", "m", "reset", 0))
	delivered := moved(cmd, control.StateDelivered, 1)
	mustUpdate(t, s, delivered)
	// A writer still holding the pending command loses.
	stale := moved(cmd, control.StateAccepted, 2)
	if err := s.Update(ctx, stale); !errors.Is(err, control.ErrConflict) {
		t.Errorf("Update over a stale revision: error = %v, want ErrConflict", err)
	}
	// Two steps ahead is no better.
	skip := moved(moved(delivered, control.StateAccepted, 2), control.StateSucceeded, 3)
	if err := s.Update(ctx, skip); !errors.Is(err, control.ErrConflict) {
		t.Errorf("Update two revisions ahead: error = %v, want ErrConflict", err)
	}
	done := moved(delivered, control.StateSucceeded, 3)
	done.Result = json.RawMessage(`{"parts":0}`)
	mustUpdate(t, s, done)
	got, err := s.Get(ctx, "m", "c-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if diff := cmp.Diff(got, done); diff != "" {
		t.Errorf("after updates (-got +want):\n%s", diff)
	}
	if err := s.Update(ctx, moved(command("c-9", "m", "reset", 0), control.StateDelivered, 1)); !errors.Is(err, control.ErrNotFound) {
		t.Errorf("Update of an unknown command: error = %v, want ErrNotFound", err)
	}
}

func testConcurrentUpdate(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	cmd := mustCreate(t, s, command("c-1", "m", "reset", 0))
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			next := moved(cmd, control.StateDelivered, 1)
			next.History[1].By = fmt.Sprint("writer-", i)
			errs[i] = s.Update(ctx, next)
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, control.ErrConflict):
			t.Errorf("Update: %v, want nil or ErrConflict", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent updates of one revision succeeded, want 1", won)
	}
	got, err := s.Get(ctx, "m", "c-1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got.Revision() != 2 {
		t.Errorf("revision after the race = %d, want 2", got.Revision())
	}
}

func ids(cmds []control.Command) []string {
	out := []string{}
	for _, c := range cmds {
		out = append(out, c.ID)
	}
	return out
}

func testList(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	a := mustCreate(t, s, command("c-a", "m", "reset", 0))
	mustCreate(t, s, command("c-b", "m", "stop", 10))
	mustCreate(t, s, command("c-c", "m", "reset", 20))
	mustCreate(t, s, command("c-d", "m", "reset", 20)) // same time: id decides
	mustCreate(t, s, command("c-e", "other", "reset", 30))
	mustUpdate(t, s, moved(a, control.StateDelivered, 40))
	tests := []struct {
		name string
		f    control.Filter
		want []string
	}{
		{"all", control.Filter{}, []string{"c-d", "c-c", "c-b", "c-a"}},
		{"state", control.Filter{State: control.StatePending}, []string{"c-d", "c-c", "c-b"}},
		{"delivered", control.Filter{State: control.StateDelivered}, []string{"c-a"}},
		{"name", control.Filter{Name: "reset"}, []string{"c-d", "c-c", "c-a"}},
		{"both", control.Filter{Name: "reset", State: control.StatePending}, []string{"c-d", "c-c"}},
		{"limit", control.Filter{Limit: 2}, []string{"c-d", "c-c"}},
		{"none", control.Filter{Name: "start"}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.List(ctx, "m", tt.f)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			if diff := cmp.Diff(ids(got), tt.want); diff != "" {
				t.Errorf("List(%+v) ids (-got +want):\n%s", tt.f, diff)
			}
		})
	}
}

func testPendingPrune(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	old := mustCreate(t, s, command("c-old", "m1", "reset", 0))
	mustUpdate(t, s, moved(old, control.StateSucceeded, 10))
	recent := mustCreate(t, s, command("c-recent", "m1", "reset", 20))
	mustUpdate(t, s, moved(recent, control.StateFailed, 100))
	keyed := command("c-keyed", "m2", "stop", 5)
	keyed.IdempotencyKey = "k"
	keyed = mustCreate(t, s, keyed)
	mustUpdate(t, s, moved(keyed, control.StateExpired, 65))
	mustCreate(t, s, command("c-open", "m2", "stop", 1))
	acc := mustCreate(t, s, command("c-acc", "m1", "stop", 2))
	mustUpdate(t, s, moved(acc, control.StateAccepted, 3))

	pending, err := s.Pending(ctx)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	if diff := cmp.Diff(ids(pending), []string{"c-acc", "c-open"}); diff != "" {
		t.Errorf("Pending ids (-got +want):\n%s", diff)
	}
	n, err := s.Prune(ctx, at(90))
	if err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2 (c-old, c-keyed)", n, err)
	}
	for _, id := range []string{"c-recent", "c-open", "c-acc"} {
		m := "m1"
		if id == "c-open" {
			m = "m2"
		}
		if _, err := s.Get(ctx, m, id); err != nil {
			t.Errorf("Get(%s) after Prune: %v", id, err)
		}
	}
	if _, err := s.Get(ctx, "m1", "c-old"); !errors.Is(err, control.ErrNotFound) {
		t.Errorf("Get(c-old) after Prune: error = %v, want ErrNotFound", err)
	}
	// A pruned command's key is free again.
	again := command("c-new", "m2", "stop", 200)
	again.IdempotencyKey = "k"
	mustCreate(t, s, again)
}

func testReopen(t *testing.T, opener func() control.CommandStore) {
	ctx := context.Background()
	s := opener()
	cmd := command("c-1", "m", "reset", 0)
	cmd.IdempotencyKey = "k"
	cmd = mustCreate(t, s, cmd)
	want := moved(cmd, control.StateDelivered, 1)
	mustUpdate(t, s, want)
	mustCreate(t, s, command("c-2", "m", "stop", 2))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s = opener()
	defer s.Close()
	got, err := s.Get(ctx, "m", "c-1")
	if err != nil {
		t.Fatalf("Get after reopening: %v", err)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("after reopening (-got +want):\n%s", diff)
	}
	dup := command("c-3", "m", "reset", 3)
	dup.IdempotencyKey = "k"
	if got, created, err := s.Create(ctx, dup); err != nil || created || got.ID != "c-1" {
		t.Errorf("Create with a used key after reopening = %s, created %v, %v; want c-1", got.ID, created, err)
	}
}
