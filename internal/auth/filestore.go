package auth

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twinline/twinline/internal/atomicfile"
)

// DefaultAuditLimit is how many entries an AuditStore's Query returns at
// most when the filter sets no Limit.
const DefaultAuditLimit = 1000

// lockFile holds an exclusive flock on path+".lock" until unlock: the
// processes sharing a store (the server and the CLI) read, change and
// write it one at a time. The lock file is separate because the store's
// own file is replaced on every write.
func lockFile(path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating directory: %w", err)
	}
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// stamp identifies a version of a file: a write replaces the file, so a
// new version has a new inode, and most likely another time and size.
type stamp struct {
	ino   uint64
	size  int64
	mtime time.Time
}

func stampOf(fi os.FileInfo) stamp {
	s := stamp{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

// TokenFile is a TokenStore in one JSON document (tokens.json, mode 0600,
// in a directory of mode 0700), replaced atomically on every change
// (write, fsync, rename, fsync the directory). Several processes may share
// it: every change reads, changes and writes the file under an exclusive
// flock of tokens.json.lock, so the CLI and the server never lose each
// other's writes; Run notices the changes of other processes by polling
// the file. It is safe for concurrent use.
type TokenFile struct {
	path string
	// PollInterval is how often Run looks for changes of other
	// processes. Default 1 second; set it before Run.
	PollInterval time.Duration

	mu   sync.Mutex // one change at a time in this process; guards the rest
	seen stamp      // the version last read or written here
	fns  []func()
}

var _ TokenStore = (*TokenFile)(nil)

// NewTokenFile returns the tokens stored at path; a missing file holds no
// tokens.
func NewTokenFile(path string) *TokenFile { return &TokenFile{path: path} }

type tokenDoc struct {
	Version int     `json:"version"`
	Tokens  []Token `json:"tokens"`
}

// read returns the stored tokens and the version read; f.mu must be held.
func (f *TokenFile) read() ([]Token, stamp, error) {
	file, err := os.Open(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, stamp{}, nil
	}
	if err != nil {
		return nil, stamp{}, fmt.Errorf("reading tokens: %w", err)
	}
	defer file.Close()
	fi, err := file.Stat()
	if err != nil {
		return nil, stamp{}, fmt.Errorf("reading tokens: %w", err)
	}
	b, err := io.ReadAll(file)
	if err != nil {
		return nil, stamp{}, fmt.Errorf("reading tokens: %w", err)
	}
	var doc tokenDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, stamp{}, fmt.Errorf("decoding tokens %s: %w", f.path, err)
	}
	return doc.Tokens, stampOf(fi), nil
}

// change reads the tokens, calls fn with them and writes what fn returns
// unless fn says nothing changed, all under the file lock.
func (f *TokenFile) change(fn func([]Token) ([]Token, bool, error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	unlock, err := lockFile(f.path)
	if err != nil {
		return err
	}
	defer unlock()
	toks, st, err := f.read()
	if err != nil {
		return err
	}
	toks, changed, err := fn(toks)
	if err != nil || !changed {
		return err
	}
	slices.SortFunc(toks, func(a, b Token) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.MarshalIndent(tokenDoc{Version: 1, Tokens: toks}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding tokens: %w", err)
	}
	fi, err := atomicfile.WriteFile(f.path, b, 0o600)
	if err != nil {
		return fmt.Errorf("saving tokens: %w", err)
	}
	// A change by another process since this one last looked is still to
	// be heard by Run; one made here is not.
	if st == f.seen {
		f.seen = stampOf(fi)
	}
	return nil
}

// Create implements TokenStore.
func (f *TokenFile) Create(_ context.Context, t Token) error {
	if t.ID == "" || t.Name == "" {
		return errors.New("creating token: empty id or name")
	}
	return f.change(func(toks []Token) ([]Token, bool, error) {
		for _, o := range toks {
			if o.Name == t.Name || o.ID == t.ID {
				return nil, false, fmt.Errorf("creating token %q: %w", t.Name, ErrExists)
			}
		}
		return append(toks, t), true, nil
	})
}

// Load implements TokenStore.
func (f *TokenFile) Load(context.Context) ([]Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	toks, st, err := f.read()
	if err != nil {
		return nil, err
	}
	f.seen = st
	return toks, nil
}

// Revoke implements TokenStore.
func (f *TokenFile) Revoke(_ context.Context, name string, at time.Time) error {
	return f.change(func(toks []Token) ([]Token, bool, error) {
		i := slices.IndexFunc(toks, func(t Token) bool { return t.Name == name })
		if i < 0 {
			return nil, false, fmt.Errorf("revoking token %q: %w", name, ErrNotFound)
		}
		changed := false
		id := toks[i].ID
		for j := range toks {
			if (j == i || toks[j].Parent == id) && toks[j].Revoked.IsZero() {
				toks[j].Revoked = at
				changed = true
			}
		}
		return toks, changed, nil
	})
}

// Touch implements TokenStore. It writes the file only when a last-used
// time moves forward.
func (f *TokenFile) Touch(_ context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	return f.change(func(toks []Token) ([]Token, bool, error) {
		changed := false
		for i := range toks {
			if at, ok := used[toks[i].ID]; ok && at.After(toks[i].LastUsed) {
				toks[i].LastUsed = at
				changed = true
			}
		}
		return toks, changed, nil
	})
}

// Delete implements TokenStore.
func (f *TokenFile) Delete(_ context.Context, before time.Time) error {
	return f.change(func(toks []Token) ([]Token, bool, error) {
		n := len(toks)
		toks = slices.DeleteFunc(toks, func(t Token) bool { return gone(t, before) })
		return toks, len(toks) != n, nil
	})
}

// gone reports whether t was revoked or expired before before.
func gone(t Token, before time.Time) bool {
	return !t.Revoked.IsZero() && t.Revoked.Before(before) || !t.Expires.IsZero() && t.Expires.Before(before)
}

// OnChange implements TokenStore: Run calls fn after another process
// changed the file.
func (f *TokenFile) OnChange(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fns = append(f.fns, fn)
}

// Run polls the file every PollInterval until ctx ends, and calls the
// OnChange functions when another process changed it (or when it changed
// since this TokenFile last read it). It returns nil when ctx ends.
func (f *TokenFile) Run(ctx context.Context) error {
	interval := f.PollInterval
	if interval <= 0 {
		interval = time.Second
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		var st stamp
		if fi, err := os.Stat(f.path); err == nil {
			st = stampOf(fi)
		}
		f.mu.Lock()
		changed := st != f.seen
		f.seen = st
		fns := slices.Clone(f.fns)
		f.mu.Unlock()
		if changed {
			for _, fn := range fns {
				fn()
			}
		}
	}
}

// Close implements TokenStore; it holds nothing open.
func (f *TokenFile) Close() error { return nil }

// AuditFile is an AuditStore in an append-only JSON-lines file
// (audit.jsonl, mode 0600): Append writes and fsyncs a line, Query reads
// the file through (keeping at most Limit entries in memory), DeleteBefore
// and EraseActor rewrite it atomically. Like TokenFile, every write holds
// an exclusive flock of audit.jsonl.lock, so that processes sharing the
// file keep the ids increasing and lose no entry. A torn last line (a
// crash mid-write, never acknowledged) is skipped, and cut off by the next
// Append. It is safe for concurrent use.
type AuditFile struct {
	path string

	mu   sync.Mutex
	seen stamp  // the version of the file lastID holds for
	last uint64 // the highest id in the file
}

var _ AuditStore = (*AuditFile)(nil)

// NewAuditFile returns the audit log at path, created on first Append.
func NewAuditFile(path string) *AuditFile { return &AuditFile{path: path} }

// auditLine is a line of the file: an entry, or the header a rewrite
// starts with, {"lastId":N}, which keeps the highest id ever given when
// the entries holding it were deleted.
type auditLine struct {
	AuditEntry
	LastID uint64 `json:"lastId,omitempty"`
}

// scan calls fn with every entry of r, oldest first, and returns the
// highest id seen (headers included) and the bytes of complete lines.
func scanAudit(r io.Reader, fn func(AuditEntry) error) (last uint64, size int64, err error) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return last, size, nil // a torn last line, or none
		}
		if err != nil {
			return 0, 0, err
		}
		size += int64(len(line))
		var l auditLine
		if err := json.Unmarshal(line, &l); err != nil {
			return 0, 0, fmt.Errorf("decoding entry at byte %d: %w", size-int64(len(line)), err)
		}
		last = max(last, l.ID, l.LastID)
		if l.ID == 0 {
			continue
		}
		if fn != nil {
			if err := fn(l.AuditEntry); err != nil {
				return 0, 0, err
			}
		}
	}
}

// Append implements AuditStore.
func (a *AuditFile) Append(_ context.Context, e AuditEntry) (AuditEntry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	unlock, err := lockFile(a.path)
	if err != nil {
		return AuditEntry{}, fmt.Errorf("appending audit entry: %w", err)
	}
	defer unlock()
	f, err := os.OpenFile(a.path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return AuditEntry{}, fmt.Errorf("appending audit entry: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return AuditEntry{}, fmt.Errorf("appending audit entry: %w", err)
	}
	end := fi.Size()
	if st := stampOf(fi); st != a.seen || a.seen == (stamp{}) {
		// Another process wrote the file since: find the highest id.
		last, size, err := scanAudit(f, nil)
		if err != nil {
			return AuditEntry{}, fmt.Errorf("reading audit log %s: %w", a.path, err)
		}
		a.last, end = last, size
	}
	e.ID = a.last + 1
	b, err := json.Marshal(e)
	if err != nil {
		return AuditEntry{}, fmt.Errorf("encoding audit entry: %w", err)
	}
	// Write at the end of the complete lines: over a torn last line.
	if _, err := f.WriteAt(append(b, '\n'), end); err != nil {
		return AuditEntry{}, fmt.Errorf("appending audit entry: %w", err)
	}
	end += int64(len(b)) + 1
	if err := f.Truncate(end); err != nil {
		return AuditEntry{}, fmt.Errorf("appending audit entry: %w", err)
	}
	if err := f.Sync(); err != nil {
		return AuditEntry{}, fmt.Errorf("syncing audit log: %w", err)
	}
	if fi, err := f.Stat(); err == nil {
		a.seen = stampOf(fi)
	} else {
		a.seen = stamp{}
	}
	a.last = e.ID
	return e, nil
}

// Query implements AuditStore.
func (a *AuditFile) Query(_ context.Context, flt AuditFilter) ([]AuditEntry, error) {
	limit := flt.Limit
	if limit <= 0 {
		limit = DefaultAuditLimit
	}
	f, err := os.Open(a.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("querying audit log: %w", err)
	}
	defer f.Close()
	var out []AuditEntry
	_, _, err = scanAudit(f, func(e AuditEntry) error {
		if flt.matches(e) {
			out = append(out, e)
			if len(out) >= 2*limit {
				out = newestFirst(out, limit)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("querying audit log %s: %w", a.path, err)
	}
	return newestFirst(out, limit), nil
}

func (flt AuditFilter) matches(e AuditEntry) bool {
	return (flt.From.IsZero() || !e.At.Before(flt.From)) &&
		(flt.To.IsZero() || e.At.Before(flt.To)) &&
		(flt.Actor == "" || e.Actor == flt.Actor) &&
		(flt.Machine == "" || e.Machine == flt.Machine) &&
		(flt.Action == "" || e.Action == flt.Action)
}

// newestFirst sorts es by time, newest first, then by id, highest first,
// and keeps the first limit.
func newestFirst(es []AuditEntry, limit int) []AuditEntry {
	slices.SortFunc(es, func(x, y AuditEntry) int {
		if c := y.At.Compare(x.At); c != 0 {
			return c
		}
		return cmp.Compare(y.ID, x.ID)
	})
	if len(es) > limit {
		es = es[:limit]
	}
	return es
}

// rewrite replaces the file with the entries fn keeps, changed as fn
// changed them, under the file lock; fn reports whether it changed or
// dropped the entry. It returns how many entries fn changed or dropped.
func (a *AuditFile) rewrite(fn func(e *AuditEntry) (keep, changed bool)) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	unlock, err := lockFile(a.path)
	if err != nil {
		return 0, err
	}
	defer unlock()
	f, err := os.Open(a.path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading audit log: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	n := 0
	enc := json.NewEncoder(&buf)
	last, _, err := scanAudit(f, func(e AuditEntry) error {
		keep, changed := fn(&e)
		if changed || !keep {
			n++
		}
		if keep {
			return enc.Encode(e)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("reading audit log %s: %w", a.path, err)
	}
	if n == 0 {
		return 0, nil
	}
	data := append(fmt.Appendf(nil, "{\"lastId\":%d}\n", last), buf.Bytes()...)
	fi, err := atomicfile.WriteFile(a.path, data, 0o600)
	if err != nil {
		return 0, fmt.Errorf("rewriting audit log: %w", err)
	}
	a.seen, a.last = stampOf(fi), last
	return n, nil
}

// DeleteBefore implements AuditStore: it rewrites the file without the
// entries older than t.
func (a *AuditFile) DeleteBefore(_ context.Context, t time.Time) (int, error) {
	n, err := a.rewrite(func(e *AuditEntry) (bool, bool) { return !e.At.Before(t), false })
	if err != nil {
		return 0, fmt.Errorf("deleting audit entries: %w", err)
	}
	return n, nil
}

// EraseActor implements AuditStore: it rewrites the file with actor
// replaced by pseudonym as the actor, and as the string value of the
// detail keys "author" and "by".
func (a *AuditFile) EraseActor(_ context.Context, actor, pseudonym string) (int, error) {
	n, err := a.rewrite(func(e *AuditEntry) (bool, bool) { return true, eraseActor(e, actor, pseudonym) })
	if err != nil {
		return 0, fmt.Errorf("erasing actor: %w", err)
	}
	return n, nil
}

// eraseActor replaces actor by pseudonym in e, and reports whether it did.
func eraseActor(e *AuditEntry, actor, pseudonym string) bool {
	changed := false
	if e.Actor == actor {
		e.Actor, changed = pseudonym, true
	}
	for _, k := range []string{"author", "by"} {
		if s, ok := e.Detail[k].(string); ok && s == actor {
			e.Detail[k], changed = pseudonym, true
		}
	}
	return changed
}

// Close implements AuditStore; it holds nothing open.
func (a *AuditFile) Close() error { return nil }
