// Package keylog journals the deduplication keys of events that carry an id
// or a seq, so that a restarted server still recognises their retries as
// duplicates — also when a retry gets another event time (an event without
// a timestamp takes the server's), which the store's (series, time) key
// cannot catch.
//
// The journal is a sequence of segment files, keys-NNNNNNNNNNNNNNNNNNNN.log,
// each a run of CRC-checked records. Segments rotate every maxKeys/4 keys and
// only the newest segments holding up to about maxKeys keys are kept: no more
// than the engine remembers (--dedup-max-keys), so the disk it takes is
// bounded whatever the rate. The engine's own horizon drops keys that are
// too old when they are loaded.
package keylog

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/twinline/twinline/internal/stream"
)

const (
	kindID  = 1
	kindSeq = 2
	// maxRecord bounds one record on reading: ingest bounds machine and
	// event ids to a few hundred bytes each.
	maxRecord = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Log is an open journal. It is not safe for concurrent use: the processor
// that owns the engine writes it.
type Log struct {
	dir        string
	perSegment int
	keep       int // segments kept
	segments   []uint64
	f          *os.File
	n          int   // keys in the current segment
	size       int64 // bytes of whole records in the current segment
	buf        []byte
	// broken is set when a failed write could not be cut off: appends
	// fail until the next segment.
	broken error
}

// Open opens the journal in dir (created if missing) and returns it with
// the keys it holds, oldest first. A torn or damaged record — from a crash
// mid-write, or a write that failed and could not be cut off — ends its
// segment: it and what follows are cut off. The journal only helps
// recognise duplicates, so losing keys is not worth refusing to start
// over; only an unreadable file is an error.
func Open(dir string, maxKeys int) (*Log, []stream.Key, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating key journal directory: %w", err)
	}
	// Private whatever the umask, or the mode an older version gave it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("restricting key journal directory: %w", err)
	}
	per := max(maxKeys/4, 1)
	l := &Log{dir: dir, perSegment: per, keep: 5}
	names, err := filepath.Glob(filepath.Join(dir, "keys-*.log"))
	if err != nil {
		return nil, nil, err
	}
	for _, name := range names {
		seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(name), "keys-"), ".log"), 10, 64)
		if err != nil {
			continue // not ours
		}
		l.segments = append(l.segments, seq)
	}
	slices.Sort(l.segments)

	var keys []stream.Key
	for i, seq := range l.segments {
		last := i == len(l.segments)-1
		ks, good, err := readSegment(l.path(seq))
		if err != nil && !errors.Is(err, errTorn) {
			return nil, nil, fmt.Errorf("reading key journal %s: %w", l.path(seq), err)
		}
		keys = append(keys, ks...)
		if !last && err != nil {
			if err := os.Truncate(l.path(seq), good); err != nil {
				return nil, nil, fmt.Errorf("cutting a damaged record off the key journal: %w", err)
			}
		}
		if last {
			f, err := os.OpenFile(l.path(seq), os.O_RDWR, 0o600)
			if err != nil {
				return nil, nil, fmt.Errorf("opening key journal: %w", err)
			}
			if err := f.Chmod(0o600); err != nil {
				f.Close()
				return nil, nil, fmt.Errorf("restricting key journal: %w", err)
			}
			if err := f.Truncate(good); err != nil {
				f.Close()
				return nil, nil, fmt.Errorf("cutting a torn record off the key journal: %w", err)
			}
			if _, err := f.Seek(good, io.SeekStart); err != nil {
				f.Close()
				return nil, nil, err
			}
			l.f, l.n, l.size = f, len(ks), good
		}
	}
	if l.f == nil {
		if err := l.rotate(); err != nil {
			return nil, nil, err
		}
	}
	return l, keys, nil
}

func (l *Log) path(seq uint64) string {
	return filepath.Join(l.dir, fmt.Sprintf("keys-%020d.log", seq))
}

// Append writes keys and syncs them to disk.
func (l *Log) Append(keys []stream.Key) error {
	if len(keys) == 0 {
		return nil
	}
	if l.f == nil {
		return errors.New("key journal closed")
	}
	if l.n >= l.perSegment || l.broken != nil {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	l.buf = l.buf[:0]
	for _, k := range keys {
		if len(k.Machine)+len(k.ID) > maxRecord-64 {
			continue // ingest never lets such ids through; the store's key still applies
		}
		l.buf = appendRecord(l.buf, k)
	}
	if _, err := l.f.Write(l.buf); err != nil {
		return l.cut(fmt.Errorf("writing key journal: %w", err))
	}
	if err := l.f.Sync(); err != nil {
		// After a failed fsync the page cache cannot be trusted: move on
		// to a new segment (the records may or may not have reached disk;
		// either way they are whole or cut off at the next Open).
		l.broken = fmt.Errorf("syncing key journal: %w", err)
		return l.broken
	}
	l.n += len(keys)
	l.size += int64(len(l.buf))
	return nil
}

// cut removes what a failed write left after the last whole record, so that
// later records follow whole ones; if it cannot, the segment is abandoned.
func (l *Log) cut(err error) error {
	if terr := l.f.Truncate(l.size); terr != nil {
		l.broken = err
		return err
	}
	if _, serr := l.f.Seek(l.size, io.SeekStart); serr != nil {
		l.broken = err
	}
	return err
}

// rotate starts a new segment and removes those beyond what is kept.
func (l *Log) rotate() error {
	var next uint64 = 1
	if len(l.segments) > 0 {
		next = l.segments[len(l.segments)-1] + 1
	}
	f, err := os.OpenFile(l.path(next), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("creating key journal segment: %w", err)
	}
	if l.f != nil {
		if err := l.f.Close(); err != nil {
			f.Close()
			return fmt.Errorf("closing key journal segment: %w", err)
		}
	}
	l.f, l.n, l.size, l.broken = f, 0, 0, nil
	l.segments = append(l.segments, next)
	if err := syncDir(l.dir); err != nil {
		return err
	}
	for len(l.segments) > l.keep {
		if err := os.Remove(l.path(l.segments[0])); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing old key journal segment: %w", err)
		}
		l.segments = l.segments[1:]
	}
	return nil
}

// Close closes the journal.
func (l *Log) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing key journal directory: %w", err)
	}
	return nil
}

// A record is uvarint(len(payload)) | crc32c(payload) (4 bytes, little
// endian) | payload; the payload is uvarint(len(machine)) machine | kind |
// (uvarint(len(id)) id | uvarint(seq)) | varint(time).
func appendRecord(dst []byte, k stream.Key) []byte {
	n := uvarintLen(uint64(len(k.Machine))) + len(k.Machine) + 1 + varintLen(k.Time)
	if k.ID != "" {
		n += uvarintLen(uint64(len(k.ID))) + len(k.ID)
	} else {
		n += uvarintLen(k.Seq)
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	at := len(dst)
	dst = append(dst, 0, 0, 0, 0) // checksum, below
	start := len(dst)
	dst = binary.AppendUvarint(dst, uint64(len(k.Machine)))
	dst = append(dst, k.Machine...)
	if k.ID != "" {
		dst = append(dst, kindID)
		dst = binary.AppendUvarint(dst, uint64(len(k.ID)))
		dst = append(dst, k.ID...)
	} else {
		dst = append(dst, kindSeq)
		dst = binary.AppendUvarint(dst, k.Seq)
	}
	dst = binary.AppendVarint(dst, k.Time)
	binary.LittleEndian.PutUint32(dst[at:], crc32.Checksum(dst[start:], castagnoli))
	return dst
}

var errTorn = errors.New("torn or corrupt record")

// readSegment returns the keys of a segment and the offset just past the
// last good record. A bad record ends the read with errTorn.
func readSegment(path string) ([]stream.Key, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<16)
	var (
		keys []stream.Key
		good int64
		p    []byte
	)
	for {
		n, err := binary.ReadUvarint(r)
		if errors.Is(err, io.EOF) {
			return keys, good, nil
		}
		if err != nil || n == 0 || n > maxRecord {
			return keys, good, errTorn
		}
		var sum [4]byte
		if _, err := io.ReadFull(r, sum[:]); err != nil {
			return keys, good, errTorn
		}
		p = slices.Grow(p[:0], int(n))[:n]
		if _, err := io.ReadFull(r, p); err != nil {
			return keys, good, errTorn
		}
		if crc32.Checksum(p, castagnoli) != binary.LittleEndian.Uint32(sum[:]) {
			return keys, good, errTorn
		}
		k, ok := decodeKey(p)
		if !ok {
			return keys, good, errTorn
		}
		keys = append(keys, k)
		good += int64(uvarintLen(n)) + 4 + int64(n)
	}
}

func decodeKey(p []byte) (stream.Key, bool) {
	var k stream.Key
	str := func() (string, bool) {
		n, w := binary.Uvarint(p)
		if w <= 0 || uint64(len(p)-w) < n {
			return "", false
		}
		s := string(p[w : w+int(n)])
		p = p[w+int(n):]
		return s, true
	}
	var ok bool
	if k.Machine, ok = str(); !ok || len(p) == 0 {
		return k, false
	}
	kind := p[0]
	p = p[1:]
	switch kind {
	case kindID:
		if k.ID, ok = str(); !ok || k.ID == "" {
			return k, false
		}
	case kindSeq:
		v, w := binary.Uvarint(p)
		if w <= 0 {
			return k, false
		}
		k.Seq, k.HasSeq = v, true
		p = p[w:]
	default:
		return k, false
	}
	t, w := binary.Varint(p)
	if w <= 0 || w != len(p) {
		return k, false
	}
	k.Time = t
	return k, true
}

func uvarintLen(v uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], v)
}

func varintLen(v int64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutVarint(b[:], v)
}
