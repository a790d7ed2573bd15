// Package controltest is the conformance suite of the control stores:
// every control.TwinStore must pass RunTwinStore.
package controltest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/control"
	"github.com/twinline/twinline/internal/twin"
)

// Opener makes a fresh, empty store for a test, and a function that opens
// the same storage again (as a restart, or another replica, would).
type Opener func(t *testing.T) (s control.TwinStore, reopen func() control.TwinStore)

var twinBase = time.UnixMilli(1_765_000_000_000).UTC()

// RunTwinStore runs the conformance suite of control.TwinStore.
func RunTwinStore(t *testing.T, open Opener) {
	ctx := context.Background()
	stored := control.Twin{
		Machine:  "press-07",
		Desired:  map[string]any{"tempSetpoint": 180.0, "mode": "auto", "pid": map[string]any{"p": 1.5, "i": []any{1.0, "x"}}},
		Reported: map[string]any{"fw": "1.2", "ok": true, "none": nil},
		Version:  3, ReportedVersion: 5,
		Metadata: control.Metadata{
			Desired: control.FieldTimes{"tempSetpoint": {UpdatedAt: 10}, "mode": {UpdatedAt: 11},
				"pid": {Fields: control.FieldTimes{"p": {UpdatedAt: 12}, "i": {UpdatedAt: 9}}}},
			Reported: control.FieldTimes{"fw": {UpdatedAt: 13}, "ok": {UpdatedAt: 14}, "none": {UpdatedAt: 15}},
		},
	}

	t.Run("NeverWritten", func(t *testing.T) {
		s, _ := open(t)
		got, err := s.Get(ctx, "nobody")
		if err != nil {
			t.Fatal(err)
		}
		if got.Machine != "nobody" || got.Version != 0 || got.ReportedVersion != 0 || len(got.Desired) != 0 || len(got.Reported) != 0 {
			t.Errorf("Get of a twin never written = %+v, want machine nobody, versions 0, empty documents", got)
		}
	})

	t.Run("PutGetSurvivesReopen", func(t *testing.T) {
		s, reopen := open(t)
		if err := s.Put(ctx, stored, 0, 0, control.Notice{Machine: stored.Machine, Kind: control.ChangeDesired}); err != nil {
			t.Fatal(err)
		}
		for name, st := range map[string]control.TwinStore{"same": s, "reopened": reopen()} {
			got, err := st.Get(ctx, stored.Machine)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, stored); diff != "" {
				t.Errorf("%s store: Get after Put (-got +want):\n%s", name, diff)
			}
		}
		other, err := s.Get(ctx, "press-08")
		if err != nil {
			t.Fatal(err)
		}
		if other.Version != 0 || len(other.Desired) != 0 {
			t.Errorf("another machine's twin = %+v, want none", other)
		}
	})

	t.Run("StalePutRefused", func(t *testing.T) {
		s, _ := open(t)
		if err := s.Put(ctx, stored, 0, 0, control.Notice{}); err != nil {
			t.Fatal(err)
		}
		again := stored
		again.Version = 1
		if err := s.Put(ctx, again, 0, 0, control.Notice{}); !errors.Is(err, control.ErrConcurrentUpdate) {
			t.Errorf("a second first Put: err = %v, want ErrConcurrentUpdate", err)
		}
		next := stored
		next.Version = 4
		next.Desired = map[string]any{"mode": "manual"}
		for _, prev := range [][2]uint64{{2, 5}, {3, 4}, {4, 5}} {
			if err := s.Put(ctx, next, prev[0], prev[1], control.Notice{}); !errors.Is(err, control.ErrConcurrentUpdate) {
				t.Errorf("Put with previous versions %v (stored 3.5): err = %v, want ErrConcurrentUpdate", prev, err)
			}
		}
		if err := s.Put(ctx, next, 3, 5, control.Notice{}); err != nil {
			t.Fatalf("Put with the stored versions: %v", err)
		}
		got, err := s.Get(ctx, stored.Machine)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got.Desired, next.Desired); diff != "" || got.Version != 4 {
			t.Errorf("after the update: version %d (want 4), desired (-got +want):\n%s", got.Version, diff)
		}
	})

	t.Run("ConcurrentPutsOneWins", func(t *testing.T) {
		s, _ := open(t)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tw := control.Twin{Machine: "m", Desired: map[string]any{"i": float64(i)}, Version: 1}
				errs[i] = s.Put(ctx, tw, 0, 0, control.Notice{})
			}()
		}
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, control.ErrConcurrentUpdate):
				t.Errorf("Put: %v", err)
			}
		}
		if won != 1 {
			t.Errorf("%d of %d concurrent first Puts succeeded, want 1", won, n)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		s, reopen := open(t)
		if err := s.Put(ctx, stored, 0, 0, control.Notice{}); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, stored.Machine, control.Notice{Machine: stored.Machine, Kind: control.ChangeDeleted}); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "never", control.Notice{}); err != nil {
			t.Errorf("deleting a twin never written: %v", err)
		}
		for name, st := range map[string]control.TwinStore{"same": s, "reopened": reopen()} {
			got, err := st.Get(ctx, stored.Machine)
			if err != nil {
				t.Fatal(err)
			}
			if got.Version != 0 || len(got.Desired) != 0 {
				t.Errorf("%s store: twin after Delete = %+v, want none", name, got)
			}
		}
		// A deleted twin starts over.
		if err := s.Put(ctx, stored, 0, 0, control.Notice{}); err != nil {
			t.Errorf("first Put after Delete: %v", err)
		}
	})

	t.Run("Twins", func(t *testing.T) {
		s, reopen := open(t)
		schema := &twin.Schema{Type: "object", Properties: map[string]*twin.Schema{"tempSetpoint": {Type: "number", Maximum: ptr(250.0)}}}
		now := twinBase
		tw := control.NewTwins(s, func(string) *twin.Schema { return schema }, func() time.Time { return now }, slog.New(slog.DiscardHandler))
		if _, err := tw.PatchDesired(ctx, "m", []byte(`{"tempSetpoint":180,"pid":{"p":1}}`), nil, "alice"); err != nil {
			t.Fatal(err)
		}
		now = now.Add(time.Second)
		if _, err := tw.PatchReported(ctx, "m", []byte(`{"tempSetpoint":175,"pid":{"p":1}}`), "dev"); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.PatchDesired(ctx, "m", []byte(`{"tempSetpoint":300}`), nil, "alice"); !errors.Is(err, control.ErrInvalid) {
			t.Errorf("a desired value over the schema's maximum: err = %v, want ErrInvalid", err)
		}
		got, err := control.NewTwins(reopen(), nil, time.Now, slog.New(slog.DiscardHandler)).Get(ctx, "m")
		if err != nil {
			t.Fatal(err)
		}
		want := control.Twin{
			Machine:  "m",
			Desired:  map[string]any{"tempSetpoint": 180.0, "pid": map[string]any{"p": 1.0}},
			Reported: map[string]any{"tempSetpoint": 175.0, "pid": map[string]any{"p": 1.0}},
			Delta:    map[string]any{"tempSetpoint": 180.0},
			Version:  1, ReportedVersion: 1,
			Metadata: control.Metadata{
				Desired: control.FieldTimes{"tempSetpoint": {UpdatedAt: twinBase.UnixMilli()},
					"pid": {Fields: control.FieldTimes{"p": {UpdatedAt: twinBase.UnixMilli()}}}},
				Reported: control.FieldTimes{"tempSetpoint": {UpdatedAt: twinBase.UnixMilli() + 1000},
					"pid": {Fields: control.FieldTimes{"p": {UpdatedAt: twinBase.UnixMilli() + 1000}}}},
			},
		}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("twin read through a reopened store (-got +want):\n%s", diff)
		}
	})

	t.Run("Watch", func(t *testing.T) {
		s, reopen := open(t)
		w, ok := reopen().(control.TwinWatcher)
		if !ok {
			t.Skip("the store serves one process: no TwinWatcher")
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		got := make(chan control.Notice, 16)
		done := make(chan error, 1)
		go func() { done <- w.Watch(wctx, func(n control.Notice) { got <- n }) }()
		// LISTEN takes effect asynchronously: write until a notice arrives.
		want := control.Notice{Machine: "m", Kind: control.ChangeReported, By: "dev", Origin: "replica-a"}
		var prev uint64
		deadline := time.After(10 * time.Second)
	wait:
		for {
			tw := control.Twin{Machine: "m", Reported: map[string]any{"v": float64(prev)}, ReportedVersion: prev + 1}
			if err := s.Put(ctx, tw, 0, prev, want); err != nil {
				t.Fatal(err)
			}
			prev++
			select {
			case n := <-got:
				if diff := cmp.Diff(n, want); diff != "" {
					t.Errorf("notice (-got +want):\n%s", diff)
				}
				break wait
			case <-time.After(100 * time.Millisecond):
			case <-deadline:
				t.Fatal("no notice within 10 s")
			}
		}
		if err := s.Delete(ctx, "m", control.Notice{Machine: "m", Kind: control.ChangeDeleted, Origin: "replica-a"}); err != nil {
			t.Fatal(err)
		}
	deleted:
		for {
			select {
			case n := <-got:
				if n.Kind == control.ChangeDeleted {
					break deleted
				}
			case <-deadline:
				t.Fatal("no notice of the deletion within 10 s")
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v after its context ended, want nil", err)
		}
	})
}

func ptr[T any](v T) *T { return &v }
