package twin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// journal is an append-only file of JSON lines, the durable form of the
// alarm changes and the operator notes. Opening it replays every line; a
// torn last line (a crash mid-write, never acknowledged) is cut off, any
// other unreadable line is an error. A write that fails part-way is cut
// back, so the file always stays readable.
type journal struct {
	f        *os.File
	size     int64 // bytes of complete lines
	unsynced bool  // lines written since the last sync
}

// stopReplay wraps an error of a replay function that must end the replay
// as it is (the line was read fine, its consumer failed), rather than mark
// the line as torn.
type stopReplay struct{ err error }

func (e stopReplay) Error() string { return e.err.Error() }
func (e stopReplay) Unwrap() error { return e.err }

// openJournal opens (creating it if needed) the journal at path and calls
// replay with each line, oldest first. A replay error wrapped in stopReplay
// ends the replay and is returned.
func openJournal(path string, replay func(line []byte) error) (*journal, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	// Private whatever the umask, or the mode an older version gave it.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("restricting %s: %w", path, err)
	}
	j := &journal{f: f}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if err := replay(sc.Bytes()); err != nil {
			var stop stopReplay
			if errors.As(err, &stop) {
				f.Close()
				return nil, fmt.Errorf("replaying %s line %d: %w", path, line, stop.err)
			}
			if sc.Scan() {
				f.Close()
				return nil, fmt.Errorf("reading %s line %d: %w", path, line, err)
			}
			if err := f.Truncate(j.size); err != nil {
				f.Close()
				return nil, fmt.Errorf("cutting off the torn last line of %s: %w", path, err)
			}
			break
		}
		j.size += int64(len(sc.Bytes())) + 1
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return j, nil
}

// append writes v as one line; sync makes it durable.
func (j *journal) append(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding journal entry: %w", err)
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		if terr := j.f.Truncate(j.size); terr != nil {
			err = errors.Join(err, fmt.Errorf("cutting back a torn entry: %w", terr))
		}
		return fmt.Errorf("writing journal: %w", err)
	}
	j.size += int64(len(b)) + 1
	j.unsynced = true
	return nil
}

// sync makes the lines appended so far durable.
func (j *journal) sync() error {
	if !j.unsynced {
		return nil
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("syncing journal: %w", err)
	}
	j.unsynced = false
	return nil
}

func (j *journal) close() error { return j.f.Close() }
