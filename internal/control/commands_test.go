package control

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/twin"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var testStart = time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)

func fp(v float64) *float64 { return &v }

// testSpecs: press-07 has reset (params {counter: enum parts, required})
// and stop (no params schema).
func testSpecs(machine string) map[string]twin.CommandSpec {
	if machine != "press-07" {
		return nil
	}
	no := false
	return map[string]twin.CommandSpec{
		"reset": {Params: &twin.Schema{Type: "object", Required: []string{"counter"}, AdditionalProperties: &no,
			Properties: map[string]*twin.Schema{"counter": {Type: "string", Enum: []any{"parts"}}, "n": {Type: "number", Minimum: fp(0)}}}},
		"stop": {},
	}
}

// newTestCommands returns Commands over a file store, its clock, and the
// transitions its subscriber saw.
func newTestCommands(t *testing.T, now func() time.Time) (*Commands, *[]Command) {
	t.Helper()
	s, err := OpenFileCommandStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := NewCommands(s, testSpecs, now, nil)
	var mu sync.Mutex
	seen := &[]Command{}
	c.Subscribe(func(cmd Command) {
		mu.Lock()
		defer mu.Unlock()
		*seen = append(*seen, cmd)
	})
	return c, seen
}

func states(cmds []Command) []string {
	out := []string{}
	for _, c := range cmds {
		out = append(out, c.ID[:2]+string(c.State))
	}
	return out
}

func TestCreateValidation(t *testing.T) {
	clk := &fakeClock{t: testStart}
	c, seen := newTestCommands(t, clk.now)
	tests := []struct {
		name    string
		machine string
		req     CreateRequest
		want    []twin.FieldError
	}{
		{"unknown name", "press-07", CreateRequest{Name: "explode"},
			[]twin.FieldError{{Field: "name", Reason: `machine press-07 declares no command "explode" (it has: reset, stop)`}}},
		{"machine without commands", "lathe-1", CreateRequest{Name: "stop"},
			[]twin.FieldError{{Field: "name", Reason: `machine lathe-1 declares no command "stop" (it declares none: add commands to its registry entry)`}}},
		{"params enum", "press-07", CreateRequest{Name: "reset", Params: map[string]any{"counter": "bolts"}},
			[]twin.FieldError{{Field: "params.counter", Reason: `must be one of "parts"`}}},
		{"params required", "press-07", CreateRequest{Name: "reset"},
			[]twin.FieldError{{Field: "params.counter", Reason: "is required"}}},
		{"timeout too short", "press-07", CreateRequest{Name: "stop", Timeout: 500 * time.Millisecond},
			[]twin.FieldError{{Field: "timeout", Reason: "must be from 1s to 24h0m0s"}}},
		{"timeout too long", "press-07", CreateRequest{Name: "stop", Timeout: 25 * time.Hour},
			[]twin.FieldError{{Field: "timeout", Reason: "must be from 1s to 24h0m0s"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := c.Create(context.Background(), tt.machine, tt.req)
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Create error = %v, want a ValidationError", err)
			}
			if diff := cmp.Diff(ve.Fields, tt.want); diff != "" {
				t.Errorf("fields (-got +want):\n%s", diff)
			}
		})
	}
	if len(*seen) != 0 {
		t.Errorf("refused commands were published: %v", states(*seen))
	}
}

func TestCreate(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: testStart.Add(123456 * time.Microsecond)}
	c, seen := newTestCommands(t, clk.now)
	got, created, err := c.Create(ctx, "press-07", CreateRequest{Name: "reset", Params: map[string]any{"counter": "parts"}, By: "alice"})
	if err != nil || !created {
		t.Fatalf("Create = created %v, %v", created, err)
	}
	at := testStart.Add(123 * time.Millisecond)
	want := Command{ID: got.ID, Machine: "press-07", Name: "reset", Params: map[string]any{"counter": "parts"}, State: StatePending,
		TimeoutMs: 60000, CreatedAt: at, UpdatedAt: at, ExpiresAt: at.Add(time.Minute), CreatedBy: "alice",
		History: []Transition{{State: StatePending, At: at, By: "alice"}}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Create (-got +want):\n%s", diff)
	}
	if len(got.ID) != 28 || got.ID[:2] != "c-" {
		t.Errorf("id %q is not c- and a ULID", got.ID)
	}
	if diff := cmp.Diff(*seen, []Command{want}); diff != "" {
		t.Errorf("published (-got +want):\n%s", diff)
	}
	// The JSON of the contract: times with milliseconds.
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"createdAt": "2026-12-07T15:00:00.123Z", "expiresAt": "2026-12-07T15:01:00.123Z", "state": "pending", "timeoutMs": 60000.0} {
		if m[k] != v {
			t.Errorf("JSON %s = %v, want %v", k, m[k], v)
		}
	}
}

func TestCreateIdempotent(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: testStart}
	c, seen := newTestCommands(t, clk.now)
	req := CreateRequest{Name: "stop", IdempotencyKey: "op-1", By: "alice"}
	first, created, err := c.Create(ctx, "press-07", req)
	if err != nil || !created {
		t.Fatalf("first Create = %v, %v", created, err)
	}
	clk.advance(time.Hour)
	again, created, err := c.Create(ctx, "press-07", req)
	if err != nil || created {
		t.Fatalf("repeated Create = created %v, %v; want the first", created, err)
	}
	if diff := cmp.Diff(again, first); diff != "" {
		t.Errorf("repeat (-got +want):\n%s", diff)
	}
	if len(*seen) != 1 {
		t.Errorf("published %d transitions, want 1", len(*seen))
	}
}

// step is one device action of a lifecycle test.
type step struct {
	deliver bool  // Delivered (via mqtt) instead of Respond
	state   State // for Respond
	err     error // wanted
	after   State // the command's state then
	history int   // its history length then
}

func TestLifecycle(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
	}{
		{"happy path", []step{
			{deliver: true, after: StateDelivered, history: 2},
			{state: StateAccepted, after: StateAccepted, history: 3},
			{state: StateSucceeded, after: StateSucceeded, history: 4},
			{state: StateSucceeded, err: ErrConflict, after: StateSucceeded, history: 4},
			{deliver: true, after: StateSucceeded, history: 4},
		}},
		{"rejected at once", []step{
			{state: StateRejected, after: StateRejected, history: 2},
			{state: StateAccepted, err: ErrConflict, after: StateRejected, history: 2},
		}},
		{"accepted cannot be rejected", []step{
			{state: StateAccepted, after: StateAccepted, history: 2},
			{state: StateRejected, err: ErrConflict, after: StateAccepted, history: 2},
			{state: StateFailed, after: StateFailed, history: 3},
		}},
		{"repeats change nothing", []step{
			{deliver: true, after: StateDelivered, history: 2},
			{deliver: true, after: StateDelivered, history: 2},
			{state: StateAccepted, after: StateAccepted, history: 3},
			{state: StateAccepted, after: StateAccepted, history: 3},
		}},
		{"a device cannot send pending", []step{
			{state: StatePending, err: ErrInvalid, after: StatePending, history: 1},
			{state: StateExpired, err: ErrInvalid, after: StatePending, history: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clk := &fakeClock{t: testStart}
			c, _ := newTestCommands(t, clk.now)
			cmd, _, err := c.Create(ctx, "press-07", CreateRequest{Name: "stop"})
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				clk.advance(time.Second)
				if s.deliver {
					_, err = c.Delivered(ctx, "press-07", cmd.ID, "mqtt")
				} else {
					_, err = c.Respond(ctx, "press-07", cmd.ID, Response{State: s.state, Result: map[string]any{"i": i}, By: "dev"})
				}
				if !errors.Is(err, s.err) || (s.err == nil && err != nil) {
					t.Fatalf("step %d: error = %v, want %v", i, err, s.err)
				}
				got, err := c.Get(ctx, "press-07", cmd.ID)
				if err != nil {
					t.Fatal(err)
				}
				if got.State != s.after || len(got.History) != s.history {
					t.Fatalf("step %d: state %s with %d transitions, want %s with %d", i, got.State, len(got.History), s.after, s.history)
				}
			}
		})
	}
}

func TestRespondKeepsResult(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: testStart}
	c, _ := newTestCommands(t, clk.now)
	cmd, _, _ := c.Create(ctx, "press-07", CreateRequest{Name: "stop"})
	clk.advance(1500 * time.Millisecond)
	got, err := c.Respond(ctx, "press-07", cmd.ID, Response{State: StateFailed, Result: map[string]any{"code": 7}, Reason: "jammed", By: "dev-1", Via: "http"})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Result) != `{"code":7}` || got.Reason != "jammed" {
		t.Errorf("result %s, reason %q", got.Result, got.Reason)
	}
	want := Transition{State: StateFailed, At: testStart.Add(1500 * time.Millisecond), By: "dev-1", Via: "http"}
	if diff := cmp.Diff(got.History[len(got.History)-1], want); diff != "" {
		t.Errorf("last transition (-got +want):\n%s", diff)
	}
	if _, err := c.Respond(ctx, "press-07", "c-nope", Response{State: StateFailed}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Respond to an unknown command: %v, want ErrNotFound", err)
	}
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{t: testStart}
	c, seen := newTestCommands(t, clk.now)
	a, _, _ := c.Create(ctx, "press-07", CreateRequest{Name: "stop", Timeout: 5 * time.Second})
	b, _, _ := c.Create(ctx, "press-07", CreateRequest{Name: "stop", Timeout: 10 * time.Second})
	if _, err := c.Respond(ctx, "press-07", b.ID, Response{State: StateAccepted}); err != nil {
		t.Fatal(err)
	}

	clk.advance(4999 * time.Millisecond)
	next, err := c.expireDue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !next.Equal(a.ExpiresAt) {
		t.Errorf("next expiry = %v, want %v", next, a.ExpiresAt)
	}
	clk.advance(time.Millisecond)
	next, err = c.expireDue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !next.Equal(b.ExpiresAt) {
		t.Errorf("next expiry = %v, want %v", next, b.ExpiresAt)
	}
	got, _ := c.Get(ctx, "press-07", a.ID)
	if got.State != StateExpired || got.Reason != "not finished within its timeout of 5s (it was pending)" {
		t.Errorf("after its timeout: %s, %q", got.State, got.Reason)
	}
	if _, err := c.Respond(ctx, "press-07", a.ID, Response{State: StateSucceeded}); !errors.Is(err, ErrConflict) {
		t.Errorf("answer after expiry: %v, want ErrConflict", err)
	}

	// An answer past the deadline, before the timer ran: the command
	// expires first, and the answer is refused.
	clk.advance(5 * time.Second)
	if _, err := c.Respond(ctx, "press-07", b.ID, Response{State: StateSucceeded}); !errors.Is(err, ErrConflict) {
		t.Errorf("answer past the deadline: %v, want ErrConflict", err)
	}
	got, _ = c.Get(ctx, "press-07", b.ID)
	if got.State != StateExpired {
		t.Errorf("b is %s, want expired", got.State)
	}
	if diff := cmp.Diff(states(*seen), []string{"c-pending", "c-pending", "c-accepted", "c-expired", "c-expired"}); diff != "" {
		t.Errorf("published (-got +want):\n%s", diff)
	}
}

func TestRunExpiresOnTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		c, _ := newTestCommands(t, time.Now)
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		cmd, _, err := c.Create(ctx, "press-07", CreateRequest{Name: "stop", Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(3*time.Second - time.Millisecond)
		synctest.Wait()
		if got, _ := c.Get(ctx, "press-07", cmd.ID); got.State != StatePending {
			t.Errorf("just before its timeout: %s", got.State)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		got, _ := c.Get(ctx, "press-07", cmd.ID)
		if got.State != StateExpired || !got.UpdatedAt.Equal(cmd.ExpiresAt) {
			t.Errorf("at its timeout: %s at %v, want expired at %v", got.State, got.UpdatedAt, cmd.ExpiresAt)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		c, _ := newTestCommands(t, time.Now)
		first, _, _ := c.Create(ctx, "press-07", CreateRequest{Name: "stop"})
		time.Sleep(time.Millisecond)
		second, _, _ := c.Create(ctx, "press-07", CreateRequest{Name: "reset", Params: map[string]any{"counter": "parts"}})

		got, err := c.Fetch(ctx, "press-07", 0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(states(got), []string{"c-delivered", "c-delivered"}); diff != "" || got[0].ID != first.ID || got[1].ID != second.ID {
			t.Errorf("Fetch = %v (oldest first wanted)", diff)
		}
		if via := got[0].History[1].Via; via != "http" {
			t.Errorf("delivered via %q, want http", via)
		}

		// Nothing pending: it waits the whole wait and returns none.
		start := time.Now()
		got, err = c.Fetch(ctx, "press-07", 30*time.Second)
		if err != nil || len(got) != 0 || time.Since(start) != 30*time.Second {
			t.Errorf("empty Fetch = %d commands, %v after %v; want none after 30s", len(got), err, time.Since(start))
		}

		// One created while two wait: exactly one of them gets it, at
		// once; the other waits out its 10 s.
		var wg sync.WaitGroup
		counts := make([]int, 2)
		took := make([]time.Duration, 2)
		start = time.Now()
		for i := range 2 {
			wg.Go(func() {
				got, err := c.Fetch(ctx, "press-07", 10*time.Second)
				if err != nil {
					t.Error(err)
				}
				counts[i], took[i] = len(got), time.Since(start)
			})
		}
		time.Sleep(2 * time.Second)
		if _, _, err := c.Create(ctx, "press-07", CreateRequest{Name: "stop"}); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if counts[0]+counts[1] != 1 {
			t.Fatalf("the two fetches got %v commands, want 1 in all", counts)
		}
		winner := 0
		if counts[1] == 1 {
			winner = 1
		}
		if took[winner] != 2*time.Second || took[1-winner] != 10*time.Second {
			t.Errorf("the fetches returned after %v (the one with the command first), want 2s and 10s", []time.Duration{took[winner], took[1-winner]})
		}
	})
}
