package control

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// State is where a command is in its lifecycle.
type State string

// The states of a command. A command starts pending; delivered means a
// device got it (an MQTT PUBACK, an HTTP fetch); the device then accepts
// or rejects it and reports success or failure. A command not finished by
// its expiry time expires.
const (
	StatePending   State = "pending"
	StateDelivered State = "delivered"
	StateAccepted  State = "accepted"
	StateRejected  State = "rejected"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateExpired   State = "expired"
)

// Terminal reports whether s ends the lifecycle: rejected, succeeded,
// failed, expired.
func (s State) Terminal() bool {
	return s == StateRejected || s == StateSucceeded || s == StateFailed || s == StateExpired
}

// Valid reports whether s is one of the states.
func (s State) Valid() bool {
	switch s {
	case StatePending, StateDelivered, StateAccepted, StateRejected, StateSucceeded, StateFailed, StateExpired:
		return true
	}
	return false
}

// rank orders the non-terminal states: a command only moves forward.
func (s State) rank() int {
	switch s {
	case StatePending:
		return 0
	case StateDelivered:
		return 1
	case StateAccepted:
		return 2
	}
	return 3 // terminal
}

// CanMove reports whether a command in state from may move to state to:
// forward only (pending → delivered → accepted → a terminal state, any of
// them skippable), never out of a terminal state, and accepted never to
// rejected.
func CanMove(from, to State) bool {
	if from.Terminal() || !to.Valid() || to.rank() <= from.rank() {
		return false
	}
	return !(from == StateAccepted && to == StateRejected)
}

// Transition is one step of a command's history: the state entered, when,
// who caused it (an identity) and how it travelled (mqtt, http).
type Transition struct {
	State State     `json:"state"`
	At    time.Time `json:"at"`
	By    string    `json:"by,omitempty"`
	Via   string    `json:"via,omitempty"`
}

// Command is a one-shot operation sent to a machine, with its lifecycle.
// Times are UTC, whole milliseconds, and RFC 3339 with milliseconds in
// JSON.
type Command struct {
	ID        string         `json:"id"`
	Machine   string         `json:"machine"`
	Name      string         `json:"name"`
	Params    map[string]any `json:"params"`
	State     State          `json:"state"`
	TimeoutMs int64          `json:"timeoutMs"`
	CreatedAt time.Time      `json:"createdAt"`
	UpdatedAt time.Time      `json:"updatedAt"`
	ExpiresAt time.Time      `json:"expiresAt"`
	CreatedBy string         `json:"createdBy,omitempty"`
	// Result is what the device answered, as it sent it (absent if it
	// sent nothing); Reason its explanation (or why it expired).
	Result json.RawMessage `json:"result,omitempty"`
	Reason string          `json:"reason,omitempty"`
	// IdempotencyKey is the key the command was created with, if any.
	IdempotencyKey string       `json:"idempotencyKey,omitempty"`
	History        []Transition `json:"history"`
	// Remote marks, for Subscribe's functions, a transition another
	// replica made (followed through a shared store): a fan-out every
	// replica reaches itself (an external MQTT broker) publishes only
	// its own. Not stored, not in JSON.
	Remote bool `json:"-"`
}

// at returns the command as it stood after its first rev transitions
// (1 ≤ rev ≤ Revision()): its state, update time and history then; the
// result and reason come with the final state only.
func (c Command) at(rev int) Command {
	step := c
	step.History = c.History[:rev:rev]
	last := step.History[rev-1]
	step.State, step.UpdatedAt = last.State, last.At
	step.Result, step.Reason = nil, ""
	return step
}

// Revision counts the command's transitions: a store updates a command
// only over the revision it was read at.
func (c Command) Revision() int { return len(c.History) }

// timeLayout is RFC 3339 with milliseconds, as twin.Info's times.
const timeLayout = "2006-01-02T15:04:05.000Z07:00"

type jsonTime time.Time

func (t jsonTime) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Time(t).UTC().Format(timeLayout) + `"`), nil
}

func (t *jsonTime) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("decoding a time: %w", err)
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("decoding a time: %w", err)
	}
	*t = jsonTime(v.UTC())
	return nil
}

type transitionJSON struct {
	State State    `json:"state"`
	At    jsonTime `json:"at"`
	By    string   `json:"by,omitempty"`
	Via   string   `json:"via,omitempty"`
}

// MarshalJSON writes At with milliseconds.
func (t Transition) MarshalJSON() ([]byte, error) {
	return json.Marshal(transitionJSON{t.State, jsonTime(t.At), t.By, t.Via})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (t *Transition) UnmarshalJSON(b []byte) error {
	var v transitionJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*t = Transition{v.State, time.Time(v.At), v.By, v.Via}
	return nil
}

type commandAlias Command

type commandJSON struct {
	commandAlias
	CreatedAt jsonTime `json:"createdAt"`
	UpdatedAt jsonTime `json:"updatedAt"`
	ExpiresAt jsonTime `json:"expiresAt"`
}

// MarshalJSON writes the times with milliseconds.
func (c Command) MarshalJSON() ([]byte, error) {
	if c.Params == nil {
		c.Params = map[string]any{}
	}
	if c.History == nil {
		c.History = []Transition{}
	}
	return json.Marshal(commandJSON{commandAlias(c), jsonTime(c.CreatedAt), jsonTime(c.UpdatedAt), jsonTime(c.ExpiresAt)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (c *Command) UnmarshalJSON(b []byte) error {
	var v commandJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*c = Command(v.commandAlias)
	c.CreatedAt, c.UpdatedAt, c.ExpiresAt = time.Time(v.CreatedAt), time.Time(v.UpdatedAt), time.Time(v.ExpiresAt)
	return nil
}

// Filter selects the commands List returns: of a state, of a name (both
// optional), at most Limit (0: 100).
type Filter struct {
	State State
	Name  string
	Limit int
}

// CommandStore keeps commands durably: on return of Create and Update the
// command survives a crash. Implementations: the file journal
// (FileCommandStore) and PostgreSQL; controltest.RunCommandStore is the
// suite every one passes.
type CommandStore interface {
	// Create stores a new command. When cmd has an IdempotencyKey that
	// an existing command of the machine was created with, it stores
	// nothing and returns that command, false.
	Create(ctx context.Context, cmd Command) (Command, bool, error)
	// Get returns a command of the machine; ErrNotFound if none.
	Get(ctx context.Context, machine, id string) (Command, error)
	// List returns the machine's commands matching f, newest first
	// (creation time, then id).
	List(ctx context.Context, machine string, f Filter) ([]Command, error)
	// Update replaces a command by cmd, only if the stored one is at
	// revision cmd.Revision()-1 (one transition behind); else it returns
	// an error wrapping ErrConflict and stores nothing. ErrNotFound if
	// the command is gone.
	Update(ctx context.Context, cmd Command) error
	// Pending returns every command not in a terminal state, of every
	// machine.
	Pending(ctx context.Context) ([]Command, error)
	// Prune deletes the commands in a terminal state last updated before
	// before, and returns how many.
	Prune(ctx context.Context, before time.Time) (int, error)
	Close() error
}

// idGen makes command ids: "c-" and a ULID (48-bit milliseconds, 80
// random bits, Crockford base 32), so ids sort by creation time; within
// one millisecond each id is the previous one's random part plus one (the
// ULID spec's monotonic ids), so the commands one process creates in a
// millisecond keep their order too (lists sort by creation time, then id).
// The zero value is ready to use.
type idGen struct {
	mu  sync.Mutex
	ms  uint64
	rnd [10]byte
}

// next returns the id of a command created at t.
func (g *idGen) next(t time.Time) string {
	ms := uint64(t.UnixMilli())
	g.mu.Lock()
	if ms <= g.ms && g.ms-ms < 2 && incr(g.rnd[:]) {
		ms = g.ms // the same millisecond (or one the clock stepped back into)
	} else if ms <= g.ms && g.ms-ms < 2 {
		ms = g.ms + 1 // 2^80 ids in a millisecond: the next one's
	}
	if ms != g.ms {
		g.ms = ms
		_, _ = rand.Read(g.rnd[:])
	}
	rnd := g.rnd
	g.mu.Unlock()
	return encodeID(ms, rnd)
}

// incr adds one to the big-endian number b, reporting false on overflow.
func incr(b []byte) bool {
	for i := len(b) - 1; i >= 0; i-- {
		b[i]++
		if b[i] != 0 {
			return true
		}
	}
	return false
}

// encodeID writes a ULID of milliseconds ms and random part rnd.
func encodeID(ms uint64, rnd [10]byte) string {
	const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	var b [16]byte
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	copy(b[6:], rnd[:])
	// 128 bits in 26 characters of 5 bits, the first holding 3 bits.
	out := make([]byte, 26)
	var acc uint64
	bits := 0
	pos := 25
	for i := 15; i >= 0; i-- {
		acc |= uint64(b[i]) << bits
		bits += 8
		for bits >= 5 && pos >= 0 {
			out[pos] = alphabet[acc&31]
			acc >>= 5
			bits -= 5
			pos--
		}
	}
	if pos >= 0 {
		out[pos] = alphabet[acc&31]
	}
	return "c-" + string(out)
}
