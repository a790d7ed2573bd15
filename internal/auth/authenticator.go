package auth

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// AuthenticatorOptions configure an Authenticator; zero fields take their
// defaults.
type AuthenticatorOptions struct {
	// Now is the clock (time.Now).
	Now func() time.Time
	// Logger receives the errors of Run's flushes and reloads
	// (slog.Default).
	Logger *slog.Logger
	// TouchInterval is how often Run writes last-used times to the store
	// (1m).
	TouchInterval time.Duration
	// ReloadInterval is how often Run reloads every token, a safety net
	// for change notifications the store missed (30s).
	ReloadInterval time.Duration
}

// BootstrapName is the name of the token Bootstrap ensures. A store that
// keeps the names of revoked tokens taken gets a rotated one named
// "bootstrap:<id>" (no API token can have a colon in its name).
const BootstrapName = "bootstrap"

// isBootstrap reports whether t is, or was, a token of Bootstrap.
func isBootstrap(t Token) bool {
	return t.Name == BootstrapName || strings.HasPrefix(t.Name, BootstrapName+":")
}

// MinBootstrapSecretLen is the shortest secret Bootstrap accepts.
const MinBootstrapSecretLen = 32

// Authenticator verifies token secrets against every token of a
// TokenStore, kept in memory: Verify is a map lookup and a constant-time
// comparison without locks. Its writes (Create, Revoke, Bootstrap,
// NewSession, EndSession) go through the store, then reload. Run keeps it
// current and flushes last-used times; it must run for the tokens other
// replicas change to be seen.
type Authenticator struct {
	store  TokenStore
	now    func() time.Time
	logger *slog.Logger
	touch  time.Duration
	reload time.Duration

	snap    atomic.Pointer[snapshot]
	reloadM sync.Mutex    // serialises Reload: a slow one never replaces a newer snapshot
	changed chan struct{} // store.OnChange, buffered 1
}

// snapshot is an immutable view of the store's tokens.
type snapshot struct {
	all    []*entry // as loaded, by name
	byID   map[string]*entry
	byName map[string]*entry
	// never is whether some usable API token never expires; else latest
	// is the latest expiry of one (zero: there is none).
	never  bool
	latest time.Time
}

// entry is one token in a snapshot. used outlives snapshots: a reload
// hands it to the token's next entry.
type entry struct {
	tok  Token
	id   Identity
	used *usage
}

// usage is a token's last-used time in unix nanoseconds, and the last one
// written to the store.
type usage struct {
	last    atomic.Int64
	flushed atomic.Int64
}

// touchGranularity is how much a last-used time must advance to be
// written again in memory: most Verify calls then only read the shared
// cache line.
const touchGranularity = time.Second

func (u *usage) record(now time.Time) {
	n := now.UnixNano()
	if n-u.last.Load() >= int64(touchGranularity) {
		u.last.Store(n)
	}
}

// NewAuthenticator returns an Authenticator of store's tokens, loaded once
// here.
func NewAuthenticator(store TokenStore, opts AuthenticatorOptions) (*Authenticator, error) {
	a := &Authenticator{
		store:   store,
		now:     opts.Now,
		logger:  cmp.Or(opts.Logger, slog.Default()).With("component", "auth"),
		touch:   cmp.Or(opts.TouchInterval, time.Minute),
		reload:  cmp.Or(opts.ReloadInterval, 30*time.Second),
		changed: make(chan struct{}, 1),
	}
	if a.now == nil {
		a.now = time.Now
	}
	a.snap.Store(&snapshot{})
	// Registered first: a change during the load is not missed.
	store.OnChange(func() {
		select {
		case a.changed <- struct{}{}:
		default:
		}
	})
	if err := a.Reload(context.Background()); err != nil {
		return nil, err
	}
	return a, nil
}

// Reload loads every token from the store.
func (a *Authenticator) Reload(ctx context.Context) error {
	a.reloadM.Lock()
	defer a.reloadM.Unlock()
	toks, err := a.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("loading tokens: %w", err)
	}
	a.snap.Store(newSnapshot(toks, a.snap.Load(), a.now()))
	return nil
}

func newSnapshot(toks []Token, old *snapshot, now time.Time) *snapshot {
	s := &snapshot{byID: make(map[string]*entry, len(toks)), byName: make(map[string]*entry, len(toks))}
	for _, t := range toks {
		e := &entry{tok: t, id: t.Identity()}
		s.all = append(s.all, e)
		// Two tokens of one id or one name: a revoked one and its
		// successor. The one not revoked wins.
		if o := s.byID[t.ID]; o == nil || !o.tok.Revoked.IsZero() {
			s.byID[t.ID] = e
		}
		if o := s.byName[t.Name]; o == nil || !o.tok.Revoked.IsZero() {
			s.byName[t.Name] = e
		}
	}
	for _, e := range s.all {
		// A store that keeps no Owner: a session acts as its parent.
		if e.tok.Owner == "" && e.tok.Parent != "" {
			if p := s.byID[e.tok.Parent]; p != nil && !p.tok.Session() {
				e.id.Name = p.tok.Name
			}
		}
		if e != s.byID[e.tok.ID] {
			e.used = new(usage) // a revoked predecessor: never used again
			continue
		}
		if o := old.byID[e.tok.ID]; o != nil {
			e.used = o.used
		} else {
			e.used = new(usage)
			if !e.tok.LastUsed.IsZero() {
				e.used.last.Store(e.tok.LastUsed.UnixNano())
				e.used.flushed.Store(e.tok.LastUsed.UnixNano())
			}
		}
		t := e.tok
		if t.Session() || !t.Revoked.IsZero() || idOfHash(t.Hash) != t.ID {
			continue
		}
		if t.Expires.IsZero() {
			s.never = true
		} else if t.Expires.After(s.latest) {
			s.latest = t.Expires
		}
	}
	return s
}

// Verify returns the identity secret authenticates: ErrInvalidToken if no
// token has it, ErrRevoked or ErrExpired if its token was revoked or has
// expired, and ErrRevoked for a session whose parent token is gone,
// revoked or expired. It records the token's use for Run to flush. The
// identity's Sites are shared: callers must not modify them.
func (a *Authenticator) Verify(secret string) (Identity, error) {
	if len(secret) == 0 || len(secret) > MaxSecretLen {
		return Identity{}, ErrInvalidToken
	}
	s := a.snap.Load()
	e := s.lookup(secret)
	if e == nil {
		return Identity{}, ErrInvalidToken
	}
	now := a.now()
	if err := s.usable(e, now); err != nil {
		return Identity{}, err
	}
	e.used.record(now)
	return e.id, nil
}

// lookup returns the entry of secret, nil if no token has it.
func (s *snapshot) lookup(secret string) *entry {
	// Secrets of NewSecret are 46 bytes: hashed from the stack, where
	// []byte(secret) would allocate above 32.
	var buf [64]byte
	var sum [sha256.Size]byte
	if len(secret) <= len(buf) {
		sum = sha256.Sum256(buf[:copy(buf[:], secret)])
	} else {
		sum = sha256.Sum256([]byte(secret))
	}
	var id [tokenIDLen]byte
	hex.Encode(id[:], sum[:tokenIDLen/2])
	e := s.byID[string(id[:])]
	if e == nil || subtle.ConstantTimeCompare(sum[:], e.tok.Hash) != 1 {
		return nil
	}
	return e
}

// usable returns nil if e's token may be used at now.
func (s *snapshot) usable(e *entry, now time.Time) error {
	if err := tokenState(e.tok, now); err != nil {
		return err
	}
	if e.tok.Parent != "" {
		p := s.byID[e.tok.Parent]
		if p == nil || p.tok.Session() || tokenState(p.tok, now) != nil {
			return ErrRevoked
		}
	}
	return nil
}

// tokenState returns ErrRevoked or ErrExpired for a token that is, nil
// otherwise.
func tokenState(t Token, now time.Time) error {
	switch {
	case !t.Revoked.IsZero():
		return ErrRevoked
	case !t.Expires.IsZero() && !now.Before(t.Expires):
		return ErrExpired
	}
	return nil
}

// Empty reports whether no usable API token exists (sessions do not
// count): then --auth=auto leaves a loopback listener open.
func (a *Authenticator) Empty() bool {
	s := a.snap.Load()
	return !s.never && !a.now().Before(s.latest)
}

// Create stores a new API token (see NewToken for what is valid) and
// returns it with its secret, to be shown once. ErrExists if the name is
// taken.
func (a *Authenticator) Create(ctx context.Context, name string, scopes Scope, sites []string, expires time.Time, createdBy string) (Token, string, error) {
	tok, secret, err := NewToken(name, scopes, sites, expires, a.now())
	if err != nil {
		return Token{}, "", fmt.Errorf("creating token %q: %w", name, err)
	}
	tok.CreatedBy = createdBy
	if err := a.create(ctx, tok); err != nil {
		return Token{}, "", err
	}
	tok.Hash = nil
	return tok, secret, nil
}

// create stores tok and reloads.
func (a *Authenticator) create(ctx context.Context, tok Token) error {
	err := a.store.Create(ctx, tok)
	if err != nil {
		return fmt.Errorf("creating token %q: %w", tok.Name, err)
	}
	return a.Reload(ctx)
}

// List returns every API token, revoked and expired ones included (a name
// revoked and taken again appears twice), by name, without their hashes;
// sessions are left out.
func (a *Authenticator) List() []Token {
	s := a.snap.Load()
	out := make([]Token, 0, len(s.all))
	for _, e := range s.all {
		if e.tok.Session() {
			continue
		}
		out = append(out, e.tok.public(e.used))
	}
	slices.SortStableFunc(out, func(a, b Token) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// public returns a copy of t without its hash, with the last-used time
// seen in memory.
func (t Token) public(u *usage) Token {
	t.Hash = nil
	t.Sites = slices.Clone(t.Sites)
	if u != nil {
		if n := u.last.Load(); n > 0 && n > t.LastUsed.UnixNano() {
			t.LastUsed = time.Unix(0, n).In(t.Created.Location())
		}
	}
	return t
}

// Revoke revokes the token named name, and so its sessions; ErrNotFound if
// there is none.
func (a *Authenticator) Revoke(ctx context.Context, name string) error {
	if err := a.store.Revoke(ctx, name, a.now()); err != nil {
		return fmt.Errorf("revoking token %q: %w", name, err)
	}
	return a.Reload(ctx)
}

// Bootstrap ensures an admin token named "bootstrap" with every scope
// whose secret is secret: it creates it, does nothing if it exists, and
// rotates it (revokes the old one, creates the new one, named
// "bootstrap:<id>" if the store keeps the old name taken) if it exists
// with another secret. The secret must be 32 to MaxSecretLen visible ASCII
// characters. A secret whose token was revoked, by an admin or by a
// rotation, stays so: the error wraps ErrRevoked, and the way on is a new
// secret.
func (a *Authenticator) Bootstrap(ctx context.Context, secret string) error {
	if len(secret) < MinBootstrapSecretLen || !validSecretChars(secret) {
		return fmt.Errorf("bootstrapping: secret must be %d to %d visible ASCII characters: %w", MinBootstrapSecretLen, MaxSecretLen, ErrInvalidArgument)
	}
	hash := HashSecret(secret)
	// Another replica may have bootstrapped or rotated since our load.
	if err := a.Reload(ctx); err != nil {
		return fmt.Errorf("bootstrapping: %w", err)
	}
	for attempt := 0; ; attempt++ {
		s := a.snap.Load()
		// byID prefers a token that is not revoked: a revoked one here
		// means every token of this secret was revoked.
		if e := s.byID[idOfHash(hash)]; e != nil && subtle.ConstantTimeCompare(e.tok.Hash, hash) == 1 && !e.tok.Revoked.IsZero() {
			return fmt.Errorf("bootstrapping: the token of this secret (id %s) was revoked; write a new secret: %w", e.tok.ID, ErrRevoked)
		}
		current := false
		for _, e := range s.all {
			if !isBootstrap(e.tok) || !e.tok.Revoked.IsZero() {
				continue
			}
			if subtle.ConstantTimeCompare(e.tok.Hash, hash) == 1 {
				current = true
				continue
			}
			if err := a.store.Revoke(ctx, e.tok.Name, a.now()); err != nil && !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("bootstrapping: revoking the old token: %w", err)
			}
			a.logger.Info("bootstrap token rotated", "old_id", e.tok.ID, "old_name", e.tok.Name)
		}
		if current {
			return nil
		}
		name := BootstrapName
		if e := s.byName[BootstrapName]; attempt > 0 && e != nil && !e.tok.Revoked.IsZero() {
			name = BootstrapName + ":" + idOfHash(hash)
		}
		tok := Token{
			ID:        idOfHash(hash),
			Name:      name,
			Scopes:    AllScopes,
			Hash:      hash,
			Created:   a.now(),
			CreatedBy: BootstrapName,
		}
		err := a.store.Create(ctx, tok)
		// Another replica may have bootstrapped meanwhile, or the store
		// keeps a revoked token's name: look again.
		if errors.Is(err, ErrExists) && attempt < 2 {
			if err := a.Reload(ctx); err != nil {
				return fmt.Errorf("bootstrapping: %w", err)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("bootstrapping: creating the token: %w", err)
		}
		if err := a.Reload(ctx); err != nil {
			return fmt.Errorf("bootstrapping: %w", err)
		}
		return nil
	}
}

// Run writes last-used times to the store every TouchInterval, reloads
// the tokens when the store reports a change and every ReloadInterval,
// until ctx ends; then it flushes once more and returns nil. Errors are
// logged: verification goes on with the tokens it has.
func (a *Authenticator) Run(ctx context.Context) error {
	touch := time.NewTicker(a.touch)
	defer touch.Stop()
	reload := time.NewTicker(a.reload)
	defer reload.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := a.Flush(fctx); err != nil {
				a.logger.Warn("writing last-used times", "err", err)
			}
			return nil
		case <-touch.C:
			if err := a.Flush(ctx); err != nil && ctx.Err() == nil {
				a.logger.Warn("writing last-used times", "err", err)
			}
		case <-a.changed:
			a.reloadLogged(ctx)
		case <-reload.C:
			a.reloadLogged(ctx)
		}
	}
}

func (a *Authenticator) reloadLogged(ctx context.Context) {
	if err := a.Reload(ctx); err != nil && ctx.Err() == nil {
		a.logger.Warn("reloading tokens", "err", err)
	}
}

// Flush writes the last-used times recorded since the last flush to the
// store; Run calls it.
func (a *Authenticator) Flush(ctx context.Context) error {
	type pending struct {
		u *usage
		n int64
	}
	var (
		used = map[string]time.Time{}
		ps   []pending
	)
	for id, e := range a.snap.Load().byID {
		if n := e.used.last.Load(); n > e.used.flushed.Load() {
			used[id] = time.Unix(0, n).UTC()
			ps = append(ps, pending{e.used, n})
		}
	}
	if len(used) == 0 {
		return nil
	}
	if err := a.store.Touch(ctx, used); err != nil {
		return fmt.Errorf("touching %d tokens: %w", len(used), err)
	}
	for _, p := range ps {
		p.u.flushed.Store(p.n)
	}
	return nil
}
