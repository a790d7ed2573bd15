package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/twin"
)

// TwinStore keeps the twins' documents, durably when a call returns. The
// twin of a machine never written is the zero Twin with its Machine set.
// Stores other than files also tell other replicas (TwinWatcher).
type TwinStore interface {
	// Get returns the stored twin of machine (Delta not filled in).
	Get(ctx context.Context, machine string) (Twin, error)
	// Put stores tw if the stored versions are still prevVersion and
	// prevReported (0, 0: none stored); else an error wrapping
	// ErrConcurrentUpdate. n says what changed, for the other replicas.
	Put(ctx context.Context, tw Twin, prevVersion, prevReported uint64, n Notice) error
	// Delete removes machine's twin (none stored: no error).
	Delete(ctx context.Context, machine string, n Notice) error
}

// TwinWatcher is a TwinStore shared by replicas: Watch calls fn with
// every change any replica makes (this one's too) until ctx ends.
type TwinWatcher interface {
	Watch(ctx context.Context, fn func(Notice)) error
}

// Notice is what a TwinStore tells other replicas of a change: which
// twin, what kind of change, by whom, and the Origin (the writing Twins),
// so that a replica skips its own.
type Notice struct {
	Machine string     `json:"m"`
	Kind    ChangeKind `json:"k"`
	By      string     `json:"b,omitempty"`
	Origin  string     `json:"o"`
}

// Twins keeps the machines' desired and reported documents (see Twin):
// operators patch the desired one, devices the reported one; every change
// is stored, then told to the subscribers and to the long-polls (Wait).
// It is safe for concurrent use, and several replicas may share one
// TwinStore that implements TwinWatcher (Run follows the others).
type Twins struct {
	store   TwinStore
	schemas func(machine string) *twin.Schema
	now     func() time.Time
	logger  *slog.Logger
	origin  string
	seed    maphash.Seed

	// locks serialise the writes of one machine (striped): its changes
	// reach the subscribers in version order.
	locks [64]sync.Mutex

	mu      sync.Mutex
	subs    []func(Change)
	waiters map[string]chan struct{} // closed on the machine's next change

	// stopped is closed when Run returns: the long-polls answer at once
	// (the server is shutting down).
	stopped  chan struct{}
	stopOnce sync.Once
}

// NewTwins returns Twins over s; schemas gives a machine's desired schema
// (nil: anything goes).
func NewTwins(s TwinStore, schemas func(machine string) *twin.Schema, now func() time.Time, logger *slog.Logger) *Twins {
	var b [8]byte
	_, _ = rand.Read(b[:])
	if schemas == nil {
		schemas = func(string) *twin.Schema { return nil }
	}
	return &Twins{store: s, schemas: schemas, now: now, logger: logger.With("component", "twins"),
		origin: hex.EncodeToString(b[:]), seed: maphash.MakeSeed(), waiters: map[string]chan struct{}{},
		stopped: make(chan struct{})}
}

// Subscribe adds fn, called with every change once it is durable — this
// replica's and, with a shared store, the others' (Run). fn is called
// with the machine's writes held: it must not block (hand off, e.g.
// hub publish). Call it before Twins is shared.
func (t *Twins) Subscribe(fn func(Change)) {
	t.mu.Lock()
	t.subs = append(t.subs, fn)
	t.mu.Unlock()
}

// Get returns machine's twin ({} documents, version 0 if never written).
func (t *Twins) Get(ctx context.Context, machine string) (Twin, error) {
	tw, err := t.store.Get(ctx, machine)
	if err != nil {
		return Twin{}, fmt.Errorf("reading the twin of %s: %w", machine, err)
	}
	tw.Machine = machine
	return tw.withDelta(), nil
}

// PatchDesired applies a JSON merge patch (RFC 7396) to machine's desired
// document. The result must satisfy the machine's desired schema (else a
// ValidationError) and MaxDocBytes; with ifMatch, the current version must
// be *ifMatch (else ErrVersionMismatch). A patch that changes nothing
// does not bump the version.
func (t *Twins) PatchDesired(ctx context.Context, machine string, patch []byte, ifMatch *uint64, by string) (Twin, error) {
	return t.patch(ctx, machine, patch, ChangeDesired, ifMatch, by)
}

// PatchReported applies a JSON merge patch to machine's reported
// document: what the device says it has. No schema applies.
func (t *Twins) PatchReported(ctx context.Context, machine string, patch []byte, by string) (Twin, error) {
	return t.patch(ctx, machine, patch, ChangeReported, nil, by)
}

func (t *Twins) patch(ctx context.Context, machine string, patch []byte, kind ChangeKind, ifMatch *uint64, by string) (Twin, error) {
	p, err := decodePatch(patch)
	if err != nil {
		return Twin{}, err
	}
	lock := t.lock(machine)
	lock.Lock()
	defer lock.Unlock()
	// Another replica may write between our read and our write: the store
	// refuses a stale write, and we read again.
	for attempt := 0; ; attempt++ {
		cur, err := t.store.Get(ctx, machine)
		if err != nil {
			return Twin{}, fmt.Errorf("reading the twin of %s: %w", machine, err)
		}
		cur.Machine = machine
		if ifMatch != nil && *ifMatch != cur.Version {
			return cur.withDelta(), fmt.Errorf("%w: the desired document of %s is at version %d, not %d", ErrVersionMismatch, machine, cur.Version, *ifMatch)
		}
		next := cur.clone()
		at := t.now().UnixMilli()
		var changed bool
		if kind == ChangeDesired {
			next.Desired, next.Metadata.Desired, changed = merge(cur.Desired, cur.Metadata.Desired, p, at)
		} else {
			next.Reported, next.Metadata.Reported, changed = merge(cur.Reported, cur.Metadata.Reported, p, at)
		}
		if !changed {
			return cur.withDelta(), nil
		}
		doc := next.Desired
		if kind == ChangeReported {
			doc = next.Reported
		}
		if err := checkDoc(doc, kind, t.schemas(machine)); err != nil {
			return Twin{}, err
		}
		if kind == ChangeDesired {
			next.Version++
		} else {
			next.ReportedVersion++
		}
		next.Delta = nil
		err = t.store.Put(ctx, next, cur.Version, cur.ReportedVersion, Notice{Machine: machine, Kind: kind, By: by, Origin: t.origin})
		if errors.Is(err, ErrConcurrentUpdate) && attempt < 10 {
			continue
		}
		if err != nil {
			return Twin{}, fmt.Errorf("storing the twin of %s: %w", machine, err)
		}
		next = next.withDelta()
		t.changed(Change{Machine: machine, Kind: kind, Twin: next, By: by})
		return next, nil
	}
}

// checkDoc checks a patched document against the limits and schema.
func checkDoc(doc map[string]any, kind ChangeKind, schema *twin.Schema) error {
	if depth(doc) > MaxDocDepth {
		return &ValidationError{Fields: []twin.FieldError{{Reason: fmt.Sprintf("the %s document nests deeper than %d levels", kind, MaxDocDepth)}}}
	}
	n, err := docSize(doc)
	if err != nil {
		return err
	}
	if n > MaxDocBytes {
		return &ValidationError{Fields: []twin.FieldError{{Reason: fmt.Sprintf("the %s document would be %d bytes encoded, over the limit of %d", kind, n, MaxDocBytes)}}}
	}
	if hasNUL(doc) {
		return &ValidationError{Fields: []twin.FieldError{{Reason: "a text of the document has a NUL character, which no store keeps"}}}
	}
	if kind == ChangeDesired {
		if fe := schema.Validate(doc); len(fe) > 0 {
			return &ValidationError{Fields: fe}
		}
	}
	return nil
}

// Wait returns machine's twin once its desired version is above after: at
// once if it already is; when ctx ends or Run has returned (shutting
// down), the current twin and no error (the caller compares versions).
func (t *Twins) Wait(ctx context.Context, machine string, after uint64) (Twin, error) {
	for {
		ch := t.waiter(machine)
		tw, err := t.Get(ctx, machine)
		if err != nil || tw.Version > after {
			return tw, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return t.Get(context.WithoutCancel(ctx), machine)
		case <-t.stopped:
			return tw, nil
		}
	}
}

// Delete removes machine's twin (the registry deleted the machine) and
// tells the subscribers.
func (t *Twins) Delete(ctx context.Context, machine string) error {
	lock := t.lock(machine)
	lock.Lock()
	defer lock.Unlock()
	if err := t.store.Delete(ctx, machine, Notice{Machine: machine, Kind: ChangeDeleted, Origin: t.origin}); err != nil {
		return fmt.Errorf("deleting the twin of %s: %w", machine, err)
	}
	t.changed(Change{Machine: machine, Kind: ChangeDeleted, Twin: Twin{Machine: machine}})
	return nil
}

// Run follows the changes other replicas make (a TwinWatcher store), until
// ctx ends; with a store of its own it just waits. When it returns, the
// long-polls (Wait) answer at once, so that they do not hold a shutdown.
func (t *Twins) Run(ctx context.Context) error {
	defer t.stopOnce.Do(func() { close(t.stopped) })
	w, ok := t.store.(TwinWatcher)
	if !ok {
		<-ctx.Done()
		return nil
	}
	err := w.Watch(ctx, func(n Notice) {
		if n.Origin == t.origin {
			return
		}
		t.follow(ctx, n)
	})
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("following twin changes: %w", err)
}

// follow tells the subscribers and waiters of another replica's change.
func (t *Twins) follow(ctx context.Context, n Notice) {
	lock := t.lock(n.Machine)
	lock.Lock()
	defer lock.Unlock()
	c := Change{Machine: n.Machine, Kind: n.Kind, By: n.By, Twin: Twin{Machine: n.Machine}, Remote: true}
	if n.Kind != ChangeDeleted {
		tw, err := t.Get(ctx, n.Machine)
		if err != nil {
			t.logger.Warn("reading a twin another replica changed", "machine", n.Machine, "err", err)
			return
		}
		c.Twin = tw
	}
	t.changed(c)
}

// changed tells the subscribers and wakes the waiters of c's machine.
func (t *Twins) changed(c Change) {
	t.mu.Lock()
	subs := t.subs
	if ch, ok := t.waiters[c.Machine]; ok {
		close(ch)
		delete(t.waiters, c.Machine)
	}
	t.mu.Unlock()
	for _, fn := range subs {
		fn(c)
	}
}

// waiter returns a channel closed on machine's next change.
func (t *Twins) waiter(machine string) chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch, ok := t.waiters[machine]
	if !ok {
		ch = make(chan struct{})
		t.waiters[machine] = ch
	}
	return ch
}

func (t *Twins) lock(machine string) *sync.Mutex {
	return &t.locks[maphash.String(t.seed, machine)%uint64(len(t.locks))]
}

// hasNUL reports whether a key or string of v has a NUL character
// (PostgreSQL's jsonb refuses it).
func hasNUL(v any) bool {
	switch x := v.(type) {
	case string:
		return strings.IndexByte(x, 0) >= 0
	case map[string]any:
		for k, e := range x {
			if strings.IndexByte(k, 0) >= 0 || hasNUL(e) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if hasNUL(e) {
				return true
			}
		}
	}
	return false
}
