package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/atomicfile"
)

// Message is one webhook delivery: an alarm change's payload, which the
// outbox keeps until the receiver took it.
type Message struct {
	// ID is the delivery id, stable across attempts and restarts
	// (alarm-<alarm id>-<raised|cleared|acknowledged>).
	ID string `json:"id"`
	// Alarm orders deliveries: one alarm's changes go out in order.
	Alarm     string    `json:"alarm"`
	Body      string    `json:"body"`
	Created   time.Time `json:"created"`
	Attempts  int       `json:"attempts,omitempty"`
	NextAt    time.Time `json:"nextAt"`
	LastError string    `json:"lastError,omitempty"`
}

// Outcome is the result of one delivery attempt.
type Outcome struct {
	// State is StateDelivered, StateRetrying (again at NextAt) or
	// StateFailed.
	State  string
	At     time.Time
	NextAt time.Time
	Err    string
}

// OutboxStats describes the undelivered messages.
type OutboxStats struct {
	Depth int
	// Oldest is the creation time of the oldest, NextDue the earliest
	// time one is due (zero when Depth is 0).
	Oldest, NextDue time.Time
}

// Outbox keeps the webhook messages until they are delivered: a file in
// the data directory (FileOutbox) or a PostgreSQL table shared by the
// replicas (postgres.AlarmOutbox).
type Outbox interface {
	// Enqueue adds msgs, in order, durably before it returns; a message
	// whose id the outbox holds already is skipped.
	Enqueue(ctx context.Context, msgs []Message) error
	// Claim returns up to n messages due at now, each the oldest
	// undelivered message of its alarm, oldest first, leased to the
	// caller until now+lease (no other claimer gets them meanwhile).
	Claim(ctx context.Context, now time.Time, lease time.Duration, n int) ([]Message, error)
	// Settle records the outcome of an attempt at m.
	Settle(ctx context.Context, m Message, o Outcome) error
	Stats(ctx context.Context) (OutboxStats, error)
	// States returns the delivery state of the latest message of each of
	// the alarms ids that has one.
	States(ctx context.Context, ids []string) (map[string]State, error)
	Close() error
}

// maxOutboxStates bounds the delivery states a FileOutbox keeps of
// alarms with nothing left to deliver.
const maxOutboxStates = 10_000

// FileOutbox is an Outbox in an append-only file of JSON lines, fsynced
// on every change and compacted (rewritten with what is undelivered and
// the latest states) once it has grown a few times past that. A torn
// last line (a crash mid-write, never synced) is cut off on open. It is
// safe for concurrent use by one process.
type FileOutbox struct {
	path string
	// slack is the lines past four times the live ones that trigger a
	// compaction.
	slack int

	mu      sync.Mutex
	f       *os.File
	lines   int
	pending []*fileMsg          // undelivered, in order
	byID    map[string]*fileMsg // the pending ones
	states  map[string]fileState
	order   []string // alarms with a state, oldest first
}

type fileMsg struct {
	Message
	leased time.Time
}

type fileState struct {
	State
	ID string // the message the state is of
}

// outboxRecord is one line of the file: one field set.
type outboxRecord struct {
	Add    *Message      `json:"add,omitempty"`
	Settle *settleRecord `json:"settle,omitempty"`
	State  *stateRecord  `json:"state,omitempty"`
}

type settleRecord struct {
	ID     string    `json:"id"`
	State  string    `json:"state"`
	At     time.Time `json:"at"`
	NextAt time.Time `json:"nextAt,omitzero"`
	Err    string    `json:"err,omitempty"`
}

type stateRecord struct {
	Alarm string `json:"alarm"`
	ID    string `json:"id"`
	State
}

// OpenFileOutbox opens (creating it if needed) the outbox at path and
// restores what it holds.
func OpenFileOutbox(path string) (*FileOutbox, error) {
	o := &FileOutbox{path: path, slack: 1024, byID: map[string]*fileMsg{}, states: map[string]fileState{}}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading alarm outbox: %w", err)
	}
	good := 0
	for len(data[good:]) > 0 {
		rest := data[good:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break // torn: no newline
		}
		var r outboxRecord
		if err := json.Unmarshal(rest[:i], &r); err != nil {
			if bytes.IndexByte(rest[i+1:], '\n') >= 0 {
				return nil, fmt.Errorf("reading alarm outbox %s line %d: %w", path, o.lines+1, err)
			}
			break // a torn last line
		}
		o.apply(r)
		o.lines++
		good += i + 1
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening alarm outbox: %w", err)
	}
	if err := f.Truncate(int64(good)); err != nil {
		f.Close()
		return nil, fmt.Errorf("cutting off the torn end of %s: %w", path, err)
	}
	if _, err := f.Seek(int64(good), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("opening alarm outbox: %w", err)
	}
	o.f = f
	return o, nil
}

// apply replays one record; o.mu must be held (or o not yet shared).
func (o *FileOutbox) apply(r outboxRecord) {
	switch {
	case r.Add != nil:
		if _, ok := o.byID[r.Add.ID]; ok {
			return
		}
		m := &fileMsg{Message: *r.Add}
		o.pending = append(o.pending, m)
		o.byID[m.ID] = m
		o.setState(m.Alarm, fileState{ID: m.ID, State: pendingState(m.Message)})
	case r.Settle != nil:
		m := o.byID[r.Settle.ID]
		if m == nil {
			return
		}
		m.Attempts++
		m.LastError = r.Settle.Err
		st := State{State: r.Settle.State, Attempts: m.Attempts, LastError: r.Settle.Err}
		switch r.Settle.State {
		case StateRetrying:
			m.NextAt, m.leased = r.Settle.NextAt, time.Time{}
		default:
			if r.Settle.State == StateDelivered {
				at := r.Settle.At
				st.DeliveredAt, st.LastError = &at, ""
			}
			delete(o.byID, m.ID)
			o.pending = slices.DeleteFunc(o.pending, func(x *fileMsg) bool { return x == m })
		}
		if cur, ok := o.states[m.Alarm]; !ok || cur.ID == m.ID {
			o.setState(m.Alarm, fileState{ID: m.ID, State: st})
		}
	case r.State != nil:
		o.setState(r.State.Alarm, fileState{ID: r.State.ID, State: r.State.State})
	}
}

func pendingState(m Message) State {
	st := State{State: StatePending, Attempts: m.Attempts, LastError: m.LastError}
	if m.Attempts > 0 {
		st.State = StateRetrying
	}
	return st
}

// setState records an alarm's state, forgetting the oldest beyond
// maxOutboxStates (not one with a message pending).
func (o *FileOutbox) setState(alarm string, st fileState) {
	if _, ok := o.states[alarm]; !ok {
		o.order = append(o.order, alarm)
	}
	o.states[alarm] = st
	// Forget the oldest settled states; one still pending keeps its place
	// without stopping the others' eviction (a message retried for a long
	// time must not make the states grow without bound).
	for i := 0; len(o.order) > maxOutboxStates && i < len(o.order); {
		old := o.order[i]
		if s, ok := o.states[old]; ok && o.byID[s.ID] != nil {
			i++
			continue
		}
		delete(o.states, old)
		o.order = slices.Delete(o.order, i, i+1)
	}
}

// write appends records and fsyncs them; o.mu must be held. A write
// failing part-way is cut back.
func (o *FileOutbox) write(recs ...outboxRecord) error {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding outbox record: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	if o.f == nil {
		return errOutboxLost
	}
	off, err := o.f.Seek(0, 1)
	if err != nil {
		return fmt.Errorf("writing alarm outbox: %w", err)
	}
	if _, err := o.f.Write(buf.Bytes()); err != nil {
		_ = o.f.Truncate(off)
		_, _ = o.f.Seek(off, 0)
		return fmt.Errorf("writing alarm outbox: %w", err)
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("syncing alarm outbox: %w", err)
	}
	o.lines += len(recs)
	for _, r := range recs {
		o.apply(r)
	}
	return o.compact()
}

// compact rewrites the file once it holds over four times (plus 1024
// lines) what a snapshot needs; o.mu must be held.
func (o *FileOutbox) compact() error {
	live := len(o.pending) + len(o.states)
	if o.lines <= 4*live+o.slack {
		return nil
	}
	return o.rewrite()
}

// rewrite replaces the file by what is undelivered and the latest
// states; o.mu must be held.
func (o *FileOutbox) rewrite() error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	n := 0
	for _, alarm := range o.order {
		st := o.states[alarm]
		if o.byID[st.ID] != nil {
			continue // comes back with its message
		}
		_ = enc.Encode(outboxRecord{State: &stateRecord{Alarm: alarm, ID: st.ID, State: st.State}})
		n++
	}
	for _, m := range o.pending {
		_ = enc.Encode(outboxRecord{Add: &m.Message})
		n++
	}
	if _, err := atomicfile.WriteFile(o.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("compacting alarm outbox: %w", err)
	}
	// The old file is unlinked now: writes to it would be lost at the
	// next start, so the outbox refuses them until it is reopened.
	f, err := os.OpenFile(o.path, os.O_RDWR, 0o600)
	if err != nil {
		o.f.Close()
		o.f = nil
		return fmt.Errorf("compacting alarm outbox: %w", err)
	}
	if _, err := f.Seek(0, 2); err != nil {
		f.Close()
		o.f.Close()
		o.f = nil
		return fmt.Errorf("compacting alarm outbox: %w", err)
	}
	o.f.Close()
	o.f, o.lines = f, n
	return nil
}

// Enqueue implements Outbox.
func (o *FileOutbox) Enqueue(_ context.Context, msgs []Message) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	recs := make([]outboxRecord, 0, len(msgs))
	for i := range msgs {
		if o.byID[msgs[i].ID] != nil {
			continue
		}
		if st, ok := o.states[msgs[i].Alarm]; ok && st.ID == msgs[i].ID {
			continue // settled already
		}
		recs = append(recs, outboxRecord{Add: &msgs[i]})
	}
	if len(recs) == 0 {
		return nil
	}
	return o.write(recs...)
}

// Claim implements Outbox.
func (o *FileOutbox) Claim(_ context.Context, now time.Time, lease time.Duration, n int) ([]Message, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []Message
	seen := map[string]bool{}
	for _, m := range o.pending {
		if len(out) >= n {
			break
		}
		if seen[m.Alarm] {
			continue
		}
		seen[m.Alarm] = true
		if m.NextAt.After(now) || m.leased.After(now) {
			continue
		}
		m.leased = now.Add(lease)
		out = append(out, m.Message)
	}
	return out, nil
}

// Settle implements Outbox.
func (o *FileOutbox) Settle(_ context.Context, m Message, oc Outcome) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byID[m.ID] == nil {
		return nil
	}
	return o.write(outboxRecord{Settle: &settleRecord{ID: m.ID, State: oc.State, At: oc.At.UTC(), NextAt: oc.NextAt.UTC(), Err: oc.Err}})
}

// Stats implements Outbox.
func (o *FileOutbox) Stats(context.Context) (OutboxStats, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := OutboxStats{Depth: len(o.pending)}
	seen := map[string]bool{}
	for i, m := range o.pending {
		if i == 0 || m.Created.Before(s.Oldest) {
			s.Oldest = m.Created
		}
		if seen[m.Alarm] {
			continue // due after the one before it
		}
		seen[m.Alarm] = true
		d := m.NextAt
		if m.leased.After(d) {
			d = m.leased
		}
		if s.NextDue.IsZero() || d.Before(s.NextDue) {
			s.NextDue = d
		}
	}
	return s, nil
}

// States implements Outbox.
func (o *FileOutbox) States(_ context.Context, ids []string) (map[string]State, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make(map[string]State, len(ids))
	for _, id := range ids {
		if st, ok := o.states[id]; ok {
			out[id] = st.State
		}
	}
	// An alarm with undelivered changes shows its oldest one's state:
	// the one being tried.
	seen := make(map[string]bool, len(out))
	for _, m := range o.pending {
		if _, ok := out[m.Alarm]; ok && !seen[m.Alarm] {
			seen[m.Alarm] = true
			out[m.Alarm] = pendingState(m.Message)
		}
	}
	return out, nil
}

// EraseBy replaces the name of whoever acknowledged an alarm with a
// pseudonym in the changes still to deliver, and compacts the file, so
// the name is in none of its lines. It returns the changes rewritten.
func (o *FileOutbox) EraseBy(_ context.Context, name, pseudonym string) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, m := range o.pending {
		body, ok := eraseBody(m.Body, name, pseudonym)
		if ok {
			m.Body = body
			n++
		}
	}
	return n, o.rewrite()
}

// eraseBody rewrites a webhook body acknowledged by name with pseudonym.
func eraseBody(body, name, pseudonym string) (string, bool) {
	var ev Event
	if json.Unmarshal([]byte(body), &ev) != nil || ev.Alarm.AckedBy != name {
		return body, false
	}
	ev.Alarm.AckedBy = pseudonym
	b, err := json.Marshal(ev)
	if err != nil {
		return body, false
	}
	return string(b), true
}

// Close implements Outbox.
func (o *FileOutbox) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	return o.f.Close()
}

// errOutboxLost: the outbox file could not be reopened after a
// compaction replaced it; nothing more can be written until a restart.
var errOutboxLost = errors.New("alarm outbox: its file could not be reopened after compaction; restart twinline")
