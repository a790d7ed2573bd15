package sim

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/telemetry"
)

// answer is a command answer a fakeControl received.
type answer struct {
	Machine, ID, State string
	Result             any
	Reason             string
}

// fakeControl is a Control in memory: tests set desired documents and queue
// commands; it records the reports and the answers. Desired and Commands
// block like long-polls, until there is something or their wait ends.
type fakeControl struct {
	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every change
	version  map[string]uint64
	desired  map[string]map[string]any
	queued   map[string][]Cmd
	reports  []map[string]any
	answers  []answer
	failNext error // the next call fails with it
	wait     time.Duration
}

func newFakeControl() *fakeControl {
	return &fakeControl{
		changed: make(chan struct{}),
		version: map[string]uint64{},
		desired: map[string]map[string]any{},
		queued:  map[string][]Cmd{},
		wait:    30 * time.Second,
	}
}

func (f *fakeControl) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeControl) setDesired(machine string, doc map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.version[machine]++
	f.desired[machine] = doc
	f.notify()
}

func (f *fakeControl) queue(machine string, cmds ...Cmd) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queued[machine] = append(f.queued[machine], cmds...)
	f.notify()
}

func (f *fakeControl) takeErr() error {
	err := f.failNext
	f.failNext = nil
	return err
}

// poll calls ready under the lock until it reports true, wait passes or ctx
// ends.
func (f *fakeControl) poll(ctx context.Context, wait time.Duration, ready func() bool) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		ok, ch := ready(), f.changed
		f.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
			return
		case <-ch:
		}
	}
}

func (f *fakeControl) Desired(ctx context.Context, machine string, after uint64) (uint64, map[string]any, error) {
	f.mu.Lock()
	err := f.takeErr()
	f.mu.Unlock()
	if err != nil {
		return 0, nil, err
	}
	f.poll(ctx, f.wait, func() bool { return f.version[machine] > after })
	f.mu.Lock()
	defer f.mu.Unlock()
	doc := f.desired[machine]
	if doc == nil {
		doc = map[string]any{}
	}
	return f.version[machine], doc, nil
}

func (f *fakeControl) Report(_ context.Context, _ string, patch map[string]any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.takeErr(); err != nil {
		return err
	}
	f.reports = append(f.reports, patch)
	return nil
}

func (f *fakeControl) Commands(ctx context.Context, machine string, wait time.Duration) ([]Cmd, error) {
	f.poll(ctx, wait, func() bool { return len(f.queued[machine]) > 0 })
	f.mu.Lock()
	defer f.mu.Unlock()
	cmds := f.queued[machine]
	delete(f.queued, machine)
	return cmds, nil
}

func (f *fakeControl) Respond(_ context.Context, machine, id, state string, result any, reason string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers = append(f.answers, answer{machine, id, state, result, reason})
	return nil
}

func (f *fakeControl) takeAnswers() []answer {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.answers
	f.answers = nil
	return a
}

func (f *fakeControl) takeReports() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.reports
	f.reports = nil
	return r
}

// safeRecorder is an Emit that keeps every event, safe to read while Run
// runs.
type safeRecorder struct {
	mu     sync.Mutex
	events []telemetry.Event
}

func (r *safeRecorder) emit(_ context.Context, events []telemetry.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, events...)
	return nil
}

// last returns the latest event of machine.
func (r *safeRecorder) last(t *testing.T, machine string) telemetry.Event {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if r.events[i].Machine == machine {
			return r.events[i]
		}
	}
	t.Fatalf("no event of %s", machine)
	return telemetry.Event{}
}

func metricOf(ev telemetry.Event, name string) float64 {
	for _, m := range ev.Metrics {
		if m.Name == name {
			return m.Value
		}
	}
	return -1
}

func stateOf(ev telemetry.Event) string {
	for _, s := range ev.States {
		if s.Name == StateMetric {
			return s.Value
		}
	}
	return ""
}

// TestControlLoop runs a machine with its device side against a fake
// server in a synctest bubble: it reports what it applied, follows its
// setpoint, and carries out, rejects and fails commands as documented.
func TestControlLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		fc := newFakeControl()
		var rec safeRecorder
		// Two machines at 2 events/s each, no breakdowns: only the
		// first has a device side.
		s := New(Config{Machines: 2, Rate: 4, Interval: 100 * time.Millisecond, FaultEvery: -1, Seed: 3}, rec.emit, nil)
		id := s.Machines()[0].ID
		var wg sync.WaitGroup
		wg.Go(func() { _ = s.Run(ctx) })
		wg.Go(func() { _ = s.RunControl(ctx, fc, ControlConfig{Machines: 1}, nil) })

		// Never set: the device reports its mode and firmware at once.
		synctest.Wait()
		if diff := cmp.Diff(fc.takeReports(), []map[string]any{{"mode": "auto", "tempSetpoint": nil, "fw": FirmwareVersion}}); diff != "" {
			t.Fatalf("first report (-got +want):\n%s", diff)
		}

		// A setpoint out of range is clamped; the temperature follows.
		fc.setDesired(id, map[string]any{"tempSetpoint": 300.0, "mode": "manual", "other": true})
		synctest.Wait()
		if diff := cmp.Diff(fc.takeReports(), []map[string]any{{"mode": "manual", "tempSetpoint": 250.0}}); diff != "" {
			t.Errorf("report after a desired change (-got +want):\n%s", diff)
		}
		fc.setDesired(id, map[string]any{"tempSetpoint": 180.0})
		synctest.Wait()
		if diff := cmp.Diff(fc.takeReports(), []map[string]any{{"mode": "auto", "tempSetpoint": 180.0}}); diff != "" {
			t.Errorf("report after a desired change (-got +want):\n%s", diff)
		}
		time.Sleep(10 * time.Minute) // ten time constants, in the bubble
		if got := metricOf(rec.last(t, id), "temp"); got < 170 || got > 190 {
			t.Errorf("temp 10 minutes after setpoint 180 = %v, want 180 ± 10", got)
		}

		// Commands, one after another: each is accepted, then carried
		// out by the machine's next event.
		steps := []struct {
			cmd       Cmd
			want      []answer
			wantState string
		}{
			{Cmd{ID: "c1", Name: "stop"}, []answer{{id, "c1", Accepted, nil, ""}, {id, "c1", Succeeded, map[string]any{"state": StateStopped}, ""}}, StateStopped},
			{Cmd{ID: "c2", Name: "reset", Params: map[string]any{"counter": "parts"}}, []answer{{id, "c2", Accepted, nil, ""}, {id, "c2", Succeeded, map[string]any{"state": StateStopped, "counter": "parts"}, ""}}, StateStopped},
			{Cmd{ID: "c3", Name: "explode"}, []answer{{id, "c3", Rejected, nil, `unknown command "explode" (stop, start, reset)`}}, StateStopped},
			{Cmd{ID: "c4", Name: "reset", Params: map[string]any{"counter": "cycles"}}, []answer{{id, "c4", Rejected, nil, `reset: unknown counter cycles (only "parts")`}}, StateStopped},
			{Cmd{ID: "c5", Name: "start"}, []answer{{id, "c5", Accepted, nil, ""}, {id, "c5", Succeeded, map[string]any{"state": StateRunning}, ""}}, StateRunning},
		}
		for _, st := range steps {
			fc.queue(id, st.cmd)
			time.Sleep(2 * time.Second) // a few events of the machine
			synctest.Wait()
			if diff := cmp.Diff(fc.takeAnswers(), st.want); diff != "" {
				t.Errorf("answers to %s (-got +want):\n%s", st.cmd.Name, diff)
			}
			if got := stateOf(rec.last(t, id)); got != st.wantState {
				t.Errorf("state after %s = %q, want %q", st.cmd.Name, got, st.wantState)
			}
			if st.cmd.ID == "c2" {
				ev := rec.last(t, id)
				if got := [2]float64{metricOf(ev, PartsTotal), metricOf(ev, PartsGood)}; got != [2]float64{} {
					t.Errorf("parts after reset = %v, want 0 0", got)
				}
			}
		}
		// Running again: it makes parts.
		time.Sleep(time.Minute)
		if got := metricOf(rec.last(t, id), PartsTotal); got <= 0 {
			t.Errorf("parts_total a minute after start = %v, want > 0", got)
		}
		// The other machine has no device side: it ignores the queue.
		other := s.Machines()[1].ID
		fc.queue(other, Cmd{ID: "x", Name: "stop"})
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := fc.takeAnswers(); len(got) != 0 {
			t.Errorf("answers for a machine without a device side: %v", got)
		}
		cancel()
		wg.Wait()
	})
}

// TestControlApplyTimeout: a command its machine does not carry out (the
// simulator is not running: no events) fails after ControlConfig.Apply and
// is not carried out later.
func TestControlApplyTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		fc := newFakeControl()
		s := New(Config{Machines: 1, Seed: 1}, nil, nil)
		id := s.Machines()[0].ID
		done := make(chan error, 1)
		go func() { done <- s.RunControl(ctx, fc, ControlConfig{Apply: 5 * time.Second}, nil) }()
		fc.queue(id, Cmd{ID: "c1", Name: "stop"})
		synctest.Wait()
		if diff := cmp.Diff(fc.takeAnswers(), []answer{{id, "c1", Accepted, nil, ""}}); diff != "" {
			t.Errorf("answers before the timeout (-got +want):\n%s", diff)
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		want := []answer{{id, "c1", Failed, nil, "the machine did not carry it out within 5s"}}
		if diff := cmp.Diff(fc.takeAnswers(), want); diff != "" {
			t.Errorf("answers after the timeout (-got +want):\n%s", diff)
		}
		m := s.fleet.machines[0]
		m.in.mu.Lock()
		queued := len(m.in.ops)
		m.in.mu.Unlock()
		if queued != 0 {
			t.Errorf("%d commands still queued after the failure, want 0", queued)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunControl = %v, want nil when ctx ends", err)
		}
	})
}

// TestControlRetries: errors of the Control are retried after
// ControlConfig.Retry, and a failed report is sent again.
func TestControlRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		fc := newFakeControl()
		fc.failNext = errors.New("server down")
		s := New(Config{Machines: 1, Seed: 1}, nil, nil)
		done := make(chan error, 1)
		go func() { done <- s.RunControl(ctx, fc, ControlConfig{Retry: 3 * time.Second}, nil) }()
		synctest.Wait()
		if got := fc.takeReports(); len(got) != 0 {
			t.Errorf("reports while the server is down: %v", got)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := fc.takeReports(); len(got) != 1 {
			t.Errorf("reports after the retry: %v, want 1", got)
		}
		cancel()
		<-done
	})
}

func TestControlConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg  ControlConfig
		want string
	}{
		{ControlConfig{}, ""},
		{ControlConfig{Machines: MaxControlMachines, Wait: time.Minute}, ""},
		{ControlConfig{Machines: -1}, "control-machines: must be between 0 and 1000, got -1"},
		{ControlConfig{Machines: MaxControlMachines + 1}, "control-machines: must be between 0 and 1000, got 1001"},
		{ControlConfig{Wait: -time.Second}, "control-wait: must be between 0 and 10m, got -1s"},
	} {
		got := ""
		if err := tt.cfg.Validate(); err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("%+v.Validate() = %q, want %q", tt.cfg, got, tt.want)
		}
	}
	if err := New(Config{}, nil, nil).RunControl(t.Context(), newFakeControl(), ControlConfig{Machines: -1}, nil); err == nil {
		t.Error("RunControl with an invalid config = nil, want an error")
	}
}

// TestControlBackoff: errors in a row double the pause from Retry up to
// 30s.
func TestControlBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		var mu sync.Mutex
		var calls []time.Duration
		start := time.Now()
		down := errors.New("404 Not Found")
		ctl := ControlFuncs{
			ReportFunc: func(context.Context, string, map[string]any) error {
				mu.Lock()
				defer mu.Unlock()
				calls = append(calls, time.Since(start))
				return down
			},
			CommandsFunc: func(ctx context.Context, _ string, _ time.Duration) ([]Cmd, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			},
		}
		s := New(Config{Machines: 1, Seed: 1}, nil, nil)
		done := make(chan error, 1)
		go func() { done <- s.RunControl(ctx, ctl, ControlConfig{Retry: time.Second}, nil) }()
		time.Sleep(2 * time.Minute)
		cancel()
		<-done
		want := []time.Duration{0, 1, 3, 7, 15, 31, 61, 91}
		for i := range want {
			want[i] *= time.Second
		}
		mu.Lock()
		defer mu.Unlock()
		if diff := cmp.Diff(calls, want); diff != "" {
			t.Errorf("report attempts at (-got +want):\n%s", diff)
		}
	})
}
