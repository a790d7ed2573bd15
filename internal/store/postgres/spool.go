package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// errSpoolFull reports that a batch does not fit in the spool's bound.
var errSpoolFull = errors.New("spool full")

// spool is the outage buffer: one file per batch, written to a temporary
// name, fsync'ed, renamed to NNNNNNNNNNNNNNNNNNNN.spool and the directory
// fsync'ed before write returns, so a spooled batch survives kill -9 and
// power loss. Files are replayed and removed in sequence order.
type spool struct {
	dir    string
	limit  int64
	logger *slog.Logger

	mu    sync.Mutex
	files []spoolFile // complete files, by seq
	bytes int64       // complete and reserved
	next  uint64
}

type spoolFile struct {
	seq  uint64
	size int64
}

const (
	spoolExt   = ".spool"
	spoolMagic = "TLSPOOL1"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func openSpool(dir string, limit int64, logger *slog.Logger) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	sp := &spool{dir: dir, limit: limit, logger: logger, next: 1}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") { // a write that did not finish: never acknowledged
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("opening spool: %w", err)
			}
			continue
		}
		num, ok := strings.CutSuffix(name, spoolExt)
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("opening spool: %w", err)
		}
		sp.files = append(sp.files, spoolFile{seq: seq, size: info.Size()})
		sp.bytes += info.Size()
		sp.next = max(sp.next, seq+1)
	}
	slices.SortFunc(sp.files, func(a, b spoolFile) int { return compareUint(a.seq, b.seq) })
	if len(sp.files) > 0 {
		logger.Info("spool holds batches from an earlier run", "files", len(sp.files), "spool_bytes", sp.bytes)
	}
	return sp, nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (sp *spool) path(seq uint64) string {
	return filepath.Join(sp.dir, fmt.Sprintf("%020d%s", seq, spoolExt))
}

func (sp *spool) size() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return sp.bytes
}

// write stores rows durably as one file, or fails with errSpoolFull.
func (sp *spool) write(rows []row) error {
	buf := encodeRows(rows)
	sp.mu.Lock()
	if sp.bytes+int64(len(buf)) > sp.limit {
		used := sp.bytes
		sp.mu.Unlock()
		return fmt.Errorf("%d bytes used, %d more would exceed %d: %w", used, len(buf), sp.limit, errSpoolFull)
	}
	seq := sp.next
	sp.next++
	sp.bytes += int64(len(buf))
	sp.mu.Unlock()

	if err := sp.writeFile(seq, buf); err != nil {
		sp.mu.Lock()
		sp.bytes -= int64(len(buf))
		sp.mu.Unlock()
		return fmt.Errorf("writing spool file: %w", err)
	}
	sp.mu.Lock()
	i, _ := slices.BinarySearchFunc(sp.files, seq, func(f spoolFile, s uint64) int { return compareUint(f.seq, s) })
	sp.files = slices.Insert(sp.files, i, spoolFile{seq: seq, size: int64(len(buf))})
	sp.mu.Unlock()
	return nil
}

func (sp *spool) writeFile(seq uint64, buf []byte) error {
	final := sp.path(seq)
	tmp := final + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err == nil {
		err = syncDir(sp.dir)
	}
	if err != nil {
		_ = os.Remove(tmp) // best effort: openSpool removes leftovers too
		return err
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// oldest returns the sequence number and rows of the oldest file; ok is
// false when the spool is empty. A file that does not decode is returned
// with its error.
func (sp *spool) oldest() (seq uint64, rows []row, ok bool, err error) {
	sp.mu.Lock()
	if len(sp.files) == 0 {
		sp.mu.Unlock()
		return 0, nil, false, nil
	}
	seq = sp.files[0].seq
	sp.mu.Unlock()
	b, err := os.ReadFile(sp.path(seq))
	if err != nil {
		return seq, nil, true, fmt.Errorf("reading spool file %d: %w", seq, err)
	}
	rows, err = decodeRows(b)
	if err != nil {
		return seq, nil, true, fmt.Errorf("reading spool file %d: %w", seq, err)
	}
	return seq, rows, true, nil
}

// remove deletes a replayed file. quarantine, when set, renames it aside
// instead (a file the database refuses; kept for an operator).
func (sp *spool) remove(seq uint64, quarantine bool) error {
	var err error
	if quarantine {
		err = os.Rename(sp.path(seq), sp.path(seq)+".failed")
	} else {
		err = os.Remove(sp.path(seq))
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing spool file %d: %w", seq, err)
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	i := slices.IndexFunc(sp.files, func(f spoolFile) bool { return f.seq == seq })
	if i >= 0 {
		sp.bytes -= sp.files[i].size
		sp.files = slices.Delete(sp.files, i, i+1)
	}
	return nil
}

// encodeRows encodes rows as: magic, uvarint count, per row uvarint length
// + machine, uvarint length + metric, int64 ms, float64 bits (little
// endian), and a CRC-32C of all that.
func encodeRows(rows []row) []byte {
	n := len(spoolMagic) + binary.MaxVarintLen64 + 4
	for i := range rows {
		n += 2*binary.MaxVarintLen64 + len(rows[i].machine) + len(rows[i].metric) + 16
	}
	b := make([]byte, 0, n)
	b = append(b, spoolMagic...)
	b = binary.AppendUvarint(b, uint64(len(rows)))
	for i := range rows {
		r := &rows[i]
		b = binary.AppendUvarint(b, uint64(len(r.machine)))
		b = append(b, r.machine...)
		b = binary.AppendUvarint(b, uint64(len(r.metric)))
		b = append(b, r.metric...)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.ms))
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(r.value))
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errCorrupt = errors.New("corrupt spool file")

func decodeRows(b []byte) ([]row, error) {
	if len(b) < len(spoolMagic)+5 || string(b[:len(spoolMagic)]) != spoolMagic {
		return nil, errCorrupt
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("checksum mismatch: %w", errCorrupt)
	}
	p := body[len(spoolMagic):]
	count, k := binary.Uvarint(p)
	if k <= 0 || count > uint64(len(p)) {
		return nil, errCorrupt
	}
	p = p[k:]
	str := func() (string, bool) {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return "", false
		}
		s := string(p[k : k+int(l)])
		p = p[k+int(l):]
		return s, true
	}
	rows := make([]row, 0, count)
	for range count {
		machine, ok1 := str()
		metric, ok2 := str()
		if !ok1 || !ok2 || len(p) < 16 {
			return nil, errCorrupt
		}
		ms := int64(binary.LittleEndian.Uint64(p))
		v := math.Float64frombits(binary.LittleEndian.Uint64(p[8:]))
		p = p[16:]
		rows = append(rows, row{ms: ms, machine: machine, metric: metric, value: v})
	}
	if len(p) != 0 {
		return nil, errCorrupt
	}
	return rows, nil
}
