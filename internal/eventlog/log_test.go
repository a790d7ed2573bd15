package eventlog

import (
	"context"
	"errors"
	"io"
	"testing"
	"testing/synctest"

	"github.com/twinline/twinline/internal/telemetry"
)

func batch(samples int) *telemetry.Batch {
	ms := make([]telemetry.Metric, samples)
	return &telemetry.Batch{Events: []telemetry.Event{{Machine: "m", Metrics: ms}}}
}

func TestAppendFullAndRelease(t *testing.T) {
	l := New(10, nil)
	e1, err := l.Append(batch(6))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(batch(5)); !errors.Is(err, ErrFull) {
		t.Fatalf("Append over capacity: got %v, want ErrFull", err)
	}
	if got, want := l.Depth(), 6; got != want {
		t.Errorf("Depth = %d, want %d", got, want)
	}
	// Reading does not release room: only the acknowledgement does.
	got, err := l.Read(context.Background(), 100)
	if err != nil || len(got) != 1 || got[0] != e1 {
		t.Fatalf("Read = %v, %v; want [e1]", got, err)
	}
	if _, err := l.Append(batch(5)); !errors.Is(err, ErrFull) {
		t.Fatalf("Append before ack: got %v, want ErrFull", err)
	}
	e1.Ack(Result{Accepted: 1}, nil)
	e1.Ack(Result{Accepted: 99}, errors.New("second ack is ignored"))
	if got := l.Depth(); got != 0 {
		t.Errorf("Depth after ack = %d, want 0", got)
	}
	res, err := e1.Wait(context.Background())
	if err != nil || res.Accepted != 1 {
		t.Errorf("Wait = %+v, %v; want Accepted 1, nil", res, err)
	}
	if _, err := l.Append(batch(10)); err != nil {
		t.Errorf("Append after release: %v", err)
	}
}

// TestStatesTakeRoom: an event's states count against the capacity, so
// batches of states only are bounded too.
func TestStatesTakeRoom(t *testing.T) {
	l := New(10, nil)
	states := &telemetry.Batch{Events: []telemetry.Event{{Machine: "m", States: make([]telemetry.State, 6)}}}
	if _, err := l.Append(states); err != nil {
		t.Fatal(err)
	}
	if got := l.Depth(); got != 6 {
		t.Errorf("Depth = %d, want 6", got)
	}
	if _, err := l.Append(batch(5)); !errors.Is(err, ErrFull) {
		t.Errorf("Append over capacity: got %v, want ErrFull", err)
	}
}

func TestAppendTooLarge(t *testing.T) {
	l := New(10, nil)
	if _, err := l.Append(batch(11)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}

func TestReadGroupsUpToMaxSamples(t *testing.T) {
	l := New(100, nil)
	for _, n := range []int{3, 3, 3, 50} {
		if _, err := l.Append(batch(n)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		max  int
		want []int // samples per entry returned
	}{
		{max: 7, want: []int{3, 3}},
		{max: 1, want: []int{3}}, // always at least one entry
		{max: 1000, want: []int{50}},
	}
	for _, tt := range tests {
		got, err := l.Read(context.Background(), tt.max)
		if err != nil {
			t.Fatal(err)
		}
		var sizes []int
		for _, e := range got {
			sizes = append(sizes, e.Samples())
		}
		if len(sizes) != len(tt.want) {
			t.Fatalf("Read(%d) sizes = %v, want %v", tt.max, sizes, tt.want)
		}
		for i := range sizes {
			if sizes[i] != tt.want[i] {
				t.Fatalf("Read(%d) sizes = %v, want %v", tt.max, sizes, tt.want)
			}
		}
	}
}

func TestCloseDrainsThenEOF(t *testing.T) {
	l := New(10, nil)
	if _, err := l.Append(batch(1)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := l.Append(batch(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: got %v, want ErrClosed", err)
	}
	if got, err := l.Read(context.Background(), 10); err != nil || len(got) != 1 {
		t.Fatalf("Read after Close = %d entries, %v; want the queued one", len(got), err)
	}
	if _, err := l.Read(context.Background(), 10); !errors.Is(err, io.EOF) {
		t.Errorf("Read of drained log: got %v, want io.EOF", err)
	}
}

func TestReadBlocksUntilAppendOrCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := New(10, nil)
		got := make(chan int, 1)
		go func() {
			es, _ := l.Read(context.Background(), 10)
			got <- len(es)
		}()
		synctest.Wait()
		select {
		case n := <-got:
			t.Fatalf("Read returned %d entries from an empty log", n)
		default:
		}
		if _, err := l.Append(batch(2)); err != nil {
			t.Fatal(err)
		}
		if n := <-got; n != 1 {
			t.Errorf("Read returned %d entries, want 1", n)
		}

		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			_, err := l.Read(ctx, 10)
			errc <- err
		}()
		synctest.Wait()
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("Read after cancel: got %v, want context.Canceled", err)
		}
	})
}

func TestWaitHonoursContext(t *testing.T) {
	l := New(10, nil)
	e, err := l.Append(batch(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait: got %v, want context.Canceled", err)
	}
}
