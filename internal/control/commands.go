package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/twinline/twinline/internal/twin"
)

// The bounds of a command's timeout, and its default.
const (
	DefaultTimeout = time.Minute
	MinTimeout     = time.Second
	MaxTimeout     = 24 * time.Hour
)

// Retention is how long a finished command is kept (and its idempotency
// key with it) after its last transition.
const Retention = 7 * 24 * time.Hour

const (
	maxFetch          = 100      // commands one Fetch hands out
	maxResultBytes    = 64 << 10 // a device's result, encoded
	maxReasonChars    = 1024
	maxIdempotencyKey = 255
	maxMoveAttempts   = 16
	resyncInterval    = 30 * time.Second // Run rereads the pending commands at least this often
	pruneInterval     = time.Hour
)

// CreateRequest is a command to send: its name (one of the machine's
// registry entry's commands), params (checked against the command's params
// schema), timeout (0: DefaultTimeout), the client's idempotency key
// (optional) and who asks.
type CreateRequest struct {
	Name           string
	Params         map[string]any
	Timeout        time.Duration
	IdempotencyKey string
	By             string
}

// Response is a device's answer to a command: the state it reports
// (accepted, rejected, succeeded or failed), an optional result and
// reason, who answered and through what (mqtt, http).
type Response struct {
	State  State
	Result any
	Reason string
	By     string
	Via    string
}

// Commands keeps the machines' commands and drives their lifecycle: it
// checks new commands against the registry's command specs, moves them
// through their states as devices answer, expires the ones past their
// time, and tells subscribers of every transition. It is safe for
// concurrent use.
type Commands struct {
	store  CommandStore
	specs  func(machine string) map[string]twin.CommandSpec
	now    func() time.Time
	logger *slog.Logger

	ids idGen

	mu      sync.Mutex
	subs    []func(Command)
	waiters map[string]map[chan struct{}]struct{} // Fetch calls waiting, by machine
	wake    chan struct{}                         // Run's expiry loop: a deadline may have changed
	heard   map[string]heardRev                   // by command id
	started time.Time                             // when this process began to tell subscribers
}

// NewCommands returns the commands kept in s. specs returns the commands a
// machine supports (nil for an unknown machine); now is the clock.
func NewCommands(s CommandStore, specs func(machine string) map[string]twin.CommandSpec, now func() time.Time, logger *slog.Logger) *Commands {
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Commands{
		store: s, specs: specs, now: now, logger: logger.With("component", "commands"),
		waiters: map[string]map[chan struct{}]struct{}{}, wake: make(chan struct{}, 1), heard: map[string]heardRev{},
		started: now().UTC().Truncate(time.Millisecond),
	}
}

// Subscribe calls fn with every transition of every command, creation
// included, once it is durable: the ones made here and, with a store
// shared by replicas (PostgreSQL), the ones other replicas make (while Run
// runs). fn must not block.
func (c *Commands) Subscribe(fn func(Command)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, fn)
}

func (c *Commands) clock() time.Time { return c.now().UTC().Truncate(time.Millisecond) }

// Create sends a command to machine. An unknown command name, params the
// command's schema refuses or a timeout out of bounds are a
// *ValidationError. A request with the IdempotencyKey of an existing
// command of the machine returns that command and created false.
func (c *Commands) Create(ctx context.Context, machine string, req CreateRequest) (Command, bool, error) {
	var fields []twin.FieldError
	specs := c.specs(machine)
	spec, ok := specs[req.Name]
	if !ok {
		names := make([]string, 0, len(specs))
		for n := range specs {
			names = append(names, n)
		}
		slices.Sort(names)
		reason := "machine " + machine + " declares no command " + fmt.Sprintf("%q", req.Name)
		if len(names) > 0 {
			reason += " (it has: " + strings.Join(names, ", ") + ")"
		} else {
			reason += " (it declares none: add commands to its registry entry)"
		}
		fields = append(fields, twin.FieldError{Field: "name", Reason: reason})
	}
	params := req.Params
	if params == nil {
		params = map[string]any{}
	}
	if ok && spec.Params != nil {
		for _, f := range spec.Params.Validate(params) {
			switch {
			case f.Field == "":
				f.Field = "params"
			case strings.HasPrefix(f.Field, "["):
				f.Field = "params" + f.Field
			default:
				f.Field = "params." + f.Field
			}
			fields = append(fields, f)
		}
	}
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	if timeout < MinTimeout || timeout > MaxTimeout {
		fields = append(fields, twin.FieldError{Field: "timeout", Reason: fmt.Sprintf("must be from %v to %v", MinTimeout, MaxTimeout)})
	}
	if n := utf8.RuneCountInString(req.IdempotencyKey); n > maxIdempotencyKey || !utf8.ValidString(req.IdempotencyKey) {
		fields = append(fields, twin.FieldError{Field: "idempotencyKey", Reason: fmt.Sprintf("must be UTF-8 of at most %d characters", maxIdempotencyKey)})
	}
	if _, err := json.Marshal(params); err != nil {
		fields = append(fields, twin.FieldError{Field: "params", Reason: "not representable in JSON: " + err.Error()})
	}
	if len(fields) > 0 {
		return Command{}, false, &ValidationError{Fields: fields}
	}
	now := c.clock()
	timeout = timeout.Truncate(time.Millisecond)
	cmd := Command{
		ID: c.ids.next(now), Machine: machine, Name: req.Name, Params: params, State: StatePending,
		TimeoutMs: timeout.Milliseconds(), CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(timeout),
		CreatedBy: req.By, IdempotencyKey: req.IdempotencyKey,
		History: []Transition{{State: StatePending, At: now, By: req.By}},
	}
	got, created, err := c.store.Create(ctx, cmd)
	if err != nil {
		return Command{}, false, fmt.Errorf("creating command: %w", err)
	}
	if created {
		c.changed(got)
	}
	return got, created, nil
}

// Get returns a command of machine; ErrNotFound if none.
func (c *Commands) Get(ctx context.Context, machine, id string) (Command, error) {
	return c.store.Get(ctx, machine, id)
}

// List returns the machine's commands matching f, newest first.
func (c *Commands) List(ctx context.Context, machine string, f Filter) ([]Command, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	return c.store.List(ctx, machine, f)
}

// Pending returns every command not finished, of every machine: what a
// broker redelivers when it starts.
func (c *Commands) Pending(ctx context.Context) ([]Command, error) {
	return c.store.Pending(ctx)
}

// Delivered records that a device got a pending command, through via
// (mqtt, http). A command already past pending is returned as it is.
func (c *Commands) Delivered(ctx context.Context, machine, id, via string) (Command, error) {
	cmd, _, err := c.deliver(ctx, machine, id, via)
	return cmd, err
}

// deliver is Delivered, and whether this call moved the command.
func (c *Commands) deliver(ctx context.Context, machine, id, via string) (Command, bool, error) {
	return c.move(ctx, machine, id, func(cmd *Command, now time.Time) (bool, error) {
		if cmd.State != StatePending {
			return false, nil
		}
		cmd.step(Transition{State: StateDelivered, At: now, Via: via})
		return true, nil
	})
}

// Respond records a device's answer. A state other than accepted,
// rejected, succeeded or failed, or a result too large, is a
// *ValidationError; an answer to a finished command (expired included),
// or one that would move it backwards, is ErrConflict. Repeating the
// current non-terminal state changes nothing.
func (c *Commands) Respond(ctx context.Context, machine, id string, r Response) (Command, error) {
	var fields []twin.FieldError
	switch r.State {
	case StateAccepted, StateRejected, StateSucceeded, StateFailed:
	default:
		fields = append(fields, twin.FieldError{Field: "state", Reason: fmt.Sprintf("%q is not one of accepted, rejected, succeeded, failed", r.State)})
	}
	var result json.RawMessage
	if r.Result != nil {
		b, err := json.Marshal(r.Result)
		switch {
		case err != nil:
			fields = append(fields, twin.FieldError{Field: "result", Reason: "not representable in JSON: " + err.Error()})
		case len(b) > maxResultBytes:
			fields = append(fields, twin.FieldError{Field: "result", Reason: fmt.Sprintf("exceeds %d bytes encoded", maxResultBytes)})
		case string(b) != "null":
			result = b
		}
	}
	if utf8.RuneCountInString(r.Reason) > maxReasonChars || !utf8.ValidString(r.Reason) {
		fields = append(fields, twin.FieldError{Field: "reason", Reason: fmt.Sprintf("must be UTF-8 of at most %d characters", maxReasonChars)})
	}
	if len(fields) > 0 {
		return Command{}, &ValidationError{Fields: fields}
	}
	cmd, _, err := c.move(ctx, machine, id, func(cmd *Command, now time.Time) (bool, error) {
		switch {
		case cmd.State.Terminal():
			return false, fmt.Errorf("command %s is already %s: %w", id, cmd.State, ErrConflict)
		case cmd.State == r.State:
			return false, nil
		case !CanMove(cmd.State, r.State):
			return false, fmt.Errorf("command %s is %s, it cannot become %s: %w", id, cmd.State, r.State, ErrConflict)
		}
		if result != nil {
			cmd.Result = result
		}
		if r.Reason != "" {
			cmd.Reason = r.Reason
		}
		cmd.step(Transition{State: r.State, At: now, By: r.By, Via: r.Via})
		return true, nil
	})
	return cmd, err
}

// step moves cmd to t.State.
func (cmd *Command) step(t Transition) {
	cmd.State = t.State
	cmd.UpdatedAt = t.At
	cmd.History = append(slices.Clip(cmd.History), t)
}

// expire moves cmd to expired if it is due at now, and reports whether it
// did.
func (cmd *Command) expire(now time.Time) bool {
	if cmd.State.Terminal() || now.Before(cmd.ExpiresAt) {
		return false
	}
	cmd.Reason = fmt.Sprintf("not finished within its timeout of %v (it was %s)", time.Duration(cmd.TimeoutMs)*time.Millisecond, cmd.State)
	cmd.step(Transition{State: StateExpired, At: now})
	return true
}

// move reads a command, lets apply change it, and stores it if apply says
// it changed, retrying from a fresh read when another writer got there
// first. A command due to expire expires first (apply then sees it
// expired). It returns the command as stored and whether apply changed it.
func (c *Commands) move(ctx context.Context, machine, id string, apply func(cmd *Command, now time.Time) (bool, error)) (Command, bool, error) {
	for range maxMoveAttempts {
		cmd, err := c.store.Get(ctx, machine, id)
		if err != nil {
			return Command{}, false, err
		}
		now := c.clock()
		if cmd.expire(now) {
			if err := c.store.Update(ctx, cmd); err != nil {
				if errors.Is(err, ErrConflict) {
					continue
				}
				return Command{}, false, fmt.Errorf("expiring command %s: %w", id, err)
			}
			c.changed(cmd)
		}
		changed, err := apply(&cmd, now)
		if err != nil || !changed {
			return cmd, false, err
		}
		if err := c.store.Update(ctx, cmd); err != nil {
			if errors.Is(err, ErrConflict) {
				continue
			}
			return Command{}, false, fmt.Errorf("updating command %s: %w", id, err)
		}
		c.changed(cmd)
		return cmd, true, nil
	}
	return Command{}, false, fmt.Errorf("updating command %s: %w: it kept changing under us", id, ErrConflict)
}

// changed tells the subscribers, the Fetch calls waiting for the machine
// and the expiry loop of a transition.
func (c *Commands) changed(cmd Command) {
	c.mu.Lock()
	subs := c.subs
	if cmd.State == StatePending {
		for ch := range c.waiters[cmd.Machine] {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	// Subscribers hear every transition once, in order: a command read
	// after several transitions (another replica's, followed late) is
	// told as each step it missed since this process started; one heard
	// already is not told again.
	rev := cmd.Revision()
	last := c.heard[cmd.ID].rev
	if rev > last {
		c.heard[cmd.ID] = heardRev{rev: rev, at: c.now(), terminal: cmd.State.Terminal()}
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	for i := last + 1; i <= rev; i++ {
		step := cmd
		if i < rev {
			if cmd.History[i-1].At.Before(c.started) {
				continue // told, if at all, before this process started
			}
			step = cmd.at(i)
		}
		for _, fn := range subs {
			fn(step)
		}
	}
}

// heardRev is the last revision of a command Subscribe's functions heard.
type heardRev struct {
	rev      int
	at       time.Time
	terminal bool
}

// forgetHeard drops what subscribers heard of commands finished before
// cutoff: no transition of theirs is left to hear.
func (c *Commands) forgetHeard(cutoff time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, h := range c.heard {
		if h.terminal && h.at.Before(cutoff) {
			delete(c.heard, id)
		}
	}
}

// Fetch is a device's poll over HTTP: the machine's pending commands,
// oldest first, each marked delivered (via "http") by this call — two
// concurrent fetches never hand out the same command. With none pending it
// waits up to wait for one; it returns an empty list then.
func (c *Commands) Fetch(ctx context.Context, machine string, wait time.Duration) ([]Command, error) {
	return c.FetchVia(ctx, machine, wait, "http")
}

// FetchVia is Fetch for a device that takes its commands another way
// than HTTP, recorded in the delivery (the in-process demo devices: "demo").
func (c *Commands) FetchVia(ctx context.Context, machine string, wait time.Duration, via string) ([]Command, error) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	if c.waiters[machine] == nil {
		c.waiters[machine] = map[chan struct{}]struct{}{}
	}
	c.waiters[machine][ch] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters[machine], ch)
		if len(c.waiters[machine]) == 0 {
			delete(c.waiters, machine)
		}
		c.mu.Unlock()
	}()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		pending, err := c.store.List(ctx, machine, Filter{State: StatePending, Limit: maxFetch})
		if err != nil {
			return nil, fmt.Errorf("fetching commands: %w", err)
		}
		out := []Command{}
		for _, p := range slices.Backward(pending) {
			cmd, moved, err := c.deliver(ctx, machine, p.ID, via)
			switch {
			case errors.Is(err, ErrNotFound):
				continue
			case err != nil:
				return nil, fmt.Errorf("fetching commands: %w", err)
			case moved:
				out = append(out, cmd)
			}
		}
		if len(out) > 0 {
			return out, nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return out, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// follower is a store shared by replicas: Follow calls changed with the
// machine and id of each command another replica changed, and resync when
// changes may have been missed (at start, after a lost connection), until
// ctx ends.
type follower interface {
	Follow(ctx context.Context, changed func(machine, id string), resync func()) error
}

// Run expires the commands past their time (within a second of it, by
// the clock passed to NewCommands), prunes the finished ones older than
// Retention and, with a store shared by replicas, tells the subscribers of
// the other replicas' transitions. It returns when ctx ends.
func (c *Commands) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if f, ok := c.store.(follower); ok {
		wg.Go(func() {
			err := f.Follow(ctx, c.followed, func() {
				select {
				case c.wake <- struct{}{}:
				default:
				}
				c.wakeAllFetches()
			})
			if err != nil && ctx.Err() == nil {
				c.logger.Error("following other replicas' commands", "err", err)
			}
		})
	}
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var lastPrune time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-c.wake:
		}
		now := c.now()
		if now.Sub(lastPrune) >= pruneInterval {
			lastPrune = now
			c.forgetHeard(now.Add(-pruneInterval))
			if n, err := c.store.Prune(ctx, now.Add(-Retention)); err != nil {
				c.logger.Warn("pruning finished commands", "err", err)
			} else if n > 0 {
				c.logger.Info("pruned finished commands", "count", n)
			}
		}
		d := resyncInterval
		next, err := c.expireDue(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			c.logger.Warn("expiring commands", "err", err)
			d = time.Second
		}
		if !next.IsZero() {
			d = min(d, max(next.Sub(c.now()), 0))
		}
		timer.Reset(d)
	}
}

// expireDue expires the commands due and returns the earliest expiry time
// of the others (zero if none).
func (c *Commands) expireDue(ctx context.Context) (time.Time, error) {
	pending, err := c.store.Pending(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading pending commands: %w", err)
	}
	var next time.Time
	now := c.clock()
	var errs []error
	for _, p := range pending {
		if now.Before(p.ExpiresAt) {
			if next.IsZero() || p.ExpiresAt.Before(next) {
				next = p.ExpiresAt
			}
			continue
		}
		// move expires it before apply, which has nothing more to do.
		_, _, err := c.move(ctx, p.Machine, p.ID, func(*Command, time.Time) (bool, error) { return false, nil })
		if err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	return next, errors.Join(errs...)
}

// followed handles another replica's change of a command.
func (c *Commands) followed(machine, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd, err := c.store.Get(ctx, machine, id)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			c.logger.Warn("reading a command another replica changed", "machine", machine, "id", id, "err", err)
		}
		return
	}
	cmd.Remote = true
	c.changed(cmd)
}

func (c *Commands) wakeAllFetches() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ws := range c.waiters {
		for ch := range ws {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}
