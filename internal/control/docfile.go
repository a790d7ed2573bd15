package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"

	"github.com/twinline/twinline/internal/atomicfile"
)

// TwinFiles is the embedded TwinStore: one JSON file per machine in a
// directory (twins/ in the data dir), replaced atomically and fsynced
// before Put returns, so a twin survives a crash (kill -9) as the last
// Put left it. It serves one process; it keeps what it read in memory.
type TwinFiles struct {
	dir  string
	seed maphash.Seed
	// locks serialise the writes of one machine (striped).
	locks [64]sync.Mutex

	mu    sync.Mutex
	cache map[string]Twin
}

// OpenTwinFiles returns the store of the twins in dir, creating it.
func OpenTwinFiles(dir string) (*TwinFiles, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("creating the twins directory: %w", err)
	}
	return &TwinFiles{dir: dir, seed: maphash.MakeSeed(), cache: map[string]Twin{}}, nil
}

// twinFile is a twin as stored.
type twinFile struct {
	Machine         string         `json:"machine"`
	Desired         map[string]any `json:"desired"`
	Reported        map[string]any `json:"reported"`
	Version         uint64         `json:"version"`
	ReportedVersion uint64         `json:"reportedVersion"`
	Metadata        Metadata       `json:"metadata"`
}

// path names machine's file: escaped, so that any id is one file name.
func (f *TwinFiles) path(machine string) string {
	return filepath.Join(f.dir, "m-"+url.QueryEscape(machine)+".json")
}

// Get implements TwinStore.
func (f *TwinFiles) Get(_ context.Context, machine string) (Twin, error) {
	f.mu.Lock()
	tw, ok := f.cache[machine]
	f.mu.Unlock()
	if ok {
		return tw.clone(), nil
	}
	tw, err := f.read(machine)
	if err != nil {
		return Twin{}, err
	}
	f.mu.Lock()
	if _, ok := f.cache[machine]; !ok { // a Put in between has the newer one
		f.cache[machine] = tw
	}
	f.mu.Unlock()
	return tw.clone(), nil
}

func (f *TwinFiles) read(machine string) (Twin, error) {
	b, err := os.ReadFile(f.path(machine))
	if errors.Is(err, fs.ErrNotExist) {
		return Twin{Machine: machine}, nil
	}
	if err != nil {
		return Twin{}, fmt.Errorf("reading the twin file: %w", err)
	}
	var tf twinFile
	if err := json.Unmarshal(b, &tf); err != nil {
		return Twin{}, fmt.Errorf("decoding the twin file %s: %w", f.path(machine), err)
	}
	return Twin{Machine: machine, Desired: tf.Desired, Reported: tf.Reported, Version: tf.Version,
		ReportedVersion: tf.ReportedVersion, Metadata: tf.Metadata}, nil
}

// Put implements TwinStore.
func (f *TwinFiles) Put(ctx context.Context, tw Twin, prevVersion, prevReported uint64, _ Notice) error {
	lock := &f.locks[maphash.String(f.seed, tw.Machine)%uint64(len(f.locks))]
	lock.Lock()
	defer lock.Unlock()
	cur, err := f.Get(ctx, tw.Machine)
	if err != nil {
		return err
	}
	if cur.Version != prevVersion || cur.ReportedVersion != prevReported {
		return fmt.Errorf("%w: twin %s is at versions %d.%d, not %d.%d", ErrConcurrentUpdate, tw.Machine,
			cur.Version, cur.ReportedVersion, prevVersion, prevReported)
	}
	b, err := json.Marshal(twinFile{Machine: tw.Machine, Desired: tw.Desired, Reported: tw.Reported, Version: tw.Version,
		ReportedVersion: tw.ReportedVersion, Metadata: tw.Metadata})
	if err != nil {
		return fmt.Errorf("encoding the twin: %w", err)
	}
	if _, err := atomicfile.WriteFile(f.path(tw.Machine), b, 0o640); err != nil {
		return fmt.Errorf("writing the twin file: %w", err)
	}
	tw.Delta = nil
	f.mu.Lock()
	f.cache[tw.Machine] = tw.clone()
	f.mu.Unlock()
	return nil
}

// Delete implements TwinStore.
func (f *TwinFiles) Delete(_ context.Context, machine string, _ Notice) error {
	lock := &f.locks[maphash.String(f.seed, machine)%uint64(len(f.locks))]
	lock.Lock()
	defer lock.Unlock()
	if err := os.Remove(f.path(machine)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the twin file: %w", err)
	}
	if err := syncDir(f.dir); err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.cache, machine)
	f.mu.Unlock()
	return nil
}

// syncDir makes a removal in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening the twins directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing the twins directory: %w", err)
	}
	return nil
}
