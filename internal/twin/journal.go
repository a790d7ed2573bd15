package twin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/twinline/twinline/internal/atomicfile"
)

// journal is an append-only file of JSON lines, the durable form of the
// alarm changes and the operator notes (the recent ones: see NoteFile). Opening it replays every line; a
// torn last line (a crash mid-write, never acknowledged) is cut off, any
// other unreadable line is an error. A write that fails part-way is cut
// back, so the file always stays readable.
type journal struct {
	f        *os.File
	size     int64 // bytes of complete lines
	lines    int   // complete lines
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
	sc.Split(scanWholeLines)
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
		j.lines++
	}
	if err := sc.Err(); errors.Is(err, errNoNewline) {
		// The last line lacks its newline: its write was cut short,
		// whatever it holds, and was never synced.
		if err := f.Truncate(j.size); err != nil {
			f.Close()
			return nil, fmt.Errorf("cutting off the torn last line of %s: %w", path, err)
		}
	} else if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return j, nil
}

// errNoNewline reports a last line without its newline.
var errNoNewline = errors.New("last line without a newline")

// scanWholeLines is a bufio.SplitFunc of lines ended by a newline; a last
// line without one is the error errNoNewline.
func scanWholeLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return 0, nil, errNoNewline
	}
	return 0, nil, nil
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
	j.lines++
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

// rewriteJournal replaces j's file, atomically, with its lines decoded as
// T and passed through change, which reports whether it changed the value,
// and reopens j on the new file; when nothing changed the file stays as it
// is. It returns how many lines changed. On an error j is unchanged.
func rewriteJournal[T any](j *journal, change func(*T) bool) (int, error) {
	out, n, err := rewriteLines(io.NewSectionReader(j.f, 0, j.size), j.f.Name(), change)
	if err != nil || n == 0 {
		return 0, err
	}
	if err := j.replace(out, j.lines); err != nil {
		return 0, err
	}
	return n, nil
}

// rewriteLines returns the JSON lines read from r (of the file name)
// decoded as T and passed through change, which reports whether it changed
// the value: the lines it did not change are copied as they are. It
// returns how many lines changed.
func rewriteLines[T any](r io.Reader, name string, change func(*T) bool) ([]byte, int, error) {
	var out bytes.Buffer
	n := 0
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, 0, fmt.Errorf("reading %s line %d: %w", name, line, err)
		}
		if !change(&v) {
			out.Write(sc.Bytes())
			out.WriteByte('\n')
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, 0, fmt.Errorf("encoding %s line %d: %w", name, line, err)
		}
		out.Write(append(b, '\n'))
		n++
	}
	if err := sc.Err(); err != nil {
		return nil, 0, fmt.Errorf("reading %s: %w", name, err)
	}
	return out.Bytes(), n, nil
}

// replace makes data (lines JSON lines) the journal's whole content,
// atomically and durably (write, fsync, rename, fsync the directory), and
// reopens j on it; the lines appended after go on from there. On an error
// j is unchanged: the old file is still whole.
func (j *journal) replace(data []byte, lines int) error {
	path := j.f.Name()
	if _, err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("rewriting %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopening %s: %w", path, err)
	}
	j.f.Close()
	j.f, j.size, j.lines, j.unsynced = f, int64(len(data)), lines, false
	return nil
}

// encodeLines encodes vs as JSON lines.
func encodeLines[T any](vs []T) ([]byte, error) {
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	for i := range vs {
		if err := enc.Encode(&vs[i]); err != nil {
			return nil, fmt.Errorf("encoding journal entry: %w", err)
		}
	}
	return out.Bytes(), nil
}
