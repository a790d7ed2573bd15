package embedded

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/atomicfile"
	"github.com/twinline/twinline/internal/store"
)

// stateFileName is the file of the state series in the store's directory:
// one JSON object (store.StateChange) per line, appended and fsynced by
// each AppendStates, read whole into memory at Open.
const stateFileName = "states.ndjson"

// stateSeries keys one state series.
type stateSeries struct{ machine, name string }

// stateFile is the embedded store's state series: an append-only file and
// its in-memory index (changes only: a series changes far less often than
// it is observed). At Open the changes older than the retention behind
// the newest one are dropped, but for the one in force at that cutoff,
// and the file rewritten when that dropped any.
type stateFile struct {
	mu     sync.RWMutex
	f      *os.File
	series map[stateSeries][]store.StateChange // each in time order
	buf    []byte
}

// openStateFile loads (creating it if needed) the state file in dir. A
// torn last line (the process died while appending) is cut off.
func openStateFile(dir string, retention time.Duration) (*stateFile, error) {
	path := filepath.Join(dir, stateFileName)
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("reading %s: %w", stateFileName, err)
	}
	sf := &stateFile{series: map[stateSeries][]store.StateChange{}}
	good, newest := 0, int64(0)
	for rest := data; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break // torn: no newline yet
		}
		line := rest[:i]
		rest = rest[i+1:]
		var c store.StateChange
		if err := json.Unmarshal(line, &c); err != nil {
			return nil, fmt.Errorf("reading %s at byte %d: %w", stateFileName, good, err)
		}
		good += i + 1
		sf.insert(c)
		newest = max(newest, c.Time)
	}
	dropped := sf.dropBefore(newest - retention.Milliseconds())
	if dropped || good < len(data) {
		var b []byte
		for _, cs := range sf.series {
			for _, c := range cs {
				b = appendChangeLine(b, c)
			}
		}
		if _, err := atomicfile.WriteFile(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("rewriting %s: %w", stateFileName, err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", stateFileName, err)
	}
	sf.f = f
	return sf, nil
}

func appendChangeLine(b []byte, c store.StateChange) []byte {
	j, _ := json.Marshal(c) // strings and an integer: cannot fail
	return append(append(b, j...), '\n')
}

// insert adds c to its series unless the series has a change at its time
// (first write wins); it reports whether it added c.
func (sf *stateFile) insert(c store.StateChange) bool {
	k := stateSeries{c.Machine, c.Name}
	cs := sf.series[k]
	if n := len(cs); n == 0 || cs[n-1].Time < c.Time {
		sf.series[k] = append(cs, c)
		return true
	}
	i, found := slices.BinarySearchFunc(cs, c.Time, func(x store.StateChange, t int64) int { return cmpInt(x.Time, t) })
	if found {
		return false
	}
	sf.series[k] = slices.Insert(cs, i, c)
	return true
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// dropBefore drops the changes before cutoff but the latest of them in
// each series (in force at cutoff); it reports whether it dropped any.
func (sf *stateFile) dropBefore(cutoff int64) bool {
	dropped := false
	for k, cs := range sf.series {
		i, _ := slices.BinarySearchFunc(cs, cutoff, func(x store.StateChange, t int64) int { return cmpInt(x.Time, t) })
		if i > 1 {
			sf.series[k] = slices.Clone(cs[i-1:])
			dropped = true
		}
	}
	return dropped
}

func (sf *stateFile) append(changes []store.StateChange) error {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	b := sf.buf[:0]
	for _, c := range changes {
		if sf.insert(c) {
			b = appendChangeLine(b, c)
		}
	}
	sf.buf = b
	if len(b) == 0 {
		return nil
	}
	if _, err := sf.f.Write(b); err != nil {
		return fmt.Errorf("appending to %s: %w", stateFileName, err)
	}
	if err := sf.f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", stateFileName, err)
	}
	return nil
}

func (sf *stateFile) states(machine, name string, from, to int64) []store.StateChange {
	sf.mu.RLock()
	defer sf.mu.RUnlock()
	cs := sf.series[stateSeries{machine, name}]
	// The first change after from, and the one before it (in force at from).
	i, found := slices.BinarySearchFunc(cs, from, func(x store.StateChange, t int64) int { return cmpInt(x.Time, t) })
	if found {
		i++ // times are unique in a series
	}
	start := max(i-1, 0)
	var out []store.StateChange
	for _, c := range cs[start:] {
		if c.Time > to {
			break
		}
		out = append(out, c)
	}
	return out
}

func (sf *stateFile) close() error {
	if err := sf.f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", stateFileName, err)
	}
	return nil
}

var _ store.StateStore = (*Store)(nil)

// AppendStates stores state changes durably (fsynced on return); a change
// at the time of a stored one of its series is a duplicate, and dropped.
func (s *Store) AppendStates(ctx context.Context, changes []store.StateChange) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return store.ErrClosed
	}
	return s.states.append(changes)
}

// States returns the changes of a state series in (from, to], preceded by
// the one in force at from.
func (s *Store) States(ctx context.Context, machine, name string, from, to int64) ([]store.StateChange, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, store.ErrClosed
	}
	return s.states.states(machine, name, from, to), nil
}
