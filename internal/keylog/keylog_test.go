package keylog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/twinline/twinline/internal/stream"
)

func keys(from, n int) []stream.Key {
	out := make([]stream.Key, n)
	for i := range out {
		j := from + i
		if j%2 == 0 {
			out[i] = stream.Key{Machine: fmt.Sprintf("press-%02d", j%7), ID: fmt.Sprintf("evt-%d", j), Time: int64(j) * 1000}
		} else {
			out[i] = stream.Key{Machine: "oven-01", Seq: uint64(j) << 40, HasSeq: true, Time: -int64(j)}
		}
	}
	return out
}

func mustOpen(t *testing.T, dir string, maxKeys int) (*Log, []stream.Key) {
	t.Helper()
	l, ks, err := Open(dir, maxKeys)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, ks
}

func TestReopenReturnsKeysInOrder(t *testing.T) {
	dir := t.TempDir()
	l, got := mustOpen(t, dir, 1000)
	if len(got) != 0 {
		t.Fatalf("new journal has %d keys", len(got))
	}
	for i := range 3 {
		if err := l.Append(keys(i*10, 10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l2, got := mustOpen(t, dir, 1000)
	if diff := cmp.Diff(got, keys(0, 30)); diff != "" {
		t.Errorf("reopened keys (-got +want):\n%s", diff)
	}
	// Appending after a reopen continues the same journal.
	if err := l2.Append(keys(30, 5)); err != nil {
		t.Fatal(err)
	}
	l2.Close()
	if _, got := mustOpen(t, dir, 1000); len(got) != 35 {
		t.Errorf("after a second reopen: %d keys, want 35", len(got))
	}
}

func TestTornTailIsCutOff(t *testing.T) {
	for _, cut := range []int{1, 3, 7} {
		t.Run(fmt.Sprintf("cut %d bytes", cut), func(t *testing.T) {
			dir := t.TempDir()
			l, _ := mustOpen(t, dir, 1000)
			if err := l.Append(keys(0, 4)); err != nil {
				t.Fatal(err)
			}
			if err := l.Append(keys(4, 1)); err != nil {
				t.Fatal(err)
			}
			l.Close()
			seg := filepath.Join(dir, "keys-00000000000000000001.log")
			fi, err := os.Stat(seg)
			if err != nil {
				t.Fatal(err)
			}
			// A crash mid-write: the last record is incomplete.
			if err := os.Truncate(seg, fi.Size()-int64(cut)); err != nil {
				t.Fatal(err)
			}
			l2, got := mustOpen(t, dir, 1000)
			if diff := cmp.Diff(got, keys(0, 4)); diff != "" {
				t.Errorf("keys after a torn write (-got +want):\n%s", diff)
			}
			// The torn bytes are gone: new records follow the good ones.
			if err := l2.Append(keys(100, 1)); err != nil {
				t.Fatal(err)
			}
			l2.Close()
			_, got = mustOpen(t, dir, 1000)
			if diff := cmp.Diff(got, append(keys(0, 4), keys(100, 1)...)); diff != "" {
				t.Errorf("keys after appending past a torn write (-got +want):\n%s", diff)
			}
		})
	}
}

// TestCorruptOlderSegmentIsCutOff: a damaged record in an older segment (a
// failed write that could not be cut off) ends that segment; the keys
// before it and the later segments' are kept, and the server starts.
func TestCorruptOlderSegmentIsCutOff(t *testing.T) {
	dir := t.TempDir()
	l, _ := mustOpen(t, dir, 8) // 2 keys per segment
	for i := range 3 {
		if err := l.Append(keys(i*2, 2)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	seg := filepath.Join(dir, "keys-00000000000000000001.log")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-2] ^= 0xff
	if err := os.WriteFile(seg, b, 0o640); err != nil {
		t.Fatal(err)
	}
	_, got := mustOpen(t, dir, 8)
	want := append(keys(0, 1), keys(2, 4)...) // segment 1 lost its second key
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("keys after a damaged record (-got +want):\n%s", diff)
	}
}

func TestRotationBoundsTheJournal(t *testing.T) {
	dir := t.TempDir()
	l, _ := mustOpen(t, dir, 40) // 10 keys per segment, 5 segments kept
	for i := range 20 {
		if err := l.Append(keys(i*10, 10)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	segs, _ := filepath.Glob(filepath.Join(dir, "keys-*.log"))
	if len(segs) != 5 {
		t.Errorf("%d segments on disk, want 5", len(segs))
	}
	_, got := mustOpen(t, dir, 40)
	// The newest 50 keys: at least maxKeys, the newest ones.
	if diff := cmp.Diff(got, keys(150, 50)); diff != "" {
		t.Errorf("kept keys (-got +want):\n%s", diff)
	}
}

// TestFailedWriteIsCutOff: the bytes a failed write left are cut off, so
// the next records follow whole ones.
func TestFailedWriteIsCutOff(t *testing.T) {
	dir := t.TempDir()
	l, _ := mustOpen(t, dir, 1000)
	if err := l.Append(keys(0, 2)); err != nil {
		t.Fatal(err)
	}
	// Simulate a write that failed after writing part of a record: the
	// bytes are there, the error was returned.
	if _, err := l.f.Write([]byte{0x20, 0xde, 0xad}); err != nil {
		t.Fatal(err)
	}
	if err := l.cut(errors.New("disk full")); err == nil {
		t.Fatal("cut returned nil")
	}
	if err := l.Append(keys(2, 2)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	_, got := mustOpen(t, dir, 1000)
	if diff := cmp.Diff(got, keys(0, 4)); diff != "" {
		t.Errorf("keys after a failed write (-got +want):\n%s", diff)
	}
}
