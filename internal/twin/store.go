package twin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// RegistryStore persists the machine registry. The file implementation
// (RegistryFile) is the embedded default; internal/store/postgres has the
// PostgreSQL one. The conformance suite is internal/twin/twintest.
type RegistryStore interface {
	// Load returns every registry entry, in id order (an empty registry is
	// nil, not an error).
	Load(ctx context.Context) ([]Info, error)
	// Save replaces the registry with all, the whole registry sorted by id,
	// durably: when it returns nil, a later Load returns all. A failed Save
	// may have stored nothing or all, never a part. A Registry never calls it
	// concurrently and never with an older snapshot after a newer one.
	Save(ctx context.Context, all []Info) error
}

// AlarmEntry is one change of an alarm in the alarm journal: who did what,
// when, and the alarm as it stood after.
type AlarmEntry struct {
	Op    string    `json:"op"` // raise, clear, ack
	At    time.Time `json:"at"`
	By    string    `json:"by,omitempty"`
	Alarm Alarm     `json:"alarm"`
}

// Alarm journal operations.
const (
	OpRaise = "raise"
	OpClear = "clear"
	OpAck   = "ack"
	// OpSnapshot is an alarm's state as a compaction wrote it (see
	// AlarmCompactor).
	OpSnapshot = "snapshot"
	// OpSeq records, in Alarm.ID, the highest alarm id given so far; it is
	// no alarm. A compaction writes it first, as the alarm with that id
	// may be one it drops.
	OpSeq = "seq"
)

// AlarmStore is the durable journal of alarm changes, from which Alarms
// rebuilds its state at start. The file implementation (AlarmFile) is the
// embedded default; internal/store/postgres has the PostgreSQL one.
type AlarmStore interface {
	// Replay calls fn with every entry stored, oldest first; an error of
	// fn ends the replay and is returned. Alarms calls it once, before
	// any Append.
	Replay(ctx context.Context, fn func(AlarmEntry) error) error
	// Append adds an entry after the ones appended before. An entry that
	// could not be appended is not stored at all (the caller then undoes
	// the change); an appended one is stored, in order, but may be durable
	// only after Sync.
	Append(ctx context.Context, e AlarmEntry) error
	// Sync makes every appended entry durable. After a failure, the
	// entries not yet durable stay pending and the next Sync tries again.
	Sync(ctx context.Context) error
	// Close makes the appended entries durable if it can, and releases
	// the store.
	Close() error
}

// AlarmNumberer is implemented by an AlarmStore that numbers new alarms
// itself, so that processes sharing the store never give two alarms one id
// (the PostgreSQL journal draws them from a sequence). Without it, Alarms
// numbers alarms on from the highest id replayed.
type AlarmNumberer interface {
	// NextAlarmID returns an id above every id it returned before, to
	// any process.
	NextAlarmID(ctx context.Context) (uint64, error)
}

// AlarmCompactor is implemented by an AlarmStore whose journal would
// otherwise grow with history, and its replay with it (the file store): it
// replaces the journal by a snapshot of the live alarms.
type AlarmCompactor interface {
	// CompactDue reports whether the journal has grown past its live state
	// (live alarms) enough to be compacted.
	CompactDue(live int) bool
	// Compact replaces, atomically and durably, every entry stored by
	// snapshot, whose replay must restore the Alarms' state; entries
	// appended later follow it. The entries appended before must be
	// synced. On an error the journal is unchanged.
	Compact(ctx context.Context, snapshot []AlarmEntry) error
}

// NoteStore stores operator notes. The file implementation (NoteFile) is
// the embedded default; internal/store/postgres has the PostgreSQL one.
type NoteStore interface {
	// Add stores a validated note durably and returns it with its id, a
	// decimal number greater than the id of every note added before.
	Add(ctx context.Context, n Note) (Note, error)
	// List returns the latest notes of machine, at most limit (> 0), oldest
	// first: by time, then id (Notes stamps notes with its clock, so that
	// is the order they were added in unless the clock went back).
	List(ctx context.Context, machine string, limit int) ([]Note, error)
	// Close releases the store.
	Close() error
}

// NoteEraser is implemented by a NoteStore that can replace an author's
// name in every note (GDPR erasure: `twinline privacy erase --author`).
type NoteEraser interface {
	// EraseAuthor replaces author by pseudonym as the author of every
	// note, returning how many notes changed. The texts stay as written.
	EraseAuthor(ctx context.Context, author, pseudonym string) (int, error)
}

// AlarmEraser is implemented by an AlarmStore that can replace a user's
// name in the alarm journal (GDPR erasure).
type AlarmEraser interface {
	// EraseBy replaces name by pseudonym as the By of every journal entry
	// and as the acknowledger (Alarm.AckedBy) of every alarm state stored,
	// returning how many journal entries changed. Entries appended but
	// not yet synced are changed too. A running Alarms keeps the names it
	// holds in memory: erase while it is stopped, or restart it after.
	EraseBy(ctx context.Context, name, pseudonym string) (int, error)
}

// RegistryFile is a RegistryStore in one JSON document (registry.json),
// replaced atomically on every Save (write, fsync, rename, fsync the
// directory).
type RegistryFile struct {
	f registryFile
}

// NewRegistryFile returns the registry stored at path; a missing file is an
// empty registry.
func NewRegistryFile(path string) *RegistryFile { return &RegistryFile{f: registryFile{path: path}} }

// Load implements RegistryStore.
func (r *RegistryFile) Load(context.Context) ([]Info, error) { return r.f.load() }

// Save implements RegistryStore.
func (r *RegistryFile) Save(_ context.Context, all []Info) error { return r.f.save(all) }

// AlarmFile is an AlarmStore in an append-only JSON-lines file
// (alarms.jsonl): Append writes a line, Sync fsyncs. A torn last line (a
// crash mid-write, never acknowledged) is cut off when the file is opened,
// and a write that fails part-way is cut back.
//
// It is an AlarmCompactor: once the file holds more than
// alarmCompactFactor times as many lines as there are live alarms (and at
// least alarmCompactMin), Alarms replaces it by a snapshot of its state —
// the alarms it keeps (active, and the latest cleared ones) with their
// acknowledgements — written beside it and renamed over it, and the
// journal goes on after the snapshot. So the file, and the replay at
// start, stay within a few times the live state whatever the history; the
// changes of the alarms no longer kept are not kept on disk either.
type AlarmFile struct {
	path string
	// compactMin is the fewest lines a compaction is worth.
	compactMin int

	mu sync.Mutex
	j  *journal // nil until Replay (or the first Append)
}

// When an AlarmFile is due for compaction (see AlarmFile).
const (
	alarmCompactFactor = 4
	alarmCompactMin    = 4096
)

var (
	_ AlarmEraser    = (*AlarmFile)(nil)
	_ AlarmCompactor = (*AlarmFile)(nil)
)

// NewAlarmFile returns the alarm journal at path, created on first use.
func NewAlarmFile(path string) *AlarmFile {
	return &AlarmFile{path: path, compactMin: alarmCompactMin}
}

// CompactDue implements AlarmCompactor.
func (f *AlarmFile) CompactDue(live int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.j != nil && f.j.lines >= f.compactMin && f.j.lines > alarmCompactFactor*(live+1)
}

// Compact implements AlarmCompactor.
func (f *AlarmFile) Compact(_ context.Context, snapshot []AlarmEntry) error {
	data, err := encodeLines(snapshot)
	if err != nil {
		return fmt.Errorf("compacting alarm journal: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.j == nil {
		return errors.New("compacting alarm journal: not open")
	}
	if f.j.unsynced {
		return errors.New("compacting alarm journal: entries not synced")
	}
	if err := f.j.replace(data, len(snapshot)); err != nil {
		return fmt.Errorf("compacting alarm journal: %w", err)
	}
	return nil
}

// Replay implements AlarmStore: it opens the file.
func (f *AlarmFile) Replay(_ context.Context, fn func(AlarmEntry) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.j != nil {
		return fmt.Errorf("replaying %s: already open", f.path)
	}
	return f.open(fn)
}

// open opens the journal, calling fn (if not nil) with each entry; f.mu
// must be held.
func (f *AlarmFile) open(fn func(AlarmEntry) error) error {
	j, err := openJournal(f.path, func(line []byte) error {
		var e AlarmEntry
		if err := json.Unmarshal(line, &e); err != nil {
			return err
		}
		if fn != nil {
			if err := fn(e); err != nil {
				return stopReplay{err}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	f.j = j
	return nil
}

// Append implements AlarmStore.
func (f *AlarmFile) Append(_ context.Context, e AlarmEntry) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.j == nil {
		if err := f.open(nil); err != nil {
			return err
		}
	}
	return f.j.append(e)
}

// Sync implements AlarmStore.
func (f *AlarmFile) Sync(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.j == nil {
		return nil
	}
	return f.j.sync()
}

// EraseBy implements AlarmEraser: it rewrites the file atomically.
func (f *AlarmFile) EraseBy(_ context.Context, name, pseudonym string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.j
	if j == nil {
		var err error
		if j, err = openJournal(f.path, func([]byte) error { return nil }); err != nil {
			return 0, fmt.Errorf("erasing %q from alarm journal: %w", name, err)
		}
		defer j.close()
	}
	n, err := rewriteJournal(j, func(e *AlarmEntry) bool { return e.Erase(name, pseudonym) })
	if err != nil {
		return 0, fmt.Errorf("erasing %q from alarm journal: %w", name, err)
	}
	return n, nil
}

// Erase replaces name by pseudonym as e's By and as its alarm's AckedBy,
// and reports whether it changed e: the erasure of an AlarmEraser.
func (e *AlarmEntry) Erase(name, pseudonym string) bool {
	changed := false
	if e.By == name {
		e.By, changed = pseudonym, true
	}
	if e.Alarm.AckedBy == name {
		e.Alarm.AckedBy, changed = pseudonym, true
	}
	return changed
}

// Close implements AlarmStore.
func (f *AlarmFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.j == nil {
		return nil
	}
	err := errors.Join(f.j.sync(), f.j.close())
	f.j = nil
	return err
}
