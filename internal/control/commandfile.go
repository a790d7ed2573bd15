package control

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/twinline/twinline/internal/atomicfile"
)

// FileCommandStore keeps the commands in a journal file,
// <dir>/commands.jsonl: one line per command state (the whole command, as
// JSON), appended and fsynced before a write returns, so a command
// survives kill -9. Opening replays it (the last line of each command
// wins); a torn last line, a write cut short by a crash and never
// acknowledged, is cut off. The journal is rewritten with only the live
// commands when its superseded lines outnumber them, and by Prune. It
// holds every kept command in memory: Retention bounds them. It is safe
// for concurrent use.
type FileCommandStore struct {
	mu    sync.Mutex
	path  string
	f     *os.File
	size  int64 // bytes of complete lines
	lines int
	cmds  map[string]Command   // by id
	keys  map[[2]string]string // machine, idempotency key → id
}

var _ CommandStore = (*FileCommandStore)(nil)

// OpenFileCommandStore opens (creating them if needed) dir and its command
// journal.
func OpenFileCommandStore(dir string) (*FileCommandStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening command store: %w", err)
	}
	s := &FileCommandStore{path: filepath.Join(dir, "commands.jsonl"), cmds: map[string]Command{}, keys: map[[2]string]string{}}
	data, err := os.ReadFile(s.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("opening command store: %w", err)
	}
	for line := 1; len(data) > 0; line++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break // torn last line: cut off below
		}
		var cmd Command
		if err := json.Unmarshal(data[:i], &cmd); err != nil {
			if i+1 < len(data) {
				return nil, fmt.Errorf("opening command store: reading %s line %d: %w", s.path, line, err)
			}
			break // an unreadable last line is torn too
		}
		s.put(cmd)
		s.size += int64(i) + 1
		s.lines++
		data = data[i+1:]
	}
	s.f, err = os.OpenFile(s.path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening command store: %w", err)
	}
	if err := s.f.Truncate(s.size); err != nil {
		s.f.Close()
		return nil, fmt.Errorf("opening command store: cutting off a torn last line: %w", err)
	}
	return s, nil
}

func (s *FileCommandStore) put(cmd Command) {
	s.cmds[cmd.ID] = cmd
	if cmd.IdempotencyKey != "" {
		s.keys[[2]string{cmd.Machine, cmd.IdempotencyKey}] = cmd.ID
	}
}

func (s *FileCommandStore) remove(cmd Command) {
	delete(s.cmds, cmd.ID)
	if cmd.IdempotencyKey != "" {
		delete(s.keys, [2]string{cmd.Machine, cmd.IdempotencyKey})
	}
}

// clone returns cmd with a history of its own.
func clone(cmd Command) Command {
	cmd.History = slices.Clone(cmd.History)
	return cmd
}

// appendLocked writes cmd to the journal and syncs it.
func (s *FileCommandStore) appendLocked(cmd Command) error {
	if s.f == nil {
		return errors.New("command store closed")
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("encoding command: %w", err)
	}
	if _, err := s.f.Write(append(b, '\n')); err != nil {
		if terr := s.f.Truncate(s.size); terr != nil {
			err = errors.Join(err, fmt.Errorf("cutting back a torn line: %w", terr))
		}
		return fmt.Errorf("writing %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", s.path, err)
	}
	s.size += int64(len(b)) + 1
	s.lines++
	return nil
}

// compactLocked rewrites the journal when its superseded lines outnumber
// the kept commands. The lines written are durable: a failed compaction
// leaves the journal as it is, and a later write tries again.
func (s *FileCommandStore) compactLocked() {
	if s.lines > 2*len(s.cmds)+256 {
		_ = s.rewriteLocked()
	}
}

// rewriteLocked replaces the journal by one line per kept command.
func (s *FileCommandStore) rewriteLocked() error {
	cmds := make([]Command, 0, len(s.cmds))
	for _, c := range s.cmds {
		cmds = append(cmds, c)
	}
	slices.SortFunc(cmds, func(a, b Command) int { return cmp.Compare(a.ID, b.ID) })
	var buf bytes.Buffer
	for _, c := range cmds {
		b, err := json.Marshal(c)
		if err != nil {
			return fmt.Errorf("encoding command: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	if _, err := atomicfile.WriteFile(s.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("compacting %s: %w", s.path, err)
	}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("reopening %s: %w", s.path, err)
	}
	s.f.Close()
	s.f, s.size, s.lines = f, int64(buf.Len()), len(cmds)
	return nil
}

// Create implements CommandStore.
func (s *FileCommandStore) Create(_ context.Context, cmd Command) (Command, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cmd.IdempotencyKey != "" {
		if id, ok := s.keys[[2]string{cmd.Machine, cmd.IdempotencyKey}]; ok {
			return clone(s.cmds[id]), false, nil
		}
	}
	if _, ok := s.cmds[cmd.ID]; ok {
		return Command{}, false, fmt.Errorf("creating command: id %s exists: %w", cmd.ID, ErrConflict)
	}
	cmd = clone(cmd)
	if err := s.appendLocked(cmd); err != nil {
		return Command{}, false, fmt.Errorf("creating command: %w", err)
	}
	s.put(cmd)
	s.compactLocked()
	return clone(cmd), true, nil
}

// Get implements CommandStore.
func (s *FileCommandStore) Get(_ context.Context, machine, id string) (Command, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd, ok := s.cmds[id]
	if !ok || cmd.Machine != machine {
		return Command{}, fmt.Errorf("command %q of machine %q: %w", id, machine, ErrNotFound)
	}
	return clone(cmd), nil
}

// List implements CommandStore.
func (s *FileCommandStore) List(_ context.Context, machine string, f Filter) ([]Command, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Command
	for _, c := range s.cmds {
		if c.Machine == machine && (f.State == "" || c.State == f.State) && (f.Name == "" || c.Name == f.Name) {
			out = append(out, c)
		}
	}
	sortNewestFirst(out)
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[:f.Limit]
	}
	for i := range out {
		out[i] = clone(out[i])
	}
	return out, nil
}

// sortNewestFirst orders commands by creation time, then id, newest first.
func sortNewestFirst(cmds []Command) {
	slices.SortFunc(cmds, func(a, b Command) int {
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), cmp.Compare(b.ID, a.ID))
	})
}

// Update implements CommandStore.
func (s *FileCommandStore) Update(_ context.Context, cmd Command) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.cmds[cmd.ID]
	if !ok || cur.Machine != cmd.Machine {
		return fmt.Errorf("updating command %q: %w", cmd.ID, ErrNotFound)
	}
	if cur.Revision() != cmd.Revision()-1 {
		return fmt.Errorf("updating command %q: at revision %d, not %d: %w", cmd.ID, cur.Revision(), cmd.Revision()-1, ErrConflict)
	}
	cmd = clone(cmd)
	if err := s.appendLocked(cmd); err != nil {
		return fmt.Errorf("updating command: %w", err)
	}
	s.put(cmd)
	s.compactLocked()
	return nil
}

// Pending implements CommandStore.
func (s *FileCommandStore) Pending(context.Context) ([]Command, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Command
	for _, c := range s.cmds {
		if !c.State.Terminal() {
			out = append(out, clone(c))
		}
	}
	sortNewestFirst(out)
	return out, nil
}

// Prune implements CommandStore; it rewrites the journal when it deletes
// any.
func (s *FileCommandStore) Prune(_ context.Context, before time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []Command
	for _, c := range s.cmds {
		if c.State.Terminal() && c.UpdatedAt.Before(before) {
			gone = append(gone, c)
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	for _, c := range gone {
		s.remove(c)
	}
	if err := s.rewriteLocked(); err != nil {
		for _, c := range gone {
			s.put(c)
		}
		return 0, fmt.Errorf("pruning commands: %w", err)
	}
	return len(gone), nil
}

// Close implements CommandStore.
func (s *FileCommandStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
