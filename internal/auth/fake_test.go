package auth

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"
)

// fakeStore is an in-memory TokenStore for the tests of this package; the
// real ones pass internal/auth/authtest.
type fakeStore struct {
	mu       sync.Mutex
	toks     []Token
	touched  []map[string]time.Time
	onChange func()
	loads    int
	failLoad error
	// keepNames keeps the names and ids of revoked tokens taken, as the
	// file and PostgreSQL stores do; dropSessionFields loses Kind and
	// Owner, as a store without those columns would.
	keepNames, dropSessionFields bool
}

func (s *fakeStore) Create(_ context.Context, t Token) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.toks {
		if (o.Revoked.IsZero() || s.keepNames) && (o.Name == t.Name || o.ID == t.ID) {
			return ErrExists
		}
	}
	t.Hash = slices.Clone(t.Hash)
	t.Sites = slices.Clone(t.Sites)
	if s.dropSessionFields {
		t.Kind, t.Owner = "", ""
	}
	s.toks = append(s.toks, t)
	return nil
}

func (s *fakeStore) Load(context.Context) ([]Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loads++
	if s.failLoad != nil {
		return nil, s.failLoad
	}
	out := make([]Token, len(s.toks))
	for i, t := range s.toks {
		t.Hash = slices.Clone(t.Hash)
		t.Sites = slices.Clone(t.Sites)
		out[i] = t
	}
	slices.SortStableFunc(out, func(a, b Token) int { return cmp.Compare(a.Name, b.Name) })
	return out, nil
}

func (s *fakeStore) Revoke(_ context.Context, name string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, t := range s.toks {
		if t.Name == name && t.Revoked.IsZero() {
			s.toks[i].Revoked = at
			for j, c := range s.toks {
				if c.Parent == t.ID && c.Revoked.IsZero() {
					s.toks[j].Revoked = at
				}
			}
			return nil
		}
	}
	return ErrNotFound
}

func (s *fakeStore) Touch(_ context.Context, used map[string]time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touched = append(s.touched, used)
	for i, t := range s.toks {
		if at, ok := used[t.ID]; ok && at.After(t.LastUsed) {
			s.toks[i].LastUsed = at
		}
	}
	return nil
}

func (s *fakeStore) Delete(_ context.Context, before time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.toks = slices.DeleteFunc(s.toks, func(t Token) bool {
		return !t.Revoked.IsZero() && t.Revoked.Before(before) || !t.Expires.IsZero() && t.Expires.Before(before)
	})
	return nil
}

func (s *fakeStore) OnChange(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onChange = fn
}

func (s *fakeStore) Close() error { return nil }

// put stores t behind the Authenticator's back, as another replica would,
// and notifies.
func (s *fakeStore) put(t Token) {
	s.mu.Lock()
	s.toks = append(s.toks, t)
	fn := s.onChange
	s.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (s *fakeStore) touches() []map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.touched)
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
