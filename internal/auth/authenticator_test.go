package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func newTestAuthenticator(t testing.TB, store *fakeStore, c *clock) *Authenticator {
	t.Helper()
	a, err := NewAuthenticator(store, AuthenticatorOptions{Now: c.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// mustCreate creates a token and returns its secret.
func mustCreate(t testing.TB, a *Authenticator, name string, scopes Scope, sites []string, expires time.Time) string {
	t.Helper()
	_, secret, err := a.Create(t.Context(), name, scopes, sites, expires, "test")
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

func TestVerify(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	now := c.Now()

	reader := mustCreate(t, a, "reader", ScopeRead, []string{"b", "a"}, time.Time{})
	short := mustCreate(t, a, "short", ScopeIngest, nil, now.Add(time.Hour))
	revoked := mustCreate(t, a, "revoked", ScopeIngest, nil, time.Time{})
	if err := a.Revoke(ctx, "revoked"); err != nil {
		t.Fatal(err)
	}
	parentSecret := mustCreate(t, a, "parent", ScopeOperate|ScopeRead, nil, now.Add(2*time.Hour))
	session, _, _, err := a.NewSession(ctx, mustVerify(t, a, parentSecret), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	orphanSecret := mustCreate(t, a, "orphan-parent", ScopeRead, nil, time.Time{})
	orphan, _, _, err := a.NewSession(ctx, mustVerify(t, a, orphanSecret), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Revoke(ctx, "orphan-parent"); err != nil {
		t.Fatal(err)
	}
	// A session whose parent vanished (deleted by another replica), and
	// one whose parent was revoked without the store revoking it.
	gone, goneTok := sessionToken(t, "nope")
	store.put(goneTok)
	revokedParent := mustCreate(t, a, "revoked-parent", ScopeRead, nil, time.Time{})
	unrevoked, unrevokedTok := sessionToken(t, TokenID(revokedParent))
	store.put(unrevokedTok)
	if err := a.Revoke(ctx, "revoked-parent"); err != nil {
		t.Fatal(err)
	}
	store.mu.Lock()
	for i := range store.toks {
		if store.toks[i].ID == unrevokedTok.ID {
			store.toks[i].Revoked = time.Time{}
		}
	}
	store.mu.Unlock()
	if err := a.Reload(ctx); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		secret  string
		advance time.Duration
		want    Identity
		wantErr error
	}{
		{name: "valid", secret: reader, want: Identity{Name: "reader", Kind: KindToken, Scopes: ScopeRead, Sites: []string{"a", "b"}, TokenID: TokenID(reader)}},
		{name: "expiring, still valid", secret: short, want: Identity{Name: "short", Kind: KindToken, Scopes: ScopeIngest, TokenID: TokenID(short)}},
		{name: "session", secret: session, want: Identity{Name: "parent", Kind: KindSession, Scopes: ScopeOperate | ScopeRead, TokenID: TokenID(session)}},
		{name: "unknown", secret: "tl_unknown", wantErr: ErrInvalidToken},
		{name: "empty", secret: "", wantErr: ErrInvalidToken},
		{name: "too long", secret: strings.Repeat("a", MaxSecretLen+1), wantErr: ErrInvalidToken},
		{name: "revoked", secret: revoked, wantErr: ErrRevoked},
		{name: "session of revoked token", secret: orphan, wantErr: ErrRevoked},
		{name: "session of missing token", secret: gone, wantErr: ErrRevoked},
		{name: "session of revoked token, not revoked itself", secret: unrevoked, wantErr: ErrRevoked},
		{name: "expired", secret: short, advance: time.Hour, wantErr: ErrExpired},
		{name: "session expired", secret: session, advance: time.Hour, wantErr: ErrExpired},
		{name: "still valid later", secret: reader, advance: time.Hour, want: Identity{Name: "reader", Kind: KindToken, Scopes: ScopeRead, Sites: []string{"a", "b"}, TokenID: TokenID(reader)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Add(tt.advance)
			defer c.Add(-tt.advance)
			got, err := a.Verify(tt.secret)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Verify() error = %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(got, tt.want, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Verify() (-got +want):\n%s", diff)
			}
		})
	}
}

func TestVerifyWrongSecretSameID(t *testing.T) {
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	secret := mustCreate(t, a, "x", ScopeRead, nil, time.Time{})
	// A token stored under the id of secret but another hash: the id
	// alone never authenticates.
	store.mu.Lock()
	store.toks[0].Hash = HashSecret("something else")
	store.mu.Unlock()
	if err := a.Reload(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(secret); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("Verify() error = %v, want ErrInvalidToken", err)
	}
}

func mustVerify(t testing.TB, a *Authenticator, secret string) Identity {
	t.Helper()
	id, err := a.Verify(secret)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// sessionToken returns a session of parent, as a store would hold it.
func sessionToken(t testing.TB, parent string) (string, Token) {
	t.Helper()
	secret, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	id := TokenID(secret)
	return secret, Token{ID: id, Name: SessionPrefix + id, Kind: KindSession, Parent: parent, Owner: "x", Scopes: ScopeRead, Hash: HashSecret(secret)}
}

func TestEmpty(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	if !a.Empty() {
		t.Fatal("Empty() = false without tokens")
	}
	// A proxy user's session does not count.
	if _, _, _, err := a.NewSession(ctx, Identity{Name: "alice", Kind: KindProxy, Scopes: ScopeRead}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !a.Empty() {
		t.Error("Empty() = false with only a session")
	}
	mustCreate(t, a, "short", ScopeRead, nil, c.Now().Add(time.Hour))
	if a.Empty() {
		t.Error("Empty() = true with a token")
	}
	c.Add(time.Hour)
	if !a.Empty() {
		t.Error("Empty() = false with only an expired token")
	}
	mustCreate(t, a, "forever", ScopeRead, nil, time.Time{})
	if a.Empty() {
		t.Error("Empty() = true with a token")
	}
	if err := a.Revoke(ctx, "forever"); err != nil {
		t.Fatal(err)
	}
	if !a.Empty() {
		t.Error("Empty() = false with only a revoked token")
	}
}

func TestCreateListRevoke(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	now := c.Now()

	tok, secret, err := a.Create(ctx, "ingest-1", ScopeIngest, []string{"plant"}, now.Add(24*time.Hour), "admin")
	if err != nil {
		t.Fatal(err)
	}
	want := Token{ID: TokenID(secret), Name: "ingest-1", Scopes: ScopeIngest, Sites: []string{"plant"}, Created: now, Expires: now.Add(24 * time.Hour), CreatedBy: "admin"}
	if diff := cmp.Diff(tok, want); diff != "" {
		t.Errorf("Create() (-got +want):\n%s", diff)
	}
	if _, _, err := a.Create(ctx, "ingest-1", ScopeRead, nil, time.Time{}, "admin"); !errors.Is(err, ErrExists) {
		t.Errorf("Create() of a taken name: error = %v, want ErrExists", err)
	}
	if _, _, err := a.Create(ctx, "bad name", ScopeRead, nil, time.Time{}, "admin"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Create() of a bad name: error = %v, want ErrInvalidArgument", err)
	}
	if _, _, _, err := a.NewSession(ctx, mustVerify(t, a, secret), time.Hour); err != nil {
		t.Fatal(err)
	}
	c.Add(time.Minute)
	if err := a.Revoke(ctx, "ingest-1"); err != nil {
		t.Fatal(err)
	}
	if err := a.Revoke(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revoke() of a missing token: error = %v, want ErrNotFound", err)
	}
	want.LastUsed = now // the Verify above
	want.Revoked = now.Add(time.Minute)
	if diff := cmp.Diff(a.List(), []Token{want}); diff != "" {
		t.Errorf("List() (-got +want):\n%s", diff)
	}
	// The revoked name may be taken again.
	if _, _, err := a.Create(ctx, "ingest-1", ScopeRead, nil, time.Time{}, "admin"); err != nil {
		t.Fatalf("Create() of a revoked name: %v", err)
	}
	got := a.List()
	if len(got) != 2 || got[0].ID != want.ID || !got[1].Revoked.IsZero() || got[1].Scopes != ScopeRead {
		t.Errorf("List() = %+v, want the revoked token, then the new one", got)
	}
	for _, tok := range got {
		if tok.Hash != nil {
			t.Errorf("List() exposes the hash of %q", tok.Name)
		}
	}
}

func TestBootstrap(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	first := strings.Repeat("a", 32)
	second := "a-hand-written-secret_at.least.32.bytes"

	if err := a.Bootstrap(ctx, "short"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Bootstrap(short) error = %v, want ErrInvalidArgument", err)
	}
	if err := a.Bootstrap(ctx, strings.Repeat("a", 31)+"\n"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Bootstrap(with newline) error = %v, want ErrInvalidArgument", err)
	}
	for range 2 { // idempotent
		if err := a.Bootstrap(ctx, first); err != nil {
			t.Fatal(err)
		}
	}
	want := Identity{Name: "bootstrap", Kind: KindToken, Scopes: AllScopes, TokenID: TokenID(first)}
	if diff := cmp.Diff(mustVerify(t, a, first), want); diff != "" {
		t.Errorf("Verify(bootstrap) (-got +want):\n%s", diff)
	}
	if len(store.toks) != 1 {
		t.Errorf("store holds %d tokens, want 1", len(store.toks))
	}

	// Rotation.
	if err := a.Bootstrap(ctx, second); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(first); !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify(old bootstrap) error = %v, want ErrRevoked", err)
	}
	want.TokenID = TokenID(second)
	if diff := cmp.Diff(mustVerify(t, a, second), want); diff != "" {
		t.Errorf("Verify(new bootstrap) (-got +want):\n%s", diff)
	}

	// A secret revoked by rotation is not brought back.
	if err := a.Bootstrap(ctx, first); !errors.Is(err, ErrRevoked) {
		t.Errorf("Bootstrap(first) again: error = %v, want ErrRevoked", err)
	}
	mustVerify(t, a, second)
}

func TestBootstrapRevoked(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	a := newTestAuthenticator(t, &fakeStore{}, c)
	secret := strings.Repeat("b", 40)
	if err := a.Bootstrap(ctx, secret); err != nil {
		t.Fatal(err)
	}
	if err := a.Revoke(ctx, BootstrapName); err != nil {
		t.Fatal(err)
	}
	if err := a.Bootstrap(ctx, secret); !errors.Is(err, ErrRevoked) {
		t.Errorf("Bootstrap() of a revoked secret: error = %v, want ErrRevoked", err)
	}
	if _, err := a.Verify(secret); !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify() error = %v, want ErrRevoked", err)
	}
}

func TestBootstrapConcurrentReplica(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	b := newTestAuthenticator(t, store, c) // another replica, same store
	secret := strings.Repeat("c", 40)
	if err := a.Bootstrap(ctx, secret); err != nil {
		t.Fatal(err)
	}
	// b has not reloaded: its Create meets ErrExists, it looks again.
	if err := b.Bootstrap(ctx, secret); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, b, secret)
}

func TestReloadOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newClock()
		store := &fakeStore{}
		a := newTestAuthenticator(t, store, c)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- a.Run(ctx) }()

		secret, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		store.put(Token{ID: TokenID(secret), Name: "elsewhere", Scopes: ScopeRead, Hash: HashSecret(secret)})
		synctest.Wait()
		mustVerify(t, a, secret)

		// A missed notification: the periodic reload catches up.
		secret2, _ := NewSecret()
		store.mu.Lock()
		store.toks = append(store.toks, Token{ID: TokenID(secret2), Name: "missed", Scopes: ScopeRead, Hash: HashSecret(secret2)})
		store.mu.Unlock()
		synctest.Wait()
		if _, err := a.Verify(secret2); !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("Verify() before the periodic reload: error = %v, want ErrInvalidToken", err)
		}
		time.Sleep(30 * time.Second)
		synctest.Wait()
		mustVerify(t, a, secret2)

		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	})
}

func TestRunFlushesLastUsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &fakeStore{}
		a, err := NewAuthenticator(store, AuthenticatorOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		secret := mustCreate(t, a, "used", ScopeRead, nil, time.Time{})
		idle := mustCreate(t, a, "idle", ScopeRead, nil, time.Time{})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- a.Run(ctx) }()

		start := time.Now()
		mustVerify(t, a, secret)
		time.Sleep(time.Minute)
		synctest.Wait()
		want := []map[string]time.Time{{TokenID(secret): start.UTC()}}
		if diff := cmp.Diff(store.touches(), want); diff != "" {
			t.Fatalf("touches after a minute (-got +want):\n%s", diff)
		}

		// Nothing new: nothing written.
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := len(store.touches()); got != 1 {
			t.Fatalf("%d touches after an idle minute, want 1", got)
		}

		// Used again, then stopped before the tick: the last flush
		// writes it.
		time.Sleep(10 * time.Second)
		used := time.Now()
		mustVerify(t, a, secret)
		mustVerify(t, a, secret) // within a second: recorded once
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
		want = append(want, map[string]time.Time{TokenID(secret): used.UTC()})
		if diff := cmp.Diff(store.touches(), want); diff != "" {
			t.Errorf("touches after stopping (-got +want):\n%s", diff)
		}
		for _, tok := range a.List() {
			switch tok.Name {
			case "used":
				if !tok.LastUsed.Equal(used) {
					t.Errorf("List(): %s last used %s, want %s", tok.Name, tok.LastUsed, used)
				}
			case "idle":
				if !tok.LastUsed.IsZero() {
					t.Errorf("List(): %s (%s) last used %s, want never", tok.Name, TokenID(idle), tok.LastUsed)
				}
			}
		}
	})
}

func TestNewAuthenticatorLoadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := NewAuthenticator(&fakeStore{failLoad: boom}, AuthenticatorOptions{})
	if !errors.Is(err, boom) {
		t.Errorf("NewAuthenticator() error = %v, want %v", err, boom)
	}
}

func BenchmarkVerify(b *testing.B) {
	c := newClock()
	store := &fakeStore{}
	for i := range 1000 {
		tok, _, err := NewToken(fmt.Sprintf("t%d", i), ScopeIngest, []string{"s"}, time.Time{}, c.Now())
		if err != nil {
			b.Fatal(err)
		}
		store.toks = append(store.toks, tok)
	}
	a := newTestAuthenticator(b, store, c)
	secret := mustCreate(b, a, "bench", ScopeIngest, []string{"s"}, time.Time{})
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Verify(secret); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestVerifyDuringReload(t *testing.T) {
	c := newClock()
	store := &fakeStore{}
	a := newTestAuthenticator(t, store, c)
	secret := mustCreate(t, a, "busy", ScopeIngest, nil, time.Time{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for range 200 {
				if _, err := a.Verify(secret); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 20 {
			if _, _, err := a.Create(t.Context(), fmt.Sprintf("other-%d", i), ScopeRead, nil, time.Time{}, "test"); err != nil {
				t.Error(err)
			}
			if err := a.Flush(t.Context()); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
}

// TestStoreKeepingNames runs what depends on the store's reading of
// names against one that keeps revoked tokens' names taken and has no
// Kind and Owner (the PostgreSQL store before it grew them).
func TestStoreKeepingNames(t *testing.T) {
	ctx := t.Context()
	c := newClock()
	store := &fakeStore{keepNames: true, dropSessionFields: true}
	a := newTestAuthenticator(t, store, c)
	first, second := strings.Repeat("d", 40), strings.Repeat("e", 40)
	if err := a.Bootstrap(ctx, first); err != nil {
		t.Fatal(err)
	}
	if err := a.Bootstrap(ctx, second); err != nil {
		t.Fatalf("Bootstrap() rotation: %v", err)
	}
	want := Identity{Name: "bootstrap:" + TokenID(second), Kind: KindToken, Scopes: AllScopes, TokenID: TokenID(second)}
	if diff := cmp.Diff(mustVerify(t, a, second), want); diff != "" {
		t.Errorf("Verify(rotated bootstrap) (-got +want):\n%s", diff)
	}
	if _, err := a.Verify(first); !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify(old bootstrap) error = %v, want ErrRevoked", err)
	}
	if err := a.Bootstrap(ctx, second); err != nil { // idempotent
		t.Fatal(err)
	}
	third := strings.Repeat("f", 40)
	if err := a.Bootstrap(ctx, third); err != nil {
		t.Fatalf("second rotation: %v", err)
	}
	if _, err := a.Verify(second); !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify(second bootstrap) error = %v, want ErrRevoked", err)
	}
	mustVerify(t, a, third)

	// Sessions without Kind and Owner stay sessions acting as the parent.
	api := mustCreate(t, a, "api", ScopeRead, nil, time.Time{})
	session, _, _, err := a.NewSession(ctx, mustVerify(t, a, api), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	wantSession := Identity{Name: "api", Kind: KindSession, Scopes: ScopeRead, TokenID: TokenID(session)}
	if diff := cmp.Diff(mustVerify(t, a, session), wantSession); diff != "" {
		t.Errorf("Verify(session) (-got +want):\n%s", diff)
	}
	proxy, _, _, err := a.NewSession(ctx, Identity{Name: "alice", Kind: KindProxy, Scopes: ScopeRead}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustVerify(t, a, proxy); got.Kind != KindSession {
		t.Errorf("Verify(proxy session).Kind = %q, want %q", got.Kind, KindSession)
	}
	for _, name := range []string{"api", "bootstrap:" + TokenID(third)} {
		if err := a.Revoke(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if !a.Empty() {
		t.Errorf("Empty() = false with only sessions and revoked tokens: %+v", a.List())
	}
}
