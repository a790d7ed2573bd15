package app

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
)

// journal records what the parts of a test group do, in order.
type journal struct {
	mu   sync.Mutex
	what []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.what = append(j.what, s)
}

func (j *journal) get() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]string(nil), j.what...)
}

// loopPart runs until its context ends.
func loopPart(j *journal, name string) part {
	return part{name: name, run: func(ctx context.Context) error {
		<-ctx.Done()
		j.add(name + " returned")
		return nil
	}}
}

// drainPart runs until stop closes its input, then takes d to drain.
func drainPart(j *journal, name string, d time.Duration) part {
	closed := make(chan struct{})
	return part{name: name,
		run: func(ctx context.Context) error {
			<-closed
			select {
			case <-time.After(d):
				j.add(name + " drained")
			case <-ctx.Done():
				j.add(name + " cut")
				return ctx.Err()
			}
			return nil
		},
		stop: func(context.Context) error {
			j.add(name + " closed")
			close(closed)
			return nil
		}}
}

// closePart only releases something.
func closePart(j *journal, name string, err error) part {
	return part{name: name, stop: func(context.Context) error { j.add(name); return err }}
}

// TestRunGroupStopsInOrder: once the context ends, the stages stop one
// after the other, each once the previous one's runs returned; the parts
// of a stage stop together; errors are joined.
func TestRunGroupStopsInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var j journal
		closeErr := errors.New("disk gone")
		g := runGroup{started: func() { j.add("started") }, stopping: func() { j.add("stopping") }}
		g.add(loopPart(&j, "http"), loopPart(&j, "mqtt"))
		g.add(drainPart(&j, "log", 3*time.Second))
		g.add(closePart(&j, "store", closeErr))
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- g.run(ctx, 10*time.Second) }()
		synctest.Wait()
		if diff := cmp.Diff(j.get(), []string{"started"}); diff != "" {
			t.Fatalf("before the context ends (-got +want):\n%s", diff)
		}
		cancel()
		if err := <-done; !errors.Is(err, closeErr) {
			t.Errorf("run = %v, want the close error", err)
		}
		got := j.get()
		// The two parts of the first stage stop in either order.
		if got[2] > got[3] {
			got[2], got[3] = got[3], got[2]
		}
		want := []string{"started", "stopping", "http returned", "mqtt returned", "log closed", "log drained", "store"}
		if diff := cmp.Diff(got, want); diff != "" {
			t.Errorf("shutdown (-got +want):\n%s", diff)
		}
	})
}

// TestRunGroupFailureStops: a run that fails stops the group, and its
// error is returned; a run that returns nil early does not.
func TestRunGroupFailureStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var j journal
		lost := errors.New("lock lost")
		g := runGroup{}
		g.add(loopPart(&j, "http"),
			part{name: "done early", run: func(context.Context) error { return nil }},
			part{name: "lock", run: func(context.Context) error {
				time.Sleep(time.Minute)
				return lost
			}})
		g.add(closePart(&j, "store", nil))
		start := time.Now()
		if err := g.run(t.Context(), time.Second); !errors.Is(err, lost) {
			t.Errorf("run = %v, want the failure", err)
		}
		if d := time.Since(start); d != time.Minute {
			t.Errorf("stopped after %v, want at the failure (1m)", d)
		}
		if diff := cmp.Diff(j.get(), []string{"http returned", "store"}); diff != "" {
			t.Errorf("shutdown (-got +want):\n%s", diff)
		}
	})
}

// TestRunGroupDeadline: one deadline covers the whole shutdown; a stage
// still running past it is cancelled and reported as timed out, after at
// least minStageGrace, and the later stages still stop.
func TestRunGroupDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var j journal
		g := runGroup{}
		g.add(drainPart(&j, "draining clients", 4*time.Second))
		g.add(drainPart(&j, "draining the event log", time.Hour))
		g.add(closePart(&j, "closing the store", nil))
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		start := time.Now()
		err := g.run(ctx, 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "draining the event log: timed out") || strings.Contains(err.Error(), "draining clients") {
			t.Errorf("run = %v, want the event log's drain timed out, alone", err)
		}
		if !errors.Is(err, context.Canceled) {
			t.Errorf("run = %v, want the cut drain's error too", err)
		}
		// Clients took 4 s of the 5; the log gets the last second.
		if d := time.Since(start); d != 5*time.Second {
			t.Errorf("shutdown took %v, want 5s", d)
		}
		want := []string{"draining clients closed", "draining clients drained", "draining the event log closed", "draining the event log cut", "closing the store"}
		if diff := cmp.Diff(j.get(), want); diff != "" {
			t.Errorf("shutdown (-got +want):\n%s", diff)
		}

		// Past the deadline already, a stage still gets minStageGrace.
		j = journal{}
		g = runGroup{}
		g.add(drainPart(&j, "draining clients", 9*time.Second))
		g.add(drainPart(&j, "draining the event log", 500*time.Millisecond))
		start = time.Now()
		if err := g.run(ctx, 5*time.Second); err == nil || !strings.Contains(err.Error(), "draining clients: timed out") {
			t.Errorf("run = %v, want the clients' drain timed out", err)
		}
		if d := time.Since(start); d != 5*time.Second+500*time.Millisecond {
			t.Errorf("shutdown took %v, want 5.5s: the log drained within its grace", d)
		}
	})
}
